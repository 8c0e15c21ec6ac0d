// The CUDA emulation itself: each behaviour it claims (docs/architecture.md, "The CUDA
// emulation") shown on a small kernel or runtime call that gets it wrong. Built in the
// emulated build only, as C++ like the project's kernels.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cuda/common.cuh"

namespace ember::kernels {
namespace {

// out[i] = what thread i reads from its neighbour's shared slot, with or without the
// barrier between the writes and the reads.
template <bool kBarrier>
__global__ void neighbour_kernel(int* out) {
  __shared__ int slots[128];
  slots[threadIdx.x] = static_cast<int>(threadIdx.x) + 1000 * static_cast<int>(blockIdx.x);
  if (kBarrier) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

std::vector<int> RunNeighbours(bool barrier, int blocks) {
  const int threads = 128, n = blocks * threads;
  int* out = nullptr;
  EXPECT_EQ(cudaMalloc(&out, n * sizeof(int)), cudaSuccess);
  const cudaError_t e = barrier ? LaunchKernel<neighbour_kernel<true>>(blocks, threads, 0, nullptr, out)
                                : LaunchKernel<neighbour_kernel<false>>(blocks, threads, 0, nullptr, out);
  EXPECT_EQ(e, cudaSuccess);
  std::vector<int> host(n);
  EXPECT_EQ(cudaMemcpy(host.data(), out, n * sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(out);
  return host;
}

TEST(CudaEmulation, AMissingBarrierReadsStaleSharedMemory) {
  const int blocks = 4;
  auto expected = [](int b, int t) { return (t + 1) % 128 + 1000 * b; };
  const std::vector<int> with = RunNeighbours(true, blocks);
  for (int i = 0; i < blocks * 128; ++i) ASSERT_EQ(with[i], expected(i / 128, i % 128)) << i;
  const std::vector<int> without = RunNeighbours(false, blocks);
  int stale = 0;
  for (int i = 0; i < blocks * 128; ++i) stale += without[i] != expected(i / 128, i % 128);
  EXPECT_GT(stale, 0) << "threads ran in an order that hid the missing __syncthreads";
}

// Lane 0 leaves; the others then shuffle with a full mask: undefined on a GPU.
__global__ void exited_lane_kernel(float* out) {
  if (threadIdx.x == 0) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Half of a warp waits at a barrier, the other half at a shuffle that needs the first half.
// (A barrier that only some threads reach while the rest exit releases, as on a GPU, whose
// barriers count exited threads as arrived.)
__global__ void divergent_barrier_kernel(float* out) {
  float v = 1;
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  }
  out[threadIdx.x] = v;
}

void LaunchAndSync(void (*launch)(float*)) {
  float* out = nullptr;
  cudaMalloc(&out, 64 * sizeof(float));
  launch(out);
  cudaDeviceSynchronize();
}

// Death tests re-run the binary ("threadsafe"): a forked child would lack the streams'
// threads.
TEST(CudaEmulationDeathTest, AWarpOperationWaitingForAnExitedLaneIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(LaunchAndSync([](float* out) {
                 LaunchKernel<exited_lane_kernel>(1, 32, 0, nullptr, out);
               }),
               "exited_lane_kernel.*__shfl_xor_sync with mask 0xffffffff.*lane 0 of the mask has "
               "exited");
}

TEST(CudaEmulationDeathTest, ABarrierAndAWarpOperationWaitingForEachOtherDeadlock) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(LaunchAndSync([](float* out) {
                 LaunchKernel<divergent_barrier_kernel>(1, 32, 0, nullptr, out);
               }),
               "divergent_barrier_kernel.*deadlock");
}

__global__ void dynamic_shared_kernel(float* out) {
  EMBER_DYNAMIC_SHARED(float, scratch);
  scratch[threadIdx.x] = 1;
  out[threadIdx.x] = scratch[threadIdx.x];
}

TEST(CudaEmulation, LaunchesOutsideSm80AndSm90LimitsFailAsOnAGpu) {
  float* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, 2048 * sizeof(float)), cudaSuccess);
  EXPECT_EQ((LaunchKernel<dynamic_shared_kernel>(1, 1025, 0, nullptr, out)),
            cudaErrorInvalidConfiguration);
  EXPECT_EQ((LaunchKernel<dynamic_shared_kernel>(dim3(1, 65536), 32, 0, nullptr, out)),
            cudaErrorInvalidConfiguration);
  // Above 48 KiB of dynamic shared memory only after the opt-in, and never past sm_80's
  // 163 KiB.
  EXPECT_EQ((LaunchKernel<dynamic_shared_kernel>(1, 32, 64 << 10, nullptr, out)),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 200 << 10),
            cudaErrorInvalidValue);
  (void)cudaGetLastError();
  ASSERT_EQ(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 64 << 10),
            cudaSuccess);
  EXPECT_EQ((LaunchKernel<dynamic_shared_kernel>(1, 32, 64 << 10, nullptr, out)), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaFree(out);
}

TEST(CudaEmulation, AnAsynchronousCopyLandsOnlyAfterTheStreamIsWaitedFor) {
  setenv("EMBER_CUDA_EMULATION_COPY_DELAY_US", "20000", 1);  // read at every copy
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  const size_t n = 1 << 20;
  void *device = nullptr, *source = nullptr, *result = nullptr;
  ASSERT_EQ(cudaMalloc(&device, n), cudaSuccess);
  ASSERT_EQ(cudaHostAlloc(&source, n, cudaHostAllocDefault), cudaSuccess);
  ASSERT_EQ(cudaHostAlloc(&result, n, cudaHostAllocDefault), cudaSuccess);
  std::memset(source, 7, n);
  std::memset(result, 0, n);
  ASSERT_EQ(cudaMemcpyAsync(device, source, n, cudaMemcpyHostToDevice, stream), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(result, device, n, cudaMemcpyDeviceToHost, stream), cudaSuccess);
  EXPECT_EQ(static_cast<unsigned char*>(result)[n - 1], 0) << "the result came before any wait";
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(static_cast<unsigned char*>(result)[n - 1], 7);
  unsetenv("EMBER_CUDA_EMULATION_COPY_DELAY_US");
  cudaFreeHost(result);
  cudaFreeHost(source);
  cudaFree(device);
  cudaStreamDestroy(stream);
}

// A staging buffer written again while its copy is still queued.
void ReuseBeforeTheCopyRan() {
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  void *device = nullptr, *pinned = nullptr;
  cudaMalloc(&device, 4096);
  cudaHostAlloc(&pinned, 4096, cudaHostAllocDefault);
  std::memset(pinned, 1, 4096);
  cudaMemcpyAsync(device, pinned, 4096, cudaMemcpyHostToDevice, stream);
  std::memset(pinned, 2, 4096);
  cudaStreamSynchronize(stream);
}

TEST(CudaEmulationDeathTest, ReusingAPinnedSourceBeforeItsCopyRanIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(ReuseBeforeTheCopyRan(), "the host wrote to the source after the copy was queued");
}

TEST(CudaEmulation, CopiesAndLaunchesNamingMemoryOutsideTheDeviceAreRefused) {
  std::vector<char> host(64);
  void* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, 32), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(device, host.data(), 64, cudaMemcpyHostToDevice), cudaErrorInvalidValue)
      << "64 bytes into a 32-byte allocation";
  EXPECT_EQ(cudaMemcpy(host.data(), host.data() + 32, 16, cudaMemcpyDeviceToHost),
            cudaErrorInvalidValue);
  (void)cudaGetLastError();
  cudaFree(device);
}

}  // namespace
}  // namespace ember::kernels
