// Exponential backoff with full jitter for transient storage errors, within a bounded
// budget of attempts and time.
#pragma once

#include <algorithm>
#include <cmath>
#include <random>

namespace ember::loader {

struct RetryPolicy {
  int max_attempts = 10;       // per request, the first try included
  double base_delay_s = 0.1;   // first backoff ceiling
  double max_delay_s = 5.0;    // ceiling for any single backoff
  double stall_timeout_s = 30; // no byte for this long counts as a stalled connection
};

// Full jitter (a uniform delay below an exponentially growing ceiling) keeps many
// workers that failed together from retrying together.
inline double BackoffSeconds(const RetryPolicy& policy, int failed_attempts, std::mt19937_64& rng) {
  const double ceiling =
      std::min(policy.max_delay_s, policy.base_delay_s * std::pow(2.0, failed_attempts - 1));
  return std::uniform_real_distribution<double>(0.0, ceiling)(rng);
}

}  // namespace ember::loader
