// The CUDA backend: owns the stream, the cuBLAS handle and two private buffers (a pinned
// staging buffer for uploads, the prefill GEMM's converted activations); maps each op of
// kernels/backend.h to its launcher in kernels/cuda/ops.h and remembers the first error.
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cublas_api.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/ops.h"

namespace ember::kernels {
namespace {

// A failed runtime call that is not a kernel launch: its error is also left in the runtime's
// last-error slot, which the next launcher's cudaGetLastError() would blame on its op.
absl::Status CallFailed(cudaError_t e, absl::string_view what) {
  (void)cudaGetLastError();
  return absl::InternalError(absl::StrCat("cuda: ", what, ": ", cudaGetErrorString(e)));
}

// The backend could not be set up: Unavailable, so `--backend auto` falls back to the CPU.
absl::Status SetupFailed(absl::string_view what, cudaError_t e) {
  (void)cudaGetLastError();
  return absl::UnavailableError(
      absl::StrCat("backend 'cuda': ", what, " (", cudaGetErrorString(e), ")"));
}

// Uploads up to this size go through the pinned staging buffer and return without waiting.
constexpr size_t kStagingBytes = 8 << 20;
constexpr size_t kStagingAlign = 256;

class CudaBackend final : public Backend {
 public:
  CudaBackend() = default;

  // Creates the stream, the cuBLAS handle and the staging buffer, and gives the sampling
  // kernel its shared memory (once, not per launch). On failure the destructor frees
  // whatever was created.
  absl::Status Init() {
    cudaError_t e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
      stream_ = nullptr;
      return SetupFailed("cannot create a stream", e);
    }
    absl::StatusOr<const CublasApi*> api = Cublas();
    if (!api.ok()) return absl::UnavailableError(absl::StrCat("backend 'cuda': ", api.status().message()));
    blas_ = *api;
    cublasStatus_t s = blas_->create(&cublas_);
    if (s != CUBLAS_STATUS_SUCCESS) cublas_ = nullptr;
    if (s == CUBLAS_STATUS_SUCCESS) s = blas_->set_stream(cublas_, stream_);
    if (s != CUBLAS_STATUS_SUCCESS) {
      return absl::UnavailableError(
          absl::StrCat("backend 'cuda': cuBLAS: ", blas_->status_string(s)));
    }
    void* staging = nullptr;
    if ((e = cudaHostAlloc(&staging, kStagingBytes, cudaHostAllocDefault)) != cudaSuccess) {
      return SetupFailed(absl::StrCat("cannot pin ", kStagingBytes, " bytes of staging memory"), e);
    }
    staging_ = static_cast<uint8_t*>(staging);
    if ((e = PrepareSampleKernel()) != cudaSuccess) {
      return SetupFailed("cannot give the sampling kernel its shared memory", e);
    }
    return absl::OkStatus();
  }

  ~CudaBackend() override {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    cudaFree(gemm_x_);
    if (staging_ != nullptr) cudaFreeHost(staging_);
    if (cublas_ != nullptr) blas_->destroy(cublas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
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
  // staging buffer at the next free offset and enqueued; the caller's buffer is free on
  // return. The buffer empties at every wait for the stream (each step's Download); only an
  // upload that no longer fits waits first. Larger ones (weights at load time) copy from the
  // caller's memory and wait for the stream.
  absl::Status Upload(void* dst, const void* host_src, size_t bytes) override {
    if (bytes == 0) return absl::OkStatus();
    if (bytes > kStagingBytes) {
      cudaError_t e = cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_);
      if (e == cudaSuccess) e = WaitForStream();
      if (e != cudaSuccess) return CallFailed(e, absl::StrCat("upload of ", bytes, " bytes"));
      return absl::OkStatus();
    }
    if (staging_used_ + bytes > kStagingBytes) {
      if (const cudaError_t e = WaitForStream(); e != cudaSuccess) {
        return CallFailed(e, "waiting for staged uploads");
      }
    }
    uint8_t* at = staging_ + staging_used_;
    std::memcpy(at, host_src, bytes);
    const cudaError_t e = cudaMemcpyAsync(dst, at, bytes, cudaMemcpyHostToDevice, stream_);
    if (e != cudaSuccess) return CallFailed(e, absl::StrCat("upload of ", bytes, " bytes"));
    staging_used_ = (staging_used_ + bytes + kStagingAlign - 1) / kStagingAlign * kStagingAlign;
    return absl::OkStatus();
  }

  absl::Status Download(void* host_dst, const void* src, size_t bytes) override {
    if (bytes > 0) {
      Check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_),
            [&] { return absl::StrCat("download of ", bytes, " bytes"); });
    }
    return Synchronize();
  }

  absl::Status Synchronize() override {
    Check(WaitForStream(), [] { return "an op on the stream failed"; });
    return TakeError();
  }

  ScalarType KvType(ScalarType weight_type) const override { return weight_type; }

  size_t AttentionWorkspaceBytes(int max_tokens, int q_heads, int head_dim) const override {
    return PagedAttentionWorkspaceBytes(max_tokens, q_heads, head_dim);
  }

  // The decode GEMV's token tiles (1, 2, 4, 8) and, past kGemvMaxTokens, the cuBLAS path
  // with its activation conversion and bias kernels. Attention's split-K kernels run at
  // every step once the context may exceed one partition, and sampling is one kernel.
  std::vector<int> WarmUpTokenCounts() const override { return {1, 2, 4, 8, kGemvMaxTokens + 1}; }

  // ---- ops ----------------------------------------------------------------------------

  void ToF32(const Matrix& m, float* out) override {
    Check(LaunchToF32(m.data, m.type, m.rows * m.cols, out, stream_),
          [&] { return absl::StrCat("ToF32 [", m.rows, ", ", m.cols, "]"); });
  }

  void Embed(const Matrix& table, const int32_t* ids, int n, float* out) override {
    Check(LaunchEmbed(table.data, table.type, table.cols, ids, n, out, stream_),
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
      Check(LaunchLinearGemv(x, n, w.data, w.type, w.rows, w.cols, bias, y, stream_), describe);
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
    Check(LaunchKvStore(cache, k, v, slots, n, stream_), [&] {
      return absl::StrCat("KvStore (n=", n, ", kv_heads=", cache.kv_heads,
                          ", head_dim=", cache.head_dim, ")");
    });
  }

  void Attention(const AttentionArgs& a) override {
    Check(LaunchPagedAttention(a, stream_), [&] {
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
    Check(LaunchSample(logits, n_rows, vocab, rows, tokens, stream_),
          [&] { return absl::StrCat("Sample (n_rows=", n_rows, ", vocab=", vocab, ")"); });
  }

 private:
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

  // Waits for every op on the stream; once it is idle, no copy still reads the staging
  // buffer, which starts over.
  cudaError_t WaitForStream() {
    const cudaError_t e = cudaStreamSynchronize(stream_);
    if (e == cudaSuccess) staging_used_ = 0;
    return e;
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
      s = blas_->sgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha,
                      static_cast<const float*>(w.data), k, x, k, &beta, y, m);
    } else {
      const cudaError_t e = EnsureGemmWorkspace(static_cast<size_t>(n) * k * sizeof(uint16_t));
      if (e != cudaSuccess) {
        Check(e, [&] { return absl::StrCat(describe(), ": prefill workspace"); });
        return;
      }
      Check(LaunchConvertActivations(x, static_cast<int64_t>(n) * k, w.type, gemm_x_, stream_),
            describe);
      const cudaDataType_t t = w.type == ScalarType::kBF16 ? CUDA_R_16BF : CUDA_R_16F;
      s = blas_->gemm_ex(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w.data, t, k, gemm_x_, t,
                       k, &beta, y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    }
    if (s != CUBLAS_STATUS_SUCCESS && error_.ok()) {
      error_ = absl::InternalError(
          absl::StrCat("cuda: ", describe(), ": cuBLAS: ", blas_->status_string(s)));
      return;
    }
    if (bias != nullptr) Check(LaunchAddBias(y, bias, n, w.rows, stream_), describe);
  }

  // Grows the prefill workspace to at least `bytes`, once per new maximum (the first
  // prefill of each size class, never in the steady state): waits for the stream, since
  // queued ops may still read the old one. Sizes round up to 4 MiB.
  cudaError_t EnsureGemmWorkspace(size_t bytes) {
    if (bytes <= gemm_x_bytes_) return cudaSuccess;
    cudaError_t e = WaitForStream();
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

  cudaStream_t stream_ = nullptr;
  const CublasApi* blas_ = nullptr;  // opened in Init
  cublasHandle_t cublas_ = nullptr;
  absl::Status error_;  // the first failure since the last Synchronize() / Download()

  uint8_t* staging_ = nullptr;  // [kStagingBytes] pinned host memory
  size_t staging_used_ = 0;     // bytes [0, staging_used_) may still be read by queued copies

  void* gemm_x_ = nullptr;  // [n, cols] of the weights' 16-bit type, prefill only
  size_t gemm_x_bytes_ = 0;
};

}  // namespace

absl::Status CheckCudaDevice() {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) return SetupFailed("no usable CUDA device or driver", e);
  if (count == 0) return absl::UnavailableError("backend 'cuda': no CUDA device");
  cudaDeviceProp prop;
  if ((e = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) {
    return SetupFailed("cannot query GPU 0", e);
  }
  if (prop.major < 8) {
    return absl::UnavailableError(absl::StrCat("backend 'cuda': ", prop.name,
                                               " has compute capability ", prop.major, ".",
                                               prop.minor, "; Ember's kernels need 8.0 or newer"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend() {
  if (absl::Status s = CheckCudaDevice(); !s.ok()) return s;
  auto backend = std::make_unique<CudaBackend>();
  if (absl::Status s = backend->Init(); !s.ok()) return s;
  return backend;
}

}  // namespace ember::kernels
