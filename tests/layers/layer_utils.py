"""Helpers shared by the layer tests: random weights, reading them back for the NumPy reference."""

import keras
import numpy as np
import tensorflow as tf

import numpy_reference


def randomize_weights(cell, seed: int, scale: float = 0.5) -> None:
  """Gives every weight of a built cell a random value, so that each variant's weights matter.

  Layer-norm gains are drawn around 1, every other weight around 0 with standard deviation `scale`.
  """
  rng = np.random.default_rng(seed)
  for name in numpy_reference.ALL_WEIGHTS:
    variable = getattr(cell, name, None)
    if variable is None:
      continue
    value = rng.normal(0.0, scale, variable.shape)
    if name.endswith("_gamma"):
      value = 1.0 + 0.2 * rng.normal(size=variable.shape)
    variable.assign(value.astype(variable.dtype))


def cell_weights(cell) -> dict:
  """The cell's weights as NumPy arrays, keyed by attribute name (only those the variant has)."""
  return {name: keras.ops.convert_to_numpy(getattr(cell, name))
          for name in numpy_reference.ALL_WEIGHTS if getattr(cell, name, None) is not None}


def reference_kwargs(cell) -> dict:
  """The cell's non-weight settings, as keyword arguments of `numpy_reference.lstm_step`."""
  return dict(cell_clip=cell.cell_clip, proj_clip=cell.proj_clip,
              layer_norm_epsilon=cell.layer_norm_epsilon, zoneout_cell=cell.zoneout_cell,
              zoneout_hidden=cell.zoneout_hidden)


# Cell arguments of each variant the reference checks. The clip values are small enough to bind with
# `randomize_weights` and unit-scale inputs (the tests assert that they do).
VARIANTS = {
    "plain": {},
    "peepholes": dict(use_peepholes=True),
    "cell_clip": dict(cell_clip=0.3),
    "projection": dict(num_proj=3, proj_clip=0.15),
    "layer_norm": dict(layer_norm=True),
    "zoneout": dict(zoneout_cell=0.3, zoneout_hidden=0.2),
    "peepholes_projection_clips": dict(use_peepholes=True, num_proj=3, proj_clip=0.2,
                                       cell_clip=0.4),
    "everything": dict(use_peepholes=True, num_proj=3, proj_clip=0.2, cell_clip=0.4,
                       layer_norm=True, zoneout_cell=0.1, zoneout_hidden=0.25),
}


def unclipped(kwargs: dict) -> dict:
  """Reference keyword arguments with the clips removed (to show that a clip binds)."""
  return dict(kwargs, cell_clip=None, proj_clip=None)


def built_lstm(layer_cls, units: int, features: int, seed: int = 0, batch: int = 2, **kwargs):
  """A built `layer_cls(units, **kwargs)` (an `LSTM`) whose cell has random weights.

  A stateful layer's kept state is zero, for `batch` rows.
  """
  layer = layer_cls(units, **kwargs)
  shape = [1, batch, features] if kwargs.get("time_major") else [batch, 1, features]
  layer(tf.zeros(shape))
  randomize_weights(layer.cell, seed)
  if kwargs.get("stateful"):
    layer.reset_state()
  return layer


def copy_cell_weights(source, target) -> None:
  """Copies every weight of a built cell into another built cell of the same variant."""
  for name, value in cell_weights(source).items():
    getattr(target, name).assign(value)
