"""The sequence layer: an `LSTMCell` run over time, state in and out explicitly.

Three implementations compute the same function: a `tf.while_loop` over the cell's step (every
variant, XLA, any device), a fused C++ kernel that runs the whole time loop in one op forward and
one backward (`kernels/`, CPU), and on a GPU for the plain variant cuDNN's LSTM through the routine
`keras.layers.LSTM` calls. `dispatch.choose` picks one per call at trace time.
"""

import importlib
import logging
from typing import NamedTuple

import keras
import tensorflow as tf

from tbptt.layers import dispatch, kernels, validation
from tbptt.layers.base import StatefulCallLayer
from tbptt.layers.lstm_cell import CELL_ARGUMENTS, LSTMCell
from tbptt.layers.state import LSTMState


class _StepInputs(NamedTuple):
  """What the recurrent loop reads at step t (each entry [B, ...], or None)."""

  xz: tf.Tensor  # The input projection [B, 4u], or the inputs [B, F] when projected in the loop.
  mask: tf.Tensor | None
  zoneout_c: tf.Tensor | None
  zoneout_h: tf.Tensor | None


def recurrent_loop(step_fn, inputs: _StepInputs, state: LSTMState, output_size: int, output_dtype):
  """Runs `step_fn` over the leading (time) axis of `inputs` in a `tf.while_loop`.

  A masked step (mask False) carries the previous state unchanged and emits a zero output row.

  Args:
    step_fn: (xz_t, state, zoneout_t or None) -> (output [B, out], new_state).
    inputs: _StepInputs of time-major tensors [T, B, ...]; mask [T, B] bool.
    state: Initial LSTMState.
    output_size: out, for the output TensorArray's element shape.
    output_dtype: dtype of the outputs.

  Returns:
    (outputs [T, B, out], final LSTMState).
  """
  # A static length lets TensorFlow size the loop's gradient accumulators up front.
  steps = inputs.xz.shape[0] or tf.shape(inputs.xz)[0]
  present = {k: v for k, v in inputs._asdict().items() if v is not None}
  arrays = {k: tf.TensorArray(v.dtype, size=steps, element_shape=v.shape[1:]).unstack(v)
            for k, v in present.items()}
  batch = inputs.xz.shape[1]
  outputs = tf.TensorArray(output_dtype, size=steps, element_shape=[batch, output_size])

  def body(t, state, outputs):
    step = {k: a.read(t) for k, a in arrays.items()}
    zoneout = (step["zoneout_c"], step["zoneout_h"]) if "zoneout_c" in step else None
    output, new_state = step_fn(step["xz"], state, zoneout)
    if "mask" in step:
      keep = step["mask"][:, None]
      new_state = LSTMState(*(tf.where(keep, n, p) for n, p in zip(new_state, state)))
      output = tf.where(keep, output, tf.zeros_like(output))
    return t + 1, new_state, outputs.write(t, output)

  _, final_state, outputs = tf.while_loop(lambda t, *_: t < steps, body, (0, state, outputs),
                                          maximum_iterations=steps)
  return outputs.stack(), final_state


@keras.saving.register_keras_serializable(package="tbptt")
class LSTM(StatefulCallLayer):
  """An LSTM over a sequence, with the state passed in and returned explicitly.

  `outputs, final_state = lstm(x, initial_state=None, mask=None, training=False)`.

  The time loop is a `tf.while_loop` (eager, `tf.function`, `jit_compile=True`, unknown batch and
  time sizes, `tf.distribute` all work). The input projection of every step is computed before the
  loop in one matmul (unless the inputs are narrower than the cell, where per-step matmuls are
  cheaper); dropout masks are drawn once per call (variational dropout).

  Args:
    units: Cell size u.
    time_major: Inputs and outputs are [T, B, ...] instead of [B, T, ...].
    return_sequences: Return outputs for every step [B, T, out]; else only the last [B, out].
    return_state: Return `(outputs, final_state)`; else only outputs.
    stateful: Keep the final state between calls (the batch size is fixed by the first call);
      `reset_state()` zeroes it. An explicit `initial_state` wins over the kept state.
    implementation: 'auto' (the fused kernel where it is built and applies, cuDNN for the plain
      variant on a GPU, else the loop), 'fused' (the kernel or an error), 'cudnn' (cuDNN or an
      error) or 'loop'. The choice of the last call is `resolved_implementation` ('fused', 'loop'
      or 'cudnn'), logged (DEBUG) when it changes. XLA compilation and SavedModel export always
      trace the loop. With a mask, cuDNN runs only when every row is right-padded and not empty
      (checked at run time; else the loop runs).
    **kwargs: `LSTMCell` arguments (use_peepholes, num_proj, layer_norm, dropout, ...) and Keras
      layer arguments (name, dtype, ...).
  """

  def __init__(self, units: int, *, time_major: bool = False, return_sequences: bool = True,
               return_state: bool = True, stateful: bool = False, implementation: str = "auto",
               **kwargs):
    cell_kwargs = {k: kwargs.pop(k) for k in CELL_ARGUMENTS if k in kwargs}
    super().__init__(**kwargs)
    self.implementation = dispatch.check_implementation(implementation)
    self.resolved_implementation = None
    self.supports_masking = True
    self.units = units
    self.time_major = bool(time_major)
    self.return_sequences = bool(return_sequences)
    self.return_state = bool(return_state)
    self.stateful = bool(stateful)
    self.cell = LSTMCell(units, dtype=self.dtype_policy, name="cell", **cell_kwargs)
    self.kept_state = None
    if implementation != dispatch.LOOP and kernels.available():
      # Keras compiles a model with XLA under jit_compile='auto' only if every layer says it can;
      # under XLA this layer would trace the loop instead of the faster kernel.
      self.supports_jit = False

  @property
  def output_size(self) -> int:
    return self.cell.output_size

  def build(self, input_shape):
    if len(input_shape) != 3:
      raise ValueError(f"{self.name}: inputs must have rank 3 ({self._layout()}), "
                       f"got shape {tuple(input_shape)}")
    self.cell.build((None, input_shape[-1]))
    if self.stateful:
      batch_size = input_shape[1 if self.time_major else 0]
      if batch_size is None:
        raise ValueError(f"{self.name}: stateful=True needs a known batch size at the first call, "
                         f"got input shape {tuple(input_shape)}; call it once eagerly or use a "
                         "fixed-size Input")
      # autocast=False: the kept state is read in its own dtype (float32) under mixed precision.
      self.kept_state = LSTMState(*(
          self.add_weight(name=f"kept_{name}", shape=(batch_size, size), initializer="zeros",
                          trainable=False, dtype=self.cell.state_dtype, autocast=False)
          for name, size in (("h", self.output_size), ("c", self.units))))

  def _layout(self):
    return "[time, batch, features]" if self.time_major else "[batch, time, features]"

  def compute_mask(self, inputs, mask=None):
    # Keras pairs this with the first output (the sequence); the state carries no mask.
    return mask if self.return_sequences else None

  def get_initial_state(self, batch_size) -> LSTMState:
    """Zero LSTMState(h [B, out], c [B, u]) in the state dtype (float32 under mixed precision)."""
    return self.cell.get_initial_state(batch_size)

  def reset_state(self) -> None:
    """Zeroes the kept state of a stateful layer."""
    if not self.stateful:
      raise ValueError(f"{self.name}: reset_state() needs stateful=True, got stateful=False")
    if self.kept_state is not None:
      for v in self.kept_state:
        v.assign(tf.zeros(v.shape, v.dtype))

  def call(self, inputs, initial_state=None, mask=None, training=False):
    """Runs the LSTM over a sequence.

    Args:
      inputs: [B, T, F] ([T, B, F] if time_major).
      initial_state: Optional LSTMState(h [B, out], c [B, u]); zeros (or the kept state) if None.
      mask: Optional [B, T] bool ([T, B] if time_major); a False step carries the state unchanged
        and its output is zero.
      training: Apply dropout and sampled zoneout.

    Returns:
      `(outputs, final_state)` if return_state else `outputs`. outputs: [B, T, out] ([T, B, out] if
      time_major) if return_sequences, else [B, out] (the final h). final_state: LSTMState.
    """
    inputs = tf.convert_to_tensor(inputs)
    validation.check_rank(self.name, "inputs", inputs, 3, self._layout())
    x = tf.cast(inputs, self.compute_dtype)
    if not self.time_major:
      x = tf.transpose(x, [1, 0, 2])
    validation.check_features(self.name, x, self.cell.input_dim)
    steps, batch_size = tf.shape(x)[0], tf.shape(x)[1]
    cell = self.cell
    if initial_state is not None:
      state = validation.check_state(self.name, initial_state, self.units, self.output_size,
                                     cell.state_dtype, batch_size=x.shape[1])
    elif self.stateful:
      state = LSTMState(*(tf.convert_to_tensor(v.value) for v in self.kept_state))
    else:
      state = cell.get_initial_state(batch_size)
    if mask is not None:
      mask = tf.cast(mask, tf.bool)
      if not self.time_major:
        mask = tf.transpose(mask)

    input_mask, recurrent_mask = cell.get_dropout_masks(batch_size, training)
    kernel_mask = cell.recurrent_kernel_mask(training)  # weight drop: one R for the whole sequence
    if input_mask is not None:
      x *= input_mask[None]
    zoneout = cell.zoneout_keep([steps, batch_size], training)
    implementation = self._resolve(x, mask)
    if implementation == dispatch.FUSED:
      outputs, final_state = self._run_fused(x, state, mask, recurrent_mask, zoneout, kernel_mask)
    elif implementation == dispatch.CUDNN:
      outputs, final_state = self._run_cudnn(x, state, mask, kernel_mask)
    else:
      outputs, final_state = self._run_loop(x, state, mask, recurrent_mask, zoneout, kernel_mask)
    if self.stateful:
      for variable, value in zip(self.kept_state, final_state):
        variable.assign(value)
    if not self.return_sequences:
      outputs = tf.cast(final_state.h, self.compute_dtype)
    elif not self.time_major:
      outputs = tf.transpose(outputs, [1, 0, 2])
    return (outputs, final_state) if self.return_state else outputs

  def _resolve(self, x, mask) -> str:
    """Picks the implementation for this call (at trace time) and logs it when it changes."""
    implementation, reason = self._choose(xla=dispatch.in_xla(), export=dispatch.exporting(),
                                          device=dispatch.device_type(x), has_mask=mask is not None)
    if implementation != self.resolved_implementation:
      # DEBUG: at trace time, before a command line has anything to say; the experiment logs the
      # implementations of its model once (and records them in model_dir).
      logging.getLogger(__name__).debug("%s runs implementation=%r (requested %r: %s)",
                                        self.name, implementation, self.implementation, reason)
    self.resolved_implementation = implementation
    return implementation

  def planned_implementation(self, jit_compile: bool = False) -> str:
    """The implementation a call would run on this machine (no mask, not exporting).

    Args:
      jit_compile: The call is traced under XLA.
    """
    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    try:
      return self._choose(xla=jit_compile, export=False, device=device, has_mask=False)[0]
    except (ValueError, RuntimeError):  # 'fused' that cannot run: the call will raise
      return self.implementation

  def _choose(self, *, xla, export, device, has_mask) -> tuple:
    cell = self.cell
    unsupported = dispatch.fused_unsupported(cell)
    kernel_error = None
    if self.implementation != dispatch.LOOP and not unsupported and not kernels.available():
      kernel_error = kernels.error()
    cudnn_why = dispatch.cudnn_unsupported(cell)
    if cudnn_why is None and _keras_rnn() is None:
      cudnn_why = "Keras's TensorFlow RNN routines (keras.src.backend.tensorflow.rnn) not found"
    return dispatch.choose(
        self.implementation, unsupported=unsupported, kernel_error=kernel_error, xla=xla,
        export=export, device=device, cudnn_ok=cudnn_why is None, cudnn_why=cudnn_why)

  def _run_cudnn(self, x, state, mask, kernel_mask=None):
    """cuDNN's LSTM, as `keras.layers.LSTM` runs it on a GPU: x [T, B, F] -> (outputs [T, B, u],
    state). With a mask that is not right-padded, or has an empty row, the loop runs instead."""
    cell = self.cell
    keras_rnn = _keras_rnn()
    kernel, bias = cell._weight(cell.kernel), cell._weight(cell.bias)
    recurrent_kernel = cell.step_weights(recurrent_kernel_mask=kernel_mask)["recurrent_kernel"]
    # Batch-major: Keras checks a mask as [B, T] whatever time_major says.
    x_bm = tf.transpose(x, [1, 0, 2])
    mask_bm = None if mask is None else tf.transpose(mask)

    def loop():
      return self._run_loop(x, state, mask, None, None, kernel_mask)

    def cudnn():
      try:
        _, outputs, (h, c) = keras_rnn.lstm(
            x_bm, state.h, state.c, mask_bm, kernel, recurrent_kernel, bias,
            activation=tf.tanh, recurrent_activation=tf.sigmoid, return_sequences=True,
            time_major=False)
      except NotImplementedError:  # Keras found no GPU or no cuDNN op: its LSTM runs its loop
        logging.getLogger(__name__).warning("%s: cuDNN is unavailable, running the loop",
                                            self.name)
        self.resolved_implementation = dispatch.LOOP
        return loop()
      return tf.transpose(outputs, [1, 0, 2]), LSTMState(h=h, c=c)

    if mask is None:
      return cudnn()
    lengths = tf.reduce_sum(tf.cast(mask_bm, tf.int32), axis=1)
    padded = tf.sequence_mask(lengths, tf.shape(mask_bm)[1])
    runs = tf.logical_and(tf.reduce_all(tf.equal(mask_bm, padded)), tf.reduce_all(lengths > 0))
    return tf.cond(runs, cudnn, loop)

  def _run_fused(self, x, state, mask, recurrent_mask, zoneout, kernel_mask=None):
    """The C++ kernel over the whole sequence: x [T, B, F] -> (outputs [T, B, out], state).

    The kernel reads the recurrent kernel as an input, so weight drop hands it the masked one.
    """
    cell = self.cell
    w = cell.step_weights(recurrent_kernel_mask=kernel_mask)
    kwargs = {}
    if cell.layer_norm:
      # The kernel normalises x K itself (one op instead of a dozen, and their gradients).
      xz = tf.tensordot(x, cell._weight(cell.kernel), [[2], [0]])
      kwargs["input_gamma"] = cell._weight(cell.input_norm_gamma)
      kwargs["bias"] = (cell._weight(cell.bias) + cell._weight(cell.input_norm_beta)
                        + cell._weight(cell.recurrent_norm_beta))
    else:
      xz = cell.input_projection(x)
    if cell.use_peepholes:
      kwargs["peepholes"] = tf.stack(w["peepholes"])
    if cell.num_proj is not None:
      kwargs["projection"] = w["projection"]
    if cell.layer_norm:
      kwargs["recurrent_gamma"] = w["recurrent_norm_gamma"]
      kwargs["cell_gamma"], kwargs["cell_beta"] = w["cell_norm"]
    if mask is not None:
      kwargs["mask"] = tf.cast(mask, xz.dtype)
    if recurrent_mask is not None:
      kwargs["recurrent_mask"] = recurrent_mask
    if zoneout is not None:
      shape = tf.shape(xz)
      kwargs["zoneout_c"] = tf.broadcast_to(zoneout[0], tf.stack([shape[0], shape[1], self.units]))
      kwargs["zoneout_h"] = tf.broadcast_to(zoneout[1],
                                            tf.stack([shape[0], shape[1], self.output_size]))
    h, c = kernels.lstm(xz, tf.cast(state.h, xz.dtype), tf.cast(state.c, xz.dtype),
                        w["recurrent_kernel"], cell_clip=cell.cell_clip, proj_clip=cell.proj_clip,
                        epsilon=cell.layer_norm_epsilon, **kwargs)
    if x.shape[0]:
      final_state = LSTMState(h=h[-1], c=c[-1])
    else:  # the length is unknown until run time, maybe 0: an empty sequence keeps the state
      final_state = LSTMState(*(tf.cond(tf.shape(h)[0] > 0, lambda v=v: v[-1], lambda s=s: s)
                                for v, s in zip((h, c), state)))
    outputs = h if mask is None else tf.where(mask[:, :, None], h, tf.zeros_like(h))
    return outputs, final_state

  def _run_loop(self, x, state, mask, recurrent_mask, zoneout, kernel_mask=None):
    """The cell's step in a tf.while_loop: x [T, B, F] -> (outputs [T, B, out], state)."""
    cell = self.cell
    batch_size = tf.shape(x)[1]
    per_step_zoneout = zoneout is not None and zoneout[0].shape.rank == 3
    # Project all steps' inputs before the loop (one large matmul) unless the inputs are narrower
    # than the cell: then the [T, B, 4u] projection (and its gradient) costs more to store and
    # restack than T small matmuls save. This holds with layer norm too.
    hoist = cell.input_dim >= cell.units
    weights = cell.step_weights(with_input_weights=not hoist, batch_size=batch_size,
                                recurrent_kernel_mask=kernel_mask)

    def step_fn(x_or_xz, state, zoneout_t):
      xz = x_or_xz if hoist else cell.project_step(x_or_xz, weights)
      return cell.recurrent_step(xz, state, weights, recurrent_mask,
                                 zoneout_t if per_step_zoneout else zoneout)

    loop_inputs = _StepInputs(xz=cell.input_projection(x) if hoist else x, mask=mask,
                              zoneout_c=zoneout[0] if per_step_zoneout else None,
                              zoneout_h=zoneout[1] if per_step_zoneout else None)
    return recurrent_loop(step_fn, loop_inputs, state, self.output_size, self.compute_dtype)

  def compute_output_spec(self, inputs, initial_state=None, mask=None, training=False):
    shape = inputs.shape
    batch, steps = (shape[1], shape[0]) if self.time_major else (shape[0], shape[1])
    out = self.output_size
    if self.return_sequences:
      out_shape = (steps, batch, out) if self.time_major else (batch, steps, out)
    else:
      out_shape = (batch, out)
    outputs = keras.KerasTensor(out_shape, dtype=self.compute_dtype)
    if not self.return_state:
      return outputs
    dtype = self.cell.state_dtype
    return outputs, LSTMState(h=keras.KerasTensor((batch, out), dtype=dtype),
                              c=keras.KerasTensor((batch, self.units), dtype=dtype))

  def get_config(self):
    config = super().get_config()
    cell_config = self.cell.get_config()
    config.update({k: cell_config[k] for k in CELL_ARGUMENTS})
    config.update({"units": self.units, "time_major": self.time_major,
                   "return_sequences": self.return_sequences, "return_state": self.return_state,
                   "stateful": self.stateful, "implementation": self.implementation})
    return config


def _keras_rnn():
  """Keras's TensorFlow RNN routines (its `lstm` runs cuDNN), or None where they are not found."""
  try:  # import_module: the package exports a function `rnn` under the module's name
    rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")
  except ImportError:
    return None
  return rnn if callable(getattr(rnn, "lstm", None)) else None


def planned_implementations(model, jit_compile: bool = False) -> tuple:
  """What every `LSTM` inside `model` (any Keras layer or model) would run, in layer order.

  A deterministic run must resume with the implementations its checkpoint was trained with: the
  kernel and the loop round differently.
  """
  layers = [model] if isinstance(model, LSTM) else [
      layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, LSTM)]
  return tuple(layer.planned_implementation(jit_compile) for layer in layers)
