// The normalizers of tokenizer.json that the supported model families use, with the
// semantics of Hugging Face tokenizers (normalizers/{unicode,prepend,replace}.rs).
#include "worker/normalizer.h"

#include <vector>

#include "worker/tokenizer_json.h"
#include "worker/tokenizer_regex.h"
#include "worker/utf8.h"

namespace ember::worker {
namespace {

namespace tj = tokenizer_json;
using nlohmann::json;

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(utf8::NormalForm form) : form_(form) {}
  void Apply(std::string& text) const override { text = utf8::Normalize(text, form_); }

 private:
  utf8::NormalForm form_;
};

// Prepends a string to non-empty text (Llama 2's "▁").
class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void Apply(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

// Replaces every match of a pattern by a literal string (Llama 2's " " -> "▁").
class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(TokenizerRegex pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void Apply(std::string& text) const override {
    const auto matches = pattern_.FindAll(text);
    if (matches.empty()) return;
    std::string out;
    out.reserve(text.size());
    size_t done = 0;
    for (const auto& [begin, end] : matches) {
      out.append(text, done, begin - done);
      out.append(content_);
      done = end;
    }
    out.append(text, done, std::string::npos);
    text = std::move(out);
  }

 private:
  TokenizerRegex pattern_;
  std::string content_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void Apply(std::string& text) const override {
    for (const auto& step : steps_) step->Apply(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> Normalizer::FromJson(const json& j,
                                                                 const std::string& path) {
  std::string type;
  EMBER_ASSIGN_OR_RETURN(type, tj::Type(j, path));
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(utf8::NormalForm::kNfc);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(utf8::NormalForm::kNfd);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(utf8::NormalForm::kNfkc);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(utf8::NormalForm::kNfkd);
  if (type == "Prepend") {
    std::string prefix;
    EMBER_ASSIGN_OR_RETURN(prefix, tj::String(j, path, "prepend"));
    return std::make_unique<PrependNormalizer>(std::move(prefix));
  }
  if (type == "Replace") {
    const json* pattern;
    EMBER_ASSIGN_OR_RETURN(pattern, tj::Object(j, path, "pattern"));
    std::optional<TokenizerRegex> regex;
    EMBER_ASSIGN_OR_RETURN(regex, TokenizerRegex::FromJson(*pattern, tj::Child(path, "pattern")));
    std::string content;
    EMBER_ASSIGN_OR_RETURN(content, tj::String(j, path, "content"));
    return std::make_unique<ReplaceNormalizer>(*std::move(regex), std::move(content));
  }
  if (type == "Sequence") {
    const json* list;
    EMBER_ASSIGN_OR_RETURN(list, tj::Array(j, path, "normalizers"));
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      std::unique_ptr<Normalizer> step;
      EMBER_ASSIGN_OR_RETURN(step,
                             FromJson((*list)[i], tj::Element(tj::Child(path, "normalizers"), i)));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  return tj::UnsupportedType(path, "normalizer", type,
                             "NFC, NFD, NFKC, NFKD, Prepend, Replace, Sequence");
}

}  // namespace ember::worker
