// Linear layers y = x · Wᵀ (+ bias) for decode: Ember's skinny GEMM over BF16/F16/F32
// weights, plus the bias add of the cuBLAS prefill path (in cuda_backend.cc; its activations
// are converted by convert.cu).
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace ember::kernels {
namespace {

// Decode is bound by reading the weights, so the kernel streams every weight row from memory
// once per tile of up to 8 tokens, with 16-byte loads, and keeps everything else on chip:
// the tile's x in shared memory, one FP32 accumulator per (row, token) in registers.
constexpr int kGemvWarps = 8;
constexpr int kGemvThreads = kGemvWarps * 32;
constexpr int kGemvRowsPerWarp = 2;  // each x read from shared memory feeds two rows
constexpr int kGemvRowsPerBlock = kGemvWarps * kGemvRowsPerWarp;
constexpr int kGemvMaxTileTokens = 8;
constexpr int kGemvStageFloats = 8192;  // 32 KiB: x[tile tokens, stage columns]

// Eight floats of x from shared memory as two float4 reads. The 8 lanes that share a
// shared-memory wavefront read 32-byte chunks 32 bytes apart, which would put lanes l and
// l + 4 on the same banks; lanes 4-7 of each group read the halves in the other order.
template <int V>
__device__ __forceinline__ void LoadStagedX(const float* p, int lane, float (&out)[V]) {
  if constexpr (V == 4) {
    const float4 a = *reinterpret_cast<const float4*>(p);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
  } else {
    const int first = (lane >> 2) & 1;
    const float4 a = *reinterpret_cast<const float4*>(p + 4 * first);
    const float4 b = *reinterpret_cast<const float4*>(p + 4 * (first ^ 1));
    const float4 lo = first ? b : a, hi = first ? a : b;
    out[0] = lo.x, out[1] = lo.y, out[2] = lo.z, out[3] = lo.w;
    out[4] = hi.x, out[5] = hi.y, out[6] = hi.z, out[7] = hi.w;
  }
}

// Block (blockIdx.x, blockIdx.y): weight rows [16 * blockIdx.x, +16) (two per warp) for
// tokens [NT * blockIdx.y, +NT). The columns go in stages of kGemvStageFloats / NT: the
// block stages x for them in shared memory, then each warp runs along its two rows, lane l
// taking 16-byte vectors l, l + 32, ... With kVector false (a row start not 16-byte
// aligned: cols * sizeof(W) % 16 != 0 or an unaligned w) every lane loads single elements
// instead. FP32 accumulation in a fixed order; a warp reduction at the end.
template <typename W, int NT, bool kVector>
__global__ void __launch_bounds__(kGemvThreads)
    linear_gemv_kernel(const float* __restrict__ x,     // [n, cols]
                       const W* __restrict__ w,         // [rows, cols]
                       const float* __restrict__ bias,  // [rows] or null
                       float* __restrict__ y,           // [n, rows]
                       int n, int64_t rows, int cols) {
  constexpr int kStageCols = kGemvStageFloats / NT;  // a multiple of every vector width
  constexpr int V = kVectorElems<W>;
  constexpr int R = kGemvRowsPerWarp;
  __shared__ __align__(16) float xs[kGemvStageFloats];  // [NT, kStageCols]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t0 = blockIdx.y * NT;
  const int nt = min(NT, n - t0);
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp) * R;
  // A row past the end reads the last row again (in bounds) and is never written.
  const W* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) wrow[r] = w + min(row0 + r, rows - 1) * cols;
  float acc[R][NT] = {};

  for (int k0 = 0; k0 < cols; k0 += kStageCols) {
    const int len = min(kStageCols, cols - k0);
    __syncthreads();  // every warp is done with the previous stage
    for (int t = 0; t < nt; ++t) {
      const float* src = x + static_cast<int64_t>(t0 + t) * cols + k0;
      for (int c = threadIdx.x; c < len; c += kGemvThreads) xs[t * kStageCols + c] = src[c];
    }
    __syncthreads();

    int scalar_from = 0;
    if constexpr (kVector) {
      // cols % V == 0, so len is a whole number of vectors. Small tiles unroll twice to
      // keep more weight loads in flight; 8-token tiles already do 64 FMAs per 16-byte load.
      constexpr int kUnroll = NT <= 4 ? 2 : 1;
#pragma unroll kUnroll
      for (int c = lane * V; c < len; c += 32 * V) {
        float wf[R][V];
#pragma unroll
        for (int r = 0; r < R; ++r) LoadVector(wrow[r] + k0 + c, wf[r]);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          if (t < nt) {
            float xv[V];
            LoadStagedX<V>(xs + t * kStageCols + c, lane, xv);
#pragma unroll
            for (int r = 0; r < R; ++r) {
#pragma unroll
              for (int i = 0; i < V; ++i) acc[r][t] = fmaf(wf[r][i], xv[i], acc[r][t]);
            }
          }
        }
      }
      scalar_from = len;
    }
    for (int c = scalar_from + lane; c < len; c += 32) {
      float wf[R];
#pragma unroll
      for (int r = 0; r < R; ++r) wf[r] = ToFloat(wrow[r][k0 + c]);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (t < nt) {
          const float xv = xs[t * kStageCols + c];
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r][t] = fmaf(wf[r], xv, acc[r][t]);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t row = row0 + r;
    const float add = (bias != nullptr && row < rows) ? bias[row] : 0.0f;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float sum = WarpSum(acc[r][t]);
      if (lane == 0 && t < nt && row < rows) {
        y[static_cast<int64_t>(t0 + t) * rows + row] = sum + add;
      }
    }
  }
}

__global__ void add_bias_kernel(float* __restrict__ y,           // [n, rows]
                                const float* __restrict__ bias,  // [rows]
                                int64_t count, int64_t rows) {
  for (int64_t i = GlobalThreadIndex(); i < count; i += GlobalThreadCount()) y[i] += bias[i % rows];
}

template <typename W, int NT>
cudaError_t LaunchGemvTiles(const float* x, int n, const W* w, int64_t rows, int cols,
                            const float* bias, float* y, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((rows + kGemvRowsPerBlock - 1) / kGemvRowsPerBlock),
                  static_cast<unsigned>((n + NT - 1) / NT));
  const bool vector = reinterpret_cast<uintptr_t>(w) % 16 == 0 && cols % kVectorElems<W> == 0;
  if (vector) {
    return LaunchKernel<linear_gemv_kernel<W, NT, true>>(grid, kGemvThreads, 0, stream, x, w, bias,
                                                         y, n, rows, cols);
  }
  return LaunchKernel<linear_gemv_kernel<W, NT, false>>(grid, kGemvThreads, 0, stream, x, w, bias, y,
                                                        n, rows, cols);
}

}  // namespace

// ---- launchers ---------------------------------------------------------------------------

// Tiles of 8 tokens (fewer when n < 8: 1, 2 or 4); every tile is one grid row, so tiles run
// concurrently and the weights of the second and later tiles mostly come from L2. Assumes
// rows and cols below 2^31, n below 8 * 65536, and x rows of cols floats.
cudaError_t LaunchLinearGemv(const float* x, int n, const void* w, ScalarType type, int64_t rows,
                             int64_t cols, const float* bias, float* y, cudaStream_t stream) {
  if (n < 0 || rows < 0 || cols < 0 || rows > INT_MAX || cols > INT_MAX ||
      (n + kGemvMaxTileTokens - 1) / kGemvMaxTileTokens > 65535) {
    return cudaErrorInvalidValue;
  }
  if (n == 0 || rows == 0) return cudaSuccess;
  const int tile = n >= 5 ? 8 : n >= 3 ? 4 : n;
  const int c = static_cast<int>(cols);
  return DispatchScalarType(type, [&](auto tag) {
    using W = typename decltype(tag)::type;
    const W* wt = static_cast<const W*>(w);
    switch (tile) {
      case 1:
        return LaunchGemvTiles<W, 1>(x, n, wt, rows, c, bias, y, stream);
      case 2:
        return LaunchGemvTiles<W, 2>(x, n, wt, rows, c, bias, y, stream);
      case 4:
        return LaunchGemvTiles<W, 4>(x, n, wt, rows, c, bias, y, stream);
      default:
        return LaunchGemvTiles<W, 8>(x, n, wt, rows, c, bias, y, stream);
    }
  });
}

cudaError_t LaunchAddBias(float* y, const float* bias, int n, int64_t rows, cudaStream_t stream) {
  if (n < 0 || rows < 0) return cudaErrorInvalidValue;
  const int64_t count = static_cast<int64_t>(n) * rows;
  if (count == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  return LaunchKernel<add_bias_kernel>(GridStrideBlocks(count, kThreads), kThreads, 0, stream, y,
                                       bias, count, rows);
}

}  // namespace ember::kernels
