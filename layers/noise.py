"""The noise of the LSTM variants: variational dropout masks and zoneout keep factors."""

import keras
import tensorflow as tf


def dropout_mask(seed_generator, rate: float, batch_size, size: int, dtype, training: bool):
  """One variational dropout mask [B, size] scaled by 1/(1-rate), or None when off.

  Variational (Gal & Ghahramani 2016): the caller draws it once per sequence and applies it at
  every step.
  """
  if not training or rate == 0.0:
    return None
  keep = keras.random.uniform((batch_size, size), seed=seed_generator) >= rate
  return tf.cast(keep, dtype) / (1.0 - rate)


def zoneout_keep(seed_generator, rates, sizes, shape_prefix, dtype, training: bool):
  """Zoneout keep factors (Krueger et al. 2016) of c and h, or None when both rates are 0.

  Args:
    seed_generator: A `keras.random.SeedGenerator`.
    rates: (rate_c, rate_h).
    sizes: (u, out).
    shape_prefix: Leading shape of the training masks, e.g. [B] or [T, B].
    dtype: The state dtype.
    training: Draw 0/1 masks (1 keeps the previous value); else return the rates as constants,
      the expectation used at inference.

  Returns:
    (keep_c, keep_h): shape_prefix + [size] masks in training, scalar rates at inference; or None.
  """
  if all(rate == 0.0 for rate in rates):
    return None

  def keep(rate, size):
    if not training:
      return tf.constant(rate, dtype)
    noise = keras.random.uniform(tf.concat([shape_prefix, [size]], 0), seed=seed_generator)
    return tf.cast(noise < rate, dtype)
  return tuple(keep(rate, size) for rate, size in zip(rates, sizes))


def sequence_dropout(rate: float, *, locked: bool, time_major: bool = False, seed=None,
                     name: str | None = None) -> keras.layers.Dropout:
  """Dropout on a sequence [B, T, F] ([T, B, F] if time_major).

  locked=False draws a fresh mask at every step (Zaremba et al. 2014); locked=True draws one mask
  per row and applies it at every step ("locked" or variational dropout on the outputs, Gal &
  Ghahramani 2016; Merity et al. 2017).
  """
  noise_shape = None
  if locked:
    noise_shape = (1, None, None) if time_major else (None, 1, None)
  return keras.layers.Dropout(rate, noise_shape=noise_shape, seed=seed, name=name)
