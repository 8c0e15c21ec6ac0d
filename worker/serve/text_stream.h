// The text of a generated stream: each token's text as it completes (never splitting a
// UTF-8 character) with stop strings applied. Text that could be the beginning of a stop
// string is held back until it is known not to be one; when a stop string appears, the
// text before it is released and everything from it on is dropped.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "worker/tokenizer/tokenizer.h"

namespace ember::worker {

class StopTextStream {
 public:
  // `stops` must be non-empty, well-formed UTF-8 strings (the service checks).
  StopTextStream(const Tokenizer& tokenizer, std::vector<std::string> stops);

  struct Delta {
    std::string text;      // text released by this token
    bool stopped = false;  // a stop string completed; `text` ends just before it
  };
  // Adds the next token; after a stop nothing more is released. With `match_stops` false
  // (before min_tokens) stop strings are not looked for and nothing is held back.
  Delta Push(int32_t id, bool match_stops = true);
  // The end of the stream: the text still held back (an incomplete character becomes
  // U+FFFD, as in Tokenizer::Decode).
  std::string Finish();

 private:
  // Releases pending_ up to the longest suffix that could still begin a stop string.
  std::string ReleaseSafePrefix();

  TokenStreamDecoder decoder_;
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace ember::worker
