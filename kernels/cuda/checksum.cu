// Device byte checksum: a grid-stride reduction of byte[i] * (i % 65521 + 1).
#include "kernels/checksum.h"
#include "kernels/cuda/common.cuh"

namespace ember::kernels {
namespace {

__global__ void byte_checksum_kernel(const uint8_t* data, size_t n, unsigned long long* out) {
  unsigned long long local = 0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    local += static_cast<unsigned long long>(data[i]) * (i % 65521 + 1);
  }
  // Warp reduction, then one atomic per warp (wraparound arithmetic is associative).
  for (int offset = 16; offset > 0; offset /= 2) local += __shfl_down_sync(0xffffffffu, local, offset);
  if ((threadIdx.x & 31) == 0) atomicAdd(out, local);
}

}  // namespace

bool ByteChecksumDevice(const void* device_data, size_t n, uint64_t* out) {
  unsigned long long* sum = nullptr;
  if (cudaMalloc(&sum, sizeof(*sum)) != cudaSuccess) return false;
  bool ok = cudaMemset(sum, 0, sizeof(*sum)) == cudaSuccess;
  if (ok && n > 0) {
    ok = LaunchKernel<byte_checksum_kernel>(1024, 256, 0, nullptr,
                                            static_cast<const uint8_t*>(device_data), n,
                                            sum) == cudaSuccess;
  }
  unsigned long long host = 0;
  ok = ok && cudaMemcpy(&host, sum, sizeof(host), cudaMemcpyDeviceToHost) == cudaSuccess;
  cudaFree(sum);
  if (ok) *out = host;
  return ok;
}

}  // namespace ember::kernels
