// The decoder stages, each the streaming form of a Hugging Face decoder
// (decoders/{byte_level,byte_fallback,fuse,strip,metaspace}.rs, normalizers/replace.rs).
#include "worker/tokenizer/token_decoder.h"

#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/tokenizer/byte_level.h"
#include "worker/tokenizer/tokenizer_json.h"
#include "worker/tokenizer/tokenizer_regex.h"
#include "common/utf8.h"

namespace ember::worker {
namespace {

namespace tj = tokenizer_json;
using nlohmann::json;
using Emit = DecoderStage::Emit;

// Hugging Face's default without a decoder: tokens joined by single spaces.
class JoinStage : public DecoderStage {
 public:
  std::unique_ptr<DecoderStage> Fresh() const override { return std::make_unique<JoinStage>(); }
  void Push(std::string piece, Emit emit) override {
    if (!first_) emit(" ");
    first_ = false;
    emit(std::move(piece));
  }

 private:
  bool first_ = true;
};

// Byte-level tokens back to bytes, then bytes to text as from_utf8_lossy does; bytes of
// an incomplete character wait for the next token. Fuses.
class ByteLevelStage : public DecoderStage {
 public:
  std::unique_ptr<DecoderStage> Fresh() const override {
    return std::make_unique<ByteLevelStage>();
  }
  void Push(std::string token, Emit emit) override {
    // A token with a character outside the alphabet (an added token) is taken as is.
    std::string bytes;
    bool all_mapped = true;
    for (size_t pos = 0; pos < token.size() && all_mapped;) {
      const auto b = byte_level::ByteOf(utf8::Next(token, pos));
      if (b) {
        bytes += static_cast<char>(*b);
      } else {
        all_mapped = false;
      }
    }
    pending_.append(all_mapped ? bytes : token);
    std::string text;
    pending_.erase(0, utf8::AppendLossy(pending_, /*final=*/false, text));
    if (!text.empty()) emit(std::move(text));
  }
  void Finish(Emit emit) override {
    std::string text;
    utf8::AppendLossy(pending_, /*final=*/true, text);
    pending_.clear();
    if (!text.empty()) emit(std::move(text));
  }

 private:
  std::string pending_;
};

// <0xXX> tokens back to bytes: a run of them becomes its text when it is well-formed
// UTF-8, else one U+FFFD per byte. A run is held until a token that is not a byte ends it,
// since a later byte can turn the whole run into replacement characters.
class ByteFallbackStage : public DecoderStage {
 public:
  std::unique_ptr<DecoderStage> Fresh() const override {
    return std::make_unique<ByteFallbackStage>();
  }
  void Push(std::string token, Emit emit) override {
    if (auto b = ByteOfToken(token)) {
      run_ += static_cast<char>(*b);
      return;
    }
    Flush(emit);
    emit(std::move(token));
  }
  void Finish(Emit emit) override { Flush(emit); }

 private:
  static std::optional<uint8_t> ByteOfToken(absl::string_view t) {
    if (t.size() != 6 || !absl::StartsWith(t, "<0x") || t[5] != '>') return std::nullopt;
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    const int hi = hex(t[3]), lo = hex(t[4]);
    if (hi < 0 || lo < 0) return std::nullopt;
    return static_cast<uint8_t>(hi * 16 + lo);
  }
  void Flush(Emit emit) {
    if (run_.empty()) return;
    if (!utf8::FindInvalid(run_)) {
      emit(std::move(run_));
    } else {
      for (size_t i = 0; i < run_.size(); ++i) emit(std::string(utf8::kReplacementChar));
    }
    run_.clear();
  }
  std::string run_;
};

// Replaces a pattern by a string: in each token, or (fused) in the running text, where a
// tail that could begin the pattern is held until the next fragment decides.
class ReplaceStage : public DecoderStage {
 public:
  ReplaceStage(std::shared_ptr<const Replacement> replace, bool fused)
      : replace_(std::move(replace)), fused_(fused) {}
  std::unique_ptr<DecoderStage> Fresh() const override {
    return std::make_unique<ReplaceStage>(replace_, fused_);
  }
  void Push(std::string piece, Emit emit) override {
    if (!fused_) {
      emit(replace_->regex.ReplaceAll(piece, replace_->content));
      return;
    }
    const std::string& literal = *replace_->regex.literal();  // fused: a String pattern
    held_.append(piece);
    std::string out;
    size_t done = 0;
    for (size_t k; !literal.empty() && (k = held_.find(literal, done)) != std::string::npos;) {
      absl::StrAppend(&out, absl::string_view(held_).substr(done, k - done), replace_->content);
      done = k + literal.size();
    }
    // Keep the longest tail that is a proper prefix of the pattern.
    size_t keep = literal.empty() ? 0 : std::min(literal.size() - 1, held_.size() - done);
    while (keep > 0 &&
           !absl::StartsWith(literal, absl::string_view(held_).substr(held_.size() - keep))) {
      --keep;
    }
    out.append(held_, done, held_.size() - done - keep);
    held_.erase(0, held_.size() - keep);
    if (!out.empty()) emit(std::move(out));
  }
  void Finish(Emit emit) override {
    if (!held_.empty()) emit(std::move(held_));
    held_.clear();
  }

 private:
  std::shared_ptr<const Replacement> replace_;
  bool fused_;
  std::string held_;
};

// Removes up to `start` leading and `stop` trailing `content` characters: of each token,
// or (fused) of the whole text, where a trailing run is held until a later character or
// the end decides whether it is trailing.
class StripStage : public DecoderStage {
 public:
  StripStage(char32_t content, size_t start, size_t stop, bool fused)
      : content_(content), start_(start), stop_(stop), fused_(fused), leading_left_(start) {}
  std::unique_ptr<DecoderStage> Fresh() const override {
    return std::make_unique<StripStage>(content_, start_, stop_, fused_);
  }
  void Push(std::string piece, Emit emit) override {
    if (!fused_) {
      std::vector<std::pair<size_t, char32_t>> chars;  // (byte offset, character)
      for (size_t pos = 0; pos < piece.size();) {
        const size_t at = pos;
        chars.emplace_back(at, utf8::Next(piece, pos));
      }
      size_t first = 0, last = chars.size();
      while (first < std::min(start_, chars.size()) && chars[first].second == content_) ++first;
      for (size_t i = 0; i < stop_ && last > first && chars[last - 1].second == content_; ++i)
        --last;
      const size_t b = first < chars.size() ? chars[first].first : piece.size();
      const size_t e = last < chars.size() ? chars[last].first : piece.size();
      emit(piece.substr(b, e - b));
      return;
    }
    std::string out;
    for (size_t pos = 0; pos < piece.size();) {
      const size_t at = pos;
      const char32_t c = utf8::Next(piece, pos);
      if (leading_left_ > 0 && c == content_) {
        --leading_left_;
        continue;
      }
      leading_left_ = 0;
      if (stop_ > 0 && c == content_) {
        ++held_run_;
        continue;
      }
      for (; held_run_ > 0; --held_run_) utf8::Append(content_, out);
      out.append(piece, at, pos - at);
    }
    if (!out.empty()) emit(std::move(out));
  }
  void Finish(Emit emit) override {
    std::string out;
    for (size_t n = held_run_ > stop_ ? held_run_ - stop_ : 0; n > 0; --n)
      utf8::Append(content_, out);
    held_run_ = 0;
    if (!out.empty()) emit(std::move(out));
  }

 private:
  char32_t content_;
  size_t start_, stop_;
  bool fused_;
  size_t leading_left_;
  size_t held_run_ = 0;
};

// SentencePiece's "▁" back to spaces; in the first token (with a prepend scheme) they
// are removed instead, undoing the prepended one.
class MetaspaceStage : public DecoderStage {
 public:
  MetaspaceStage(char32_t replacement, bool prepend, bool fused)
      : replacement_(replacement), prepend_(prepend), fused_(fused) {}
  std::unique_ptr<DecoderStage> Fresh() const override {
    return std::make_unique<MetaspaceStage>(replacement_, prepend_, fused_);
  }
  void Push(std::string piece, Emit emit) override {
    const bool first = fused_ || index_ == 0;  // fused text is a single (first) token
    ++index_;
    std::string out;
    for (size_t pos = 0; pos < piece.size();) {
      const size_t at = pos;
      if (utf8::Next(piece, pos) != replacement_) {
        out.append(piece, at, pos - at);
      } else if (!(first && prepend_)) {
        out += ' ';
      }
    }
    emit(std::move(out));
  }

 private:
  char32_t replacement_;
  bool prepend_;
  bool fused_;
  size_t index_ = 0;
};

// Appends the stages of the decoder `j` at `path`; `fused` says whether an earlier stage
// fused the tokens, and is updated.
absl::Status AddStages(const json& j, const std::string& path, bool& fused,
                       std::vector<std::unique_ptr<DecoderStage>>& stages) {
  std::string type;
  EMBER_ASSIGN_OR_RETURN(type, tj::Type(j, path));
  auto needs_tokens = [&]() -> absl::Status {
    if (!fused) return absl::OkStatus();
    return tj::Error(
        path,
        absl::StrCat("a ", type, " decoder after a Fuse or ByteLevel decoder is not supported"));
  };
  if (type == "Sequence") {
    return tj::ForEach(j, path, "decoders", [&](const json& step, const std::string& step_path) {
      return AddStages(step, step_path, fused, stages);
    });
  }
  if (type == "ByteLevel") {
    EMBER_RETURN_IF_ERROR(needs_tokens());
    stages.push_back(std::make_unique<ByteLevelStage>());
    fused = true;
  } else if (type == "ByteFallback") {
    EMBER_RETURN_IF_ERROR(needs_tokens());
    stages.push_back(std::make_unique<ByteFallbackStage>());
  } else if (type == "Fuse") {  // no stage: the stages after it see the fused text
    fused = true;
  } else if (type == "Replace") {
    std::optional<Replacement> replace;
    EMBER_ASSIGN_OR_RETURN(replace, ParseReplace(j, path));
    if (fused && !replace->regex.literal()) {
      return tj::Error(path,
                       "a Replace decoder with a Regex pattern after a Fuse is not supported");
    }
    stages.push_back(std::make_unique<ReplaceStage>(
        std::make_shared<const Replacement>(*std::move(replace)), fused));
  } else if (type == "Strip") {
    char32_t content;
    EMBER_ASSIGN_OR_RETURN(content, tj::Char(j, path, "content", U' '));
    int64_t start, stop;
    EMBER_ASSIGN_OR_RETURN(start, tj::Int(j, path, "start", 0));
    EMBER_ASSIGN_OR_RETURN(stop, tj::Int(j, path, "stop", 0));
    if (start < 0 || stop < 0) return tj::Error(path, "start and stop must not be negative");
    stages.push_back(std::make_unique<StripStage>(content, start, stop, fused));
  } else if (type == "Metaspace") {
    char32_t replacement;
    EMBER_ASSIGN_OR_RETURN(replacement, tj::Char(j, path, "replacement", U'\u2581'));
    tj::PrependScheme scheme;
    EMBER_ASSIGN_OR_RETURN(scheme, tj::ParsePrependScheme(j, path));
    stages.push_back(
        std::make_unique<MetaspaceStage>(replacement, scheme != tj::PrependScheme::kNever, fused));
  } else {
    return tj::UnsupportedType(
        path, "decoder", type,
        "ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, Sequence");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TokenDecoder> TokenDecoder::FromJson(const json* j, const std::string& path) {
  TokenDecoder decoder;
  if (j == nullptr) {
    decoder.stages_.push_back(std::make_unique<JoinStage>());
    return decoder;
  }
  bool fused = false;
  EMBER_RETURN_IF_ERROR(AddStages(*j, path, fused, decoder.stages_));
  return decoder;
}

TokenDecoder::Stream TokenDecoder::NewStream() const {
  Stream stream;
  for (const auto& stage : stages_) stream.stages_.push_back(stage->Fresh());
  return stream;
}

void TokenDecoder::Stream::Feed(size_t stage, std::string piece, std::string& out) {
  if (stage == stages_.size()) {
    out.append(piece);
    return;
  }
  stages_[stage]->Push(std::move(piece),
                       [&](std::string p) { Feed(stage + 1, std::move(p), out); });
}

void TokenDecoder::Stream::Push(std::string token, std::string& out) {
  Feed(0, std::move(token), out);
}

void TokenDecoder::Stream::Finish(std::string& out) {
  for (size_t s = 0; s < stages_.size(); ++s) {
    stages_[s]->Finish([&](std::string p) { Feed(s + 1, std::move(p), out); });
  }
}

}  // namespace ember::worker
