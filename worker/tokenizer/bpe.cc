// BPE encoding with the exact merge order of Hugging Face tokenizers (models/bpe/word.rs):
// a priority queue of (rank, position) that always applies the lowest-ranked pair that is
// still present, leftmost first, so ids match the reference bit for bit.
#include "worker/tokenizer/bpe.h"

#include <algorithm>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/tokenizer/tokenizer_json.h"
#include "common/utf8.h"

namespace ember::worker {
namespace {

namespace tj = tokenizer_json;
using nlohmann::json;

// One symbol of a word being merged; removed symbols stay in place, unlinked.
struct Symbol {
  int32_t id;
  int prev;  // -1: none
  int next;  // -1: none
  bool removed;
};

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const json& j,
                                                             const std::string& path) {
  std::string type;
  EMBER_ASSIGN_OR_RETURN(type, tj::String(j, path, "type", "BPE"));
  if (type != "BPE") {
    return tj::UnsupportedType(tj::Child(path, "type"), "model", type, "BPE");
  }
  if (const json* dropout = tj::Find(j, "dropout");
      dropout != nullptr && !(dropout->is_number() && dropout->get<double>() == 0.0)) {
    return tj::Error(tj::Child(path, "dropout"),
                     "BPE dropout is not supported (it makes encoding random)");
  }
  auto model = std::unique_ptr<BpeModel>(new BpeModel);
  const json* vocab;
  EMBER_ASSIGN_OR_RETURN(vocab, tj::Object(j, path, "vocab"));
  const std::string vocab_path = tj::Child(path, "vocab");
  model->vocab_.reserve(vocab->size());
  for (const auto& [token, id_json] : vocab->items()) {
    const std::optional<int32_t> id = tj::Id(id_json);
    if (!id) {
      return tj::Error(vocab_path,
                       absl::StrCat("the id of \"", token, "\" must be an integer in [0, 2^31)"));
    }
    model->vocab_[token] = *id;
    if (static_cast<size_t>(*id) >= model->tokens_.size()) model->tokens_.resize(*id + 1);
    model->tokens_[*id] = token;
  }

  EMBER_ASSIGN_OR_RETURN(model->continuing_subword_prefix_,
                         tj::String(j, path, "continuing_subword_prefix", ""));
  EMBER_ASSIGN_OR_RETURN(model->end_of_word_suffix_, tj::String(j, path, "end_of_word_suffix", ""));
  EMBER_ASSIGN_OR_RETURN(model->fuse_unk_, tj::Bool(j, path, "fuse_unk", false));
  EMBER_ASSIGN_OR_RETURN(model->byte_fallback_, tj::Bool(j, path, "byte_fallback", false));
  EMBER_ASSIGN_OR_RETURN(model->ignore_merges_, tj::Bool(j, path, "ignore_merges", false));
  std::string unk;
  EMBER_ASSIGN_OR_RETURN(unk, tj::String(j, path, "unk_token", ""));
  if (!unk.empty()) {
    auto it = model->vocab_.find(unk);
    if (it == model->vocab_.end()) {
      return tj::Error(tj::Child(path, "unk_token"),
                       absl::StrCat("\"", unk, "\" is not in the vocabulary"));
    }
    model->unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = model->vocab_.find(absl::StrFormat("<0x%02X>", b));
    model->byte_ids_[b] = it == model->vocab_.end() ? -1 : it->second;
  }

  const json* merges;
  EMBER_ASSIGN_OR_RETURN(merges, tj::Array(j, path, "merges"));
  const std::string merges_path = tj::Child(path, "merges");
  const size_t prefix_len = model->continuing_subword_prefix_.size();
  model->merges_.reserve(merges->size());
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const json& m = (*merges)[rank];
    std::string left, right;
    if (m.is_string()) {  // "a b", the older format
      const std::string line = m.get<std::string>();
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        return tj::Error(tj::Element(merges_path, rank),
                         absl::StrCat("\"", line, "\" is not two tokens separated by one space"));
      }
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return tj::Error(tj::Element(merges_path, rank), "must be \"a b\" or [\"a\", \"b\"]");
    }
    const std::string merged = left + right.substr(std::min(prefix_len, right.size()));
    int32_t ids[3];
    const std::string* parts[3] = {&left, &right, &merged};
    for (int k = 0; k < 3; ++k) {
      auto it = model->vocab_.find(*parts[k]);
      if (it == model->vocab_.end()) {
        return tj::Error(tj::Element(merges_path, rank),
                         absl::StrCat("token \"", *parts[k], "\" is not in the vocabulary"));
      }
      ids[k] = it->second;
    }
    // As in Hugging Face's map, a repeated pair keeps its last rank.
    model->merges_[PairKey(ids[0], ids[1])] = Merge{static_cast<uint32_t>(rank), ids[2]};
  }
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(absl::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= tokens_.size() || !tokens_[id]) return nullptr;
  return &*tokens_[id];
}

void BpeModel::Encode(absl::string_view word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() < kCacheMaxWordBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&cache_mu_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> encoded = EncodeUncached(word);
  ids.insert(ids.end(), encoded.begin(), encoded.end());
  if (cacheable) {
    absl::MutexLock lock(&cache_mu_);
    if (cache_.size() >= kCacheEntries) cache_.clear();
    cache_.emplace(word, std::move(encoded));
  }
}

std::vector<int32_t> BpeModel::EncodeUncached(absl::string_view word) const {
  // 1. One symbol per character (HF's merge_word), with the subword prefix and suffix,
  //    byte fallback, and the unknown token (fused when fuse_unk).
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&symbols](int32_t id) {
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({id, index - 1, -1, false});
    if (index > 0) symbols[index - 1].next = index;
  };
  int32_t pending_unk = -1;  // an unknown token not yet added (-1: none)
  std::string piece;
  for (size_t pos = 0; pos < word.size();) {
    const size_t begin = pos;
    utf8::Next(word, pos);
    piece.assign(word.data() + begin, pos - begin);
    if (begin > 0) piece.insert(0, continuing_subword_prefix_);
    if (pos == word.size()) piece.append(end_of_word_suffix_);
    if (auto it = vocab_.find(piece); it != vocab_.end()) {
      if (pending_unk >= 0) add(pending_unk);
      pending_unk = -1;
      add(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes = true;
      for (char b : piece) all_bytes = all_bytes && byte_ids_[static_cast<uint8_t>(b)] >= 0;
      if (all_bytes) {
        // HF leaves a pending unknown token in place here; it is emitted later.
        for (char b : piece) add(byte_ids_[static_cast<uint8_t>(b)]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
      pending_unk = *unk_id_;
    }
    // Without an unknown token the character is dropped, as HF does.
  }
  if (pending_unk >= 0) add(pending_unk);

  // 2. Merge the lowest-ranked adjacent pair, leftmost first, until none applies.
  struct Candidate {
    uint32_t rank;
    int pos;
    int32_t merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto consider = [&](int pos) {
    const int next = symbols[pos].next;
    if (next < 0) return;
    auto it = merges_.find(PairKey(symbols[pos].id, symbols[next].id));
    if (it != merges_.end()) queue.push({it->second.rank, pos, it->second.merged});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Skip entries made stale by earlier merges.
    auto it = merges_.find(PairKey(left.id, right.id));
    if (it == merges_.end() || it->second.merged != top.merged) continue;
    left.id = top.merged;
    right.removed = true;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  std::vector<int32_t> ids;
  for (const Symbol& s : symbols) {
    if (!s.removed) ids.push_back(s.id);
  }
  return ids;
}

}  // namespace ember::worker
