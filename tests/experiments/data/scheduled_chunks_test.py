"""Chunks of varying length with burn-in: positions, weights, masks and exact state carry."""

import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments.data.chunk_schedule import ChunkSchedule
from tbptt.experiments.data.scheduled_chunks import ScheduledChunks, fixed_schedule
from tbptt.experiments.data.tbptt import StreamLayout
from tbptt.experiments.language_model import LanguageModel
from tbptt.trainer.chunk_model import run_model
from tbptt.layers.state import reset_rows

B, ROWS = 3, 400


def _ids(memory_mapped, tmp_path):
  ids = np.arange(B * ROWS, dtype=np.int32) % 251
  if not memory_mapped:
    return ids
  path = tmp_path / "ids.bin"
  ids.astype(np.uint16).tofile(path)
  return np.memmap(path, np.uint16, mode="r")


def _chunks(ids, burn_in, variable=True):
  layout = StreamLayout(ids, B, 20)
  schedule = (ChunkSchedule(ROWS, 20, std=6.0, full_probability=0.7, min_length=3, max_length=30,
                            seed=9, horizon=200) if variable else fixed_schedule(layout))
  return layout, ScheduledChunks(layout, schedule, burn_in=burn_in,
                                 scale_learning_rate=variable)


@pytest.mark.parametrize("source", ["array", "memmap", "memmap_numpy"])
@pytest.mark.parametrize("burn_in", [0, 7])
def test_each_target_of_a_pass_is_scored_once_in_order_after_its_burn_in(source, burn_in, tmp_path):
  layout, chunks = _chunks(_ids(source != "array", tmp_path), burn_in)
  if source == "memmap_numpy":
    layout._id_file = None  # As when the token-window op is not built: tf.numpy_function reads.
  streams = np.asarray(layout.streams, np.int64)
  schedule = chunks.schedule
  scored = []
  for step in range(schedule.period):
    batch = {k: v.numpy() if hasattr(v, "numpy") else v
             for k, v in chunks.chunk_for_step(step).items()}
    start, length = schedule.starts[step], schedule.lengths[step]
    assert batch["inputs"].shape == (B, burn_in + 30) and batch["burn_in"] == burn_in
    assert batch["carry_steps"] == length and np.all(batch["reset"] == (start == 0))
    weights = batch["weights"][0]
    assert np.all(weights[:burn_in] == 0) and np.all(weights[burn_in:burn_in + length] == 1)
    assert np.all(weights[burn_in + length:] == 0)
    # Real columns: the burn-in that exists (none before the row's start) and the chunk.
    columns = np.arange(start - burn_in, start + length)
    real = columns >= 0
    np.testing.assert_array_equal(batch["mask"][:, :burn_in + length], np.tile(real, [B, 1]))
    assert not batch["mask"][:, burn_in + length:].any()
    np.testing.assert_array_equal(batch["inputs"][:, :burn_in + length][:, real],
                                  streams[:, columns[real]])
    np.testing.assert_array_equal(batch["targets"][:, :burn_in + length][:, real],
                                  streams[:, columns[real] + 1])
    if start == 0:
      scored.append([])
    scored[-1].extend(range(start, start + length))
  for targets in scored[:-1]:  # Whole passes: every target once, in order.
    assert targets == list(range(len(targets)))
    assert ROWS - 1 - 30 <= len(targets) <= ROWS - 1


def test_learning_rate_scale_is_length_over_bptt():
  _, chunks = _chunks(_ids(False, None), 0)
  for step in (0, 5, chunks.schedule.period + 5):
    expected = chunks.schedule.lengths[step % chunks.schedule.period] / 20
    assert float(chunks.learning_rate_scale(step)) == pytest.approx(expected)
  _, fixed = _chunks(_ids(False, None), 4, variable=False)
  assert fixed.learning_rate_scale(3) is None


@pytest.mark.parametrize("burn_in,variable", [(0, True), (6, True), (6, False)])
def test_chunks_with_carried_state_predict_as_one_pass_over_the_rows(burn_in, variable):
  """The scored predictions of chunk after chunk, each from the state the previous one carried,
  equal one model call over the whole rows: positions, masks and the carry point are exact."""
  layout, chunks = _chunks(_ids(False, None), burn_in, variable)
  model = LanguageModel(251, units=8, num_layers=2, embedding_dim=6, seed=1)
  streams = tf.constant(layout.streams)
  whole, _ = model(streams[:, :ROWS - 1], None)
  state = model.initial_state(B)
  begins = np.flatnonzero(chunks.schedule.starts == 0)
  steps = int(begins[1]) if len(begins) > 1 else chunks.schedule.period  # One whole pass.
  for step in range(steps):
    batch = chunks.chunk_for_step(step)
    state = reset_rows(state, batch["reset"])
    logits, state = run_model(model, batch, state, training=False)
    start = chunks.schedule.starts[step]
    length = chunks.schedule.lengths[step]
    np.testing.assert_allclose(logits[:, burn_in:burn_in + length],
                               whole[:, start:start + length], rtol=1e-4, atol=1e-5,
                               err_msg=f"step {step}")


def test_memory_mapped_rows_are_read_by_the_token_window_op(tmp_path):
  from tbptt.experiments.data import kernels
  assert kernels.available(), kernels.error()
  _, chunks = _chunks(_ids(True, tmp_path), 7)
  graph = tf.function(chunks.chunk_for_step).get_concrete_function(
      tf.TensorSpec([], tf.int64)).graph
  types = {op.type for op in graph.get_operations()}
  assert "TbpttTokenWindow" in types and "PyFunc" not in types


def test_burn_in_wider_than_a_row_is_a_config_error():
  from tbptt.trainer.errors import ConfigError
  layout = StreamLayout(_ids(False, None), B, 20)
  with pytest.raises(ConfigError, match="burn_in .* exceed a training row"):
    ScheduledChunks(layout, fixed_schedule(layout), burn_in=ROWS)
