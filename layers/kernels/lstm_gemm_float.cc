// Gemm for float (declared in lstm_ops.h, implemented in lstm_gemm.h).

#include "lstm_gemm.h"

namespace tbptt {

#ifdef TBPTT_WITH_MKL
// With a fixed code path, MKL's results are bitwise reproducible on a given CPU; set once when the
// library loads.
const int kMklReproducible = mkl_cbwr_set(MKL_CBWR_AUTO);
#endif

void Gemm(int mode, const float* a, const float* b, float* out, int m, int k, int n,
          bool transpose_b, bool accumulate, int ldb, int ldc) {
  GemmImpl(mode, a, b, out, m, k, n, transpose_b, accumulate, ldb, ldc);
}

}  // namespace tbptt
