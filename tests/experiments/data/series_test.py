"""Tests for experiments/data/series.py: sources, CSV errors, splits, windows, normalisation."""

import json
import os
import re

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments.data import series as series_lib
from tbptt.trainer.errors import ConfigError


def write_csv(path, header, rows):
  with open(path, "w") as f:
    f.write(",".join(header) + "\n")
    for row in rows:
      f.write(",".join(str(v) for v in row) + "\n")
  return str(path)


# -- synthetic source ------------------------------------------------------------------------------


def test_synthetic_series_is_seeded_and_shaped():
  a = series_lib.synthetic_series(300, num_features=2, seed=3)
  b = series_lib.synthetic_series(300, num_features=2, seed=3)
  c = series_lib.synthetic_series(300, num_features=2, seed=4)
  assert a.values.shape == (300, 2) and a.columns == ("y0", "y1")
  np.testing.assert_array_equal(a.values, b.values)
  assert not np.allclose(a.values, c.values)
  assert not np.allclose(a.values[:, 0], a.values[:, 1])


def test_synthetic_series_components():
  # Without noise and trend, two seasonalities of 24 and 8 repeat with period 24 exactly.
  s = series_lib.synthetic_series(200, periods=(24, 8), amplitudes=(1.0, 0.3), trend=0.0, noise=0.0)
  np.testing.assert_allclose(s.values[24:], s.values[:-24], atol=1e-9)
  assert not np.allclose(s.values[12:], s.values[:-12])
  trend = series_lib.synthetic_series(100, periods=(), amplitudes=(), level=2.0, trend=0.5,
                                      noise=0.0)
  np.testing.assert_allclose(trend.values[:, 0], 2.0 + 0.5 * np.arange(100))


def test_synthetic_series_rejects_mismatched_components():
  with pytest.raises(ConfigError, match="periods and amplitudes"):
    series_lib.synthetic_series(100, periods=(24, 12), amplitudes=(1.0,))


# -- CSV source ------------------------------------------------------------------------------------


def test_csv_series_reads_columns_and_sorts_on_time(tmp_path):
  rows = [("2024-01-01T03:00", 3.0, 30), ("2024-01-01T01:00", 1.0, 10),
          ("2024-01-01T02:00", 2.0, 20), ("2024-01-01T00:00", 0.0, 0)]
  path = write_csv(tmp_path / "s.csv", ["time", "a", "b"], rows)
  s = series_lib.csv_series(path, ["b", "a"], time_column="time")
  assert s.columns == ("b", "a")
  np.testing.assert_array_equal(s.values, [[0, 0], [10, 1], [20, 2], [30, 3]])
  unsorted = series_lib.csv_series(path, "a")  # A single name is accepted; file order is kept.
  np.testing.assert_array_equal(unsorted.values[:, 0], [3, 1, 2, 0])


def test_csv_series_sorts_numeric_time_as_numbers(tmp_path):
  path = write_csv(tmp_path / "s.csv", ["t", "v"], [(10, 1.5), (9, 0.5), (100, 2.5)])
  values = series_lib.csv_series(path, ["v"], "t").values[:, 0]
  np.testing.assert_array_equal(values, [0.5, 1.5, 2.5])


def test_csv_series_missing_file(tmp_path):
  missing = str(tmp_path / "nope.csv")
  with pytest.raises(ConfigError, match=r"csv_series.path: file not found: .*nope\.csv"):
    series_lib.csv_series(missing, ["v"])


def test_csv_series_unknown_columns(tmp_path):
  path = write_csv(tmp_path / "s.csv", ["t", "v"], [(0, 1.0)])
  with pytest.raises(ConfigError, match=r"no column 'w' \(columns: t, v\)"):
    series_lib.csv_series(path, ["w"])
  with pytest.raises(ConfigError, match="no column 'time'"):
    series_lib.csv_series(path, ["v"], time_column="time")


def test_csv_series_non_numeric_value_names_the_line(tmp_path):
  path = write_csv(tmp_path / "s.csv", ["t", "v"], [(0, 1.0), (1, "oops"), (2, 3.0)])
  with pytest.raises(ConfigError, match=r"line 3, column 'v': 'oops' is not a number"):
    series_lib.csv_series(path, ["v"])
  empty = write_csv(tmp_path / "e.csv", ["t", "v"], [(0, 1.0), (1, "")])
  with pytest.raises(ConfigError, match="line 3"):
    series_lib.csv_series(empty, ["v"])


def test_error_messages_are_complete_on_their_first_line(tmp_path):
  # gin appends "In call to configurable ..." on later lines; the launcher prints the first line.
  path = write_csv(tmp_path / "s.csv", ["t", "v"], [(0, "x")])
  for call, expected in [
          (lambda: series_lib.csv_series(str(tmp_path / "none.csv"), ["v"]),
           "none.csv; set csv_series.path"),
          (lambda: series_lib.csv_series(path, ["zz"]), "s.csv: no column 'zz' .* fix csv_series"),
          (lambda: series_lib.csv_series(path, ["v"]), "s.csv: line 2, .* clean the file")]:
    with pytest.raises(ConfigError) as info:
      call()
    assert re.search(expected, str(info.value).splitlines()[0])


def test_example_csv_ships_with_the_package():
  for name in ("example", series_lib.EXAMPLE_CSV):
    assert os.path.isfile(series_lib.resolve_path(name))
  s = series_lib.csv_series("example", ["load", "temperature"], time_column="timestamp")
  assert s.values.shape == (480, 2)
  # Hourly data with a daily season: the lag-24 difference is much smaller than the lag-12 one.
  load = s.values[:, 0]
  assert np.abs(load[24:] - load[:-24]).mean() < 0.5 * np.abs(load[12:] - load[:-12]).mean()


def test_unknown_package_path():
  with pytest.raises(ConfigError, match="no installed package 'no_such_pkg'"):
    series_lib.resolve_path("package://no_such_pkg/x.csv")


# -- splits and windows ----------------------------------------------------------------------------


def test_split_bounds():
  assert series_lib.split_bounds(100, (0.7, 0.2, 0.1)) == {
      "train": (0, 70), "valid": (70, 90), "test": (90, 100)}
  assert series_lib.split_bounds(10, (0.5, 0.0, 0.0)) == {
      "train": (0, 5), "valid": (5, 5), "test": (5, 5)}
  for bad in [(0.8, 0.2), (0.0, 0.5, 0.5), (0.7, 0.3, 0.3), (0.9, -0.1, 0.1)]:
    with pytest.raises(ConfigError, match="split_fractions"):
      series_lib.split_bounds(100, bad)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(length=st.integers(1, 300), window=st.integers(1, 60), stride=st.integers(1, 40))
def test_windows_cover_the_part(length, window, stride):
  starts = series_lib.window_starts(length, window, stride)
  if length < window:
    assert starts.size == 0
    return
  assert starts[0] == 0 and starts[-1] == length - window
  assert np.all(np.diff(starts) >= 1) and np.all(np.diff(starts)[:-1] == stride)
  assert len(starts) == -(-(length - window) // stride) + 1
  covered = np.zeros(length, bool)
  for s in starts:
    covered[s:s + window] = True
  if stride <= window:  # A longer stride skips rows on purpose.
    assert covered.all()


def test_window_stride_must_be_positive():
  with pytest.raises(ConfigError, match="stride must be a positive integer, got 0"):
    series_lib.window_starts(10, 3, 0)


def test_split_windows_keep_horizons_inside_their_part():
  context, horizon = 12, 5
  bounds = series_lib.split_bounds(200, (0.6, 0.2, 0.2))
  starts = series_lib.split_windows(200, bounds, context, horizon,
                                    {"train": 1, "valid": horizon, "test": horizon})
  train_stop = bounds["train"][1]
  assert len(starts["train"]) == train_stop - context - horizon + 1
  assert starts["train"].max() + context + horizon <= train_stop
  for name in ("valid", "test"):
    lo, hi = bounds[name]
    assert np.all(starts[name] + context >= lo), "a horizon starts before its part"
    assert np.all(starts[name] + context + horizon <= hi), "a window reads past its part"
    covered = np.zeros(200, bool)
    for s in starts[name]:
      covered[s + context:s + context + horizon] = True
    assert covered[lo:hi].all(), "some rows of the part are never forecast"
  empty = series_lib.split_windows(200, series_lib.split_bounds(200, (0.8, 0.2, 0.0)), context,
                                   horizon, {"train": 1, "valid": 1, "test": 1})
  assert empty["test"].size == 0


def test_gather_windows_matches_slicing():
  values = np.arange(40, dtype=np.float32).reshape(20, 2)
  out = series_lib.gather_windows(tf.constant(values), tf.constant([0, 7, 15]), 5)
  np.testing.assert_array_equal(out, np.stack([values[0:5], values[7:12], values[15:20]]))


# -- normalisation statistics ----------------------------------------------------------------------


def test_stats_are_saved_and_reused(tmp_path):
  train = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])
  stats = series_lib.load_or_compute_stats(str(tmp_path), train, ["a", "b"])
  np.testing.assert_allclose(stats.mean, [3.0, 10.0])
  np.testing.assert_allclose(stats.std, [np.sqrt(8 / 3), 1.0])  # A constant column gets std 1.
  assert not os.listdir(tmp_path)  # Computing does not write.
  path = series_lib.save_stats(str(tmp_path / "run"), stats)
  with open(path) as f:
    saved = json.load(f)
  assert saved["columns"] == ["a", "b"] and saved["mean"] == [3.0, 10.0]
  assert os.listdir(tmp_path / "run") == [series_lib.STATS_FILENAME]  # No temporary file left.
  # A resumed run with different data still normalises with the saved statistics, bit for bit.
  again = series_lib.load_or_compute_stats(str(tmp_path / "run"), train * 100, ["a", "b"])
  np.testing.assert_array_equal(again.mean, stats.mean)
  np.testing.assert_array_equal(again.std, stats.std)
  x = np.array([[2.0, 11.0]])
  np.testing.assert_allclose(stats.denormalize(stats.normalize(x)), x)


def test_stats_for_other_columns_are_rejected(tmp_path):
  series_lib.save_stats(str(tmp_path), series_lib.NormStats.from_values(np.ones([4, 1]), ["a"]))
  with pytest.raises(ConfigError, match=r"written for columns \['a'\] but the data has \['b'\]"):
    series_lib.load_or_compute_stats(str(tmp_path), np.ones([4, 1]), ["b"])


def test_corrupt_stats_file(tmp_path):
  (tmp_path / series_lib.STATS_FILENAME).write_text("{not json")
  with pytest.raises(ConfigError, match="delete the file"):
    series_lib.load_or_compute_stats(str(tmp_path), np.ones([4, 1]), ["a"])


def test_stats_without_model_dir(tmp_path):
  stats = series_lib.load_or_compute_stats(None, np.array([[0.0], [2.0]]), ["a"])
  np.testing.assert_allclose(stats.mean, [1.0])
  np.testing.assert_allclose(stats.std, [1.0])
