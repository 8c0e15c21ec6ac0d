// cuBLAS, opened when the CUDA backend starts (dlopen) instead of linked. Linked, libcublas
// and libcublasLt (hundreds of MB) are mapped and relocated by the dynamic loader before
// main() in every process: 0.17 s of each start on this machine (the cold-start line's
// `exec` phase), also where the model is served on the CPU and cuBLAS is never called.
// Under the tests' host emulation of CUDA the table points at the emulation's functions.
#pragma once

#include <cublas_v2.h>

#include "absl/status/statusor.h"

namespace ember::kernels {

struct CublasApi {
  decltype(&cublasCreate) create;
  decltype(&cublasDestroy) destroy;
  decltype(&cublasSetStream) set_stream;
  decltype(&cublasSgemm) sgemm;
  // The C function; C++ also sees an inline overload taking the legacy compute type.
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType_t, int, const void*,
                            cudaDataType_t, int, const void*, void*, cudaDataType_t, int,
                            cublasComputeType_t, cublasGemmAlgo_t);
  decltype(&cublasGetStatusString) status_string;
};

// The functions, opened on the first call; an error names the library and why it would not
// open (then the CUDA backend is unavailable and auto falls back to the CPU).
absl::StatusOr<const CublasApi*> Cublas();

}  // namespace ember::kernels
