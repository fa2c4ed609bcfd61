// Gemm for double (declared in lstm_ops.h, implemented in lstm_gemm.h).

#include "lstm_gemm.h"

namespace tbptt {

void Gemm(int mode, const double* a, const double* b, double* out, int m, int k, int n,
          bool transpose_b, bool accumulate, int ldb, int ldc) {
  GemmImpl(mode, a, b, out, m, k, n, transpose_b, accumulate, ldb, ldc);
}

}  // namespace tbptt
