// Backend selection by name.
#include "kernels/backend.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef EMBER_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace ember::kernels {

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(absl::string_view name) {
  if (name == "cpu") return MakeCpuBackend();
  if (name == "cuda") {
#ifdef EMBER_HAVE_CUDA
    return MakeCudaBackend();
#else
    return absl::UnavailableError(
        "backend 'cuda': this build has no CUDA support (nvcc was not found at configure "
        "time)");
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend '", name, "' (expected 'cpu' or 'cuda')"));
}

absl::Status CheckBackendHardware(absl::string_view name) {
#ifdef EMBER_HAVE_CUDA
  if (name == "cuda") return CheckCudaDevice();
#endif
  if (name == "cpu") return absl::OkStatus();
  return MakeBackend(name).status();  // no CUDA in this build, or an unknown name
}

}  // namespace ember::kernels
