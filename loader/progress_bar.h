// A one-line terminal progress bar for long loads (bytes, throughput, ETA), drawn on
// stderr only when stderr is a terminal.
#pragma once

#include <cstdint>
#include <string>

namespace ember::loader {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  // Redraws at most ten times a second (always when done == total).
  void Update(uint64_t done, uint64_t total, double seconds);
  // Ends the line.
  void Finish();
  bool enabled() const { return enabled_; }

 private:
  std::string label_;
  bool enabled_;
  double last_draw_s_ = -1;
  bool drawn_ = false;
};

// "1.23 GB", "512.0 MB", "17 B": decimal units, as throughput is quoted in GB/s.
std::string HumanBytes(uint64_t bytes);

}  // namespace ember::loader
