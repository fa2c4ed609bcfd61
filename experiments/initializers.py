"""Weight initialisers a language model chooses by name, beside Keras's own identifiers.

    LanguageModel.embedding_initializer = 'unit_normal'     # gin
    resolve('unit_normal')  # -> {"class_name": "tbptt>UnitNormal", "config": {}}

Besides Keras's names ('glorot_uniform', 'orthogonal', 'uniform', ...) three schemes that PyTorch
uses by default, and that make a character LM learn faster per step than Keras's defaults do
(README, "Learning speed"):

| name | distribution | PyTorch default of |
| --- | --- | --- |
| 'unit_normal' | N(0, 1) | `nn.Embedding` |
| 'lstm_uniform' | U(-1/sqrt(u), 1/sqrt(u)), u = the cell size (the last axis / 4) | `nn.LSTM` |
| 'fan_in_uniform' | U(-1/sqrt(n), 1/sqrt(n)), n = the fan-in (the first axis) | `nn.Linear` |

A name resolves to a config, not an instance: every weight builds its own initialiser and so draws
its own values.
"""

import math

import keras


class _ScaledUniform(keras.initializers.RandomUniform):
  """U(-b, b) with b computed from the weight's shape."""

  def __init__(self, seed=None):
    super().__init__(minval=-1.0, maxval=1.0, seed=seed)

  def bound(self, shape) -> float:
    raise NotImplementedError

  def __call__(self, shape, dtype=None):
    b = self.bound(shape)
    return keras.random.uniform(shape, minval=-b, maxval=b, seed=self.seed, dtype=dtype)

  def get_config(self):
    return {"seed": self._init_seed}


@keras.saving.register_keras_serializable(package="tbptt")
class LSTMUniform(_ScaledUniform):
  """U(-1/sqrt(u), 1/sqrt(u)) for an LSTM weight whose last axis holds the 4 gates of u units."""

  def bound(self, shape) -> float:
    if shape[-1] % 4:
      raise ValueError(f"'lstm_uniform' needs a last axis of 4 x units (the gates), got {shape}")
    return 1.0 / math.sqrt(shape[-1] // 4)


@keras.saving.register_keras_serializable(package="tbptt")
class FanInUniform(_ScaledUniform):
  """U(-1/sqrt(n), 1/sqrt(n)), n = shape[0] (the inputs of a [n, m] kernel)."""

  def bound(self, shape) -> float:
    return 1.0 / math.sqrt(shape[0])


@keras.saving.register_keras_serializable(package="tbptt")
class UnitNormal(keras.initializers.RandomNormal):
  """N(0, 1)."""

  def __init__(self, seed=None):
    super().__init__(mean=0.0, stddev=1.0, seed=seed)

  def get_config(self):
    return {"seed": self._init_seed}


NAMED = {"unit_normal": UnitNormal, "lstm_uniform": LSTMUniform, "fan_in_uniform": FanInUniform}


def resolve(identifier):
  """A Keras initialiser identifier for `identifier`: one of `NAMED` becomes its config; anything
  else (a Keras name, config or instance) is returned as it is, for Keras to interpret."""
  if isinstance(identifier, str) and identifier in NAMED:
    return {"class_name": keras.saving.get_registered_name(NAMED[identifier]), "config": {}}
  return identifier
