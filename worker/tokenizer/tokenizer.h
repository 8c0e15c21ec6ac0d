// The Hugging Face tokenizer of a model: tokenizer.json (+ tokenizer_config.json) loaded
// into a BPE tokenizer that gives the ids `tokenizers` gives, and a streaming decoder
// that never splits a UTF-8 character.
//
// Written here rather than taken from a library: Debian packages no maintained C++
// implementation of Hugging Face tokenizers (the reference is Rust; the C++ ports are
// unpackaged and follow it loosely), and the worker must reproduce its ids exactly. The
// pipeline is Hugging Face's: added tokens are split out first, each remaining piece is
// normalized and pre-tokenized into words, each word is BPE-encoded, then the
// post-processor adds special tokens. Components: see docs in tokenizer.cc.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"
#include "worker/tokenizer/token_decoder.h"

namespace ember::worker {

class Tokenizer {
 public:
  // Parses tokenizer.json's text and, when not empty, tokenizer_config.json's (for the
  // special tokens and the chat template) and chat_template.jinja's (a chat template that
  // wins over tokenizer_config.json's, as in transformers). Errors name the file and the
  // JSON path; an unsupported component is an Unimplemented error naming its type.
  static absl::StatusOr<Tokenizer> Load(absl::string_view tokenizer_json,
                                        absl::string_view tokenizer_config_json,
                                        absl::string_view chat_template_jinja = {});

  // The ids of `text`; with `add_special_tokens` the post-processor's (e.g. Llama's BOS)
  // are added. Text that is not well-formed UTF-8 is an InvalidArgument error naming the
  // byte offset. Thread-safe.
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              bool add_special_tokens) const;

  // The text of `ids`, as tokenizers' decode gives it; ids without a token are skipped,
  // as are special tokens with `skip_special_tokens`.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;

  // Added tokens by their content first, then the model's vocabulary.
  std::optional<int32_t> TokenToId(absl::string_view token) const;
  // The token string of `id` (for a normalized added token, its normalized form, as
  // tokenizers returns it); nullopt for an id without a token.
  std::optional<absl::string_view> IdToToken(int32_t id) const;
  // Whether `id` is a special token (left out by skip_special_tokens).
  bool IsSpecial(int32_t id) const;

  // One past the largest id (model vocabulary and added tokens): every valid id is below.
  int32_t vocab_size() const;
  // From tokenizer_config.json's bos_token / eos_token; without one, the BOS is the
  // special token the post-processor puts first, and there is no EOS.
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  // The token strings (chat templates write them); empty when unknown.
  const std::string& bos_token() const;
  const std::string& eos_token() const;
  // chat_template.jinja, else tokenizer_config.json's chat_template (the "default" one of
  // a list); empty if none.
  const std::string& chat_template() const;
  // The special tokens a chat template sees by name (bos_token, eos_token, unk_token, ...),
  // as tokenizer_config.json names them.
  const nlohmann::ordered_json& template_tokens() const;

  // tokenizer.json (with tokenizer_config.json when present) among a model's files, as
  // the loader returns them; nullopt when the model has no tokenizer.json.
  static absl::StatusOr<std::optional<Tokenizer>> FromFiles(
      const std::map<std::string, std::string>& files);

  struct Parts;  // the loaded components (tokenizer.cc)

 private:
  friend class TokenStreamDecoder;
  explicit Tokenizer(std::shared_ptr<const Parts> parts) : parts_(std::move(parts)) {}
  // The token to decode for `id`; nullptr when it is skipped.
  const std::string* TokenForDecode(int32_t id, bool skip_special_tokens) const;

  std::shared_ptr<const Parts> parts_;  // immutable and shared by copies and decoders
};

// Decodes a stream of ids one at a time: each Push returns the text that the id
// completes, holding back the bytes of an incomplete character (byte-level tokens,
// <0xXX> byte-fallback runs) until it is complete. The concatenation of all Push results
// and Finish equals Decode of all ids.
class TokenStreamDecoder {
 public:
  TokenStreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);

  std::string Push(int32_t id);
  // The text still held at the end of the stream (an incomplete character becomes
  // U+FFFD, as in Decode).
  std::string Finish();

 private:
  Tokenizer tokenizer_;
  bool skip_special_tokens_;
  TokenDecoder::Stream stream_;
};

}  // namespace ember::worker
