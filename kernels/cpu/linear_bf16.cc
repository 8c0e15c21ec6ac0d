// The CPU linear layer in BF16 compute precision (cpu_backend.h, ComputePrecision::kBf16):
// y = x · Wᵀ for BF16 weights with the activations rounded to BF16 and FP32 accumulation.
//
// Two paths, chosen by the number of tokens (the crossover measured on a 2-vCPU Zen 4 is at
// kLibraryGemmTokens below; end-to-end figures in docs/benchmarks.md):
//   - fewer than kLibraryGemmTokens (decode, small batches): Ember's own loop, which reads
//     each weight row once for every token of the step and multiplies with the CPU's BF16
//     dot-product instruction (AVX-512 BF16 vdpbf16ps: 32 products per instruction, twice
//     the FP32 FMA's 16, and no conversion of the weights in registers);
//   - from kLibraryGemmTokens on (prefill, large batches): oneDNN's BF16 matmul, a GEMM
//     blocked for the caches, which the loop above cannot match once the weights are reused
//     across many tokens. OpenBLAS was the other candidate: Debian's build (0.3.21) has no
//     BF16 GEMM (cblas_sbgemm is not exported).
// oneDNN reads the weights in the layout they were loaded in (a transposed view): blocking
// them for its fastest kernel would cost a pass over every weight during the cold start and
// is what its plain-layout GEMM does per call, in cache-sized pieces, anyway.
//
// Threads: the pool's threads each run oneDNN single-threaded on their own slice of weight
// rows. Debian's oneDNN is built on OpenMP, whose idle threads spin (thread_pool.h says why
// that is avoided); with one OpenMP thread per caller, OpenMP never starts a thread.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"
#include "oneapi/dnnl/dnnl.hpp"

// GCC 12 warns that _mm512_reduce_add_ps reads an uninitialized variable (its own).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace ember::kernels::cpu {
namespace {

// Below this many tokens Ember's loop is faster than oneDNN's GEMM on the plain layout.
// Measured on an 8192 x 2048 BF16 matrix, both threads (ms; Ember's loop / oneDNN):
// 8 tokens 2.9 / 3.7, 12 tokens 4.2 / 4.3, 16 tokens 5.0-6.1 / 4.2-5.0, 64 tokens 28 / 8.8.
constexpr int kLibraryGemmTokens = 10;
// Threads split the weight rows in blocks of this many (oneDNN's GEMM works on 64-column
// panels of its N).
constexpr int kRowsPerSlice = 64;
constexpr int kTokenTile = 8;  // tokens sharing each weight load in Ember's loop

#define EMBER_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// x [n, cols] F32 -> xb [n, padded] BF16 (round to nearest even), zero-padded to a multiple
// of 32 columns so that Ember's loop reads whole vectors of x.
EMBER_BF16_TARGET void RoundRowsToBf16(const float* x, int64_t cols, int64_t padded, int64_t begin,
                                       int64_t end, uint16_t* xb) {
  for (int64_t t = begin; t < end; ++t) {
    const float* src = x + t * cols;
    uint16_t* dst = xb + t * padded;
    for (int64_t c = 0; c < padded; c += 32) {
      const int64_t left = std::min<int64_t>(32, cols - c);
      const __mmask16 lo = left >= 16 ? 0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
      const __mmask16 hi = left >= 32  ? 0xFFFF
                           : left > 16 ? (__mmask16)((1u << (left - 16)) - 1)
                                       : 0;
      const __m512 a = _mm512_maskz_loadu_ps(lo, src + c);
      const __m512 b = _mm512_maskz_loadu_ps(hi, src + c + 16);
      _mm512_storeu_si512(dst + c, (__m512i)_mm512_cvtne2ps_pbh(b, a));
    }
  }
}

// y[t, r] for NT tokens and R weight rows from `r0`: per 32 columns, R weight vectors and
// NT activation vectors are loaded for R * NT dot products (vdpbf16ps, FP32 accumulation), so
// loads do not bound the loop; the R * NT accumulators stay in registers (one loop body, the
// row's last columns masked, keeps GCC from spilling them).
template <int NT, int R>
EMBER_BF16_TARGET inline void Tile(const uint16_t* xb, int64_t padded, const Matrix& w,
                                   const float* bias, float* y, int64_t r0) {
  const int64_t cols = w.cols;
  const uint16_t* wrow = static_cast<const uint16_t*>(w.data) + r0 * cols;
  __m512 acc[R][NT];
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j) {
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[j][t] = _mm512_setzero_ps();
  }
  for (int64_t c = 0; c < cols; c += 32) {
    const __mmask32 mask =
        c + 32 <= cols ? ~__mmask32{0} : (__mmask32)((uint64_t{1} << (cols - c)) - 1);
    __m512bh wv[R];
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j)
      wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mask, wrow + j * cols + c);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + t * padded + c);
#pragma GCC unroll 4
      for (int j = 0; j < R; ++j) acc[j][t] = _mm512_dpbf16_ps(acc[j][t], xv, wv[j]);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j) {
    const float add = bias != nullptr ? bias[r0 + j] : 0.0f;
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) y[t * w.rows + r0 + j] = _mm512_reduce_add_ps(acc[j][t]) + add;
  }
}

// The rows [begin, end) for NT tokens: one row at a time for a single token (one stream of
// weights, which the prefetcher follows: four rows at once decoded about 40% slower at batch
// 1), four at a time up to 4 tokens, three up to 8 (at most 24 of the 32 vector registers
// hold accumulators); the rows left over one at a time.
template <int NT>
EMBER_BF16_TARGET void RowsTile(const uint16_t* xb, int64_t padded, const Matrix& w,
                                const float* bias, float* y, int64_t begin, int64_t end) {
  constexpr int R = NT == 1 ? 1 : NT <= 4 ? 4 : 3;
  int64_t r = begin;
  for (; r + R <= end; r += R) Tile<NT, R>(xb, padded, w, bias, y, r);
  for (; r < end; ++r) Tile<NT, 1>(xb, padded, w, bias, y, r);
}

template <int... NT>
void RowsAnyTile(int nt, const uint16_t* xb, int64_t padded, const Matrix& w, const float* bias,
                 float* y, int64_t begin, int64_t end, std::integer_sequence<int, NT...>) {
  ((nt == NT + 1 ? RowsTile<NT + 1>(xb, padded, w, bias, y, begin, end) : void()), ...);
}

// Ember's loop over the weight rows [begin, end) for every token, kTokenTile at a time.
void OwnRows(const uint16_t* xb, int64_t padded, int n, const Matrix& w, const float* bias,
             float* y, int64_t begin, int64_t end) {
  for (int t = 0; t < n; t += kTokenTile) {
    RowsAnyTile(std::min(kTokenTile, n - t), xb + t * padded, padded, w, bias, y + t * w.rows,
                begin, end, std::make_integer_sequence<int, kTokenTile>{});
  }
}

// ---- oneDNN ------------------------------------------------------------------------------

const dnnl::engine& DnnlEngine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A matmul for one shape and its strides, made once per thread (making one costs about
// 0.2 ms; oneDNN's own cache shares the generated code between threads).
struct Gemm {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul matmul;
};
using Shape = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;  // m, n, k, ld_x, ld_y
const Gemm& GemmFor(const Shape& shape) {
  thread_local std::map<Shape, Gemm> cache;
  if (auto it = cache.find(shape); it != cache.end()) return it->second;
  if (cache.size() >= 256) cache.clear();  // prefill lengths vary; keep the map bounded
  const auto [m, n, k, ld_x, ld_y] = shape;
  using dt = dnnl::memory::data_type;
  const dnnl::memory::desc src({m, k}, dt::bf16, {ld_x, 1});
  const dnnl::memory::desc weights({k, n}, dt::bf16, {1, k});  // W's rows are its columns
  const dnnl::memory::desc dst({m, n}, dt::f32, {ld_y, 1});
#if DNNL_VERSION_MAJOR >= 3
  dnnl::matmul::primitive_desc pd(DnnlEngine(), src, weights, dst);
#else
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, weights, dst), DnnlEngine());
#endif
  dnnl::matmul matmul(pd);
  return cache.emplace(shape, Gemm{std::move(pd), std::move(matmul)}).first->second;
}

// Makes OpenMP, under oneDNN, run on the calling thread alone (once per thread).
void UseOneOpenMpThread() {
  thread_local const bool done = (omp_set_num_threads(1), true);
  (void)done;
}

// oneDNN's GEMM for the weight rows [begin, end), single-threaded on the calling thread.
void LibraryGemmRows(const uint16_t* xb, int64_t padded, int n, const Matrix& w,
                     const float* bias, float* y, int64_t begin, int64_t end) {
  UseOneOpenMpThread();
  const Gemm& gemm = GemmFor({n, end - begin, w.cols, padded, w.rows});
  auto* wdata = static_cast<uint16_t*>(const_cast<void*>(w.data)) + begin * w.cols;
  const dnnl::memory src(gemm.pd.src_desc(), DnnlEngine(), const_cast<uint16_t*>(xb));
  const dnnl::memory weights(gemm.pd.weights_desc(), DnnlEngine(), wdata);
  const dnnl::memory dst(gemm.pd.dst_desc(), DnnlEngine(), y + begin);
  thread_local dnnl::stream stream(DnnlEngine());
  gemm.matmul.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
  stream.wait();
  if (bias != nullptr) {
    for (int t = 0; t < n; ++t) {
      for (int64_t r = begin; r < end; ++r) y[t * w.rows + r] += bias[r];
    }
  }
}

}  // namespace

bool HasBf16DotProducts() {
  static const bool has = __builtin_cpu_supports("avx512bf16") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return has;
}

void LinearBf16(const float* x, int n, std::span<const LinearOut> outs) {
  const int64_t cols = outs[0].w->cols, padded = (cols + 31) / 32 * 32;
  // The caller's scratch (a lambda names a thread_local directly, so the pool's threads are
  // given the pointer). The activations are rounded once for every output.
  thread_local std::vector<uint16_t> scratch;
  if (scratch.size() < static_cast<size_t>(n * padded)) scratch.resize(n * padded);
  uint16_t* xb = scratch.data();
  const bool own = n < kLibraryGemmTokens;
  // A decode step's few rows take less time to round than the pool takes to wake.
  if (own) {
    RoundRowsToBf16(x, cols, padded, 0, n, xb);
  } else {
    ParallelFor(n, [&](int64_t begin, int64_t end) { RoundRowsToBf16(x, cols, padded, begin, end, xb); });
  }
  // Units of work numbered across the outputs (single rows for Ember's loop, 64-row slices
  // for oneDNN), so one parallel loop covers all of them.
  const int64_t unit = own ? 1 : kRowsPerSlice;
  absl::InlinedVector<int64_t, 4> first_unit(outs.size() + 1, 0);  // q, k, v: no allocation
  for (size_t i = 0; i < outs.size(); ++i) {
    first_unit[i + 1] = first_unit[i] + (outs[i].w->rows + unit - 1) / unit;
  }
  ParallelFor(first_unit.back(), [&](int64_t first, int64_t last) {
    for (size_t i = 0; i < outs.size(); ++i) {
      const int64_t lo = std::max(first, first_unit[i]), hi = std::min(last, first_unit[i + 1]);
      if (lo >= hi) continue;
      const LinearOut& o = outs[i];
      const int64_t begin = (lo - first_unit[i]) * unit;
      const int64_t end = std::min(o.w->rows, (hi - first_unit[i]) * unit);
      if (own) {
        OwnRows(xb, padded, n, *o.w, o.bias, o.y, begin, end);
      } else {
        LibraryGemmRows(xb, padded, n, *o.w, o.bias, o.y, begin, end);
      }
    }
  });
}

}  // namespace ember::kernels::cpu
