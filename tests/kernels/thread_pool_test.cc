// The CPU backend's thread pool: every index exactly once, whatever the size, from several
// calling threads at once; and the CPU count it sizes itself by.
#include "kernels/cpu/thread_pool.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <thread>
#include <vector>

namespace ember::kernels::cpu {
namespace {

TEST(ThreadPool, EveryIndexExactlyOnceInContiguousChunks) {
  for (int64_t n : {0, 1, 2, 3, 7, 16, 17, 1000, 100003}) {
    std::vector<std::atomic<int>> hits(n);
    std::atomic<int64_t> calls{0};
    ParallelFor(n, [&](int64_t begin, int64_t end) {
      ASSERT_LE(0, begin);
      ASSERT_LT(begin, end);
      ASSERT_LE(end, n);
      calls.fetch_add(1);
      for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
    if (n > 0) EXPECT_GE(calls.load(), 1);
  }
}

TEST(ThreadPool, LoopsFromSeveralThreadsDoNotMix) {
  constexpr int kCallers = 4, kLoops = 200;
  std::vector<std::thread> callers;
  std::atomic<int> wrong{0};
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int loop = 0; loop < kLoops; ++loop) {
        const int64_t n = 1 + (c * 131 + loop * 17) % 257;
        std::vector<int> hits(n, 0);  // written by the loop's own chunks only
        ParallelFor(n, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) ++hits[i];
        });
        for (int h : hits) wrong += h != 1;
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(ThreadPool, SizedByTheCpusThisProcessMayUse) {
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  EXPECT_GE(AvailableCpus(), 1);
  EXPECT_LE(AvailableCpus(), CPU_COUNT(&set));
  EXPECT_GE(Threads(), 1);
  EXPECT_FALSE(SetThreads(3)) << "the pool exists: its size can no longer change";
}

}  // namespace
}  // namespace ember::kernels::cpu
