// The op interface: everything the model's forward pass asks of a backend. Two
// implementations: cpu/ (the multithreaded reference, used by CI and GPU-less machines)
// and cuda/ (Ember's own decode kernels). The forward pass itself lives in worker/.
//
// Conventions for every op:
//   - pointers are in the backend's memory (host for cpu, device for cuda);
//   - activations are F32, row-major, one row per token; weights are Matrix (BF16/F16/F32);
//   - ops are enqueued in order on the backend's one stream and may run asynchronously;
//     launch errors are remembered and returned by the next Synchronize() or Download(),
//     so the forward pass reads as a list of ops and checks once per step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/types.h"

namespace ember::kernels {

// Memory owned by a backend; frees itself. Move-only. Costly to create: allocate once
// (weights, KV cache, per-step workspace), never inside a step.
class Buffer {
 public:
  Buffer() = default;
  Buffer(void* data, size_t bytes, std::function<void(void*)> release)
      : data_(data), bytes_(bytes), release_(std::move(release)) {}
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      Reset();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
      release_ = std::move(other.release_);
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Reset(); }

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }

 private:
  void Reset() {
    if (data_ != nullptr && release_) release_(data_);
    data_ = nullptr;
    bytes_ = 0;
  }
  void* data_ = nullptr;
  size_t bytes_ = 0;
  std::function<void(void*)> release_;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual absl::string_view name() const = 0;
  // True when the backend's memory is not host-addressable (weights must be loaded there).
  virtual bool is_device() const = 0;

  // ---- memory -------------------------------------------------------------------------
  virtual absl::StatusOr<Buffer> Allocate(size_t bytes, absl::string_view what) = 0;
  // Memory still free for the KV cache after everything allocated so far.
  virtual uint64_t FreeMemoryBytes() = 0;
  // Host to backend, ordered with the ops (the host buffer may be reused on return).
  virtual absl::Status Upload(void* dst, const void* host_src, size_t bytes) = 0;
  // Backend to host; waits for every op before it. Returns the first pending op error.
  virtual absl::Status Download(void* host_dst, const void* src, size_t bytes) = 0;
  // Waits for every op; returns the first error since the last call.
  virtual absl::Status Synchronize() = 0;
  // The element type this backend keeps the KV cache in, for a model whose weights are
  // `weight_type` (the CPU reference always uses F32).
  virtual ScalarType KvType(ScalarType weight_type) const = 0;
  virtual size_t AttentionWorkspaceBytes(int max_tokens, int q_heads, int head_dim) const = 0;
  // Step sizes (tokens) whose steps run different code, one of each: a warm-up step of each
  // size leaves nothing for a request to load or compile lazily (a GPU loads each kernel
  // module at its first launch). Ascending.
  virtual std::vector<int> WarmUpTokenCounts() const { return {1}; }

  // ---- ops (shapes in the comments; n = tokens in the step) --------------------------
  // out[rows * cols] = m converted to F32 (norm weights and biases are kept in F32).
  virtual void ToF32(const Matrix& m, float* out) = 0;
  // out[n, hidden] = table[ids[t]] (table: [vocab, hidden]).
  virtual void Embed(const Matrix& table, const int32_t* ids, int n, float* out) = 0;
  // residual[n, hidden] += x (skipped when x is null); then
  // out = residual * rsqrt(mean(residual²) + eps) * weight[hidden]. FP32 throughout.
  virtual void AddRmsNorm(const float* x, float* residual, const float* weight, int n,
                          int hidden, float eps, float* out) = 0;
  // y[n, w.rows] = x[n, w.cols] · wᵀ (+ bias[w.rows] when not null); FP32 accumulation.
  virtual void Linear(const float* x, int n, const Matrix& w, const float* bias,
                      float* y) = 0;
  // Linear for several weights that share their input (q, k and v; gate and up), each
  // output as Linear would write it. A backend may run them as one op; by default, one
  // Linear each.
  virtual void Linears(const float* x, int n, std::span<const LinearOut> outs) {
    for (const LinearOut& o : outs) Linear(x, n, *o.w, o.bias, o.y);
  }
  // Rotary embedding in place, Hugging Face's rotate-half layout: for i < head_dim/2 the
  // pair (i, i + head_dim/2) turns by pos * inv_freq[i]. q: [n, q_heads, head_dim],
  // k: [n, kv_heads, head_dim].
  virtual void Rope(float* q, float* k, const int32_t* positions, const float* inv_freq,
                    int n, int q_heads, int kv_heads, int head_dim) = 0;
  // out[i] = silu(gate[i]) * up[i] for i < count (out may alias gate).
  virtual void SwiGlu(const float* gate, const float* up, int64_t count, float* out) = 0;
  // Writes k, v [n, kv_heads, head_dim] into the cache at slots[n].
  virtual void KvStore(const KvLayer& cache, const float* k, const float* v,
                       const int32_t* slots, int n) = 0;
  virtual void Attention(const AttentionArgs& args) = 0;
  // out[i] = in[rows[i]] for i < n_rows; rows of `width` floats.
  virtual void GatherRows(const float* in, const int32_t* rows, int n_rows, int width,
                          float* out) = 0;
  // tokens[s] = the token chosen from logits[s, vocab] by rows[s], s < n_rows.
  virtual void Sample(const float* logits, int n_rows, int vocab, const SamplingRow* rows,
                      int32_t* tokens) = 0;
};

// "cpu" or "cuda"; Unavailable (with the reason) when the CUDA backend cannot run here.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(absl::string_view name);

// Whether MakeBackend(name) would find its hardware, without creating the backend: for
// "cuda", a GPU of compute capability 8.0 or newer (no context is created, so this costs
// milliseconds where MakeBackend costs hundreds). A server decides from it where the
// weights go while the backend itself comes up during the load.
absl::Status CheckBackendHardware(absl::string_view name);

}  // namespace ember::kernels
