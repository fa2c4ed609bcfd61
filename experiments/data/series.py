"""Time series for forecasting: synthetic or CSV sources, splits by time, normalisation, windows.

A source returns a `Series` (values [N, F] in time order). The forecasting task splits it by time
into train / valid / test, normalises with the mean and std of the training part only (saved in
model_dir, so a resumed run or a later eval reuses exactly the same statistics) and cuts each part
into windows of `context + horizon` rows. The windows of a later part may start in the part before
it (their context is history that was already observed), but their horizon lies entirely in their
own part.

CSV paths may name a file shipped with the package: `package://<package>/<path inside it>`, e.g.
`package://experiments/data/example_series.csv` (or just `example`). That file holds 480 hourly rows
(20 days) with columns `timestamp`, `load` and `temperature`, made with `synthetic_series`.
"""

import csv
import dataclasses
import importlib.resources
import json
import os
from typing import Sequence

import gin
import numpy as np
import tensorflow as tf

from tbptt.trainer.errors import ConfigError

EXAMPLE_CSV = "package://experiments/data/example_series.csv"
STATS_FILENAME = "normalization.json"
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class Series:
  """A multivariate series in time order.

  Attributes:
    values: [N, F] float64, row t is time step t.
    columns: F column names.
    source: Where it came from (for error messages).
  """

  values: np.ndarray
  columns: tuple[str, ...]
  source: str


# -- sources ---------------------------------------------------------------------------------------


@gin.configurable
def synthetic_series(length: int = 2400, *, periods: Sequence[float] = (24.0, 168.0),
                     amplitudes: Sequence[float] = (1.0, 0.5), level: float = 5.0,
                     trend: float = 5e-4, noise: float = 0.1, num_features: int = 1,
                     seed: int = 0) -> Series:
  """Trend + several sinusoidal seasonalities + Gaussian noise, generated from a seed.

  Feature k (k > 0) has its seasonal phases shifted by k radians and half the trend, so the features
  are related but not identical.

  Args:
    length: Rows N.
    periods: Season lengths (steps), one sinusoid each.
    amplitudes: Amplitude of each sinusoid (same length as `periods`).
    level: Constant offset.
    trend: Linear slope per step.
    noise: Standard deviation of the added white noise.
    num_features: Columns F.
    seed: NumPy seed of the noise.

  Returns:
    A `Series` [length, num_features] with columns `y0`, `y1`, ...
  """
  if len(periods) != len(amplitudes):
    raise ConfigError(f"synthetic_series: periods and amplitudes must have the same length, got "
                      f"{len(periods)} periods and {len(amplitudes)} amplitudes")
  if length < 1 or num_features < 1:
    raise ConfigError(f"synthetic_series: length and num_features must be positive, got "
                      f"length={length}, num_features={num_features}")
  t = np.arange(length, dtype=np.float64)[:, None]
  k = np.arange(num_features, dtype=np.float64)[None, :]
  values = level + trend * t / (1.0 + k)
  for period, amplitude in zip(periods, amplitudes):
    values = values + amplitude * np.sin(2.0 * np.pi * t / period + k)
  values = values + noise * np.random.default_rng(seed).standard_normal((length, num_features))
  return Series(values, tuple(f"y{i}" for i in range(num_features)), "synthetic_series")


def resolve_path(path: str) -> str:
  """Resolves `example`, `package://<package>/<file>` and `~` to a filesystem path."""
  if path == "example":
    path = EXAMPLE_CSV
  if path.startswith("package://"):
    package, _, inner = path[len("package://"):].partition("/")
    try:
      return str(importlib.resources.files(package).joinpath(inner))
    except ModuleNotFoundError:
      raise ConfigError(f"csv_series.path={path!r}: no installed package {package!r}; use "
                        f"package://experiments/... or a filesystem path") from None
  return os.path.expanduser(path)


@gin.configurable
def csv_series(path: str = gin.REQUIRED, value_columns: Sequence[str] = gin.REQUIRED,
               time_column: str | None = None) -> Series:
  """Reads numeric columns of a CSV file with a header row.

  Args:
    path: The file (see `resolve_path` for `example` and `package://`).
    value_columns: Columns to forecast, in this order.
    time_column: Optional column the rows are sorted on (numbers, or strings that sort in time
      order such as ISO 8601 timestamps); without it the file order is the time order.

  Returns:
    A `Series` [rows, len(value_columns)].

  Raises:
    ConfigError: missing file, unknown column, empty or non-numeric value.
  """
  if isinstance(value_columns, str):
    value_columns = [value_columns]
  value_columns = tuple(value_columns)
  if not value_columns:
    raise ConfigError("csv_series.value_columns is empty: name at least one numeric column")
  resolved = resolve_path(path)
  if not os.path.isfile(resolved):
    raise ConfigError(f"csv_series.path: file not found: {resolved}; set csv_series.path to an "
                      f"existing CSV file")
  with open(resolved, newline="") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    wanted = value_columns + ((time_column,) if time_column else ())
    for name in wanted:
      if name not in header:
        raise ConfigError(f"{resolved}: no column {name!r} (columns: "
                          f"{', '.join(header) or 'none'}); fix csv_series.value_columns / "
                          f"csv_series.time_column")
    rows = list(reader)
  values = np.empty((len(rows), len(value_columns)), np.float64)
  for i, row in enumerate(rows):
    for j, name in enumerate(value_columns):
      cell = (row[name] or "").strip()
      try:
        values[i, j] = float(cell)
      except ValueError:
        raise ConfigError(f"{resolved}: line {i + 2}, column {name!r}: {cell!r} is not a number; "
                          f"clean the file or choose other csv_series.value_columns") from None
  if not np.all(np.isfinite(values)):
    bad = int(np.argwhere(~np.isfinite(values))[0, 0])
    raise ConfigError(f"{resolved}: line {bad + 2} holds a non-finite value; clean the file")
  if time_column:
    keys = [row[time_column] for row in rows]
    try:
      keys = [float(k) for k in keys]
    except ValueError:
      pass  # Strings: ISO 8601 timestamps sort lexicographically.
    order = sorted(range(len(rows)), key=keys.__getitem__)  # Stable: ties keep file order.
    values = values[order]
  return Series(values, value_columns, resolved)


# -- splits and windows ----------------------------------------------------------------------------


def split_bounds(num_rows: int, fractions: Sequence[float]) -> dict[str, tuple[int, int]]:
  """Row ranges [start, stop) of train / valid / test, in time order.

  Args:
    num_rows: Rows N of the series.
    fractions: (train, valid, test) fractions, non-negative, summing to at most 1 (a remainder is
      unused, at the end). A zero fraction means the split does not exist.

  Returns:
    {'train': (0, a), 'valid': (a, b), 'test': (b, c)} with c <= num_rows.
  """
  fractions = tuple(float(f) for f in fractions)
  if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) > 1 + 1e-9 or fractions[0] <= 0:
    raise ConfigError(f"ForecastTask.split_fractions must be (train > 0, valid >= 0, test >= 0) "
                      f"summing to at most 1, got {fractions}")
  edges = np.round(np.cumsum((0.0,) + fractions) * num_rows).astype(int)
  return {name: (int(edges[i]), int(edges[i + 1])) for i, name in enumerate(SPLITS)}


def window_starts(length: int, window: int, stride: int) -> np.ndarray:
  """First rows of the windows that cover a part of `length` rows.

  Windows start every `stride` rows; when the stride does not land on the end, one more window is
  aligned to the end, so every row lies in some window.

  Returns:
    int64 [num_windows] (empty when length < window).
  """
  if stride < 1:
    raise ConfigError(f"window stride must be a positive integer, got {stride}")
  if length < window:
    return np.zeros([0], np.int64)
  starts = np.arange(0, length - window + 1, stride, dtype=np.int64)
  if starts[-1] != length - window:
    starts = np.append(starts, length - window)
  return starts


def split_windows(num_rows: int, bounds: dict[str, tuple[int, int]], context: int, horizon: int,
                  strides: dict[str, int]) -> dict[str, np.ndarray]:
  """Window start rows (absolute, into the whole series) for every split.

  A train window lies entirely in the train part. A valid/test window's horizon lies entirely in its
  part; its context may reach back into earlier rows (already-observed history), never forward.

  Returns:
    {split: int64 [num_windows]}; a split with zero rows has no windows.
  """
  del num_rows
  window = context + horizon
  starts = {}
  for name, (start, stop) in bounds.items():
    if stop <= start:
      starts[name] = np.zeros([0], np.int64)
      continue
    first = start if name == "train" else max(0, start - context)
    starts[name] = first + window_starts(stop - first, window, strides[name])
  return starts


def gather_windows(values: tf.Tensor, starts: tf.Tensor, length: int) -> tf.Tensor:
  """Rows [start, start + length) of `values` for each start: [N, F], [b] -> [b, length, F]."""
  positions = tf.cast(starts, tf.int32)[:, None] + tf.range(length, dtype=tf.int32)[None, :]
  return tf.gather(values, positions)


# -- normalisation ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NormStats:
  """Per-feature mean and std of the training part: normalised = (x - mean) / std.

  Attributes:
    mean: [F] float64.
    std: [F] float64, strictly positive (a constant feature gets std 1).
    columns: The F column names the statistics belong to.
  """

  mean: np.ndarray
  std: np.ndarray
  columns: tuple[str, ...]

  @classmethod
  def from_values(cls, values: np.ndarray, columns: Sequence[str]) -> "NormStats":
    std = values.std(axis=0)
    return cls(values.mean(axis=0), np.where(std > 1e-12, std, 1.0), tuple(columns))

  def normalize(self, x):
    return (x - self.mean) / self.std

  def denormalize(self, x):
    return x * self.std + self.mean

  def to_json(self) -> dict:
    return {"columns": list(self.columns), "mean": self.mean.tolist(), "std": self.std.tolist()}

  @classmethod
  def from_json(cls, data: dict) -> "NormStats":
    return cls(np.asarray(data["mean"], np.float64), np.asarray(data["std"], np.float64),
               tuple(data["columns"]))


def stats_path(model_dir: str) -> str:
  """Where the normalisation statistics of a run live."""
  return os.path.join(model_dir, STATS_FILENAME)


def load_or_compute_stats(model_dir: str | None, train_values: np.ndarray,
                          columns: Sequence[str]) -> NormStats:
  """Statistics saved in `model_dir` if any, else computed from `train_values` (and not saved).

  Reusing saved statistics keeps a resumed run (or an eval of a finished one) on exactly the
  normalisation the weights were trained with, even if the data file changed since.

  Args:
    model_dir: Where `normalization.json` may live; None always computes.
    train_values: [N_train, F] training rows (never valid/test rows).
    columns: The F column names.

  Raises:
    ConfigError: the saved statistics are unreadable or for other columns.
  """
  path = None if model_dir is None else stats_path(model_dir)
  if path is None or not os.path.exists(path):
    return NormStats.from_values(train_values, columns)
  try:
    with open(path) as f:
      stats = NormStats.from_json(json.load(f))
  except (OSError, ValueError, KeyError) as e:
    raise ConfigError(f"{path}: unreadable normalisation statistics ({e}); delete the file to "
                      f"recompute them from the training data") from None
  if stats.columns != tuple(columns):
    raise ConfigError(f"{path} was written for columns {list(stats.columns)} but the data has "
                      f"{list(columns)}; use a new model_dir or the original columns")
  return stats


def save_stats(model_dir: str, stats: NormStats) -> str:
  """Writes `stats` to model_dir/normalization.json atomically (tmp file + os.replace).

  Returns:
    The path written.
  """
  path = stats_path(model_dir)
  os.makedirs(model_dir, exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(stats.to_json(), f, indent=2)
  os.replace(tmp, path)  # A reader never sees a half-written file.
  return path
