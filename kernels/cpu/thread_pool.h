// The CPU backend's threads: one pool for the process. A parallel loop splits [0, n) into
// one contiguous chunk per thread, which the threads, the caller among them, claim.
//
// Hand-written rather than OpenMP because libgomp's idle threads spin for a long time before
// they sleep, and it reads how long only from the environment when it is loaded, before
// main(). Where the worker shares its cores (a pod without dedicated CPUs) that spinning
// fought the other process for the same cores: time to first token went from 0.24 s to 3.0 s
// with two busy processes on this 2-core machine. These threads spin about 200 us after a
// loop (the next loop of a step comes sooner) and then sleep on a futex until woken; and as
// chunks are claimed, not assigned, a thread still asleep or descheduled does not hold up
// the others.
#pragma once

#include <cstdint>
#include <functional>

namespace ember::kernels::cpu {

// CPUs this process may use: its affinity mask, capped by the cgroup's CPU quota (rounded
// up), as a Kubernetes CPU limit sets it. At least 1.
int AvailableCpus();

// The number of threads the pool will have (0: AvailableCpus()); call before the first
// ParallelFor. Returns false once the pool exists.
bool SetThreads(int threads);
int Threads();

// Runs fn(begin, end) over contiguous chunks covering [0, n); returns when all are done.
// Loops from several threads run one after the other.
void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace ember::kernels::cpu
