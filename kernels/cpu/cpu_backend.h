// The CPU backend: host memory, the reference ops of kernels/cpu/ run synchronously.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/backend.h"

// The help of the CLIs' --threads and --compute_precision flags (Configure below).
#define EMBER_THREADS_HELP \
  "Threads of the CPU backend, 0 for the CPUs this process may use (affinity and cgroup CPU limit)"
#define EMBER_COMPUTE_PRECISION_HELP                                                          \
  "How the CPU backend multiplies BF16 weights: bf16 (activations rounded to BF16 for the " \
  "CPU's BF16 dot products and oneDNN's GEMM; fast) or f32 (exact FP32 activations, as "    \
  "transformers in float32)"

namespace ember::kernels {

std::unique_ptr<Backend> MakeCpuBackend();

namespace cpu {

// How the CPU backend multiplies BF16 weights; process-wide, set before the first step.
//   kF32: activations stay FP32 and each weight is widened to FP32 in registers: the same
//         function as transformers in float32 on the same weights, to FP32 rounding (the
//         reference tests use it). The library's default.
//   kBf16: activations are rounded to BF16 for the CPU's BF16 dot products (AVX-512 BF16)
//         and oneDNN's BF16 GEMM, FP32 accumulation: several times faster prefill and
//         batched decode, logits within BF16 rounding of kF32 (what a GPU's BF16 GEMMs give).
//         The CLIs' default (--compute_precision). Where the CPU lacks AVX-512 BF16 the
//         kF32 path runs instead.
// F16 and F32 weights always take the kF32 path.
enum class ComputePrecision { kF32, kBf16 };

void SetComputePrecision(ComputePrecision precision);
ComputePrecision GetComputePrecision();
// "f32" or "bf16"; InvalidArgument naming `flag` otherwise.
absl::StatusOr<ComputePrecision> ParseComputePrecision(absl::string_view value,
                                                       absl::string_view flag);
// Whether BF16 weights are multiplied in BF16: kBf16 was asked for and the CPU can.
bool UsesBf16Compute();
// The CLIs' --threads and --compute_precision: checks both, then sets them
// (thread_pool.h's SetThreads, SetComputePrecision). InvalidArgument naming the flag.
absl::Status Configure(int threads, absl::string_view compute_precision);
// What UsesBf16Compute() means here, for logs and --json: "bf16" or "f32" (with the reason
// when bf16 was asked for).
std::string ComputePrecisionDescription();

}  // namespace cpu
}  // namespace ember::kernels
