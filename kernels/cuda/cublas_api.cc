#include "kernels/cuda/cublas_api.h"

#include <dlfcn.h>

#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"

// Names after macro expansion: cublasCreate is cublasCreate_v2 in the toolkit's header.
#define EMBER_NAME_OF(x) EMBER_NAME_OF_EXPANDED(x)
#define EMBER_NAME_OF_EXPANDED(x) #x

namespace ember::kernels {
namespace {

#ifdef EMBER_CUDA_EMULATION
absl::StatusOr<CublasApi> Open() {
  return CublasApi{&cublasCreate,    &cublasDestroy, &cublasSetStream,
                   &cublasSgemm,     &cublasGemmEx,  &cublasGetStatusString};
}
#else
template <typename Fn>
bool Find(void* library, const char* name, Fn* fn, std::string* missing) {
  *fn = reinterpret_cast<Fn>(dlsym(library, name));
  if (*fn == nullptr) *missing = name;
  return *fn != nullptr;
}

absl::StatusOr<CublasApi> Open() {
  const char* file = "libcublas.so." EMBER_NAME_OF(CUBLAS_VER_MAJOR);
  void* library = dlopen(file, RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    const std::string first_error = dlerror();
    // Where the loader's search path lacks the toolkit (no ld.so.conf entry for it).
    library = dlopen(absl::StrCat(EMBER_CUBLAS_DIR, "/", file).c_str(), RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) {
      return absl::UnavailableError(
          absl::StrCat("cuBLAS (", file, ") cannot be opened: ", first_error));
    }
  }
  CublasApi api{};
  std::string missing;
  if (!Find(library, EMBER_NAME_OF(cublasCreate), &api.create, &missing) ||
      !Find(library, EMBER_NAME_OF(cublasDestroy), &api.destroy, &missing) ||
      !Find(library, EMBER_NAME_OF(cublasSetStream), &api.set_stream, &missing) ||
      !Find(library, EMBER_NAME_OF(cublasSgemm), &api.sgemm, &missing) ||
      !Find(library, EMBER_NAME_OF(cublasGemmEx), &api.gemm_ex, &missing) ||
      !Find(library, EMBER_NAME_OF(cublasGetStatusString), &api.status_string, &missing)) {
    return absl::UnavailableError(absl::StrCat(file, " has no ", missing));
  }
  return api;  // the library stays open for the process
}
#endif

}  // namespace

absl::StatusOr<const CublasApi*> Cublas() {
  static std::once_flag once;
  static absl::StatusOr<CublasApi>* api = nullptr;
  std::call_once(once, [] { api = new absl::StatusOr<CublasApi>(Open()); });
  if (!api->ok()) return api->status();
  return &**api;
}

}  // namespace ember::kernels
