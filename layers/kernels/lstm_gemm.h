// The fused LSTM's per-step matrix products (declared in lstm_ops.h): MKL's sgemm / dgemm when
// the library is built with it, else Eigen's matrix product. No TensorFlow header. Each of
// lstm_gemm_float.cc and lstm_gemm_double.cc instantiates this for one type in a translation unit
// of its own: Eigen's matrix product (with the matrix-vector and small-size paths it dispatches
// to) is the slowest code of the library to compile, about as slow as the ops in lstm_ops.cc, so
// the three units share the cores of a first build.
//
// Eigen multiplies only b as it is (not transposed): a product with a transposed operand would be
// a second instantiation of its kernel. The ops pass a transposed copy instead (TransposedForGemm).

#ifndef TBPTT_LAYERS_KERNELS_LSTM_GEMM_H_
#define TBPTT_LAYERS_KERNELS_LSTM_GEMM_H_

#include <cstdint>

#include <Eigen/Core>
#ifdef TBPTT_WITH_MKL
#include <mkl_cblas.h>
#include <mkl_service.h>
#endif

namespace tbptt {

enum GemmMode { kGemmEigen = 0, kGemmMkl = 1 };  // as in lstm_ops.h

#ifdef TBPTT_WITH_MKL

// MKL runs on the calling thread (build.py links its sequential layer): its OpenMP threads gained
// nothing at [20, 650] x [650, 2600], and next to TensorFlow's and PyTorch's own pools on two cores
// their spinning made the whole training step up to twice slower. (Selecting the layer at run time
// through mkl_rt instead also cut PyTorch to one thread when loaded before it.) With a fixed code
// path (MKL_CBWR_AUTO, set in lstm_gemm_float.cc), the kernel's results are bitwise reproducible
// on a given CPU.

namespace {

void MklGemm(const float* a, const float* b, float* out, int m, int k, int n, bool transpose_b,
             float beta, int ldb, int ldc) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans, m, n, k, 1.0f,
              a, k, b, ldb, beta, out, ldc);
}
void MklGemm(const double* a, const double* b, double* out, int m, int k, int n, bool transpose_b,
             double beta, int ldb, int ldc) {
  cblas_dgemm(CblasRowMajor, CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans, m, n, k, 1.0,
              a, k, b, ldb, beta, out, ldc);
}

}  // namespace
#endif

template <typename T>
void GemmImpl(int mode, const T* a, const T* b, T* out, int m, int k, int n, bool transpose_b,
              bool accumulate, int ldb, int ldc) {
#ifdef TBPTT_WITH_MKL
  if (mode == kGemmMkl) {
    MklGemm(a, b, out, m, k, n, transpose_b, accumulate ? T(1) : T(0), ldb, ldc);
    return;
  }
#endif
  // One map type (with a run-time row stride) for whole matrices and column blocks alike, so that
  // Eigen's product is instantiated once.
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  Eigen::Map<const Matrix, 0, Stride> ma(a, m, k, Stride(k));
  Eigen::Map<Matrix, 0, Stride> mo(out, m, n, Stride(ldc));
  if (transpose_b) {  // Not on the ops' paths (TransposedForGemm): a plain loop, cheap to compile.
    for (int i = 0; i < m; ++i) {
      for (int j = 0; j < n; ++j) {
        T sum = 0;
        for (int l = 0; l < k; ++l) sum += a[int64_t(i) * k + l] * b[int64_t(j) * ldb + l];
        out[int64_t(i) * ldc + j] = accumulate ? out[int64_t(i) * ldc + j] + sum : sum;
      }
    }
    return;
  }
  Eigen::Map<const Matrix, 0, Stride> mb(b, k, n, Stride(ldb));
  if (accumulate) mo.noalias() += ma * mb; else mo.noalias() = ma * mb;
}

}  // namespace tbptt

#endif  // TBPTT_LAYERS_KERNELS_LSTM_GEMM_H_
