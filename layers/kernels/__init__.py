"""The fused LSTM ops: built from `lstm_*.cc` on first import, loaded, and wrapped for the layers.

`load()` builds (or finds in the cache) and loads the library once per process; a failed build
logs one warning line naming the cause, and `available()` is then False so the layers run their
graph loop. The gradient of the forward op is registered with TensorFlow, so `tf.GradientTape` and
`tf.gradients` differentiate through it.
"""

import os

import tensorflow as tf

from tbptt.layers.kernels import build

# The translation units (build.py compiles them in parallel, one per core, in this order) and the
# headers they include.
SOURCES = tuple(os.path.join(os.path.dirname(__file__), name) for name in (
    "lstm_ops.cc", "lstm_gemm_float.cc", "lstm_gemm_double.cc", "lstm_ops.h", "lstm_gemm.h"))

# Which library multiplies the per-step matrices (see `Gemm` in lstm_ops.h): MKL when the library
# was built with it (`build.mkl()`), else Eigen. benchmarks/lstm_kernel_spike.py measures both.
GEMM_BEST, GEMM_EIGEN, GEMM_MKL = -1, 0, 1
gemm_mode = GEMM_BEST

_library = build.OpLibrary(
    "lstm_ops", SOURCES, on_load=lambda library: _register_gradient(),
    unavailable="the fused LSTM kernel is unavailable, the layers run their graph loop")


def load():
  """The loaded op library, or None if it could not be built (the cause is in `error()`)."""
  return _library.load()


def available() -> bool:
  """True if the fused kernel is loaded (this call builds and loads it if not tried yet)."""
  return load() is not None


def gemm_library() -> str | None:
  """'MKL <version>' or 'Eigen': what the built kernel multiplies with (None if not built)."""
  if load() is None:
    return None
  found = build.mkl()
  return f"MKL {found['version']}" if found else "Eigen"


def error() -> str | None:
  """Why the fused kernel is unavailable (one line), or None."""
  return _library.error


def _empty(dtype):
  return tf.zeros([0], dtype)


def _on(t) -> bool:
  """An optional input is off when it is the rank-1 empty placeholder `_empty`."""
  return not (t.shape.rank == 1 and t.shape[0] == 0)


def lstm(xz, h0, c0, recurrent_kernel, *, peepholes=None, projection=None, recurrent_gamma=None,
         cell_gamma=None, cell_beta=None, mask=None, recurrent_mask=None, zoneout_c=None,
         zoneout_h=None, cell_clip=None, proj_clip=None, epsilon=1e-3, input_gamma=None, bias=None,
         gemm=None):
  """Runs the LSTM over the whole sequence in one op (see lstm_ops.cc for the equations).

  Args:
    xz: Input projection of every step, bias included [T, B, 4u].
    h0, c0: Initial state [B, out], [B, u].
    recurrent_kernel: R [out, 4u].
    peepholes: Optional [3, u] (p_i, p_f, p_o).
    projection: Optional P [u, p] (then out = p).
    recurrent_gamma, cell_gamma, cell_beta: Layer norm gains [4u], [u] and shift [u] (all or none).
    mask: Optional [T, B], 1 for a step that runs, 0 for one that carries the state.
    recurrent_mask: Optional variational dropout mask on h(t-1) [B, out], already scaled.
    zoneout_c, zoneout_h: Optional keep factors [T, B, u] and [T, B, out].
    cell_clip, proj_clip: Optional positive clip values.
    epsilon: Layer norm epsilon.
    input_gamma, bias: Optional [4u] each (both or none): then xz is x K before its layer norm, and
      the kernel computes input_gamma * LN(xz) + bias (bias: the cell's bias and both norms'
      shifts).
    gemm: GEMM_EIGEN, GEMM_MKL or GEMM_BEST; default `gemm_mode`.

  Returns:
    (h [T, B, out], c [T, B, u]): the carried state after every step.
  """
  library = load()
  if library is None:
    raise RuntimeError(f"the fused LSTM kernel is unavailable: {error()}")
  dtype = xz.dtype

  def opt(t):
    return _empty(dtype) if t is None else tf.cast(t, dtype)
  settings = tf.constant([cell_clip or -1.0, proj_clip or -1.0, epsilon], dtype)
  outputs = library.tbptt_lstm_forward(
      xz, h0, c0, recurrent_kernel, opt(peepholes), opt(projection), opt(recurrent_gamma),
      opt(cell_gamma), opt(cell_beta), opt(mask), opt(recurrent_mask), opt(zoneout_c),
      opt(zoneout_h), settings, opt(input_gamma), opt(bias),
      gemm=gemm_mode if gemm is None else gemm)
  return outputs[0], outputs[1]


def _register_gradient():
  try:
    tf.RegisterGradient("TbpttLstmForward")(_forward_gradient)
  except KeyError:  # already registered by an earlier load in this process
    pass


def _forward_gradient(op, *grads):
  """Gradients of every input of TbpttLstmForward: the kernel walks back in time, then the weight
  gradients are one matmul each over all T * B rows."""
  (xz, h0, c0, recurrent_kernel, peepholes, projection, recurrent_gamma, _, _, _, recurrent_mask,
   _, _, _, input_gamma, _) = op.inputs
  h_all, c_all = op.outputs[0], op.outputs[1]
  dh = grads[0] if grads[0] is not None else tf.zeros_like(h_all)
  dc = grads[1] if grads[1] is not None else tf.zeros_like(c_all)
  (dxz, dh0, dc0, dpeepholes, drecurrent, drecurrent_gamma, dcell_gamma, dcell_beta, dprojected,
   dinput_gamma, dbias) = load().tbptt_lstm_backward(*op.inputs, *op.outputs, dh, dc,
                                                     gemm=op.get_attr("gemm"))
  h_in = tf.concat([h0[None], h_all[:-1]], axis=0)  # h(t-1) of every step [T, B, out]
  if _on(recurrent_mask):
    h_in *= recurrent_mask[None]
  out, four_u = tf.shape(recurrent_kernel)[0], tf.shape(recurrent_kernel)[1]
  # dxz is the gradient of z (= of h_in R) unless a layer norm comes between.
  d_rec = drecurrent if _on(recurrent_gamma) else dxz
  drecurrent_kernel = tf.matmul(tf.reshape(h_in, [-1, out]), tf.reshape(d_rec, [-1, four_u]),
                                transpose_a=True)
  dprojection = None
  if _on(projection):
    unprojected = op.outputs[5]
    dprojection = tf.matmul(tf.reshape(unprojected, [-1, tf.shape(projection)[0]]),
                            tf.reshape(dprojected, [-1, tf.shape(projection)[1]]),
                            transpose_a=True)
  layer_norm = _on(recurrent_gamma)
  return [dxz, dh0, dc0, drecurrent_kernel, dpeepholes if _on(peepholes) else None, dprojection,
          drecurrent_gamma if layer_norm else None, dcell_gamma if layer_norm else None,
          dcell_beta if layer_norm else None, None, None, None, None, None,
          dinput_gamma if _on(input_gamma) else None, dbias if _on(input_gamma) else None]
