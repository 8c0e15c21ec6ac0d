// Terminal progress bar.
#include "loader/progress_bar.h"

#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_format.h"

namespace ember::loader {

std::string HumanBytes(uint64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1e9) return absl::StrFormat("%.2f GB", b / 1e9);
  if (b >= 1e6) return absl::StrFormat("%.1f MB", b / 1e6);
  if (b >= 1e3) return absl::StrFormat("%.1f kB", b / 1e3);
  return absl::StrFormat("%d B", bytes);
}

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)), enabled_(isatty(STDERR_FILENO) == 1) {}

void ProgressBar::Update(uint64_t done, uint64_t total, double seconds) {
  if (!enabled_) return;
  if (done != total && seconds - last_draw_s_ < 0.1) return;
  last_draw_s_ = seconds;
  constexpr int kWidth = 30;
  const double fraction = total == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total);
  const int filled = static_cast<int>(fraction * kWidth);
  std::string bar(static_cast<size_t>(filled), '=');
  if (filled < kWidth) bar += '>';
  bar.resize(kWidth, ' ');
  const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0;
  std::string eta = "";
  if (rate > 0 && done < total) {
    eta = absl::StrFormat("  ETA %.0fs", static_cast<double>(total - done) / rate);
  }
  std::fprintf(stderr, "\r%s [%s] %s / %s  %s/s%s\033[K", label_.c_str(), bar.c_str(),
               HumanBytes(done).c_str(), HumanBytes(total).c_str(),
               HumanBytes(static_cast<uint64_t>(rate)).c_str(), eta.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::Finish() {
  if (enabled_ && drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

}  // namespace ember::loader
