"""Several `LSTM` layers on top of each other, with the state of every layer in and out."""

from collections.abc import Sequence

import keras
import tensorflow as tf

from tbptt.layers import dispatch, noise, validation
from tbptt.layers.base import StatefulCallLayer
from tbptt.layers.lstm import LSTM
from tbptt.layers.lstm_cell import CELL_ARGUMENTS


@keras.saving.register_keras_serializable(package="tbptt")
class StackedLSTM(StatefulCallLayer):
  """N LSTM layers: `outputs, states = stacked(x, initial_state=None, mask=None, training=False)`.

  Layer k reads the full output sequence of layer k-1. Between layers, dropout at rate
  `dropout_between` is applied in training: a fresh mask per step (Zaremba et al. 2014), or one mask
  per row for the whole sequence with `locked_dropout=True` (Merity et al. 2017). With
  `residual=True` a layer whose input and output sizes match adds its input to its output (Wu et
  al. 2016).

  Args:
    units: Cell size of every layer (an int) or one per layer (a list of `num_layers` ints).
    num_layers: How many layers.
    dropout_between: Dropout rate on the outputs of every layer but the last, in [0, 1).
    locked_dropout: `dropout_between` draws one mask per row, shared by every step.
    residual: Add each layer's input to its output where their sizes match.
    time_major: Inputs and outputs are [T, B, ...].
    return_sequences: Return every step's output of the top layer; else only its last [B, out].
    return_state: Return `(outputs, states)`; else only outputs.
    implementation: 'auto', 'fused', 'loop' or 'cudnn' for every layer (see `LSTM`).
    **kwargs: `LSTMCell` arguments applied to every layer, and Keras layer arguments.

  State: a tuple of `LSTMState`, one per layer, bottom first.
  """

  def __init__(self, units: int | Sequence[int], num_layers: int = 1, *,
               dropout_between: float = 0.0, locked_dropout: bool = False,
               residual: bool = False, time_major: bool = False,
               return_sequences: bool = True, return_state: bool = True,
               implementation: str = "auto", **kwargs):
    cell_kwargs = {k: kwargs.pop(k) for k in CELL_ARGUMENTS if k in kwargs}
    super().__init__(**kwargs)
    self.supports_masking = True
    self.num_layers = validation.positive_int("num_layers", num_layers)
    if isinstance(units, Sequence):
      if len(units) != self.num_layers:
        raise ValueError(f"units must be an int or a list of num_layers={self.num_layers} ints, "
                         f"got {list(units)}")
      self.units = [validation.positive_int("units", u) for u in units]
    else:
      self.units = [validation.positive_int("units", units)] * self.num_layers
    self.dropout_between = validation.probability("dropout_between", dropout_between)
    self.locked_dropout = bool(locked_dropout)
    self.residual = bool(residual)
    self.time_major = bool(time_major)
    self.return_sequences = bool(return_sequences)
    self.return_state = bool(return_state)
    self.cell_kwargs = cell_kwargs
    self.implementation = dispatch.check_implementation(implementation)
    self.layers_ = [LSTM(u, time_major=self.time_major, return_sequences=True, return_state=True,
                         implementation=implementation, dtype=self.dtype_policy, name=f"lstm_{i}",
                         **self._layer_kwargs(i))
                    for i, u in enumerate(self.units)]
    self.dropouts = [noise.sequence_dropout(self.dropout_between, locked=self.locked_dropout,
                                            time_major=self.time_major, name=f"dropout_{i}")
                     for i in range(self.num_layers - 1)]
    self.supports_jit = all(layer.supports_jit for layer in self.layers_)

  @property
  def implementations(self) -> tuple:
    """What each layer ran in its last call ('fused', 'loop', 'cudnn'; None before one)."""
    return tuple(layer.resolved_implementation for layer in self.layers_)

  def _layer_kwargs(self, i):
    # A shared seed would give every layer the same dropout masks: offset it per layer.
    kwargs = dict(self.cell_kwargs)
    if kwargs.get("seed") is not None:
      kwargs["seed"] += i
    return kwargs

  def build(self, input_shape):
    if len(input_shape) != 3:
      raise ValueError(f"{self.name}: inputs must have rank 3, got shape {tuple(input_shape)}")
    size = input_shape[-1]
    for layer in self.layers_:
      layer.build(tuple(input_shape[:-1]) + (size,))
      size = layer.output_size

  def compute_mask(self, inputs, mask=None):
    # Keras pairs this with the first output (the sequence); the state carries no mask.
    return mask if self.return_sequences else None

  def get_initial_state(self, batch_size) -> tuple:
    """Zero states: a tuple of LSTMState, one per layer."""
    return tuple(layer.get_initial_state(batch_size) for layer in self.layers_)

  def call(self, inputs, initial_state=None, mask=None, training=False):
    """Runs every layer over the sequence.

    Args:
      inputs: [B, T, F] ([T, B, F] if time_major).
      initial_state: Optional tuple of `num_layers` LSTMStates; zeros if None.
      mask: Optional [B, T] bool, applied in every layer.
      training: Apply dropout.

    Returns:
      `(outputs, states)` if return_state else outputs; outputs [B, T, out] (or [B, out] if not
      return_sequences), states a tuple of LSTMState.
    """
    if initial_state is not None:
      if not isinstance(initial_state, (tuple, list)) or len(initial_state) != self.num_layers:
        raise ValueError(
            f"{self.name}: initial_state must be a tuple of {self.num_layers} LSTMStates (one per "
            f"layer), got {type(initial_state).__name__}"
            + (f" of length {len(initial_state)}"
               if isinstance(initial_state, (tuple, list)) else ""))
    x = tf.cast(inputs, self.compute_dtype)
    states = []
    for i, layer in enumerate(self.layers_):
      layer_input = x
      x, state = layer(x, initial_state=None if initial_state is None else initial_state[i],
                       mask=mask, training=training)
      if self.residual and layer_input.shape[-1] == x.shape[-1]:
        x += layer_input
      if i < self.num_layers - 1:
        x = self.dropouts[i](x, training=training)
      states.append(state)
    states = tuple(states)
    if not self.return_sequences:
      x = tf.cast(states[-1].h, self.compute_dtype)
    return (x, states) if self.return_state else x

  def compute_output_spec(self, inputs, initial_state=None, mask=None, training=False):
    x = inputs
    states = []
    for layer in self.layers_:
      x, state = layer.compute_output_spec(x)
      states.append(state)
    if not self.return_sequences:
      x = keras.KerasTensor(states[-1].h.shape, dtype=self.compute_dtype)
    return (x, tuple(states)) if self.return_state else x

  def get_config(self):
    config = super().get_config()
    cell_config = self.layers_[0].cell.get_config()
    config.update({k: cell_config[k] for k in CELL_ARGUMENTS})
    config.update({"units": list(self.units), "num_layers": self.num_layers,
                   "dropout_between": self.dropout_between,
                   "locked_dropout": self.locked_dropout, "residual": self.residual,
                   "time_major": self.time_major, "return_sequences": self.return_sequences,
                   "return_state": self.return_state, "implementation": self.implementation})
    return config
