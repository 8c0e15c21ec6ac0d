// The CPU backend: host memory and the reference ops, run synchronously on the caller's
// thread (each op fans out over the pool's threads, thread_pool.h).
#include "kernels/cpu/cpu_backend.h"

#include <sys/mman.h>

#include <atomic>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"

namespace ember::kernels {
namespace {

// MemAvailable from /proc/meminfo: what the kernel says can be allocated without
// swapping (free memory plus reclaimable page cache).
uint64_t MemAvailableBytes() {
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) return 0;
  char line[256];
  uint64_t kib = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "MemAvailable: %lu kB", &kib) == 1) break;
  }
  std::fclose(f);
  return kib * 1024;
}

class CpuBackend final : public Backend {
 public:
  absl::string_view name() const override { return "cpu"; }
  bool is_device() const override { return false; }

  absl::StatusOr<Buffer> Allocate(size_t bytes, absl::string_view what) override {
    // Anonymous mappings: page-aligned for vector loads, and zero pages arrive lazily, so
    // a KV cache sized for every sequence at full context costs nothing until used.
    const size_t mapped = bytes == 0 ? 1 : bytes;
    void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("cpu: cannot allocate %d bytes for %s (available: %d bytes)", bytes, what,
                          MemAvailableBytes()));
    }
    return Buffer(p, bytes, [mapped](void* q) { munmap(q, mapped); });
  }
  uint64_t FreeMemoryBytes() override { return MemAvailableBytes(); }
  absl::Status Upload(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status Download(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status Synchronize() override { return absl::OkStatus(); }
  ScalarType KvType(ScalarType) const override { return ScalarType::kF32; }
  size_t AttentionWorkspaceBytes(int, int, int) const override { return 0; }

  void ToF32(const Matrix& m, float* out) override { cpu::ToF32(m, out); }
  void Embed(const Matrix& table, const int32_t* ids, int n, float* out) override {
    cpu::Embed(table, ids, n, out);
  }
  void AddRmsNorm(const float* x, float* residual, const float* weight, int n, int hidden,
                  float eps, float* out) override {
    cpu::AddRmsNorm(x, residual, weight, n, hidden, eps, out);
  }
  void Linear(const float* x, int n, const Matrix& w, const float* bias, float* y) override {
    cpu::Linear(x, n, w, bias, y);
  }
  void Linears(const float* x, int n, std::span<const LinearOut> outs) override {
    cpu::Linears(x, n, outs);
  }
  void Rope(float* q, float* k, const int32_t* positions, const float* inv_freq, int n, int q_heads,
            int kv_heads, int head_dim) override {
    cpu::Rope(q, k, positions, inv_freq, n, q_heads, kv_heads, head_dim);
  }
  void SwiGlu(const float* gate, const float* up, int64_t count, float* out) override {
    cpu::SwiGlu(gate, up, count, out);
  }
  void KvStore(const KvLayer& cache, const float* k, const float* v, const int32_t* slots,
               int n) override {
    cpu::KvStore(cache, k, v, slots, n);
  }
  void Attention(const AttentionArgs& args) override { cpu::Attention(args); }
  void GatherRows(const float* in, const int32_t* rows, int n_rows, int width,
                  float* out) override {
    cpu::GatherRows(in, rows, n_rows, width, out);
  }
  void Sample(const float* logits, int n_rows, int vocab, const SamplingRow* rows,
              int32_t* tokens) override {
    cpu::Sample(logits, n_rows, vocab, rows, tokens);
  }
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend() { return std::make_unique<CpuBackend>(); }

namespace cpu {
namespace {
std::atomic<ComputePrecision> precision{ComputePrecision::kF32};
}  // namespace

void SetComputePrecision(ComputePrecision p) { precision.store(p); }
ComputePrecision GetComputePrecision() { return precision.load(); }

absl::StatusOr<ComputePrecision> ParseComputePrecision(absl::string_view value,
                                                       absl::string_view flag) {
  if (value == "f32") return ComputePrecision::kF32;
  if (value == "bf16") return ComputePrecision::kBf16;
  return absl::InvalidArgumentError(
      absl::StrCat(flag, ": \"", value, "\" is not a compute precision (f32 or bf16)"));
}

bool UsesBf16Compute() {
  return GetComputePrecision() == ComputePrecision::kBf16 && HasBf16DotProducts();
}

absl::Status Configure(int threads, absl::string_view compute_precision) {
  if (threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  auto precision = ParseComputePrecision(compute_precision, "--compute_precision");
  if (!precision.ok()) return precision.status();
  SetThreads(threads);
  SetComputePrecision(*precision);
  return absl::OkStatus();
}

std::string ComputePrecisionDescription() {
  if (GetComputePrecision() == ComputePrecision::kF32) return "f32";
  return HasBf16DotProducts() ? "bf16" : "f32 (this CPU has no AVX-512 BF16)";
}

}  // namespace cpu

}  // namespace ember::kernels
