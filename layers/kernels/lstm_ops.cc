// Fused LSTM: one op runs the whole time loop forward, one op runs it backward.
//
// The input projection of every step (x K + b, with the input layer norm) is computed before the
// forward op in one matmul, so the op sees z_x [T, B, 4u]. The backward op returns the gradient of
// that projection and of the initial state, plus the per-step gradients that the weight gradients
// need (dR = sum_t h_in(t-1)^T dz_rec(t), dP = sum_t m(t)^T dh_proj(t)), so those are large matmuls
// after the op instead of T small ones inside it. The gate equations are those of lstm_gates() in
// lstm_cell.py (Keras gate order i, f, c, o):
//
//   h_in = h(t-1) * recurrent_mask            r = h_in R          (r = LN(r) with layer norm)
//   z = z_x(t) + r;  z_i += p_i c(t-1);  z_f += p_f c(t-1)
//   c = clip(sigmoid(z_f) c(t-1) + sigmoid(z_i) tanh(z_c), +-cell_clip)
//   z_o += p_o c;   m = sigmoid(z_o) tanh(LN(c))                  (LN only with layer norm)
//   h = clip(m P, +-proj_clip)                                    (only with a projection)
//   zoneout: c = k_c c(t-1) + (1 - k_c) c,  h = k_h h(t-1) + (1 - k_h) h
//   mask:    a masked row keeps (h(t-1), c(t-1)).
//
// A variant is on when its input is non-empty (peepholes [3, u], projection [u, p], layer-norm
// gains [4u] and [u], mask [T, B], recurrent_mask [B, out], zoneout [T, B, u] and [T, B, out]).
// The rows of the batch are independent sequences. With two or more intra-op threads a call runs
// blocks of rows on their own threads, or splits its large per-step products by columns
// (KernelThreads in lstm_ops.h); each block is computed in a fixed order whatever thread runs it,
// so results are deterministic for a fixed intra-op thread count.
//
// The per-step matrix products are in lstm_gemm_float.cc and lstm_gemm_double.cc, translation units
// of their own that compile on other cores beside this one (Eigen's matrix product is the slowest
// code here to compile); lstm_ops.h holds what they share.

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

#include "lstm_ops.h"

namespace tbptt {

using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

void RunBlocks(tsl::thread::ThreadPool* pool, int blocks, const std::function<void(int)>& block) {
  // Shared with the tasks, which may start after this returns: they then find no block to take and
  // never touch `block` (a reference to the caller's frame).
  struct Shared {
    std::atomic<int> next{0}, done{0};
    const std::function<void(int)>* block;
    int blocks;
    std::mutex mu;
    std::condition_variable all_done;
    void Work() {
      for (int i; (i = next.fetch_add(1, std::memory_order_relaxed)) < blocks;) {
        (*block)(i);
        if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == blocks) {
          std::lock_guard<std::mutex> lock(mu);
          all_done.notify_all();
        }
      }
    }
  };
  auto shared = std::make_shared<Shared>();
  shared->block = &block;
  shared->blocks = blocks;
  for (int i = 1; i < blocks; ++i) pool->Schedule([shared] { shared->Work(); });
  shared->Work();
  // The blocks still running were taken by started tasks. A per-step product's other blocks end
  // about when the caller's own does: spin briefly (some 50 microseconds), then sleep.
  for (int spins = 0; spins < 1000; ++spins) {
    if (shared->done.load(std::memory_order_acquire) == blocks) return;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->all_done.wait(lock, [&] { return shared->done.load() == blocks; });
}

Status ReadDims(OpKernelContext* ctx, Dims* d) {
  const Tensor& xz = ctx->input(0);
  const Tensor& h0 = ctx->input(1);
  const Tensor& c0 = ctx->input(2);
  if (xz.dims() != 3 || xz.dim_size(2) % 4 != 0) {
    return tensorflow::errors::InvalidArgument("xz must be [T, B, 4u], got ",
                                               xz.shape().DebugString());
  }
  d->steps = xz.dim_size(0);
  d->batch = xz.dim_size(1);
  d->units = xz.dim_size(2) / 4;
  d->out = h0.dims() == 2 ? h0.dim_size(1) : -1;
  if (h0.dims() != 2 || h0.dim_size(0) != d->batch || c0.dims() != 2 ||
      c0.dim_size(0) != d->batch || c0.dim_size(1) != d->units) {
    return tensorflow::errors::InvalidArgument("h0 must be [B, out] and c0 [B, u], got ",
                                               h0.shape().DebugString(), " and ",
                                               c0.shape().DebugString());
  }
  const Tensor& r = ctx->input(3);
  if (r.dims() != 2 || r.dim_size(0) != d->out || r.dim_size(1) != 4 * d->units) {
    return tensorflow::errors::InvalidArgument("recurrent_kernel must be [out, 4u], got ",
                                               r.shape().DebugString());
  }
  d->peepholes = ctx->input(4).NumElements() > 0;
  d->projection = ctx->input(5).NumElements() > 0;
  d->layer_norm = ctx->input(6).NumElements() > 0;
  d->mask = ctx->input(9).NumElements() > 0;
  d->recurrent_mask = ctx->input(10).NumElements() > 0;
  d->zoneout = ctx->input(11).NumElements() > 0;
  const int64_t tb = int64_t(d->steps) * d->batch;
  auto expect = [&](int i, bool on, int64_t n, const char* name) -> Status {
    if (on && ctx->input(i).NumElements() != n) {
      return tensorflow::errors::InvalidArgument(name, " has ", ctx->input(i).NumElements(),
                                                 " elements, expected ", n);
    }
    return Status();
  };
  TF_RETURN_IF_ERROR(expect(4, d->peepholes, 3 * d->units, "peepholes"));
  TF_RETURN_IF_ERROR(expect(5, d->projection, int64_t(d->units) * d->out, "projection"));
  TF_RETURN_IF_ERROR(expect(6, d->layer_norm, 4 * d->units, "recurrent_gamma"));
  TF_RETURN_IF_ERROR(expect(7, d->layer_norm, d->units, "cell_gamma"));
  TF_RETURN_IF_ERROR(expect(8, d->layer_norm, d->units, "cell_beta"));
  TF_RETURN_IF_ERROR(expect(9, d->mask, tb, "mask"));
  TF_RETURN_IF_ERROR(expect(10, d->recurrent_mask, int64_t(d->batch) * d->out, "recurrent_mask"));
  TF_RETURN_IF_ERROR(expect(11, d->zoneout, tb * d->units, "zoneout_c"));
  TF_RETURN_IF_ERROR(expect(12, d->zoneout, tb * d->out, "zoneout_h"));
  // With input_gamma, xz is x K before its layer norm, and the kernel adds the norm and the bias.
  d->input_norm = ctx->input(14).NumElements() > 0;
  TF_RETURN_IF_ERROR(expect(14, d->input_norm, 4 * d->units, "input_gamma"));
  TF_RETURN_IF_ERROR(expect(15, d->input_norm, 4 * d->units, "bias"));
  if (!d->projection && d->out != d->units) {
    return tensorflow::errors::InvalidArgument("without a projection h0 must be [B, u]");
  }
  return Status();
}

#define TBPTT_LSTM_INPUTS                                                                      \
  Input("xz: T")                                                                               \
      .Input("h0: T")                                                                          \
      .Input("c0: T")                                                                          \
      .Input("recurrent_kernel: T")                                                            \
      .Input("peepholes: T")                                                                   \
      .Input("projection: T")                                                                  \
      .Input("recurrent_gamma: T")                                                             \
      .Input("cell_gamma: T")                                                                  \
      .Input("cell_beta: T")                                                                   \
      .Input("mask: T")                                                                        \
      .Input("recurrent_mask: T")                                                              \
      .Input("zoneout_c: T")                                                                   \
      .Input("zoneout_h: T")                                                                   \
      .Input("settings: T")                                                                    \
      .Input("input_gamma: T")                                                                 \
      .Input("bias: T")                                                                        \
      .Attr("T: {float, double}")                                                              \
      .Attr("gemm: int = -1")

REGISTER_OP("TbpttLstmForward")
    .TBPTT_LSTM_INPUTS
    .Output("h: T")              // [T, B, out] the carried h after every step
    .Output("c: T")              // [T, B, u] the carried c after every step
    .Output("gates: T")          // [T, B, 4u] sigmoid(z_i), sigmoid(z_f), tanh(z_c), sigmoid(z_o)
    .Output("cell_raw: T")       // [T, B, u] c before the clip (with cell_clip; else empty)
    .Output("recurrent_hat: T")  // [T, B, 4u] h_in R normalised (layer norm; else empty)
    .Output("unprojected: T")    // [T, B, u] m (projection; else empty)
    .Output("projected_raw: T")  // [T, B, p] m P before the clip (proj_clip; else empty)
    .Output("norm_stats: T")     // [T, B, 6] (mean, 1/std) of each norm (a norm; else empty)
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle xz = c->input(0);
      TF_RETURN_IF_ERROR(c->WithRank(xz, 3, &xz));
      auto steps = c->Dim(xz, 0), batch = c->Dim(xz, 1), four_u = c->Dim(xz, 2);
      auto out = c->Dim(c->input(1), 1), units = c->Dim(c->input(2), 1);
      c->set_output(0, c->MakeShape({steps, batch, out}));
      c->set_output(1, c->MakeShape({steps, batch, units}));
      c->set_output(2, c->MakeShape({steps, batch, four_u}));
      for (int i = 3; i < 8; ++i) c->set_output(i, c->UnknownShape());
      return Status();
    });

REGISTER_OP("TbpttLstmBackward")
    .TBPTT_LSTM_INPUTS
    .Input("h: T")
    .Input("c: T")
    .Input("gates: T")
    .Input("cell_raw: T")
    .Input("recurrent_hat: T")
    .Input("unprojected: T")
    .Input("projected_raw: T")
    .Input("norm_stats: T")
    .Input("dh: T")  // [T, B, out] gradient arriving at h of every step
    .Input("dc: T")  // [T, B, u]
    .Output("dxz: T")              // [T, B, 4u] gradient of the input projection (= dz)
    .Output("dh0: T")              // [B, out]
    .Output("dc0: T")              // [B, u]
    .Output("dpeepholes: T")       // [3, u] (or empty)
    .Output("drecurrent_raw: T")   // [T, B, 4u] gradient of h_in R (layer norm; else empty: = dxz)
    .Output("drecurrent_gamma: T") // [4u] (or empty)
    .Output("dcell_gamma: T")      // [u] (or empty)
    .Output("dcell_beta: T")       // [u] (or empty)
    .Output("dprojected: T")       // [T, B, p] gradient of m P after the clip mask (or empty)
    .Output("dinput_gamma: T")     // [4u] (input layer norm; else empty)
    .Output("dbias: T")            // [4u] (input layer norm; else empty)
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      c->set_output(2, c->input(2));
      for (int i = 3; i < 11; ++i) c->set_output(i, c->UnknownShape());
      return Status();
    });

// The forward op: the whole time loop over T steps.

template <typename T>
class LstmForwardOp : public LstmOpBase {
  using Block = Eigen::Map<Array<T>>;
  using ConstBlock = Eigen::Map<const Array<T>>;
  using Row = Eigen::Map<RowArray<T>>;
  using ConstRow = Eigen::Map<const RowArray<T>>;

 public:
  explicit LstmForwardOp(OpKernelConstruction* ctx) : LstmOpBase(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    Dims d;
    OP_REQUIRES_OK(ctx, ReadDims(ctx, &d));
    const int S = d.steps, B = d.batch, U = d.units, O = d.out, G = 4 * U;
    T cclip, pclip, eps;
    OP_REQUIRES_OK(ctx, ReadSettings(ctx, &cclip, &pclip, &eps));
    const bool clip_c = cclip > 0, clip_p = d.projection && pclip > 0;
    const bool norms = d.layer_norm || d.input_norm;
    auto alloc = [ctx](int i, bool on, std::initializer_list<int64_t> dims, T** ptr) {
      AllocateOutput(ctx, i, on, dims, ptr);
    };
    T *h_all, *c_all, *gates, *cell_raw, *rec_hat, *unproj, *proj_raw, *stats;
    alloc(0, true, {S, B, O}, &h_all);
    alloc(1, true, {S, B, U}, &c_all);
    alloc(2, true, {S, B, G}, &gates);
    alloc(3, clip_c, {S, B, U}, &cell_raw);
    alloc(4, d.layer_norm, {S, B, G}, &rec_hat);
    alloc(5, d.projection, {S, B, U}, &unproj);
    alloc(6, clip_p, {S, B, O}, &proj_raw);
    alloc(7, norms, {S, B, kStats}, &stats);
    if (!ctx->status().ok() || S == 0) return;

    const T* xz = ctx->input(0).flat<T>().data();
    const T* h0 = ctx->input(1).flat<T>().data();
    const T* c0 = ctx->input(2).flat<T>().data();
    const T* rk = ctx->input(3).flat<T>().data();
    const T* peep = ctx->input(4).flat<T>().data();
    const T* proj = ctx->input(5).flat<T>().data();
    const T* rgamma = ctx->input(6).flat<T>().data();
    const T* cgamma = ctx->input(7).flat<T>().data();
    const T* cbeta = ctx->input(8).flat<T>().data();
    const T* mask = ctx->input(9).flat<T>().data();
    const T* rmask = ctx->input(10).flat<T>().data();
    const T* zc = ctx->input(11).flat<T>().data();
    const T* zh = ctx->input(12).flat<T>().data();
    const T* in_gamma = ctx->input(14).flat<T>().data();
    const T* bias = ctx->input(15).flat<T>().data();

    const int64_t step_work = int64_t(B) * (int64_t(O) * G + (d.projection ? int64_t(U) * O : 0));
    const int64_t weights = (int64_t(O) * G + (d.projection ? int64_t(U) * O : 0)) * sizeof(T);
    const KernelThreads threads(ctx, gemm_, S, B, step_work, weights);
    ConstRow pi(peep, U), pf(peep + U, U), po(peep + 2 * U, U), rg(rgamma, G), ig(in_gamma, G),
        bs(bias, G), cg(cgamma, U), cb(cbeta, U);
    // The time loop over the rows [b0, b0 + B) of the batch (all of them unless the call is split
    // by rows); row0 below is the step's first row in the [T, batch, n] tensors.
    threads.ForRowBlocks(d.batch, [&](int b0, int B, int) {
      // Whole [B, n] blocks go through Eigen's array expressions, which vectorise the sigmoid and
      // tanh; a scalar loop over std::exp and std::tanh costs more than the matrix product here.
      // Each gate is computed in one pass from its pre-activation terms (peepholes included).
      Buffer<T> h_in(d.recurrent_mask ? B * O : 0), rec(d.layer_norm ? 0 : B * G),
          m(d.projection ? B * U : 0);
      for (int t = 0; t < S; ++t) {
        const int64_t row0 = int64_t(t) * d.batch + b0;
        const T* h_prev = t == 0 ? h0 + int64_t(b0) * O : h_all + (row0 - d.batch) * O;
        const T* c_prev = t == 0 ? c0 + int64_t(b0) * U : c_all + (row0 - d.batch) * U;
        const T* lhs = h_prev;
        if (d.recurrent_mask) {
          const T* rm = rmask + int64_t(b0) * O;
          for (int k = 0; k < B * O; ++k) h_in[k] = h_prev[k] * rm[k];
          lhs = h_in.data();
        }
        // With layer norm the product is normalised in place in the output the backward op reads.
        T* r = d.layer_norm ? rec_hat + row0 * G : rec.data();
        threads.Product(lhs, rk, r, B, O, G, false);
        const T* xzt = xz + row0 * G;
        Block gt(gates + row0 * G, B, G);
        if (norms) {
          for (int b = 0; b < B; ++b) {
            T* st = stats + (row0 + b) * kStats;
            Row rr(r + int64_t(b) * G, G), g(gates + (row0 + b) * G, G);
            ConstRow xb(xzt + int64_t(b) * G, G);
            if (d.layer_norm && d.input_norm) {  // both norms and the sum in one pass
              RowStats(rr.data(), G, eps, st + kRecMean, st + kRecInv);
              RowStats(xb.data(), G, eps, st + kInMean, st + kInInv);
              const T rm = st[kRecMean], ri = st[kRecInv], xm = st[kInMean], xi = st[kInInv];
              T* rp = rr.data();
              T* gp = g.data();
              const T* xp = xb.data();
#pragma omp simd
              for (int j = 0; j < G; ++j) {
                const T rh = (rp[j] - rm) * ri;
                rp[j] = rh;
                gp[j] = (xp[j] - xm) * xi * in_gamma[j] + bias[j] + rh * rgamma[j];
              }
              continue;
            }
            if (d.layer_norm) {
              RowStats(rr.data(), G, eps, st + kRecMean, st + kRecInv);
              rr = (rr - st[kRecMean]) * st[kRecInv];
            }
            if (d.input_norm) {
              RowStats(xb.data(), G, eps, st + kInMean, st + kInInv);
              if (d.layer_norm) {
                g = (xb - st[kInMean]) * st[kInInv] * ig + bs + rr * rg;
              } else {
                g = (xb - st[kInMean]) * st[kInInv] * ig + bs + rr;
              }
            } else {
              g = xb + rr * rg;
            }
          }
        } else {
          gt = ConstBlock(xzt, B, G) + ConstBlock(r, B, G);
        }
        ConstBlock cp(c_prev, B, U);
        // A broadcast row (`block.rowwise() * p`) has no packet access, and Eigen would evaluate
        // the whole expression, logistic and tanh included, one scalar at a time: the peephole and
        // norm terms are added row by row.
        if (d.peepholes) {
          for (int b = 0; b < B; ++b) {
            T* gb = gates + (row0 + b) * G;
            ConstRow cpb(c_prev + int64_t(b) * U, U);
            Row(gb, U) = (Row(gb, U) + cpb * pi).logistic();
            Row(gb + U, U) = (Row(gb + U, U) + cpb * pf).logistic();
          }
        } else {
          gt.leftCols(2 * U) = gt.leftCols(2 * U).logistic();
        }
        gt.middleCols(2 * U, U) = gt.middleCols(2 * U, U).tanh();
        Block c(c_all + row0 * U, B, U);
        c = gt.middleCols(U, U) * cp + gt.leftCols(U) * gt.middleCols(2 * U, U);
        if (clip_c) {
          Block(cell_raw + row0 * U, B, U) = c;
          c = c.max(-cclip).min(cclip);
        }
        if (d.peepholes) {
          for (int b = 0; b < B; ++b) {
            Row ob(gates + (row0 + b) * G + 3 * U, U);
            ob = (ob + ConstRow(c_all + (row0 + b) * U, U) * po).logistic();
          }
        } else {
          gt.rightCols(U) = gt.rightCols(U).logistic();
        }
        T* mt = d.projection ? m.data() : h_all + row0 * O;
        if (d.layer_norm) {
          for (int b = 0; b < B; ++b) {
            T* st = stats + (row0 + b) * kStats;
            ConstRow cr(c_all + (row0 + b) * U, U), o(gates + (row0 + b) * G + 3 * U, U);
            RowStats(cr.data(), U, eps, st + kCellMean, st + kCellInv);
            Row(mt + int64_t(b) * U, U) =
                o * ((cr - st[kCellMean]) * st[kCellInv] * cg + cb).tanh();
          }
        } else {
          Block(mt, B, U) = gt.rightCols(U) * c.tanh();
        }
        T* h = h_all + row0 * O;
        if (d.projection) {
          std::copy(m.begin(), m.end(), unproj + row0 * U);
          threads.Product(m.data(), proj, h, B, U, O, false);
          if (clip_p) {
            std::copy(h, h + B * O, proj_raw + row0 * O);
            for (int k = 0; k < B * O; ++k) h[k] = std::min(std::max(h[k], -pclip), pclip);
          }
        }
        // Zoneout, then the mask: both mix the new state with the previous one.
        T* cs = c_all + row0 * U;
        if (d.zoneout) {
          const T* kc = zc + row0 * U;
          const T* kh = zh + row0 * O;
          for (int k = 0; k < B * U; ++k) cs[k] = kc[k] * c_prev[k] + (T(1) - kc[k]) * cs[k];
          for (int k = 0; k < B * O; ++k) h[k] = kh[k] * h_prev[k] + (T(1) - kh[k]) * h[k];
        }
        if (d.mask) {
          for (int b = 0; b < B; ++b) {
            if (mask[row0 + b] != T(0)) continue;
            std::copy(c_prev + int64_t(b) * U, c_prev + int64_t(b + 1) * U, cs + int64_t(b) * U);
            std::copy(h_prev + int64_t(b) * O, h_prev + int64_t(b + 1) * O, h + int64_t(b) * O);
          }
        }
      }
    });
  }
};

REGISTER_KERNEL_BUILDER(Name("TbpttLstmForward").Device(DEVICE_CPU).TypeConstraint<float>("T"),
                        LstmForwardOp<float>);
REGISTER_KERNEL_BUILDER(Name("TbpttLstmForward").Device(DEVICE_CPU).TypeConstraint<double>("T"),
                        LstmForwardOp<double>);

// The backward op: the time loop walked back from step T-1 to 0.

template <typename T>
class LstmBackwardOp : public LstmOpBase {
  using Block = Eigen::Map<Array<T>>;
  using ConstBlock = Eigen::Map<const Array<T>>;
  using Row = Eigen::Map<RowArray<T>>;
  using ConstRow = Eigen::Map<const RowArray<T>>;

 public:
  explicit LstmBackwardOp(OpKernelConstruction* ctx) : LstmOpBase(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    Dims d;
    OP_REQUIRES_OK(ctx, ReadDims(ctx, &d));
    const int S = d.steps, B = d.batch, U = d.units, O = d.out, G = 4 * U;
    T cclip, pclip, eps;
    OP_REQUIRES_OK(ctx, ReadSettings(ctx, &cclip, &pclip, &eps));
    const bool clip_c = cclip > 0, clip_p = d.projection && pclip > 0;
    auto alloc = [ctx](int i, bool on, std::initializer_list<int64_t> dims, T** ptr) {
      AllocateOutput(ctx, i, on, dims, ptr);
    };
    T *dxz, *dh0, *dc0, *drec, *dproj;
    // The sums over rows and steps: [3u] peepholes, [4u] recurrent gain, [u] cell gain and shift,
    // [4u] input gain and bias, each output when its variant is on.
    T* sum_out[6];
    alloc(0, true, {S, B, G}, &dxz);
    alloc(1, true, {B, O}, &dh0);
    alloc(2, true, {B, U}, &dc0);
    alloc(3, d.peepholes, {3, U}, &sum_out[0]);
    alloc(4, d.layer_norm, {S, B, G}, &drec);
    alloc(5, d.layer_norm, {G}, &sum_out[1]);
    alloc(6, d.layer_norm, {U}, &sum_out[2]);
    alloc(7, d.layer_norm, {U}, &sum_out[3]);
    alloc(8, d.projection, {S, B, O}, &dproj);
    alloc(9, d.input_norm, {G}, &sum_out[4]);
    alloc(10, d.input_norm, {G}, &sum_out[5]);
    if (!ctx->status().ok()) return;
    const T* xz = ctx->input(0).flat<T>().data();
    const T* in_gamma = ctx->input(14).flat<T>().data();

    const T* h0 = ctx->input(1).flat<T>().data();
    const T* c0 = ctx->input(2).flat<T>().data();
    const T* rk = ctx->input(3).flat<T>().data();
    const T* peep = ctx->input(4).flat<T>().data();
    const T* proj = ctx->input(5).flat<T>().data();
    const T* rgamma = ctx->input(6).flat<T>().data();
    const T* cgamma = ctx->input(7).flat<T>().data();
    const T* cbeta = ctx->input(8).flat<T>().data();
    const T* mask = ctx->input(9).flat<T>().data();
    const T* rmask = ctx->input(10).flat<T>().data();
    const T* zc = ctx->input(11).flat<T>().data();
    const T* zh = ctx->input(12).flat<T>().data();
    const T* c_all = ctx->input(17).flat<T>().data();
    const T* gates = ctx->input(18).flat<T>().data();
    const T* cell_raw = ctx->input(19).flat<T>().data();
    const T* rec_hat = ctx->input(20).flat<T>().data();
    const T* proj_raw = ctx->input(22).flat<T>().data();
    const T* stats = ctx->input(23).flat<T>().data();
    const T* dh_in = ctx->input(24).flat<T>().data();
    const T* dc_in = ctx->input(25).flat<T>().data();
    if ((d.layer_norm || d.input_norm) &&
        ctx->input(23).NumElements() != int64_t(S) * B * kStats) {
      ctx->CtxFailure(tensorflow::errors::InvalidArgument(
          "norm_stats has ", ctx->input(23).NumElements(), " elements, expected ",
          int64_t(S) * B * kStats));
      return;
    }

    std::fill(dh0, dh0 + B * O, T(0));
    std::fill(dc0, dc0 + B * U, T(0));
    // The products with R^T and P^T (P [u, p]).
    Buffer<T> rk_copy, proj_copy;
    bool rk_tb, proj_tb = false;
    const T* rk_b = TransposedForGemm(gemm_, rk, O, G, &rk_copy, &rk_tb);
    const T* proj_b =
        d.projection ? TransposedForGemm(gemm_, proj, U, O, &proj_copy, &proj_tb) : proj;
    const int64_t step_work = int64_t(B) * (int64_t(G) * O + (d.projection ? int64_t(O) * U : 0));
    const int64_t weights = (int64_t(O) * G + (d.projection ? int64_t(U) * O : 0)) * sizeof(T);
    const KernelThreads threads(ctx, gemm_, S, B, step_work, weights);
    // Each block of rows sums its rows into sums[block] (laid out as sum_out); the blocks' sums
    // are added in block order at the end.
    const int64_t sum_size[6] = {d.peepholes ? 3 * U : 0, d.layer_norm ? G : 0,
                                 d.layer_norm ? U : 0, d.layer_norm ? U : 0,
                                 d.input_norm ? G : 0, d.input_norm ? G : 0};
    int64_t sum_offset[7] = {0};
    for (int i = 0; i < 6; ++i) sum_offset[i + 1] = sum_offset[i] + sum_size[i];
    std::vector<Buffer<T>> sums(threads.row_blocks(), Buffer<T>(sum_offset[6], T(0)));
    // The time loop over the rows [b0, b0 + B) of the batch (all of them unless the call is split
    // by rows); row0 below is the step's first row in the [T, batch, n] tensors.
    threads.ForRowBlocks(d.batch, [&](int b0, int B, int block) {
      T* const dpeep = sums[block].data() + sum_offset[0];
      T* const drgamma = sums[block].data() + sum_offset[1];
      T* const dcgamma = sums[block].data() + sum_offset[2];
      T* const dcbeta = sums[block].data() + sum_offset[3];
      T* const dingamma = sums[block].data() + sum_offset[4];
      T* const dbias = sums[block].data() + sum_offset[5];
      // dh0 / dc0 carry the gradient of the state after step t while walking back in time.
      T* dh = dh0 + int64_t(b0) * O;
      T* dc = dc0 + int64_t(b0) * U;
      // The peephole gradients are summed elementwise over the steps per row ([B, 3u]) and over the
      // rows once at the end: no reduction inside the time loop.
      Buffer<T> dh_new(B * O), dc_new(B * U), dm(d.projection ? B * U : 0), cs(B * U),
          cn(d.layer_norm ? B * U : 0), tc(B * U), dcn(B * U), dh_rec(B * O),
          dpeep_rows(d.peepholes ? B * 3 * U : 0, T(0));
      ConstRow pi(peep, U), pf(peep + U, U), po(peep + 2 * U, U), cg(cgamma, U), cb(cbeta, U);
      Block dpr(dpeep_rows.data(), B, d.peepholes ? 3 * U : 0);
      for (int t = S - 1; t >= 0; --t) {
        const int64_t row0 = int64_t(t) * d.batch + b0;
        const T* c_prev = t == 0 ? c0 + int64_t(b0) * U : c_all + (row0 - d.batch) * U;
        for (int k = 0; k < B * O; ++k) dh[k] += dh_in[row0 * O + k];
        for (int k = 0; k < B * U; ++k) dc[k] += dc_in[row0 * U + k];
        // Mask and zoneout: split the state's gradient into the new step's part and the carried
        // part, which stays in dh / dc for step t-1.
        if (!d.mask && !d.zoneout) {
          std::copy(dh, dh + B * O, dh_new.data());
          std::copy(dc, dc + B * U, dc_new.data());
          std::fill(dh, dh + B * O, T(0));
          std::fill(dc, dc + B * U, T(0));
        } else {
          for (int b = 0; b < B; ++b) {
            const bool on = !d.mask || mask[row0 + b] != T(0);
            for (int j = 0; j < O; ++j) {
              const int k = b * O + j;
              if (!on) {
                dh_new[k] = 0;
                continue;
              }
              const T kh = d.zoneout ? zh[row0 * O + k] : T(0);
              dh_new[k] = (T(1) - kh) * dh[k];
              dh[k] *= kh;
            }
            for (int j = 0; j < U; ++j) {
              const int k = b * U + j;
              if (!on) {
                dc_new[k] = 0;
                continue;
              }
              const T kc = d.zoneout ? zc[row0 * U + k] : T(0);
              dc_new[k] = (T(1) - kc) * dc[k];
              dc[k] *= kc;
            }
          }
        }
        const T* dmo = dh_new.data();
        if (d.projection) {
          T* dp = dproj + row0 * O;
          for (int k = 0; k < B * O; ++k) {
            const bool pass = !clip_p || std::abs(proj_raw[row0 * O + k]) <= pclip;
            dp[k] = pass ? dh_new[k] : T(0);
          }
          threads.Product(dp, proj_b, dm.data(), B, O, U, proj_tb);
          dmo = dm.data();
        }
        // The step's c (before zoneout and the mask) from the gates, or from cell_raw with a clip.
        ConstBlock gt(gates + row0 * G, B, G);
        ConstBlock cp(c_prev, B, U);
        Block c(cs.data(), B, U);
        if (clip_c) {
          c = ConstBlock(cell_raw + row0 * U, B, U).max(-cclip).min(cclip);
        } else {
          c = gt.middleCols(U, U) * cp + gt.leftCols(U) * gt.middleCols(2 * U, U);
        }
        Block t_c(tc.data(), B, U);
        if (d.layer_norm) {
          for (int b = 0; b < B; ++b) {
            const T* st = stats + (row0 + b) * kStats;
            const int64_t k = int64_t(b) * U;
            Row cnb(cn.data() + k, U);
            cnb = (Row(cs.data() + k, U) - st[kCellMean]) * st[kCellInv];
            Row(tc.data() + k, U) = (cnb * cg + cb).tanh();
          }
        } else {
          t_c = c.tanh();
        }
        ConstBlock dmb(dmo, B, U);
        const auto o = gt.rightCols(U);
        Block dz(dxz + row0 * G, B, G);
        dz.rightCols(U) = dmb * t_c * o * (T(1) - o);
        Block dcnb(dcn.data(), B, U);
        dcnb = dmb * o * (T(1) - t_c * t_c);
        if (d.layer_norm) {
          for (int b = 0; b < B; ++b) {
            const int64_t k = int64_t(b) * U;
            NormalizeRowGrad(dcn.data() + k, cn.data() + k, T(0), T(1),
                             stats[(row0 + b) * kStats + kCellInv], cgamma, U, dcn.data() + k,
                             dcgamma, dcbeta);
          }
        }
        // dcnb becomes the gradient of the step's c, then of c before the clip.
        if (d.peepholes) {
          for (int b = 0; b < B; ++b) {
            const int64_t k = int64_t(b) * U;
            Row(dcn.data() + k, U) +=
                Row(dc_new.data() + k, U) + ConstRow(dxz + (row0 + b) * G + 3 * U, U) * po;
          }
          dpr.rightCols(U) += dz.rightCols(U) * c;
        } else {
          dcnb += Block(dc_new.data(), B, U);
        }
        if (clip_c) {
          dcnb = (ConstBlock(cell_raw + row0 * U, B, U).abs() > cclip).select(T(0), dcnb);
        }
        const auto i = gt.leftCols(U);
        const auto f = gt.middleCols(U, U);
        const auto g = gt.middleCols(2 * U, U);
        dz.leftCols(U) = dcnb * g * i * (T(1) - i);
        dz.middleCols(U, U) = dcnb * cp * f * (T(1) - f);
        dz.middleCols(2 * U, U) = dcnb * i * (T(1) - g * g);
        Block dcp(dc, B, U);
        if (d.peepholes) {
          for (int b = 0; b < B; ++b) {
            const int64_t k = int64_t(b) * U;
            const T* dzb = dxz + (row0 + b) * G;
            Row(dc + k, U) += Row(dcn.data() + k, U) * ConstRow(gates + (row0 + b) * G + U, U) +
                              ConstRow(dzb, U) * pi + ConstRow(dzb + U, U) * pf;
          }
          dpr.leftCols(U) += dz.leftCols(U) * cp;
          dpr.middleCols(U, U) += dz.middleCols(U, U) * cp;
        } else {
          dcp += dcnb * f;
        }
        if (d.layer_norm && d.input_norm) {
          for (int b = 0; b < B; ++b) {
            const int64_t row = row0 + b;
            const T* st = stats + row * kStats;
            NormalizeRowGrad2(dxz + row * G, rec_hat + row * G, st[kRecInv], rgamma, drec + row * G,
                              drgamma, xz + row * G, st[kInMean], st[kInInv], in_gamma, dingamma,
                              dbias, G);
          }
        } else if (d.layer_norm) {
          for (int b = 0; b < B; ++b) {
            const int64_t row = row0 + b;
            NormalizeRowGrad(dxz + row * G, rec_hat + row * G, T(0), T(1),
                             stats[row * kStats + kRecInv], rgamma, G, drec + row * G, drgamma,
                             static_cast<T*>(nullptr));
          }
        }
        const T* drow = d.layer_norm ? drec + row0 * G : dxz + row0 * G;
        threads.Product(drow, rk_b, dh_rec.data(), B, G, O, rk_tb);
        if (d.input_norm && !d.layer_norm) {  // dz -> the gradient of x K before its norm
          for (int b = 0; b < B; ++b) {
            const int64_t row = row0 + b;
            const T* st = stats + row * kStats;
            NormalizeRowGrad(dxz + row * G, xz + row * G, st[kInMean], st[kInInv], st[kInInv],
                             in_gamma, G, dxz + row * G, dingamma, dbias);
          }
        }
        if (d.recurrent_mask) {
          const T* rm = rmask + int64_t(b0) * O;
          for (int k = 0; k < B * O; ++k) dh[k] += dh_rec[k] * rm[k];
        } else {
          for (int k = 0; k < B * O; ++k) dh[k] += dh_rec[k];
        }
      }
      if (d.peepholes) Eigen::Map<RowArray<T>>(dpeep, 3 * U) = dpr.colwise().sum();
    });
    for (int i = 0; i < 6; ++i) {
      if (sum_size[i] == 0) continue;
      T* out = sum_out[i];
      std::copy_n(sums[0].data() + sum_offset[i], sum_size[i], out);
      for (size_t block = 1; block < sums.size(); ++block) {
        const T* add = sums[block].data() + sum_offset[i];
        for (int64_t j = 0; j < sum_size[i]; ++j) out[j] += add[j];
      }
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("TbpttLstmBackward").Device(DEVICE_CPU).TypeConstraint<float>("T"),
                        LstmBackwardOp<float>);
REGISTER_KERNEL_BUILDER(Name("TbpttLstmBackward").Device(DEVICE_CPU).TypeConstraint<double>("T"),
                        LstmBackwardOp<double>);

}  // namespace tbptt
