// tokenizer.json's "decoder" (ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace,
// Sequence) compiled into a chain of streaming stages, so that decoding token by token
// yields exactly the text of decoding all tokens at once, split only between characters.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace ember::worker {

// One step of the chain. Before a Fuse (or ByteLevel, which fuses) a piece is one whole
// token, as Hugging Face's decode_chain sees it; after it, pieces are consecutive
// fragments of the single fused string, cut between characters, and a stage whose output
// depends on what follows holds text back until it knows.
class DecoderStage {
 public:
  using Emit = absl::FunctionRef<void(std::string)>;
  virtual ~DecoderStage() = default;
  // A copy in the initial state, for a new stream.
  virtual std::unique_ptr<DecoderStage> Fresh() const = 0;
  virtual void Push(std::string piece, Emit emit) = 0;
  // The end of the stream: emits whatever is still held.
  virtual void Finish(Emit emit) {}
};

class TokenDecoder {
 public:
  // `j` is tokenizer.json's "decoder" at `path`; nullptr (absent or null) means Hugging
  // Face's default, the tokens joined by spaces. Unknown types or unsupported orders are
  // errors naming the path.
  static absl::StatusOr<TokenDecoder> FromJson(const nlohmann::json* j, const std::string& path);

  // The state of one decoding: tokens in, text out.
  class Stream {
   public:
    // Appends the text that `token` completes to `out`.
    void Push(std::string token, std::string& out);
    // Appends everything still held (an incomplete UTF-8 sequence becomes U+FFFD).
    void Finish(std::string& out);

   private:
    friend class TokenDecoder;
    void Feed(size_t stage, std::string piece, std::string& out);
    std::vector<std::unique_ptr<DecoderStage>> stages_;
  };

  Stream NewStream() const;

 private:
  std::vector<std::unique_ptr<DecoderStage>> stages_;  // prototypes in their initial state
};

}  // namespace ember::worker
