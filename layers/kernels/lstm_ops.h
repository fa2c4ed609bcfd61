// What the fused LSTM's forward and backward ops share (see lstm_ops.cc for the equations): the
// per-step matrix product, the layer-norm row helpers, the sizes of a call and the ops' base class.
// The ops (lstm_ops.cc) and the matrix products (lstm_gemm_float.cc, lstm_gemm_double.cc) are
// separate translation units, so that a first build runs the compiler on every core.

#ifndef TBPTT_LAYERS_KERNELS_LSTM_OPS_H_
#define TBPTT_LAYERS_KERNELS_LSTM_OPS_H_

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tbptt {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;

// How the per-step matrix products run: Eigen's matrix product on the op's thread, or MKL's
// sgemm / dgemm (3x faster at these shapes in benchmarks/lstm_kernel_spike.py) when the library
// was built with it (TBPTT_WITH_MKL, set by build.py when the `mkl-devel` package is installed).
enum GemmMode { kGemmEigen = 0, kGemmMkl = 1 };

#ifdef TBPTT_WITH_MKL
constexpr bool kHaveMkl = true;
#else
constexpr bool kHaveMkl = false;
#endif

// out[m, n] (+)= a[m, k] * b[k, n] (transpose_b: b is [n, k]); row-major, a contiguous, the rows of
// b and out ldb and ldc apart (a column block of a wider matrix). Defined in lstm_gemm_float.cc and
// lstm_gemm_double.cc (lstm_gemm.h), which instantiate Eigen's matrix product (the slowest code to
// compile here) and include MKL. With Eigen, pass b through TransposedForGemm.
void Gemm(int mode, const float* a, const float* b, float* out, int m, int k, int n,
          bool transpose_b, bool accumulate, int ldb, int ldc);
void Gemm(int mode, const double* a, const double* b, double* out, int m, int k, int n,
          bool transpose_b, bool accumulate, int ldb, int ldc);

// Runs block(i) for every i in [0, blocks): the calling thread and blocks - 1 tasks scheduled on
// `pool` take the blocks in turn, and it returns when every block is done. A task that starts after
// the last block was taken does nothing, so the caller never waits for a task to start (it runs
// every block itself if none starts: no deadlock when the caller is one of the pool's threads).
void RunBlocks(tsl::thread::ThreadPool* pool, int blocks, const std::function<void(int)>& block);

// How one op call uses the op's intra-op thread pool (TensorFlow's intra_op_parallelism_threads;
// nothing is split when it has one thread):
//  - kRows: the rows of the batch are independent sequences, so the batch is cut into one block of
//    rows per thread and each block runs the whole time loop (products and elementwise work) on
//    its own thread; one fork and join per call. Each thread multiplies by all of R, so this is
//    chosen when the weights fit in a core's L2 cache (kRowSplitMaxWeightBytes) and the call has
//    at least kRowSplitMinWork multiply-adds in its products.
//  - kColumns: only the per-step products [m, k] x [k, n] of at least kColumnSplitMinWork
//    multiply-adds are cut by output columns, one block per thread, every step (the threads share
//    the reading of R, which does not fit in L2); the elementwise work stays on the op's thread.
//  - kNone: everything on the op's thread.
// $TBPTT_KERNEL_SPLIT (none, rows or columns; read at every call; unset or another value: the
// choice above) forces one of them where the pool and the shape allow it (tests, benchmarks).
// The blocks are a fixed function of the shape and the pool's size, and a block's floats do not
// depend on which thread computes it, so the results are reproducible for a given thread count;
// across thread counts they agree within float rounding (a smaller product may round differently,
// and the backward op then sums the layer-norm and peephole gradients per block).
enum class Split { kNone, kRows, kColumns };
constexpr int64_t kRowSplitMaxWeightBytes = int64_t(1) << 20;
constexpr int64_t kRowSplitMinWork = 4000000;
constexpr int64_t kColumnSplitMinWork = 4000000;

class KernelThreads {
 public:
  // steps, batch: of the call; step_work: the multiply-adds of one step's products; weight_bytes:
  // the size of R (and P).
  KernelThreads(OpKernelContext* ctx, int mode, int steps, int batch, int64_t step_work,
                int64_t weight_bytes)
      : mode_(mode) {
    const auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    pool_ = threads->workers;
    threads_ = pool_ != nullptr ? threads->num_threads : 1;
    const char* env = std::getenv("TBPTT_KERNEL_SPLIT");
    const std::string forced = env != nullptr ? env : "";
    if (threads_ < 2 || forced == "none") {
      split_ = Split::kNone;
    } else if (forced == "rows" || forced == "columns") {
      split_ = forced == "rows" ? Split::kRows : Split::kColumns;
    } else if (weight_bytes <= kRowSplitMaxWeightBytes && step_work * steps >= kRowSplitMinWork) {
      split_ = Split::kRows;
    } else {
      split_ = Split::kColumns;  // each product still checks kColumnSplitMinWork
      min_column_work_ = kColumnSplitMinWork;
    }
    row_blocks_ = split_ == Split::kRows ? std::min(threads_, batch) : 1;
    if (row_blocks_ < 2) row_blocks_ = 1;
  }

  // Calls rows(b0, nb, i) for the blocks i of rows [b0, b0 + nb) that cover [0, batch): one block
  // per thread when the call is split by rows, else one block of all rows on the calling thread.
  template <typename Fn>
  void ForRowBlocks(int batch, const Fn& rows) const {
    if (row_blocks_ == 1) {
      rows(0, batch, 0);
      return;
    }
    const int blocks = row_blocks_;
    RunBlocks(pool_, blocks, [&](int i) {
      const int b0 = int(int64_t(batch) * i / blocks), b1 = int(int64_t(batch) * (i + 1) / blocks);
      rows(b0, b1 - b0, i);
    });
  }
  int row_blocks() const { return row_blocks_; }

  // out[m, n] = a[m, k] * b, b [k, n] (transpose_b: [n, k]), cut into column blocks when the call
  // is split by columns and the product is large enough.
  template <typename T>
  void Product(const T* a, const T* b, T* out, int m, int k, int n, bool transpose_b) const {
    const int ldb = transpose_b ? k : n;
    int blocks = 1;
    if (split_ == Split::kColumns && int64_t(m) * k * n >= min_column_work_) {
      blocks = std::max(1, std::min(threads_, n / kAlign));
    }
    if (blocks == 1) {
      Gemm(mode_, a, b, out, m, k, n, transpose_b, false, ldb, n);
      return;
    }
    RunBlocks(pool_, blocks, [&](int i) {
      const int j0 = Boundary(n, blocks, i), j1 = Boundary(n, blocks, i + 1);
      const T* bj = transpose_b ? b + int64_t(j0) * ldb : b + j0;
      Gemm(mode_, a, bj, out + j0, m, k, j1 - j0, transpose_b, false, ldb, n);
    });
  }

 private:
  // Column blocks start at multiples of 16 columns (a 64-byte line of floats).
  static constexpr int kAlign = 16;
  static int Boundary(int n, int blocks, int i) {
    return i == blocks ? n : int(int64_t(n) * i / blocks / kAlign * kAlign);
  }

  int mode_;
  tsl::thread::ThreadPool* pool_;
  int threads_;
  Split split_;
  int row_blocks_ = 1;
  int64_t min_column_work_ = 0;
};

// The ops' scratch buffers, aligned as TensorFlow aligns tensors (EIGEN_MAX_ALIGN_BYTES, 64 with
// AVX-512): MKL's and Eigen's products may take a different path, and round differently, for
// differently aligned operands, and malloc's alignment changes from run to run (with the thread).
template <typename T>
using Buffer = std::vector<T, Eigen::aligned_allocator<T>>;

// The right operand of out = a b^T for Gemm, b [n, k]: MKL reads b as it is (*transpose_b = true);
// for Eigen, a transposed copy [k, n] in *copy (*transpose_b = false), made once per op call.
template <typename T>
const T* TransposedForGemm(int mode, const T* b, int n, int k, Buffer<T>* copy,
                           bool* transpose_b) {
  *transpose_b = mode != kGemmEigen;
  if (*transpose_b) return b;
  copy->resize(int64_t(n) * k);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < k; ++j) (*copy)[int64_t(j) * n + i] = b[int64_t(i) * k + j];
  }
  return copy->data();
}

template <typename T>
using Array = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using RowArray = Eigen::Array<T, 1, Eigen::Dynamic>;

// Layer-norm statistics of one row v[n]: its mean and 1/sqrt(variance + epsilon), in two passes
// (the variance from the centred values). The sums run in T with Eigen's vectorised reduction
// (several packet accumulators), as the graph loop's reduce_mean sums in T too.
template <typename T>
inline void RowStats(const T* v, int n, T epsilon, T* mean, T* inv_std) {
  Eigen::Map<const RowArray<T>> a(v, n);
  const T mu = a.sum() / T(n);
  const T var = (a - mu).square().sum() / T(n);
  *mean = mu;
  *inv_std = T(1) / std::sqrt(var + epsilon);
}

// Gradient of y = gamma * v_hat (+ beta) for one row of n, where v_hat = (src - mu) * scale (src
// is the row before its norm, or v_hat itself with mu = 0, scale = 1): dv from dy (dv may be dy);
// accumulates dgamma (and dbeta). One pass for the two sums and the gain gradients, one for dv;
// `omp simd` (-fopenmp-simd, no OpenMP runtime) lets the compiler vectorise the sums.
template <typename T>
inline void NormalizeRowGrad(const T* dy, const T* src, T mu, T scale, T inv_std, const T* gamma,
                             int n, T* dv, T* dgamma, T* dbeta) {
  T sum_d = 0, sum_dv = 0;
  if (dbeta != nullptr) {
#pragma omp simd reduction(+ : sum_d, sum_dv)
    for (int j = 0; j < n; ++j) {
      const T vh = (src[j] - mu) * scale, dg = dy[j] * gamma[j];
      sum_d += dg;
      sum_dv += dg * vh;
      dgamma[j] += dy[j] * vh;
      dbeta[j] += dy[j];
    }
  } else {
#pragma omp simd reduction(+ : sum_d, sum_dv)
    for (int j = 0; j < n; ++j) {
      const T vh = (src[j] - mu) * scale, dg = dy[j] * gamma[j];
      sum_d += dg;
      sum_dv += dg * vh;
      dgamma[j] += dy[j] * vh;
    }
  }
  const T mean_d = sum_d / T(n), mean_dv = sum_dv / T(n);
#pragma omp simd
  for (int j = 0; j < n; ++j) {
    const T vh = (src[j] - mu) * scale;
    dv[j] = inv_std * (dy[j] * gamma[j] - mean_d - vh * mean_dv);
  }
}

// Both norms' gradients from one row dz of z = gamma_r * r_hat + gamma_x * x_hat + bias (the
// layer-norm variant): the recurrent one to dr (r_hat is stored normalised), the input one to dz
// itself (x_hat = (x - mu_x) * inv_x from the raw input projection x), in two passes over the row.
template <typename T>
inline void NormalizeRowGrad2(T* dz, const T* r_hat, T inv_r, const T* gamma_r, T* dr,
                              T* dgamma_r, const T* x, T mu_x, T inv_x, const T* gamma_x,
                              T* dgamma_x, T* dbias, int n) {
  T sum_r = 0, sum_rv = 0, sum_x = 0, sum_xv = 0;
#pragma omp simd reduction(+ : sum_r, sum_rv, sum_x, sum_xv)
  for (int j = 0; j < n; ++j) {
    const T d = dz[j], rv = r_hat[j], xv = (x[j] - mu_x) * inv_x;
    const T dgr = d * gamma_r[j], dgx = d * gamma_x[j];
    sum_r += dgr;
    sum_rv += dgr * rv;
    sum_x += dgx;
    sum_xv += dgx * xv;
    dgamma_r[j] += d * rv;
    dgamma_x[j] += d * xv;
    dbias[j] += d;
  }
  const T mr = sum_r / T(n), mrv = sum_rv / T(n), mx = sum_x / T(n), mxv = sum_xv / T(n);
#pragma omp simd
  for (int j = 0; j < n; ++j) {
    const T d = dz[j], xv = (x[j] - mu_x) * inv_x;
    dr[j] = inv_r * (d * gamma_r[j] - mr - r_hat[j] * mrv);
    dz[j] = inv_x * (d * gamma_x[j] - mx - xv * mxv);
  }
}

// Per row of every step, the forward op keeps (mean, 1/std) of the recurrent, input and cell norms
// (output norm_stats [T, B, kStats]), so the backward op reduces nothing twice.
constexpr int kStats = 6;
enum StatIndex { kRecMean = 0, kRecInv = 1, kInMean = 2, kInInv = 3, kCellMean = 4, kCellInv = 5 };

// The sizes of one call, read from the forward op's inputs.
struct Dims {
  int steps, batch, units, out;
  bool peepholes, projection, layer_norm, mask, recurrent_mask, zoneout, input_norm;
};


// Reads and checks the sizes of a call from the forward op's inputs (the backward op has the same
// first inputs).
Status ReadDims(OpKernelContext* ctx, Dims* d);

// What the forward and backward ops share: the choice of matrix-product library, the settings
// input and outputs that are empty when their variant is off.
class LstmOpBase : public OpKernel {
 public:
  explicit LstmOpBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("gemm", &gemm_));
    if (gemm_ < 0) gemm_ = kHaveMkl ? kGemmMkl : kGemmEigen;
    OP_REQUIRES(ctx, gemm_ == kGemmEigen || (gemm_ == kGemmMkl && kHaveMkl),
                tensorflow::errors::InvalidArgument("gemm=", gemm_, " is not built in"));
  }

 protected:
  // settings: (cell_clip, proj_clip, epsilon), a clip <= 0 is off. A tensor, not float attrs, so
  // that the float64 kernel clips at exactly the float64 value.
  template <typename T>
  static Status ReadSettings(OpKernelContext* ctx, T* cclip, T* pclip, T* eps) {
    if (ctx->input(13).NumElements() != 3) {
      return tensorflow::errors::InvalidArgument("settings must have 3 elements");
    }
    const T* settings = ctx->input(13).flat<T>().data();
    *cclip = settings[0];
    *pclip = settings[1];
    *eps = settings[2];
    return Status();
  }

  // Output i, shaped `dims` when `on`, else empty; the caller checks ctx->status() afterwards.
  template <typename T>
  static void AllocateOutput(OpKernelContext* ctx, int i, bool on,
                             std::initializer_list<int64_t> dims, T** ptr) {
    Tensor* t = nullptr;
    TensorShape shape = on ? TensorShape(dims) : TensorShape({0});
    OP_REQUIRES_OK(ctx, ctx->allocate_output(i, shape, &t));
    *ptr = t->flat<T>().data();
  }

  int gemm_;
};

}  // namespace tbptt

#endif  // TBPTT_LAYERS_KERNELS_LSTM_OPS_H_
