"""Argument and input checks for the layers; each error names the argument, expected, received."""

import numbers

import tensorflow as tf

from tbptt.layers.state import LSTMState


def positive_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def positive(name: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
    raise ValueError(f"{name} must be a positive number, got {value!r}")
  return float(value)


def optional_positive(name: str, value) -> float | None:
  return None if value is None else positive(name, value)


def probability(name: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
  return float(value)


def check_rank(layer: str, name: str, tensor, rank: int, layout: str) -> None:
  """Raises ValueError unless `tensor` has the given static rank."""
  actual = tensor.shape.rank
  if actual is not None and actual != rank:
    raise ValueError(f"{layer}: {name} must have rank {rank} ({layout}), "
                     f"got shape {tuple(tensor.shape)}")


def check_features(layer: str, x, expected: int) -> None:
  """Raises ValueError if the last dimension of x differs from the size the kernel was built for."""
  actual = x.shape[-1]
  if actual is not None and actual != expected:
    raise ValueError(f"{layer}: inputs must have {expected} features (the size the kernel was "
                     f"built for), got {actual} (input shape {tuple(x.shape)})")


def check_state(layer: str, state, units: int, output_size: int, dtype,
                batch_size: int | None = None) -> LSTMState:
  """Checks an (h, c) state's structure and sizes and returns it as an LSTMState in `dtype`.

  Args:
    layer: Layer name for the message.
    state: LSTMState or any 2-sequence (h [B, output_size], c [B, units]).
    units: Expected size of c.
    output_size: Expected size of h.
    dtype: State dtype to cast to.
    batch_size: The inputs' static batch size, if known; the state must have as many rows.
  """
  if isinstance(state, dict) or not isinstance(state, (tuple, list)) or len(state) != 2:
    raise ValueError(f"{layer}: state must be an LSTMState(h, c) (h [batch, {output_size}], "
                     f"c [batch, {units}]), got {type(state).__name__}"
                     + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else ""))
  h, c = (tf.convert_to_tensor(t) for t in state)
  for name, t, size in (("h", h, output_size), ("c", c, units)):
    if t.shape.rank is not None and (t.shape.rank != 2 or
                                     (t.shape[-1] is not None and t.shape[-1] != size)):
      raise ValueError(f"{layer}: state.{name} must have shape [batch, {size}], "
                       f"got {tuple(t.shape)}")
  for name, t in (("h", h), ("c", c)):
    rows = t.shape[0] if t.shape.rank else None
    if rows is not None and batch_size is not None and rows != batch_size:
      raise ValueError(f"{layer}: state.{name} must have the inputs' batch size {batch_size}, "
                       f"got {rows} rows (shape {tuple(t.shape)})")
  if h.shape[0] is not None and c.shape[0] is not None and h.shape[0] != c.shape[0]:
    raise ValueError(f"{layer}: state.h and state.c must have the same batch size, "
                     f"got {h.shape[0]} and {c.shape[0]}")
  return LSTMState(h=tf.cast(h, dtype), c=tf.cast(c, dtype))
