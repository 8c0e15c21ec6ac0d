// cuBLAS in the CUDA emulation: a reference GEMM (double accumulation) queued on the
// handle's stream, in cuBLAS's column-major convention, with its argument checks.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "emulation.h"

namespace cuda_emulation {

struct Blas {
  cudaStream_t stream = nullptr;
};

namespace {

double Element(const void* base, cudaDataType_t type, int64_t i) {
  switch (type) {
    case CUDA_R_32F:
      return static_cast<const float*>(base)[i];
    case CUDA_R_16F:
      return __half2float(static_cast<const __half*>(base)[i]);
    case CUDA_R_16BF:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
  }
  return 0;
}

size_t TypeBytes(cudaDataType_t type) { return type == CUDA_R_32F ? 4 : 2; }

// Bytes a column-major operand of `rows` x `cols` (as stored) with leading dimension ld spans.
size_t Span(int rows, int cols, int ld, cudaDataType_t type) {
  if (rows == 0 || cols == 0) return 0;
  return (static_cast<size_t>(cols - 1) * ld + rows) * TypeBytes(type);
}

cublasStatus_t Invalid(const std::string& why) {
  std::fprintf(stderr, "cuda emulation: cuBLAS: %s\n", why.c_str());
  return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t Gemm(Blas* h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                    float alpha, const void* a, cudaDataType_t at, int lda, const void* b,
                    cudaDataType_t bt, int ldb, float beta, float* c, int ldc) {
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (m < 0 || n < 0 || k < 0) return Invalid("negative m, n or k");
  if (ta == CUBLAS_OP_C || tb == CUBLAS_OP_C) return Invalid("CUBLAS_OP_C is not emulated");
  // Stored shapes: op(A) is m x k, op(B) is k x n.
  const int a_rows = ta == CUBLAS_OP_N ? m : k, a_cols = ta == CUBLAS_OP_N ? k : m;
  const int b_rows = tb == CUBLAS_OP_N ? k : n, b_cols = tb == CUBLAS_OP_N ? n : k;
  if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m)) {
    return Invalid("a leading dimension is smaller than its operand's rows");
  }
  if (!IsDeviceRange(a, Span(a_rows, a_cols, lda, at)) ||
      !IsDeviceRange(b, Span(b_rows, b_cols, ldb, bt)) ||
      !IsDeviceRange(c, Span(m, n, ldc, CUDA_R_32F))) {
    return Invalid("an operand is not inside one device allocation");
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  auto run = [=] {
    std::vector<double> column(k);
    for (int j = 0; j < n; ++j) {
      for (int p = 0; p < k; ++p) {
        column[p] = Element(b, bt, tb == CUBLAS_OP_N ? p + static_cast<int64_t>(j) * ldb
                                                     : j + static_cast<int64_t>(p) * ldb);
      }
      for (int i = 0; i < m; ++i) {
        double sum = 0;
        for (int p = 0; p < k; ++p) {
          sum += Element(a, at, ta == CUBLAS_OP_N ? i + static_cast<int64_t>(p) * lda
                                                  : p + static_cast<int64_t>(i) * lda) *
                 column[p];
        }
        float& out = c[i + static_cast<int64_t>(j) * ldc];
        out = static_cast<float>(alpha * sum + (beta == 0 ? 0.0 : beta * out));
      }
    }
  };
  NoteLaunched("cuBLAS GEMM " + std::to_string(at) + "x" + std::to_string(bt));
  // Queued like a kernel, so it runs in order with the stream's other work.
  if (Submit(h->stream, run) != cudaSuccess) return Invalid("the handle's stream is not live");
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace
}  // namespace cuda_emulation

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  *handle = new cuda_emulation::Blas();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, int k, const float* alpha,
                           const float* a, int lda, const float* b, int ldb, const float* beta,
                           float* c, int ldc) {
  return cuda_emulation::Gemm(handle, transa, transb, m, n, k, *alpha, a, CUDA_R_32F, lda, b,
                              CUDA_R_32F, ldb, *beta, c, ldc);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* a, cudaDataType_t a_type, int lda, const void* b,
                            cudaDataType_t b_type, int ldb, const void* beta, void* c,
                            cudaDataType_t c_type, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo) {
  if (c_type != CUDA_R_32F || compute != CUBLAS_COMPUTE_32F || a_type != b_type) {
    return cuda_emulation::Invalid(
        "emulated GemmEx takes A and B of one type, C in CUDA_R_32F, CUBLAS_COMPUTE_32F");
  }
  return cuda_emulation::Gemm(handle, transa, transb, m, n, k, *static_cast<const float*>(alpha),
                              a, a_type, lda, b, b_type, ldb, *static_cast<const float*>(beta),
                              static_cast<float*>(c), ldc);
}
