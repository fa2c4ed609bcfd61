"""Tests for experiments/data/tbptt.py: the layout of one stream into B rows of T-long chunks."""

import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments.data import kernels
from tbptt.experiments.data import vocab as vocab_lib
from tbptt.experiments.data.corpus import read_stdlib
from tbptt.experiments.data.tbptt import StreamLayout
from tbptt.trainer.errors import ConfigError


@pytest.fixture(scope="module")
def real_ids():
  text = read_stdlib("valid", 200_000)
  vocab = vocab_lib.Vocabulary.build(text, "char")
  return vocab.encode_text(text)


def test_rows_continue_across_chunks_on_real_text(real_ids):
  layout = StreamLayout(real_ids, batch_size=4, seq_len=16)
  length = len(real_ids) // 4
  assert layout.num_chunks == (length - 1) // 16
  previous = None
  for k in range(5):
    chunk = {key: v.numpy() for key, v in layout.chunk(k).items()}
    np.testing.assert_array_equal(chunk["targets"][:, :-1], chunk["inputs"][:, 1:])
    for b in range(4):
      start = b * length + k * 16
      np.testing.assert_array_equal(chunk["inputs"][b], real_ids[start:start + 16])
    if previous is not None:
      # Row b of chunk k starts where row b of chunk k-1 stopped: its first input is that chunk's
      # last target.
      np.testing.assert_array_equal(chunk["inputs"][:, 0], previous["targets"][:, -1])
    previous = chunk


def test_reset_only_at_the_first_chunk_of_each_pass():
  layout = StreamLayout(np.arange(2 * 41), batch_size=2, seq_len=10)  # L = 41 -> 4 chunks
  assert layout.num_chunks == 4
  resets = [bool(layout.chunk_for_step(tf.constant(s, tf.int64))["reset"].numpy().all())
            for s in range(9)]
  assert resets == [True, False, False, False, True, False, False, False, True]
  np.testing.assert_array_equal(layout.chunk_for_step(5)["inputs"], layout.chunk(1)["inputs"])


def test_row_slice_matches_the_full_batch():
  layout = StreamLayout(np.arange(4 * 30), batch_size=4, seq_len=5)
  full = layout.chunk(2)
  part = layout.chunk(tf.constant(2), row_start=tf.constant(1), num_rows=2)
  for key in ("inputs", "targets", "weights", "reset"):
    np.testing.assert_array_equal(part[key], full[key][1:3])
  assert part["inputs"].dtype == tf.int32 and part["weights"].dtype == tf.float32


def test_chunk_works_inside_tf_function():
  layout = StreamLayout(np.arange(3 * 21), batch_size=3, seq_len=4)
  fn = tf.function(lambda step: layout.chunk_for_step(step)["inputs"])
  np.testing.assert_array_equal(fn(tf.constant(6, tf.int64)), layout.chunk(1)["inputs"])


def test_exactly_one_batch_of_tokens_is_enough():
  layout = StreamLayout(np.arange(3 * 11), batch_size=3, seq_len=10)
  assert layout.num_chunks == 1
  np.testing.assert_array_equal(layout.chunk(0)["targets"][2], np.arange(23, 33))


def test_too_short_names_the_sizes():
  with pytest.raises(ConfigError, match=r"has 32 tokens.*batch_size 3 x \(seq_len 10 \+ 1\) = 33"):
    StreamLayout(np.arange(32), batch_size=3, seq_len=10, name="the training text")


def test_a_memory_mapped_stream_reads_the_same_chunks(tmp_path, real_ids):
  path = tmp_path / "ids.bin"
  real_ids.astype(np.uint8).tofile(path)
  mapped = StreamLayout(np.memmap(path, np.uint8, mode="r"), batch_size=4, seq_len=16)
  held = StreamLayout(real_ids, batch_size=4, seq_len=16)
  assert mapped.memory_mapped and not held.memory_mapped
  assert mapped.num_chunks == held.num_chunks

  @tf.function
  def read(layout, step, row_start):
    return layout.chunk_for_step(step, row_start, num_rows=2)

  for step in (0, 3, mapped.num_chunks + 3):
    a = read(mapped, tf.constant(step, tf.int64), tf.constant(1))
    b = read(held, tf.constant(step, tf.int64), tf.constant(1))
    for key in ("inputs", "targets", "weights", "reset"):
      assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
      np.testing.assert_array_equal(a[key], b[key])


def _op_types(fn, *args):
  return {op.type for op in fn.get_concrete_function(*args).graph.get_operations()}


@pytest.mark.parametrize("op_built", [True, False])
def test_a_memory_mapped_stream_is_read_by_the_op_or_else_through_numpy(tmp_path, real_ids,
                                                                        monkeypatch, op_built):
  if op_built and not kernels.available():
    pytest.skip(f"the token-window op is not built: {kernels.error()}")
  if not op_built:
    monkeypatch.setattr(kernels, "available", lambda: False)
  path = tmp_path / "ids.bin"
  real_ids.astype(np.uint16).tofile(path)
  mapped = StreamLayout(np.memmap(path, np.uint16, mode="r"), batch_size=5, seq_len=33)
  held = StreamLayout(real_ids, batch_size=5, seq_len=33)
  read = tf.function(lambda step, row_start: mapped.chunk_for_step(step, row_start, num_rows=3))
  types = _op_types(read, tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int32))
  if op_built:
    assert "TbpttTokenWindow" in types and not types & {"PyFunc", "EagerPyFunc"}
  else:
    assert "PyFunc" in types and "TbpttTokenWindow" not in types
  # Chunks are a pure function of the step: the same step reads the same ids, pass after pass.
  for step in (0, 1, mapped.num_chunks - 1, mapped.num_chunks, 7 * mapped.num_chunks + 2):
    a = read(tf.constant(step, tf.int64), tf.constant(2))
    b = held.chunk_for_step(step, 2, num_rows=3)
    for key in ("inputs", "targets", "weights", "reset"):
      assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
      np.testing.assert_array_equal(a[key], b[key])
