"""Tests for experiments/data/eval_layout.py: every token but the first is evaluated once."""

import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments.data import kernels
from tbptt.experiments.data.eval_layout import EvalLayout
from tbptt.trainer.errors import ConfigError


def _all_chunks(layout, **kwargs):
  chunks = [{k: v.numpy() for k, v in layout.chunk(i, **kwargs).items()}
            for i in range(layout.num_chunks)]
  keys = ("inputs", "targets", "weights")
  return {k: np.concatenate([c[k] for c in chunks], axis=1) for k in keys}


@pytest.mark.parametrize("n, rows, seq_len", [(101, 4, 7), (100, 3, 10), (2, 1, 5), (57, 8, 1),
                                              (41, 1, 40), (9, 8, 3)])
@pytest.mark.parametrize("mapped", [False, True])
def test_every_target_is_counted_once_with_its_own_input(tmp_path, n, rows, seq_len, mapped):
  ids = np.arange(1, n + 1, dtype=np.int32)  # Distinct ids, so a target names its position.
  if mapped:
    path = tmp_path / "ids.bin"
    ids.astype(np.uint16).tofile(path)
    ids = np.memmap(path, np.uint16, "r")
  layout = EvalLayout(ids, rows, seq_len)
  whole = _all_chunks(layout)
  counted = whole["targets"][whole["weights"] > 0]
  assert layout.tokens_per_pass == n - 1 == whole["weights"].sum()
  np.testing.assert_array_equal(np.sort(counted), np.arange(2, n + 1))
  # Each counted prediction reads the token just before its target.
  np.testing.assert_array_equal(whole["inputs"][whole["weights"] > 0], counted - 1)
  # Within a row, the inputs are contiguous text: the state carried across chunks is exact.
  for row_inputs, row_weights in zip(whole["inputs"], whole["weights"]):
    real = row_inputs[row_weights > 0]
    np.testing.assert_array_equal(np.diff(real), np.ones(max(real.size - 1, 0)))
  # Padding carries no weight and only ever follows the real positions of its row.
  assert ((whole["weights"] == 0) <= (np.cumsum(whole["weights"] == 0, axis=1) > 0)).all()


def test_row_slices_and_tf_function_match_the_full_batch():
  layout = EvalLayout(np.arange(200), batch_size=4, seq_len=6)
  full = layout.chunk(3)
  part = tf.function(lambda k, r: layout.chunk(k, r, 2))(tf.constant(3), tf.constant(1))
  for key in ("inputs", "targets", "weights", "reset"):
    np.testing.assert_array_equal(part[key], full[key][1:3])
  assert bool(layout.chunk(0)["reset"].numpy().all()) and not layout.chunk(1)["reset"].numpy().any()


def test_too_few_tokens_for_the_rows_is_a_config_error():
  with pytest.raises(ConfigError, match=r"the valid text has 4 tokens, fewer than one batch needs: "
                                        r"eval_batch_size 4 rows \+ 1 = 5; use a longer text"):
    EvalLayout(np.arange(4), 4, 10, "the valid text")


def test_numpy_windows_equal_the_tensor_chunks():
  # The PyTorch twin of the benchmarks reads `window`; the trainer reads `chunk`.
  layout = EvalLayout(np.arange(3, 90), batch_size=3, seq_len=8)
  for index in range(layout.num_chunks):
    inputs, targets, weights = layout.window(index, 1, 2)
    chunk = layout.chunk(index, 1, 2)
    np.testing.assert_array_equal(inputs, chunk["inputs"])
    np.testing.assert_array_equal(targets, chunk["targets"])
    np.testing.assert_array_equal(weights, chunk["weights"])


@pytest.mark.parametrize("op_built", [True, False])
def test_a_memory_mapped_split_is_read_by_the_op_or_else_through_numpy(tmp_path, monkeypatch,
                                                                       op_built):
  if op_built and not kernels.available():
    pytest.skip(f"the token-window op is not built: {kernels.error()}")
  if not op_built:
    monkeypatch.setattr(kernels, "available", lambda: False)
  ids = np.random.default_rng(0).integers(0, 300, 1001).astype(np.int32)
  ids.astype(np.uint16).tofile(tmp_path / "ids.bin")
  mapped = EvalLayout(np.memmap(tmp_path / "ids.bin", np.uint16, "r"), batch_size=6, seq_len=13)
  held = EvalLayout(ids, batch_size=6, seq_len=13)
  read = tf.function(lambda index, row_start: mapped.chunk(index, row_start, 4))
  graph = read.get_concrete_function(tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)).graph
  types = {op.type for op in graph.get_operations()}
  if op_built:
    assert "TbpttTokenWindow" in types and not types & {"PyFunc", "EagerPyFunc"}
  else:
    assert "PyFunc" in types and "TbpttTokenWindow" not in types
  for index in range(mapped.num_chunks):  # the last chunks read past the end of the text
    a = read(tf.constant(index), tf.constant(2))
    b = held.chunk(index, 2, 4)
    for key in ("inputs", "targets", "weights", "reset"):
      assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
      np.testing.assert_array_equal(a[key], b[key])
