// tokenizer.json's "model" of type BPE: vocabulary, ranked merges, byte fallback and the
// unknown token, encoding one pre-tokenized word at a time with a bounded word cache.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"

namespace ember::worker {

class BpeModel {
 public:
  // Reads tokenizer.json's "model" object (`path` names it in errors). Merges may be
  // written as "a b" strings or as [a, b] pairs.
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& model,
                                                            const std::string& path);

  // Appends the ids of one pre-tokenized word to `ids`. Thread-safe.
  void Encode(absl::string_view word, std::vector<int32_t>& ids) const;

  std::optional<int32_t> TokenToId(absl::string_view token) const;
  // The token of `id`; nullptr when the vocabulary has no such id.
  const std::string* IdToToken(int32_t id) const;
  // One past the largest id of the vocabulary.
  int32_t id_end() const { return static_cast<int32_t>(tokens_.size()); }

 private:
  // A merge of the pair (left, right): its rank (lower merges first) and the merged id.
  struct Merge {
    uint32_t rank;
    int32_t merged;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  BpeModel() = default;
  std::vector<int32_t> EncodeUncached(absl::string_view word) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::optional<std::string>> tokens_;  // [id_end()]; gaps are nullopt
  absl::flat_hash_map<uint64_t, Merge> merges_;
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_;  // the id of "<0xXX>" for each byte; -1 when absent

  // Words already encoded. Bounded: cleared when it reaches kCacheEntries, and words of
  // kCacheMaxWordBytes or more are not kept (as Hugging Face's BPE cache does).
  static constexpr size_t kCacheEntries = 10000;
  static constexpr size_t kCacheMaxWordBytes = 256;
  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace ember::worker
