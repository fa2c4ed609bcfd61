"""`ForecastTask`: the series split by time, normalised, cut into windows; batches by step."""

from typing import Sequence

import gin
import keras
import numpy as np
import tensorflow as tf

from tbptt.experiments import plot
from tbptt.experiments.data import series as series_lib
from tbptt.experiments.forecasting.metrics import forecast_metrics, forecast_sums
from tbptt.experiments.forecasting.model import Seq2SeqForecaster
from tbptt.layers import LSTMState
from tbptt.trainer.errors import ConfigError
from tbptt.trainer.task import Task


@gin.configurable
class ForecastTask(Task):
  """Seq2seq forecasting of a (multivariate) series: context C rows in, horizon H rows out.

  Data: `series_fn()` gives the series; it is split by time into train/valid/test, normalised with
  the training part's statistics (saved to `model_dir/normalization.json` by `write_assets`, read
  back from there on resume and eval) and cut into windows. Training step s reads the windows
  `perm_e[(s mod S) * B : ...]`, where S = steps per epoch and perm_e is a stateless permutation
  seeded with (seed, e = s div S): a pure function of the step. Eval reads every window of a
  split in order.

  Batches: inputs {'context' [b, C, F] (+ 'horizon' [b, H, F] and 'teacher_mask' [b, H] when
  training with teacher forcing)}, targets [b, H, F], weights [b, H] (0 on the padding rows of
  the last eval batch), reset [b] all True.

  Args:
    model_dir: Where the normalisation statistics are kept (None: never read or saved).
    series_fn: Callable returning a `series.Series` (gin: `@synthetic_series` or `@csv_series`).
    context_length: C, observed rows per window.
    horizon: H, rows to forecast.
    batch_size: Global training batch B.
    eval_batch_size: Global eval batch (default B).
    train_stride: Rows between consecutive training windows.
    eval_stride: Rows between consecutive valid/test windows (default H: horizons tile the split).
    split_fractions: (train, valid, test) fractions of the rows, in time order.
    season_length: m of the seasonal-naive baseline (steps), at most C.
    teacher_forcing: Probability that a decoder step reads the true previous value in training.
    num_plots: Validation windows drawn as TensorBoard images after each eval.
    seed: Seed of the window order and the teacher-forcing draws.
  """

  def __init__(self, model_dir: str | None = None, *, series_fn=series_lib.synthetic_series,
               context_length: int = 48, horizon: int = 24, batch_size: int = 32,
               eval_batch_size: int | None = None, train_stride: int = 1,
               eval_stride: int | None = None,
               split_fractions: Sequence[float] = (0.7, 0.15, 0.15), season_length: int = 24,
               teacher_forcing: float = 0.0, num_plots: int = 3, seed: int = 0):
    for name, value in (("context_length", context_length), ("horizon", horizon),
                        ("batch_size", batch_size), ("season_length", season_length),
                        ("train_stride", train_stride)):
      if int(value) < 1:
        raise ConfigError(f"ForecastTask.{name} must be a positive integer, got {value}")
    if season_length > context_length:
      raise ConfigError(f"ForecastTask.season_length ({season_length}) must be at most "
                        f"context_length ({context_length}): the seasonal-naive forecast repeats "
                        f"the context's last season")
    if not 0.0 <= teacher_forcing <= 1.0:
      raise ConfigError(f"ForecastTask.teacher_forcing must be a probability in [0, 1], got "
                        f"{teacher_forcing}")
    self.context_length = int(context_length)
    self.horizon = int(horizon)
    self.season_length = int(season_length)
    self.teacher_forcing = float(teacher_forcing)
    self.num_plots = int(num_plots)
    self.seed = int(seed)
    self._batch_size = int(batch_size)
    self._eval_batch_size = int(eval_batch_size or batch_size)

    data = series_fn()
    self.columns = data.columns
    window = self.context_length + self.horizon
    bounds = series_lib.split_bounds(len(data.values), split_fractions)
    for name, (start, stop) in bounds.items():
      rows = stop - start
      needed = window if name == "train" else self.horizon
      if (name == "train" or rows > 0) and rows < needed:
        raise ConfigError(
            f"{data.source}: the {name} part has {rows} of {len(data.values)} rows, too few for "
            f"one window (needs {needed}: context_length={self.context_length}, "
            f"horizon={self.horizon}); use more data or change "
            f"ForecastTask.context_length/horizon/split_fractions")
    self.model_dir = model_dir
    self.stats = series_lib.load_or_compute_stats(model_dir, data.values[slice(*bounds["train"])],
                                                  data.columns)
    starts = series_lib.split_windows(
        len(data.values), bounds, self.context_length, self.horizon,
        {"train": int(train_stride), "valid": int(eval_stride or horizon),
         "test": int(eval_stride or horizon)})
    self.num_windows = {name: len(s) for name, s in starts.items()}
    self._starts = {name: tf.constant(s, tf.int32) for name, s in starts.items()}
    self._values = tf.constant(self.stats.normalize(data.values), tf.float32)
    self._std = tf.constant(self.stats.std, tf.float32)
    self._steps_per_epoch = max(1, self.num_windows["train"] // self._batch_size)

    self._model = Seq2SeqForecaster(self.horizon, len(self.columns))
    # One call creates every variable now, inside the caller's strategy scope.
    self._model(tf.zeros([1, self.context_length, len(self.columns)]), self.initial_state(1))
    self._predict = None

  # -- Task interface ------------------------------------------------------------------------------

  @property
  def model(self) -> keras.Model:
    return self._model

  @property
  def global_batch_size(self) -> int:
    return self._batch_size

  @property
  def eval_batch_size(self) -> int:
    return self._eval_batch_size

  @property
  def steps_per_epoch(self) -> int:
    return self._steps_per_epoch

  @property
  def tokens_per_step(self) -> int:
    return self._batch_size * self.horizon

  def initial_state(self, batch_size) -> LSTMState:
    return self._model.initial_state(batch_size)

  @property
  def asset_paths(self) -> list[str]:
    """Files an exported model needs besides its weights: the normalisation statistics."""
    return [series_lib.stats_path(self.model_dir)] if self.model_dir else []

  def write_assets(self) -> None:
    """Saves the normalisation statistics to model_dir, before training (resume and eval read
    them back)."""
    if self.model_dir:
      series_lib.save_stats(self.model_dir, self.stats)

  def _windows(self, starts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    windows = series_lib.gather_windows(self._values, starts, self.context_length + self.horizon)
    return windows[:, :self.context_length], windows[:, self.context_length:]

  def train_batch(self, step, row_start, num_rows):
    step = tf.cast(step, tf.int64)
    epoch, position = step // self._steps_per_epoch, step % self._steps_per_epoch
    n = self.num_windows["train"]
    seed = tf.stack([tf.constant(self.seed, tf.int64), epoch])
    order = tf.argsort(tf.random.stateless_uniform([n], seed=seed))  # An XLA-friendly shuffle.
    rows = tf.cast(row_start, tf.int32) + tf.range(num_rows, dtype=tf.int32)
    picks = (tf.cast(position, tf.int32) * self._batch_size + rows) % n
    context, horizon = self._windows(tf.gather(self._starts["train"], tf.gather(order, picks)))
    inputs = {"context": context}
    if self.teacher_forcing > 0:
      # Drawn for the whole global batch, then sliced: a row's draws do not depend on the replicas.
      seed = tf.stack([tf.constant(self.seed + 1, tf.int64), step])
      draws = tf.random.stateless_uniform([self._batch_size, self.horizon], seed=seed)
      inputs["horizon"] = horizon
      inputs["teacher_mask"] = tf.gather(draws, rows) < self.teacher_forcing
    return {"inputs": inputs, "targets": horizon, "weights": tf.ones([num_rows, self.horizon]),
            "reset": tf.ones([num_rows], tf.bool)}

  def loss(self, batch, predictions):
    """Squared error in normalised units, averaged over features: [b, H]."""
    return tf.reduce_mean(tf.square(tf.cast(predictions, tf.float32) - batch["targets"]), axis=-1)

  def num_eval_batches(self, split: str) -> int:
    n = self.num_windows.get(split, 0)
    return -(-n // self._eval_batch_size)

  def eval_batch(self, split, index, row_start, num_rows):
    n = self.num_windows[split]
    positions = (tf.cast(index, tf.int32) * self._eval_batch_size + tf.cast(row_start, tf.int32)
                 + tf.range(num_rows, dtype=tf.int32))
    valid = positions < n
    # Rows past the end repeat the last window with weight 0, so every replica sees full shapes.
    context, horizon = self._windows(tf.gather(self._starts[split], tf.minimum(positions, n - 1)))
    weights = tf.tile(tf.cast(valid, tf.float32)[:, None], [1, self.horizon])
    return {"inputs": {"context": context}, "targets": horizon, "weights": weights,
            "reset": tf.ones([num_rows], tf.bool)}

  def eval_sums(self, batch, predictions):
    """Weighted sums in original units: |err|, err^2, seasonal-naive |err|, count of values."""
    return forecast_sums(batch["inputs"]["context"], batch["targets"], predictions,
                         batch["weights"], self._std, self.season_length)

  def eval_metrics(self, sums):
    """loss (normalised MSE), mae, rmse, naive_mae and mase (left out when the naive MAE is 0)."""
    metrics = super().eval_metrics(sums)
    # Below float32 resolution of the data the naive forecast counts as perfect.
    return metrics | forecast_metrics(sums, tolerance=1e-6 * float(np.mean(self.stats.std)))

  def write_eval_summaries(self, step: int) -> None:
    """Writes `forecast` images: context, truth and forecast (first feature) of `num_plots`
    validation windows (test windows if there is no valid split)."""
    split = "valid" if self.num_windows["valid"] else "test"
    n = self.num_windows[split]
    if not n or self.num_plots < 1:
      return
    picks = np.unique(np.linspace(0, n - 1, min(self.num_plots, n)).round().astype(np.int32))
    context, truth, forecast = (a.numpy() for a in self._forecast(split, tf.constant(picks)))
    images = [plot.forecast_image(c[:, 0], t[:, 0], f[:, 0])
              for c, t, f in zip(context, truth, forecast)]
    tf.summary.image("forecast", np.stack(images), step=step, max_outputs=len(images))

  def _forecast(self, split: str, picks: tf.Tensor):
    """(context, truth, forecast) of windows `picks` of `split`, in original units: [k, C|H, F]."""
    if self._predict is None:
      def predict(split_starts, picks):
        starts = tf.gather(split_starts, picks)
        context, truth = self._windows(starts)
        forecast, _ = self._model(context, self.initial_state(tf.shape(picks)[0]), training=False)
        mean = tf.constant(self.stats.mean, tf.float32)
        return tuple(x * self._std + mean for x in (context, truth, forecast))
      self._predict = tf.function(predict)
    return self._predict(self._starts[split], picks)
