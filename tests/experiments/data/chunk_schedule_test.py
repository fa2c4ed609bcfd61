"""The variable-length chunk schedule: its length distribution, positions and purity."""

import numpy as np
import pytest

from tbptt.experiments.data.chunk_schedule import ChunkSchedule, draw_lengths
from tbptt.trainer.errors import ConfigError


def test_lengths_follow_the_two_normals_with_probability_p():
  bptt, std, p = 70, 5.0, 0.95
  lengths = draw_lengths(200_000, bptt, std=std, full_probability=p, min_length=5,
                         max_length=200, seed=3)
  full = lengths > 3 * bptt / 4  # The two modes (70 and 35, s = 5) do not overlap there.
  assert abs(full.mean() - p) < 0.003
  assert abs(lengths[full].mean() - bptt) < 0.05 and abs(lengths[full].std() - std) < 0.05
  half = lengths[~full]
  assert abs(half.mean() - bptt / 2) < 0.15 and abs(half.std() - std) < 0.15


def test_lengths_are_clipped_and_depend_only_on_the_seed_and_the_step():
  kwargs = dict(std=20.0, full_probability=0.5, min_length=10, max_length=60)
  lengths = draw_lengths(50_000, 40, seed=1, **kwargs)
  assert lengths.min() == 10 and lengths.max() == 60
  np.testing.assert_array_equal(draw_lengths(50_000, 40, seed=1, **kwargs), lengths)
  np.testing.assert_array_equal(draw_lengths(777, 40, seed=1, **kwargs), lengths[:777])
  assert not np.array_equal(draw_lengths(50_000, 40, seed=2, **kwargs), lengths)


def test_the_position_of_step_k_is_the_sum_of_the_earlier_lengths_within_a_pass():
  rows = 1000
  schedule = ChunkSchedule(rows, 30, std=5.0, max_length=45, seed=4, horizon=5000)
  starts, lengths = schedule.starts, schedule.lengths.astype(np.int64)
  pass_begins = np.flatnonzero(starts == 0)
  assert pass_begins[0] == 0 and schedule.passes == len(pass_begins) > 100
  for begin, end in zip(pass_begins, list(pass_begins[1:]) + [schedule.period]):
    expected = np.concatenate([[0], np.cumsum(lengths[begin:end - 1])])
    np.testing.assert_array_equal(starts[begin:end], expected)
    # Every padded window fits, and the pass goes on while the next one would.
    assert starts[end - 1] + 45 + 1 <= rows
    assert starts[end - 1] + lengths[end - 1] + 45 + 1 > rows
  # The lengths are the draws of steps 0, 1, 2, ...: the same as drawing them directly.
  np.testing.assert_array_equal(schedule.lengths, draw_lengths(
      schedule.period, 30, std=5.0, full_probability=0.95, min_length=5, max_length=45, seed=4))
  assert schedule.steps_per_pass == round(schedule.period / schedule.passes)


def test_default_max_length_and_errors():
  assert ChunkSchedule(500, 70, std=5.0).max_length == 85
  with pytest.raises(ConfigError, match="fewer than one padded chunk"):
    ChunkSchedule(80, 70, std=5.0)
  with pytest.raises(ConfigError, match="min_seq_len"):
    ChunkSchedule(500, 70, min_length=90, max_length=80)
  with pytest.raises(ConfigError, match="full_seq_len_probability"):
    ChunkSchedule(500, 70, full_probability=1.5)
