// The CUDA backend: owns the stream, the cuBLAS handle and two private buffers (a pinned
// staging ring for uploads, the prefill GEMM's converted activations); maps each op of
// kernels/backend.h to its launcher in kernels/cuda/ops.h and remembers the first error.
#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/ops.h"

namespace ember::kernels {
namespace {

// The launchers' plain-C++ views of the interface's types must match them bit for bit.
static_assert(static_cast<int>(ScalarType::kF32) == static_cast<int>(ElementType::kF32) &&
              static_cast<int>(ScalarType::kF16) == static_cast<int>(ElementType::kF16) &&
              static_cast<int>(ScalarType::kBF16) == static_cast<int>(ElementType::kBF16));
static_assert(sizeof(SamplingRow) == sizeof(SamplingParams) &&
              offsetof(SamplingRow, temperature) == offsetof(SamplingParams, temperature) &&
              offsetof(SamplingRow, top_k) == offsetof(SamplingParams, top_k) &&
              offsetof(SamplingRow, top_p) == offsetof(SamplingParams, top_p) &&
              offsetof(SamplingRow, min_p) == offsetof(SamplingParams, min_p) &&
              offsetof(SamplingRow, uniform) == offsetof(SamplingParams, uniform));

ElementType ToElement(ScalarType t) { return static_cast<ElementType>(t); }

PagedKv ToPagedKv(const KvLayer& c) {
  return PagedKv{c.k, c.v, ToElement(c.type), c.block_size, c.kv_heads, c.head_dim};
}

// A failed runtime call that is not a kernel launch: its error is also left in the runtime's
// last-error slot, which the next launcher's cudaGetLastError() would blame on its op.
absl::Status CallFailed(cudaError_t e, absl::string_view what) {
  (void)cudaGetLastError();
  return absl::InternalError(absl::StrCat("cuda: ", what, ": ", cudaGetErrorString(e)));
}

// Uploads up to this size go through the pinned staging ring and return without waiting.
constexpr size_t kStagingBytes = 8 << 20;
constexpr size_t kStagingAlign = 256;

class CudaBackend final : public Backend {
 public:
  CudaBackend(cudaStream_t stream, cublasHandle_t cublas, uint8_t* staging)
      : stream_(stream), cublas_(cublas), staging_(staging) {}

  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    for (const StagedCopy& c : in_flight_) cudaEventDestroy(c.done);
    for (cudaEvent_t e : spare_events_) cudaEventDestroy(e);
    cudaFree(gemm_x_);
    cudaFreeHost(staging_);
    cublasDestroy(cublas_);
    cudaStreamDestroy(stream_);
  }

  absl::string_view name() const override { return "cuda"; }
  bool is_device() const override { return true; }

  // ---- memory -------------------------------------------------------------------------

  absl::StatusOr<Buffer> Allocate(size_t bytes, absl::string_view what) override {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // not sticky; keep it away from the next op's check
      size_t free_bytes = 0, total_bytes = 0;
      if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) (void)cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat(
          "cuda: cannot allocate ", bytes, " bytes for ", what, " (", cudaGetErrorString(e), "; ",
          free_bytes, " of ", total_bytes, " bytes free)"));
    }
    return Buffer(p, bytes, [](void* q) { cudaFree(q); });
  }

  uint64_t FreeMemoryBytes() override {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return free_bytes;
  }

  // Small uploads (a step's token ids, positions, block tables) are copied into the pinned
  // staging ring and enqueued; the caller's buffer is free on return and nothing waits
  // unless the ring wraps onto a copy still in flight. Larger ones (weights at load time)
  // copy from the caller's memory and wait for the stream.
  absl::Status Upload(void* dst, const void* host_src, size_t bytes) override {
    if (bytes == 0) return absl::OkStatus();
    if (bytes > kStagingBytes) {
      cudaError_t e = cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_);
      if (e == cudaSuccess) e = cudaStreamSynchronize(stream_);
      if (e != cudaSuccess) return CallFailed(e, absl::StrCat("upload of ", bytes, " bytes"));
      return absl::OkStatus();
    }
    cudaEvent_t done = nullptr;
    if (!spare_events_.empty()) {
      done = spare_events_.back();
      spare_events_.pop_back();
    } else if (cudaError_t e = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
               e != cudaSuccess) {
      return CallFailed(e, "cudaEventCreate");
    }
    absl::StatusOr<size_t> at = ReserveStaging(bytes);
    if (!at.ok()) {
      spare_events_.push_back(done);
      return at.status();
    }
    std::memcpy(staging_ + *at, host_src, bytes);
    cudaError_t e = cudaMemcpyAsync(dst, staging_ + *at, bytes, cudaMemcpyHostToDevice, stream_);
    if (e == cudaSuccess) e = cudaEventRecord(done, stream_);
    if (e != cudaSuccess) {
      spare_events_.push_back(done);
      (void)cudaStreamSynchronize(stream_);  // without a fence, free the staging bytes now
      return CallFailed(e, absl::StrCat("upload of ", bytes, " bytes"));
    }
    in_flight_.push_back(StagedCopy{*at, *at + bytes, done});
    return absl::OkStatus();
  }

  absl::Status Download(void* host_dst, const void* src, size_t bytes) override {
    if (bytes > 0) {
      Check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_),
            [&] { return absl::StrCat("download of ", bytes, " bytes"); });
    }
    Check(cudaStreamSynchronize(stream_), [] { return "an op on the stream failed"; });
    return TakeError();
  }

  absl::Status Synchronize() override {
    Check(cudaStreamSynchronize(stream_), [] { return "an op on the stream failed"; });
    return TakeError();
  }

  ScalarType KvType(ScalarType weight_type) const override { return weight_type; }

  size_t AttentionWorkspaceBytes(int max_tokens, int q_heads, int head_dim) const override {
    return PagedAttentionWorkspaceBytes(max_tokens, q_heads, head_dim);
  }

  // ---- ops ----------------------------------------------------------------------------

  void ToF32(const Matrix& m, float* out) override {
    Check(LaunchToF32(m.data, ToElement(m.type), m.rows * m.cols, out, stream_),
          [&] { return absl::StrCat("ToF32 [", m.rows, ", ", m.cols, "]"); });
  }

  void Embed(const Matrix& table, const int32_t* ids, int n, float* out) override {
    Check(LaunchEmbed(table.data, ToElement(table.type), table.cols, ids, n, out, stream_),
          [&] { return absl::StrCat("Embed (n=", n, ", hidden=", table.cols, ")"); });
  }

  void AddRmsNorm(const float* x, float* residual, const float* weight, int n, int hidden,
                  float eps, float* out) override {
    Check(LaunchAddRmsNorm(x, residual, weight, n, hidden, eps, out, stream_),
          [&] { return absl::StrCat("AddRmsNorm (n=", n, ", hidden=", hidden, ")"); });
  }

  void Linear(const float* x, int n, const Matrix& w, const float* bias, float* y) override {
    auto describe = [&] {
      return absl::StrCat("Linear (n=", n, ", w [", w.rows, ", ", w.cols, "] ", ScalarName(w.type),
                          ")");
    };
    if (n <= kGemvMaxTokens) {
      Check(LaunchLinearGemv(x, n, w.data, ToElement(w.type), w.rows, w.cols, bias, y, stream_),
            describe);
    } else {
      LinearCublas(x, n, w, bias, y, describe);
    }
  }

  void Rope(float* q, float* k, const int32_t* positions, const float* inv_freq, int n, int q_heads,
            int kv_heads, int head_dim) override {
    Check(LaunchRope(q, k, positions, inv_freq, n, q_heads, kv_heads, head_dim, stream_), [&] {
      return absl::StrCat("Rope (n=", n, ", heads ", q_heads, "/", kv_heads,
                          ", head_dim=", head_dim, ")");
    });
  }

  void SwiGlu(const float* gate, const float* up, int64_t count, float* out) override {
    Check(LaunchSwiGlu(gate, up, count, out, stream_),
          [&] { return absl::StrCat("SwiGlu (count=", count, ")"); });
  }

  void KvStore(const KvLayer& cache, const float* k, const float* v, const int32_t* slots,
               int n) override {
    Check(LaunchKvStore(ToPagedKv(cache), k, v, slots, n, stream_), [&] {
      return absl::StrCat("KvStore (n=", n, ", kv_heads=", cache.kv_heads,
                          ", head_dim=", cache.head_dim, ")");
    });
  }

  void Attention(const AttentionArgs& a) override {
    PagedAttentionParams p;
    p.q = a.q;
    p.out = a.out;
    p.cache = ToPagedKv(a.cache);
    p.block_tables = a.block_tables;
    p.max_blocks_per_seq = a.max_blocks_per_seq;
    p.token_seq = a.token_seq;
    p.token_pos = a.token_pos;
    p.n = a.n;
    p.q_heads = a.q_heads;
    p.scale = a.scale;
    p.sliding_window = a.sliding_window;
    p.workspace = a.workspace;
    p.workspace_bytes = a.workspace_bytes;
    Check(LaunchPagedAttention(p, stream_), [&] {
      return absl::StrCat("Attention (n=", a.n, ", heads ", a.q_heads, "/", a.cache.kv_heads,
                          ", head_dim=", a.cache.head_dim, ", block_size=", a.cache.block_size,
                          ", cache ", ScalarName(a.cache.type), ")");
    });
  }

  void GatherRows(const float* in, const int32_t* rows, int n_rows, int width,
                  float* out) override {
    Check(LaunchGatherRows(in, rows, n_rows, width, out, stream_),
          [&] { return absl::StrCat("GatherRows (n_rows=", n_rows, ", width=", width, ")"); });
  }

  void Sample(const float* logits, int n_rows, int vocab, const SamplingRow* rows,
              int32_t* tokens) override {
    Check(LaunchSample(logits, n_rows, vocab, reinterpret_cast<const SamplingParams*>(rows), tokens,
                       stream_),
          [&] { return absl::StrCat("Sample (n_rows=", n_rows, ", vocab=", vocab, ")"); });
  }

 private:
  // Staging bytes [begin, end) of an upload whose copy completes with `done`.
  struct StagedCopy {
    size_t begin;
    size_t end;
    cudaEvent_t done;
  };

  // Keeps the first error until Synchronize() or Download() hands it over. `describe` names
  // the op and its shapes; it runs only on failure.
  template <typename Describe>
  void Check(cudaError_t e, Describe describe) {
    if (e == cudaSuccess || !error_.ok()) return;
    const std::string message = absl::StrCat("cuda: ", describe(), ": ", cudaGetErrorName(e), " (",
                                             cudaGetErrorString(e), ")");
    error_ = e == cudaErrorInvalidValue ? absl::InvalidArgumentError(message)
                                        : absl::InternalError(message);
  }

  absl::Status TakeError() { return std::exchange(error_, absl::OkStatus()); }

  // Offset of `bytes` free bytes in the staging ring, after the copies that last read them
  // have completed. Copies complete in stream order, so waiting for the newest overlapping
  // one retires every copy before it.
  absl::StatusOr<size_t> ReserveStaging(size_t bytes) {
    while (!in_flight_.empty()) {  // retire what is already done without waiting
      const cudaError_t e = cudaEventQuery(in_flight_.front().done);
      if (e == cudaErrorNotReady) {
        (void)cudaGetLastError();  // "not ready" is no error; keep it out of the next check
        break;
      }
      if (e != cudaSuccess) return CallFailed(e, "cudaEventQuery on a staged upload");
      RetireFront();
    }
    size_t begin = (staging_head_ + kStagingAlign - 1) / kStagingAlign * kStagingAlign;
    if (begin + bytes > kStagingBytes) begin = 0;
    const size_t end = begin + bytes;
    size_t overlapping = 0;  // 1 + index of the newest overlapping copy
    for (size_t i = 0; i < in_flight_.size(); ++i) {
      if (in_flight_[i].begin < end && begin < in_flight_[i].end) overlapping = i + 1;
    }
    if (overlapping > 0) {
      const cudaError_t e = cudaEventSynchronize(in_flight_[overlapping - 1].done);
      if (e != cudaSuccess) return CallFailed(e, "waiting for a staged upload");
      while (overlapping-- > 0) RetireFront();
    }
    staging_head_ = end;
    return begin;
  }

  void RetireFront() {
    spare_events_.push_back(in_flight_.front().done);
    in_flight_.pop_front();
  }

  // The cuBLAS path for prefill-sized n: x is rounded to the weights' 16-bit type in a
  // private workspace (cuBLAS's GemmEx wants A and B of one type), then one GEMM with FP32
  // accumulation and output, then the bias. Row-major y[n, rows] = x · Wᵀ is, in cuBLAS's
  // column-major terms, Y[rows, n] = op_T(W[cols, rows]) · X[cols, n].
  template <typename Describe>
  void LinearCublas(const float* x, int n, const Matrix& w, const float* bias, float* y,
                    Describe describe) {
    if (w.rows > INT_MAX || w.cols > INT_MAX || n < 0) {
      Check(cudaErrorInvalidValue, describe);
      return;
    }
    const int m = static_cast<int>(w.rows), k = static_cast<int>(w.cols);
    const float alpha = 1.0f, beta = 0.0f;
    cublasStatus_t s;
    if (w.type == ScalarType::kF32) {
      s = cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha,
                      static_cast<const float*>(w.data), k, x, k, &beta, y, m);
    } else {
      const cudaError_t e = EnsureGemmWorkspace(static_cast<size_t>(n) * k * sizeof(uint16_t));
      if (e != cudaSuccess) {
        Check(e, [&] { return absl::StrCat(describe(), ": prefill workspace"); });
        return;
      }
      Check(LaunchConvertActivations(x, static_cast<int64_t>(n) * k, ToElement(w.type), gemm_x_,
                                     stream_),
            describe);
      const cudaDataType_t t = w.type == ScalarType::kBF16 ? CUDA_R_16BF : CUDA_R_16F;
      s = cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w.data, t, k, gemm_x_, t,
                       k, &beta, y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    }
    if (s != CUBLAS_STATUS_SUCCESS && error_.ok()) {
      error_ = absl::InternalError(
          absl::StrCat("cuda: ", describe(), ": cuBLAS: ", cublasGetStatusString(s)));
      return;
    }
    if (bias != nullptr) Check(LaunchAddBias(y, bias, n, w.rows, stream_), describe);
  }

  // Grows the prefill workspace to at least `bytes`, once per new maximum (the first
  // prefill of each size class, never in the steady state): waits for the stream, since
  // queued ops may still read the old one. Sizes round up to 4 MiB.
  cudaError_t EnsureGemmWorkspace(size_t bytes) {
    if (bytes <= gemm_x_bytes_) return cudaSuccess;
    cudaError_t e = cudaStreamSynchronize(stream_);
    if (e != cudaSuccess) return e;
    cudaFree(gemm_x_);
    gemm_x_ = nullptr;
    gemm_x_bytes_ = 0;
    const size_t rounded = (bytes + (4 << 20) - 1) / (4 << 20) * (4 << 20);
    if ((e = cudaMalloc(&gemm_x_, rounded)) != cudaSuccess) {
      (void)cudaGetLastError();
      return e;
    }
    gemm_x_bytes_ = rounded;
    return cudaSuccess;
  }

  cudaStream_t stream_;
  cublasHandle_t cublas_;
  absl::Status error_;  // the first failure since the last Synchronize() / Download()

  uint8_t* staging_;  // [kStagingBytes] pinned host memory, used as a ring
  size_t staging_head_ = 0;
  std::deque<StagedCopy> in_flight_;  // oldest first
  std::vector<cudaEvent_t> spare_events_;

  void* gemm_x_ = nullptr;  // [n, cols] of the weights' 16-bit type, prefill only
  size_t gemm_x_bytes_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend() {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::UnavailableError(absl::StrCat("backend 'cuda': no usable CUDA device or driver (",
                                               cudaGetErrorString(e), ")"));
  }
  if (count == 0) return absl::UnavailableError("backend 'cuda': no CUDA device");
  cudaDeviceProp prop;
  if ((e = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) {
    return absl::UnavailableError(
        absl::StrCat("backend 'cuda': cannot query GPU 0 (", cudaGetErrorString(e), ")"));
  }
  if (prop.major < 8) {
    return absl::UnavailableError(absl::StrCat("backend 'cuda': ", prop.name,
                                               " has compute capability ", prop.major, ".",
                                               prop.minor, "; Ember's kernels need 8.0 or newer"));
  }
  cudaStream_t stream = nullptr;
  if ((e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)) != cudaSuccess) {
    return absl::UnavailableError(
        absl::StrCat("backend 'cuda': cannot create a stream (", cudaGetErrorString(e), ")"));
  }
  cublasHandle_t cublas = nullptr;
  cublasStatus_t s = cublasCreate(&cublas);
  if (s == CUBLAS_STATUS_SUCCESS &&
      (s = cublasSetStream(cublas, stream)) != CUBLAS_STATUS_SUCCESS) {
    cublasDestroy(cublas);
  }
  if (s != CUBLAS_STATUS_SUCCESS) {
    cudaStreamDestroy(stream);
    return absl::UnavailableError(
        absl::StrCat("backend 'cuda': cuBLAS: ", cublasGetStatusString(s)));
  }
  void* staging = nullptr;
  if ((e = cudaHostAlloc(&staging, kStagingBytes, cudaHostAllocDefault)) != cudaSuccess) {
    (void)cudaGetLastError();
    cublasDestroy(cublas);
    cudaStreamDestroy(stream);
    return absl::UnavailableError(absl::StrCat("backend 'cuda': cannot pin ", kStagingBytes,
                                               " bytes of staging memory (", cudaGetErrorString(e),
                                               ")"));
  }
  return std::make_unique<CudaBackend>(stream, cublas, static_cast<uint8_t*>(staging));
}

}  // namespace ember::kernels
