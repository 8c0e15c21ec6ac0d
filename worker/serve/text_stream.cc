#include "worker/serve/text_stream.h"

#include <algorithm>

namespace ember::worker {

StopTextStream::StopTextStream(const Tokenizer& tokenizer, std::vector<std::string> stops)
    : decoder_(tokenizer, /*skip_special_tokens=*/true), stops_(std::move(stops)) {}

StopTextStream::Delta StopTextStream::Push(int32_t id, bool match_stops) {
  Delta delta;
  if (stopped_) return delta;
  pending_ += decoder_.Push(id);
  if (!match_stops) {
    delta.text = std::move(pending_);
    pending_.clear();
    return delta;
  }
  // The earliest stop string in the pending text wins. A match cannot begin in text
  // already released: a suffix that could begin one is always held back.
  size_t first = std::string::npos;
  for (const std::string& stop : stops_) first = std::min(first, pending_.find(stop));
  if (first != std::string::npos) {
    delta.text = pending_.substr(0, first);
    delta.stopped = stopped_ = true;
    pending_.clear();
    return delta;
  }
  delta.text = ReleaseSafePrefix();
  return delta;
}

std::string StopTextStream::Finish() {
  if (stopped_) return "";
  std::string rest = std::move(pending_) + decoder_.Finish();
  pending_.clear();
  // The flushed tail (U+FFFD for a broken character) may itself complete a stop string.
  for (const std::string& stop : stops_) {
    if (size_t at = rest.find(stop); at != std::string::npos) rest.resize(at);
  }
  return rest;
}

std::string StopTextStream::ReleaseSafePrefix() {
  // Longest suffix of pending_ that is a proper prefix of some stop string. Stop strings
  // are well-formed UTF-8, so such a suffix starts on a character boundary.
  size_t hold = 0;
  for (const std::string& stop : stops_) {
    const size_t longest = std::min(stop.size() - 1, pending_.size());
    for (size_t n = longest; n > hold; --n) {
      if (pending_.compare(pending_.size() - n, n, stop, 0, n) == 0) {
        hold = n;
        break;
      }
    }
  }
  std::string released = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return released;
}

}  // namespace ember::worker
