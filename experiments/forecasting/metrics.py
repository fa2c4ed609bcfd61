"""The seasonal-naive baseline and the forecast metrics (MAE, RMSE, MASE) in the data's units."""

from typing import Mapping

import numpy as np
import tensorflow as tf


def seasonal_naive(context: tf.Tensor, horizon: int, season_length: int) -> tf.Tensor:
  """Repeats the last observed season: forecast[t] = context[C - m + (t mod m)].

  Args:
    context: [B, C, F] with C >= m.
    horizon: H.
    season_length: m.

  Returns:
    [B, H, F].
  """
  c = context.shape[1]
  index = c - season_length + np.arange(horizon) % season_length
  return tf.gather(context, index, axis=1)


def forecast_sums(context, targets, predictions, weights, std, season_length: int) -> dict:
  """Sums behind MAE, RMSE and MASE, in original units.

  Args:
    context: [b, C, F] normalised context (the seasonal-naive forecast repeats its last season).
    targets: [b, H, F] normalised truth.
    predictions: [b, H, F] normalised forecast.
    weights: [b, H], 0 on padding.
    std: [F] normalisation std (errors scale by it; the mean cancels).
    season_length: m.

  Returns:
    Scalars: abs_error, squared_error, naive_abs_error (sums over weighted values) and count
    (weighted number of values, i.e. sum(weights) * F).
  """
  weights = tf.cast(weights, tf.float32)[:, :, None]
  targets = tf.cast(targets, tf.float32)
  naive = seasonal_naive(tf.cast(context, tf.float32), targets.shape[1], season_length)
  error = (tf.cast(predictions, tf.float32) - targets) * std
  naive_error = (naive - targets) * std
  return {
      "abs_error": tf.reduce_sum(weights * tf.abs(error)),
      "squared_error": tf.reduce_sum(weights * tf.square(error)),
      "naive_abs_error": tf.reduce_sum(weights * tf.abs(naive_error)),
      "count": tf.reduce_sum(weights) * targets.shape[-1],
  }


def forecast_metrics(sums: Mapping[str, float], tolerance: float = 0.0) -> dict[str, float]:
  """mae, rmse, naive_mae and mase from the sums of `ForecastTask.eval_sums`.

  MASE is undefined when the seasonal-naive forecast is perfect (naive MAE <= tolerance); it is then
  left out rather than reported as infinite.
  """
  count = max(float(sums["count"]), 1e-12)
  mae = float(sums["abs_error"]) / count
  naive_mae = float(sums["naive_abs_error"]) / count
  metrics = {"mae": mae, "rmse": float(np.sqrt(float(sums["squared_error"]) / count)),
             "naive_mae": naive_mae}
  if naive_mae > tolerance:
    metrics["mase"] = mae / naive_mae
  return metrics
