// Kernel launches in the CUDA emulation: kernels::LaunchKernel (kernels/cuda/common.cuh)
// calls Launch<kernel>(...) where nvcc's build writes kernel<<<...>>>(...).
#pragma once

#include <functional>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace cuda_emulation {

struct KernelLaunch {
  const void* function = nullptr;  // identifies the kernel (cudaFuncSetAttribute)
  std::string name;
  dim3 grid, block;
  size_t dynamic_shared_bytes = 0;
  std::function<void()> body;  // the kernel called with its arguments; run by every thread
};

// Checks the configuration against the limits of sm_80 and sm_90 (an error names the kernel
// and the limit) and enqueues the kernel on `stream`. The error is also the last error.
cudaError_t Enqueue(KernelLaunch launch, cudaStream_t stream);

// The kernels this process has launched so far, by name with their template arguments: on a
// GPU, each one's module was loaded at its first launch (what a warm-up must cover).
std::set<std::string> LaunchedKernels();

template <auto Kernel>
const char* PrettyKernel() {
  return __PRETTY_FUNCTION__;  // "... [with auto Kernel = ns::kernel<T, 8>]": the name
}

template <auto Kernel, typename... Params, typename... Args>
cudaError_t LaunchWith(void (*)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                       cudaStream_t stream, Args&&... args) {
  // The arguments are converted to the parameters' types at the launch, as nvcc does, and
  // every thread gets its own copy.
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  KernelLaunch launch{reinterpret_cast<const void*>(Kernel), PrettyKernel<Kernel>(), grid, block,
                      shared_bytes, [params] { std::apply(Kernel, params); }};
  return Enqueue(std::move(launch), stream);
}

template <auto Kernel, typename... Args>
cudaError_t Launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   Args&&... args) {
  return LaunchWith<Kernel>(Kernel, grid, block, shared_bytes, stream,
                            std::forward<Args>(args)...);
}

}  // namespace cuda_emulation
