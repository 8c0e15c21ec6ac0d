// Loading tokenizer.json and running Hugging Face's encode pipeline.
//
// Supported components (anything else is an Unimplemented error naming it and its path):
//   normalizer     NFC, NFD, NFKC, NFKD, Prepend, Replace, Sequence
//   pre_tokenizer  Split (String/Regex, all behaviors, invert), ByteLevel, Metaspace,
//                  Digits, Sequence
//   model          BPE (merges as "a b" or [a, b], byte_fallback, unk_token/fuse_unk,
//                  continuing_subword_prefix, end_of_word_suffix, ignore_merges)
//   post_processor TemplateProcessing (single), ByteLevel, Sequence
//   decoder        ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, Sequence
#include "worker/tokenizer/tokenizer.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "loader/json_strict.h"
#include "worker/tokenizer/added_tokens.h"
#include "worker/tokenizer/bpe.h"
#include "worker/tokenizer/normalizer.h"
#include "worker/tokenizer/pretokenizer.h"
#include "worker/tokenizer/tokenizer_json.h"
#include "common/utf8.h"

namespace ember::worker {

namespace tj = tokenizer_json;
using nlohmann::json;

// The post-processor's template for a single sequence: ids to insert and the place of
// the sequence itself ($A). Applied in turn when a Sequence holds several.
struct PostTemplate {
  struct Item {
    bool is_sequence = false;
    std::vector<int32_t> ids;  // the special token's ids when !is_sequence
  };
  std::vector<Item> items;
};

struct Tokenizer::Parts {
  std::unique_ptr<Normalizer> normalizer;       // null: none
  std::unique_ptr<PreTokenizer> pre_tokenizer;  // null: none
  std::unique_ptr<BpeModel> model;
  TokenDecoder decoder;
  std::vector<PostTemplate> post;  // applied in order with add_special_tokens
  AddedVocabulary added;
  absl::flat_hash_map<std::string, int32_t> added_ids;  // content -> id
  // id -> the string decode gives the decoder: the content, or for a normalized token the
  // normalized content (which the decoder inverts), as tokenizers 0.23 does.
  absl::flat_hash_map<int32_t, std::string> added_tokens;
  absl::flat_hash_set<int32_t> special_ids;  // left out by skip_special_tokens
  int32_t vocab_size = 0;
  std::optional<int32_t> bos_id, eos_id;
  std::string bos_token, eos_token, chat_template;
  nlohmann::ordered_json template_tokens = nlohmann::ordered_json::object();
};

namespace {

absl::Status ParsePostProcessor(const json& j, const std::string& path,
                                std::vector<PostTemplate>& post) {
  if (j.is_null()) return absl::OkStatus();
  std::string type;
  EMBER_ASSIGN_OR_RETURN(type, tj::Type(j, path));
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only: no tokens added
  if (type == "Sequence") {
    return tj::ForEach(j, path, "processors", [&](const json& step, const std::string& step_path) {
      return ParsePostProcessor(step, step_path, post);
    });
  }
  if (type != "TemplateProcessing") {
    return tj::UnsupportedType(path, "post-processor", type,
                               "TemplateProcessing, ByteLevel, Sequence");
  }
  const json* single;
  EMBER_ASSIGN_OR_RETURN(single, tj::Array(j, path, "single"));
  const json* specials;
  EMBER_ASSIGN_OR_RETURN(specials, tj::Object(j, path, "special_tokens"));
  PostTemplate t;
  for (size_t i = 0; i < single->size(); ++i) {
    const json& item = (*single)[i];
    const std::string item_path = tj::Element(tj::Child(path, "single"), i);
    PostTemplate::Item out;
    if (item.contains("Sequence")) {
      std::string id;
      EMBER_ASSIGN_OR_RETURN(id,
                             tj::String(item["Sequence"], tj::Child(item_path, "Sequence"), "id"));
      if (id != "A") return tj::Error(item_path, "a single-sequence template can only hold $A");
      out.is_sequence = true;
    } else if (item.contains("SpecialToken")) {
      std::string name;
      EMBER_ASSIGN_OR_RETURN(
          name, tj::String(item["SpecialToken"], tj::Child(item_path, "SpecialToken"), "id"));
      auto it = specials->find(name);
      if (it == specials->end() || !it->contains("ids") || !(*it)["ids"].is_array()) {
        return tj::Error(tj::Child(path, "special_tokens"),
                         absl::StrCat("has no ids for \"", name, "\""));
      }
      for (const json& id_json : (*it)["ids"]) {
        const std::optional<int32_t> id = tj::Id(id_json);
        if (!id) {
          return tj::Error(tj::Child(tj::Child(path, "special_tokens"), name),
                           "ids must be integers in [0, 2^31)");
        }
        out.ids.push_back(*id);
      }
    } else {
      return tj::Error(item_path, "must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
    t.items.push_back(std::move(out));
  }
  post.push_back(std::move(t));
  return absl::OkStatus();
}

absl::Status ParseAddedTokens(const json& root, Tokenizer::Parts& parts) {
  if (tj::Find(root, "added_tokens") == nullptr) return absl::OkStatus();
  const json* list;
  EMBER_ASSIGN_OR_RETURN(list, tj::Array(root, "", "added_tokens"));
  absl::flat_hash_set<std::string> special_contents;
  for (size_t i = 0; i < list->size(); ++i) {
    const json& j = (*list)[i];
    const std::string path = tj::Element("added_tokens", i);
    AddedToken t;
    int64_t id;
    EMBER_ASSIGN_OR_RETURN(id, tj::Int(j, path, "id"));
    if (id < 0 || id >= (int64_t{1} << 31))
      return tj::Error(tj::Child(path, "id"), "is out of range");
    t.id = static_cast<int32_t>(id);
    EMBER_ASSIGN_OR_RETURN(t.content, tj::String(j, path, "content"));
    EMBER_ASSIGN_OR_RETURN(t.single_word, tj::Bool(j, path, "single_word", false));
    EMBER_ASSIGN_OR_RETURN(t.lstrip, tj::Bool(j, path, "lstrip", false));
    EMBER_ASSIGN_OR_RETURN(t.rstrip, tj::Bool(j, path, "rstrip", false));
    EMBER_ASSIGN_OR_RETURN(t.special, tj::Bool(j, path, "special", false));
    EMBER_ASSIGN_OR_RETURN(t.normalized, tj::Bool(j, path, "normalized", !t.special));
    if (t.content.empty()) continue;
    std::string normalized = t.content;
    if (t.normalized && parts.normalizer) parts.normalizer->Apply(normalized);
    parts.added.Add(t, normalized);
    parts.added_ids[t.content] = t.id;
    parts.added_tokens[t.id] = normalized;
    if (t.special) special_contents.insert(t.content);
    parts.vocab_size = std::max(parts.vocab_size, t.id + 1);
  }
  // As in tokenizers, skip_special_tokens looks the decoded string up among the special
  // tokens' contents (so a special token whose normalized form differs is kept).
  for (const auto& [id, token] : parts.added_tokens) {
    if (special_contents.contains(token)) parts.special_ids.insert(id);
  }
  return absl::OkStatus();
}

// A token named in tokenizer_config.json: a string or {"content": ...}.
std::string ConfigToken(const json& config, const char* field) {
  auto it = config.find(field);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return "";
}

absl::Status ParseConfig(absl::string_view text, Tokenizer::Parts& parts) {
  if (text.empty()) return absl::OkStatus();
  json config;
  EMBER_ASSIGN_OR_RETURN(config, loader::ParseJsonStrict(text, "tokenizer_config.json"));
  if (!config.is_object())
    return absl::InvalidArgumentError("tokenizer_config.json: must be an object");
  parts.bos_token = ConfigToken(config, "bos_token");
  parts.eos_token = ConfigToken(config, "eos_token");
  // transformers passes the special tokens to chat templates by name (special_tokens_map).
  for (const char* name : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                           "cls_token", "mask_token"}) {
    if (std::string token = ConfigToken(config, name); !token.empty()) {
      parts.template_tokens[name] = token;
    }
  }
  auto it = config.find("chat_template");
  if (it != config.end() && it->is_string()) {
    parts.chat_template = it->get<std::string>();
  } else if (it != config.end() && it->is_array()) {
    for (const json& named : *it) {  // [{"name": "default", "template": ...}, ...]
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") &&
          named["template"].is_string()) {
        parts.chat_template = named["template"].get<std::string>();
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::Load(absl::string_view tokenizer_json,
                                          absl::string_view tokenizer_config_json,
                                          absl::string_view chat_template_jinja) {
  json root;
  EMBER_ASSIGN_OR_RETURN(root, loader::ParseJsonStrict(tokenizer_json, "tokenizer.json"));
  if (!root.is_object()) return tj::Error("(root)", "must be an object");
  auto parts = std::make_shared<Parts>();
  if (const json* j = tj::Find(root, "normalizer")) {
    EMBER_ASSIGN_OR_RETURN(parts->normalizer, Normalizer::FromJson(*j, "normalizer"));
  }
  if (const json* j = tj::Find(root, "pre_tokenizer")) {
    EMBER_ASSIGN_OR_RETURN(parts->pre_tokenizer, PreTokenizer::FromJson(*j, "pre_tokenizer"));
  }
  const json* model = tj::Find(root, "model");
  if (model == nullptr) return tj::Error("model", "is missing");
  EMBER_ASSIGN_OR_RETURN(parts->model, BpeModel::FromJson(*model, "model"));
  parts->vocab_size = parts->model->id_end();
  EMBER_ASSIGN_OR_RETURN(parts->decoder,
                         TokenDecoder::FromJson(tj::Find(root, "decoder"), "decoder"));
  if (const json* j = tj::Find(root, "post_processor")) {
    EMBER_RETURN_IF_ERROR(ParsePostProcessor(*j, "post_processor", parts->post));
  }
  EMBER_RETURN_IF_ERROR(ParseAddedTokens(root, *parts));
  EMBER_RETURN_IF_ERROR(ParseConfig(tokenizer_config_json, *parts));
  if (!chat_template_jinja.empty()) parts->chat_template = std::string(chat_template_jinja);

  Tokenizer tokenizer(parts);
  if (!parts->bos_token.empty()) {
    parts->bos_id = tokenizer.TokenToId(parts->bos_token);
  } else if (!parts->post.empty() && !parts->post[0].items.empty() &&
             !parts->post[0].items[0].is_sequence && parts->post[0].items[0].ids.size() == 1) {
    parts->bos_id = parts->post[0].items[0].ids[0];
    if (auto token = tokenizer.IdToToken(*parts->bos_id)) parts->bos_token = std::string(*token);
  }
  if (!parts->eos_token.empty()) parts->eos_id = tokenizer.TokenToId(parts->eos_token);
  return tokenizer;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(absl::string_view text,
                                                       bool add_special_tokens) const {
  if (auto bad = utf8::FindInvalid(text)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "text is not valid UTF-8: bad byte 0x",
        absl::Hex(static_cast<uint8_t>(text[*bad]), absl::kZeroPad2), " at byte offset ", *bad));
  }
  const Parts& p = *parts_;
  std::vector<int32_t> ids;
  std::vector<TextPiece> words;
  // Added tokens in the raw text first, then in each remaining run once normalized.
  for (TextSegment& raw : p.added.Split(text, /*normalized=*/false, /*at_input_start=*/true)) {
    if (raw.token_id) {
      ids.push_back(*raw.token_id);
      continue;
    }
    if (p.normalizer) p.normalizer->Apply(raw.text);
    for (TextSegment& run : p.added.Split(raw.text, /*normalized=*/true, raw.at_input_start)) {
      if (run.token_id) {
        ids.push_back(*run.token_id);
        continue;
      }
      words.clear();
      words.push_back({std::move(run.text), run.at_input_start});
      if (p.pre_tokenizer) p.pre_tokenizer->Apply(words);
      for (const TextPiece& word : words) p.model->Encode(word.text, ids);
    }
  }
  if (add_special_tokens) {
    for (const PostTemplate& t : p.post) {
      std::vector<int32_t> wrapped;
      for (const PostTemplate::Item& item : t.items) {
        const std::vector<int32_t>& part = item.is_sequence ? ids : item.ids;
        wrapped.insert(wrapped.end(), part.begin(), part.end());
      }
      ids = std::move(wrapped);
    }
  }
  return ids;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  TokenDecoder::Stream stream = parts_->decoder.NewStream();
  std::string text;
  for (int32_t id : ids) {
    if (const std::string* token = TokenForDecode(id, skip_special_tokens)) {
      stream.Push(*token, text);
    }
  }
  stream.Finish(text);
  return text;
}

std::optional<int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  if (auto it = parts_->added_ids.find(token); it != parts_->added_ids.end()) return it->second;
  return parts_->model->TokenToId(token);
}

std::optional<absl::string_view> Tokenizer::IdToToken(int32_t id) const {
  if (auto it = parts_->added_tokens.find(id); it != parts_->added_tokens.end()) return it->second;
  if (const std::string* token = parts_->model->IdToToken(id)) return *token;
  return std::nullopt;
}

bool Tokenizer::IsSpecial(int32_t id) const { return parts_->special_ids.contains(id); }

const std::string* Tokenizer::TokenForDecode(int32_t id, bool skip_special_tokens) const {
  if (auto it = parts_->added_tokens.find(id); it != parts_->added_tokens.end()) {
    return skip_special_tokens && IsSpecial(id) ? nullptr : &it->second;
  }
  return parts_->model->IdToToken(id);
}

int32_t Tokenizer::vocab_size() const { return parts_->vocab_size; }
std::optional<int32_t> Tokenizer::bos_id() const { return parts_->bos_id; }
std::optional<int32_t> Tokenizer::eos_id() const { return parts_->eos_id; }
const std::string& Tokenizer::bos_token() const { return parts_->bos_token; }
const std::string& Tokenizer::eos_token() const { return parts_->eos_token; }
const std::string& Tokenizer::chat_template() const { return parts_->chat_template; }
const nlohmann::ordered_json& Tokenizer::template_tokens() const { return parts_->template_tokens; }

TokenStreamDecoder::TokenStreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer),
      skip_special_tokens_(skip_special_tokens),
      stream_(tokenizer.parts_->decoder.NewStream()) {}

std::string TokenStreamDecoder::Push(int32_t id) {
  std::string text;
  if (const std::string* token = tokenizer_.TokenForDecode(id, skip_special_tokens_)) {
    stream_.Push(*token, text);
  }
  return text;
}

std::string TokenStreamDecoder::Finish() {
  std::string text;
  stream_.Finish(text);
  return text;
}

absl::StatusOr<std::optional<Tokenizer>> Tokenizer::FromFiles(
    const std::map<std::string, std::string>& files) {
  auto tok = files.find("tokenizer.json");
  if (tok == files.end()) return std::optional<Tokenizer>();
  auto config = files.find("tokenizer_config.json");
  auto jinja = files.find("chat_template.jinja");
  auto tokenizer = Load(tok->second, config == files.end() ? "" : config->second,
                        jinja == files.end() ? "" : jinja->second);
  if (!tokenizer.ok()) return tokenizer.status();
  return std::optional<Tokenizer>(std::move(*tokenizer));
}

}  // namespace ember::worker
