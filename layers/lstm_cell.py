"""One LSTM step with every variant: peepholes, projection, clipping, layer norm, dropout, zoneout.

Layer norm lives in `layer_norm.py`, the dropout and zoneout noise in `noise.py`.

The step is split in two so that a sequence layer can hoist the part that does not depend on time:

  input_projection(x)           -> LN_in(x K) + b           (one matmul for all steps of a sequence)
  project_step(x_t, weights)    -> the same for one step     (inside the loop, for narrow inputs)
  recurrent_step(xz, state)     -> gates from xz + LN_rec(h R), new state

Weight layout and gate order (i, f, c, o) are Keras's, so weights copy to and from
`keras.layers.LSTM`.
"""

import functools
import inspect
from typing import Any

import keras
import tensorflow as tf

from tbptt.layers import noise, validation
from tbptt.layers.base import StatefulCallLayer
from tbptt.layers.layer_norm import layer_norm
from tbptt.layers.state import LSTMState, zero_state


def lstm_gates(z, c_prev, peepholes=None, cell_clip=None, cell_norm=None):
  """The LSTM gate equations for one step (Hochreiter & Schmidhuber 1997; Gers & Schmidhuber 2000).

    i = sigmoid(z_i + p_i * c(t-1))          f = sigmoid(z_f + p_f * c(t-1))
    c(t) = clip(f * c(t-1) + i * tanh(z_c), +-cell_clip)
    o = sigmoid(z_o + p_o * c(t))            h(t) = o * tanh(LN(c(t)))

  Peephole terms are present only when `peepholes` is given; LN only when `cell_norm` is given.

  Args:
    z: Pre-activations [B, 4u] in gate order i, f, c, o.
    c_prev: Previous cell state [B, u].
    peepholes: Optional (p_i, p_f, p_o), each [u].
    cell_clip: Optional positive float; c(t) is clipped to +-cell_clip and the clipped value is
      carried.
    cell_norm: Optional callable applied to c(t) before the output tanh (layer norm).

  Returns:
    (h, c): the unprojected output [B, u] and the new cell state [B, u].
  """
  z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
  if peepholes is not None:
    p_i, p_f, p_o = peepholes
    z_i += p_i * c_prev
    z_f += p_f * c_prev
  c = tf.sigmoid(z_f) * c_prev + tf.sigmoid(z_i) * tf.tanh(z_c)
  if cell_clip is not None:
    c = tf.clip_by_value(c, -cell_clip, cell_clip)
  if peepholes is not None:
    z_o += p_o * c
  c_out = c if cell_norm is None else cell_norm(c)
  return tf.sigmoid(z_o) * tf.tanh(c_out), c


@keras.saving.register_keras_serializable(package="tbptt")
class LSTMCell(StatefulCallLayer):
  """One LSTM step: `output, new_state = cell(x_t, state, training=False)`.

  Equations (u = units, out = num_proj or units):
    z = LN_in(x K) + LN_rec(h(t-1) R) + b            (LN only with layer_norm)
    i, f, c(t), o, h = lstm_gates(z, c(t-1), ...)    (see `lstm_gates`)
    h(t) = clip(h @ P, +-proj_clip)                   (only with num_proj; Sak et al. 2014)
    zoneout: each unit keeps its previous value with probability p in training; at inference
             c(t) = p_c c(t-1) + (1 - p_c) c(t),  h(t) = p_h h(t-1) + (1 - p_h) h(t).
  Dropout is variational (Gal & Ghahramani 2016): one mask on x and one on h(t-1) per sequence. A
  standalone cell draws masks at every call unless given `dropout_masks` (see `get_dropout_masks`);
  `LSTM` draws them once per sequence. Weight drop (DropConnect on R, Wan et al. 2013; Merity et al.
  2017) zeroes entries of the recurrent kernel with one mask per sequence, shared by every row and
  step: the step reads R * mask / (1 - rate) (see `recurrent_kernel_mask`).

  Weights: `kernel` [F, 4u], `recurrent_kernel` [out, 4u], `bias` [4u]; `peephole_i|f|o` [u];
  `projection` [u, num_proj]; layer norm `input_norm_gamma|beta`, `recurrent_norm_gamma|beta` [4u],
  `cell_norm_gamma|beta` [u]. Under a mixed-precision policy the matmuls run in the compute dtype
  and the state is kept in the variable dtype (float32).

  Args:
    units: Cell size u, a positive integer.
    use_peepholes: Add peephole connections from the cell state to the gates.
    num_proj: If set, project h to this many units.
    proj_clip: If set (with num_proj), clip the projected h to +-proj_clip.
    cell_clip: If set, clip c(t) to +-cell_clip.
    layer_norm: Layer-normalise the input and recurrent pre-activations and the cell state
      (Ba et al. 2016).
    layer_norm_epsilon: Added to the variance in layer norm.
    unit_forget_bias: Initialise the forget-gate bias to 1.
    dropout: Variational dropout rate on the inputs, in [0, 1).
    recurrent_dropout: Variational dropout rate on h(t-1), in [0, 1).
    weight_drop: DropConnect rate on the recurrent kernel R, in [0, 1).
    zoneout_cell: Zoneout rate on c, in [0, 1).
    zoneout_hidden: Zoneout rate on h, in [0, 1).
    kernel_initializer, recurrent_initializer, bias_initializer, projection_initializer,
    peephole_initializer: Keras initializers.
    kernel_regularizer, recurrent_regularizer, bias_regularizer, projection_regularizer:
      Keras regularizers.
    seed: Seed for the dropout and zoneout noise.
    **kwargs: Keras layer arguments (name, dtype, ...).
  """

  def __init__(self, units: int, *, use_peepholes: bool = False, num_proj: int | None = None,
               proj_clip: float | None = None, cell_clip: float | None = None,
               layer_norm: bool = False, layer_norm_epsilon: float = 1e-3,
               unit_forget_bias: bool = True, dropout: float = 0.0, recurrent_dropout: float = 0.0,
               weight_drop: float = 0.0, zoneout_cell: float = 0.0, zoneout_hidden: float = 0.0,
               kernel_initializer: Any = "glorot_uniform",
               recurrent_initializer: Any = "orthogonal",
               bias_initializer: Any = "zeros", projection_initializer: Any = "glorot_uniform",
               peephole_initializer: Any = "glorot_uniform", kernel_regularizer: Any = None,
               recurrent_regularizer: Any = None, bias_regularizer: Any = None,
               projection_regularizer: Any = None, seed: int | None = None, **kwargs):
    super().__init__(**kwargs)
    self.units = validation.positive_int("units", units)
    self.use_peepholes = bool(use_peepholes)
    self.num_proj = None if num_proj is None else validation.positive_int("num_proj", num_proj)
    self.proj_clip = validation.optional_positive("proj_clip", proj_clip)
    if self.proj_clip is not None and self.num_proj is None:
      raise ValueError(f"proj_clip needs num_proj: got proj_clip={proj_clip} and num_proj=None")
    self.cell_clip = validation.optional_positive("cell_clip", cell_clip)
    self.layer_norm = bool(layer_norm)
    self.layer_norm_epsilon = validation.positive("layer_norm_epsilon", layer_norm_epsilon)
    self.unit_forget_bias = bool(unit_forget_bias)
    self.dropout = validation.probability("dropout", dropout)
    self.recurrent_dropout = validation.probability("recurrent_dropout", recurrent_dropout)
    self.weight_drop = validation.probability("weight_drop", weight_drop)
    self.zoneout_cell = validation.probability("zoneout_cell", zoneout_cell)
    self.zoneout_hidden = validation.probability("zoneout_hidden", zoneout_hidden)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)
    self.projection_initializer = keras.initializers.get(projection_initializer)
    self.peephole_initializer = keras.initializers.get(peephole_initializer)
    self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    self.recurrent_regularizer = keras.regularizers.get(recurrent_regularizer)
    self.bias_regularizer = keras.regularizers.get(bias_regularizer)
    self.projection_regularizer = keras.regularizers.get(projection_regularizer)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)

  @property
  def output_size(self) -> int:
    """Size of h(t): num_proj or units."""
    return self.num_proj or self.units

  @property
  def state_size(self) -> LSTMState:
    return LSTMState(h=self.output_size, c=self.units)

  @property
  def state_dtype(self):
    """State dtype: the variable dtype (float32 under mixed precision)."""
    return self.variable_dtype

  def build(self, input_shape):
    input_dim = input_shape[-1]
    if input_dim is None:
      raise ValueError(f"{self.name}: the last (feature) dimension of the inputs must be known, "
                       f"got input shape {tuple(input_shape)}")
    u = self.units
    self.input_dim = int(input_dim)
    self.kernel = self.add_weight(name="kernel", shape=(self.input_dim, 4 * u),
                                  initializer=self.kernel_initializer,
                                  regularizer=self.kernel_regularizer)
    self.recurrent_kernel = self.add_weight(name="recurrent_kernel",
                                            shape=(self.output_size, 4 * u),
                                            initializer=self.recurrent_initializer,
                                            regularizer=self.recurrent_regularizer)
    if self.unit_forget_bias:
      base = self.bias_initializer

      def bias_initializer(shape, dtype=None):
        return tf.concat([base((u,), dtype=dtype), tf.ones((u,), dtype=dtype),
                          base((2 * u,), dtype=dtype)], axis=0)
    else:
      bias_initializer = self.bias_initializer
    self.bias = self.add_weight(name="bias", shape=(4 * u,), initializer=bias_initializer,
                                regularizer=self.bias_regularizer)
    if self.use_peepholes:
      self.peephole_i = self.add_weight(name="peephole_i", shape=(u,),
                                        initializer=self.peephole_initializer)
      self.peephole_f = self.add_weight(name="peephole_f", shape=(u,),
                                        initializer=self.peephole_initializer)
      self.peephole_o = self.add_weight(name="peephole_o", shape=(u,),
                                        initializer=self.peephole_initializer)
    if self.num_proj is not None:
      self.projection = self.add_weight(name="projection", shape=(u, self.num_proj),
                                        initializer=self.projection_initializer,
                                        regularizer=self.projection_regularizer)
    if self.layer_norm:
      for prefix, size in (("input_norm", 4 * u), ("recurrent_norm", 4 * u), ("cell_norm", u)):
        setattr(self, f"{prefix}_gamma", self.add_weight(name=f"{prefix}_gamma", shape=(size,),
                                                         initializer="ones"))
        setattr(self, f"{prefix}_beta", self.add_weight(name=f"{prefix}_beta", shape=(size,),
                                                        initializer="zeros"))

  # -- pieces used by the sequence layer -----------------------------------------------------------

  def _weight(self, variable, dtype=None):
    return tf.cast(tf.convert_to_tensor(variable.value), dtype or self.compute_dtype)

  def input_projection(self, x):
    """LN_in(x K) + b (+ the recurrent norm's shift) for any leading shape: x [..., F] -> [..., 4u].

    This is the part of the step that does not depend on the state, so a sequence layer computes it
    for every time step in one matmul before the recurrent loop. The constant shift of LN_rec is
    added here too (z is a sum), which takes one op and one per-step reduction out of the loop.
    Compute dtype.
    """
    validation.check_features(self.name, x, self.input_dim)
    x = tf.cast(x, self.compute_dtype)
    kernel = self._weight(self.kernel)
    xk = (tf.matmul(x, kernel) if x.shape.rank == 2
          else tf.tensordot(x, kernel, [[x.shape.rank - 1], [0]]))
    if self.layer_norm:
      xk = layer_norm(xk, self._weight(self.input_norm_gamma), self._weight(self.input_norm_beta),
                      self.layer_norm_epsilon)
      xk += self._weight(self.recurrent_norm_beta)
    return xk + self._weight(self.bias)

  def step_weights(self, with_input_weights: bool = False, batch_size=None,
                   recurrent_kernel_mask=None) -> dict:
    """The weights the recurrent step reads, cast once (outside any time loop).

    Args:
      recurrent_kernel_mask: Optional weight-drop mask [out, 4u] (`recurrent_kernel_mask`): the
        step then reads the masked recurrent kernel.
      with_input_weights: Also return what `project_step` reads (`kernel`, `bias` and the input
        norm's gamma), for projecting the inputs inside the loop.
      batch_size: If given, the per-unit vectors (bias, peepholes, layer norm gamma and beta) are
        broadcast to [B, N] here. Inside a time loop the gradient of a [N] vector is then summed
        over the batch once, after the loop, instead of at every step.
    """
    s = self.state_dtype

    def per_row(v):
      return v if batch_size is None else tf.broadcast_to(v, tf.stack([batch_size, tf.shape(v)[0]]))

    w = {"recurrent_kernel": self._weight(self.recurrent_kernel)}
    if recurrent_kernel_mask is not None:
      w["recurrent_kernel"] *= recurrent_kernel_mask
    if with_input_weights:
      w["kernel"] = self._weight(self.kernel)
      bias = self._weight(self.bias)
      if self.layer_norm:
        w["input_norm_gamma"] = per_row(self._weight(self.input_norm_gamma))
        bias += self._weight(self.input_norm_beta) + self._weight(self.recurrent_norm_beta)
      w["bias"] = per_row(bias)
    if self.use_peepholes:
      w["peepholes"] = tuple(per_row(self._weight(p, s))
                             for p in (self.peephole_i, self.peephole_f, self.peephole_o))
    if self.num_proj is not None:
      w["projection"] = self._weight(self.projection)
    if self.layer_norm:
      w["recurrent_norm_gamma"] = per_row(self._weight(self.recurrent_norm_gamma))
      w["cell_norm"] = tuple(per_row(self._weight(v, s))
                             for v in (self.cell_norm_gamma, self.cell_norm_beta))
    return w

  def project_step(self, x, weights):
    """One step's `input_projection`: x [B, F] -> [B, 4u].

    Args:
      x: Inputs of one step [B, F].
      weights: `step_weights(with_input_weights=True)`.
    """
    xz = tf.matmul(tf.cast(x, self.compute_dtype), weights["kernel"])
    if self.layer_norm:
      xz = layer_norm(xz, weights["input_norm_gamma"], None, self.layer_norm_epsilon)
    return xz + weights["bias"]

  def recurrent_step(self, xz, state: LSTMState, weights: dict, recurrent_mask=None,
                     zoneout_keep=None):
    """The state-dependent part of one step.

    Args:
      xz: `input_projection(x_t)` [B, 4u] (compute dtype).
      state: LSTMState(h [B, out], c [B, u]) in the state dtype.
      weights: `step_weights()`.
      recurrent_mask: Optional variational dropout mask on h(t-1) [B, out] (already scaled by
        1/(1-p)).
      zoneout_keep: Optional (keep_c [B, u], keep_h [B, out]) in the state dtype: in training a 0/1
        mask (1 keeps the previous value), at inference the constant rate.

    Returns:
      (output [B, out] in the compute dtype, new LSTMState in the state dtype).
    """
    h_prev, c_prev = state
    h_in = tf.cast(h_prev, self.compute_dtype)
    if recurrent_mask is not None:
      h_in *= recurrent_mask
    hr = tf.matmul(h_in, weights["recurrent_kernel"])
    if self.layer_norm:
      hr = layer_norm(hr, weights["recurrent_norm_gamma"], None, self.layer_norm_epsilon)
    z = tf.cast(xz + hr, self.state_dtype)
    cell_norm = None
    if self.layer_norm:
      gamma, beta = weights["cell_norm"]
      cell_norm = functools.partial(layer_norm, gamma=gamma, beta=beta,
                                    epsilon=self.layer_norm_epsilon)
    h, c = lstm_gates(z, c_prev, weights.get("peepholes"), self.cell_clip, cell_norm)
    if self.num_proj is not None:
      h = tf.cast(tf.matmul(tf.cast(h, self.compute_dtype), weights["projection"]),
                  self.state_dtype)
      if self.proj_clip is not None:
        h = tf.clip_by_value(h, -self.proj_clip, self.proj_clip)
    if zoneout_keep is not None:
      keep_c, keep_h = zoneout_keep
      c = keep_c * c_prev + (1 - keep_c) * c
      h = keep_h * h_prev + (1 - keep_h) * h
    return tf.cast(h, self.compute_dtype), LSTMState(h=h, c=c)

  def get_dropout_masks(self, batch_size, training=False):
    """Variational dropout masks for one sequence.

    Returns:
      (input_mask [B, F] or None, recurrent_mask [B, out] or None).
    """
    return (noise.dropout_mask(self.seed_generator, self.dropout, batch_size, self.input_dim,
                               self.compute_dtype, training),
            noise.dropout_mask(self.seed_generator, self.recurrent_dropout, batch_size,
                               self.output_size, self.compute_dtype, training))

  def recurrent_kernel_mask(self, training=False):
    """One weight-drop mask [out, 4u] scaled by 1/(1-rate) (compute dtype), or None when off.

    The caller draws it once per sequence: every row and step then reads the same dropped R.
    """
    if not training or self.weight_drop == 0.0:
      return None
    return noise.dropout_mask(self.seed_generator, self.weight_drop, self.output_size,
                              4 * self.units, self.compute_dtype, training)

  def zoneout_keep(self, shape_prefix, training=False):
    """Zoneout keep factors of c and h: shape_prefix + [size] masks in training, rates in inference.

    Returns None when zoneout is off.
    """
    return noise.zoneout_keep(self.seed_generator, (self.zoneout_cell, self.zoneout_hidden),
                              (self.units, self.output_size), shape_prefix, self.state_dtype,
                              training)

  def get_initial_state(self, batch_size) -> LSTMState:
    """Zero state for `batch_size` rows: LSTMState(h [B, out], c [B, u]) in the state dtype."""
    return zero_state(batch_size, self.units, self.output_size, self.state_dtype)

  # -- one step ------------------------------------------------------------------------------------

  def call(self, inputs, state, training=False, dropout_masks=None):
    """One step.

    Args:
      inputs: x_t [B, F].
      state: LSTMState(h [B, out], c [B, u]) (any 2-sequence (h, c) is accepted).
      training: Apply dropout and sampled zoneout.
      dropout_masks: Optional `get_dropout_masks(...)` result, to share masks across the steps of a
        sequence; by default fresh masks are drawn at every call in training.

    Returns:
      (output [B, out], LSTMState(h [B, out], c [B, u])). output equals the new h (compute dtype).
    """
    inputs = tf.convert_to_tensor(inputs)
    validation.check_rank(self.name, "inputs", inputs, 2, "[batch, features]")
    state = validation.check_state(self.name, state, self.units, self.output_size, self.state_dtype,
                                   batch_size=inputs.shape[0])
    batch_size = tf.shape(inputs)[0]
    if dropout_masks is None:
      dropout_masks = self.get_dropout_masks(batch_size, training)
    input_mask, recurrent_mask = dropout_masks
    x = tf.cast(inputs, self.compute_dtype)
    if input_mask is not None:
      x *= input_mask
    weights = self.step_weights(recurrent_kernel_mask=self.recurrent_kernel_mask(training))
    return self.recurrent_step(self.input_projection(x), state, weights, recurrent_mask,
                               self.zoneout_keep([batch_size], training))

  def compute_output_spec(self, inputs, state, training=False, dropout_masks=None):
    batch = inputs.shape[0]
    out = keras.KerasTensor((batch, self.output_size), dtype=self.compute_dtype)
    return out, LSTMState(h=keras.KerasTensor((batch, self.output_size), dtype=self.state_dtype),
                          c=keras.KerasTensor((batch, self.units), dtype=self.state_dtype))

  def get_config(self):
    config = super().get_config()
    ser = keras.initializers.serialize
    reg = keras.regularizers.serialize
    config.update({
        "units": self.units, "use_peepholes": self.use_peepholes, "num_proj": self.num_proj,
        "proj_clip": self.proj_clip, "cell_clip": self.cell_clip, "layer_norm": self.layer_norm,
        "layer_norm_epsilon": self.layer_norm_epsilon, "unit_forget_bias": self.unit_forget_bias,
        "dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout,
        "weight_drop": self.weight_drop, "zoneout_cell": self.zoneout_cell,
        "zoneout_hidden": self.zoneout_hidden,
        "kernel_initializer": ser(self.kernel_initializer),
        "recurrent_initializer": ser(self.recurrent_initializer),
        "bias_initializer": ser(self.bias_initializer),
        "projection_initializer": ser(self.projection_initializer),
        "peephole_initializer": ser(self.peephole_initializer),
        "kernel_regularizer": reg(self.kernel_regularizer) if self.kernel_regularizer else None,
        "recurrent_regularizer": (reg(self.recurrent_regularizer)
                                  if self.recurrent_regularizer else None),
        "bias_regularizer": reg(self.bias_regularizer) if self.bias_regularizer else None,
        "projection_regularizer": (reg(self.projection_regularizer)
                                   if self.projection_regularizer else None),
        "seed": self.seed,
    })
    return config


def _keyword_arguments(cls) -> tuple:
  """The keyword-only constructor arguments of `cls`: what a sequence layer passes to its cell."""
  return tuple(name for name, p in inspect.signature(cls.__init__).parameters.items()
               if p.kind is inspect.Parameter.KEYWORD_ONLY)


# Every `LSTMCell` argument but `units`; `LSTM` and `StackedLSTM` forward these to their cells.
CELL_ARGUMENTS = _keyword_arguments(LSTMCell)
