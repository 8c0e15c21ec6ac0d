// The normalizers of tokenizer.json that the supported model families use, with the
// semantics of Hugging Face tokenizers (normalizers/{unicode,prepend,replace}.rs).
#include "worker/tokenizer/normalizer.h"

#include <vector>

#include "worker/tokenizer/tokenizer_json.h"
#include "worker/tokenizer/tokenizer_regex.h"
#include "common/utf8.h"

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
  explicit ReplaceNormalizer(Replacement replace) : replace_(std::move(replace)) {}
  void Apply(std::string& text) const override {
    text = replace_.regex.ReplaceAll(text, replace_.content);
  }

 private:
  Replacement replace_;
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
    std::optional<Replacement> replace;
    EMBER_ASSIGN_OR_RETURN(replace, ParseReplace(j, path));
    return std::make_unique<ReplaceNormalizer>(*std::move(replace));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    EMBER_ASSIGN_OR_RETURN(steps, tj::ParseEach<Normalizer>(j, path, "normalizers", &FromJson));
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  return tj::UnsupportedType(path, "normalizer", type,
                             "NFC, NFD, NFKC, NFKD, Prepend, Replace, Sequence");
}

}  // namespace ember::worker
