"""The fused kernel against the loop: outputs, final state and every gradient, every variant.

Both implementations run the same layer weights, inputs, initial state, mask and noise; the loop is
the reference. Tolerances: float32 rtol 1e-5 + atol 1e-6, float64 1e-10. One exception: the
float32 gradients of the layer-norm variants. The layer-norm gradient subtracts nearly equal
numbers, and both implementations carry a few 1e-6 of float32 rounding there (in a different
order), about 3e-6 of the tensor's largest magnitude for the kernel and 1.5e-6 for the loop, against
the float64 loop. Elementwise, small entries then miss rtol 1e-5 + atol 1e-6; there the test takes
rtol 1e-5 normwise: the kernel's largest error, measured against the float64 loop, is at most 1e-5
of the tensor's largest magnitude.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from layer_utils import VARIANTS, copy_cell_weights, randomize_weights
from tbptt.layers import LSTM, LSTMState, kernels

TOLERANCES = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-10, atol=1e-10)}
FUSED_VARIANTS = dict(VARIANTS, dropout=dict(dropout=0.3, recurrent_dropout=0.4),
                      weight_drop=dict(weight_drop=0.4),
                      everything_and_dropout=dict(VARIANTS["everything"], recurrent_dropout=0.3,
                                                  weight_drop=0.3))

# (B, T, F, u): a usual case, one row, one step, and a u that is no multiple of 8 with F > u.
SHAPES = [(3, 6, 4, 5), (1, 4, 3, 5), (2, 1, 3, 5), (2, 3, 13, 11)]


@pytest.fixture(autouse=True)
def _kernel_built():
  assert kernels.available(), f"the fused kernel did not build: {kernels.error()}"


def _run(implementation, kwargs, shape, dtype, mask, training, source=None):
  """(outputs, final h, final c, gradients of x, h0, c0 and every weight) of one implementation."""
  batch, steps, features, units = shape
  rng = np.random.default_rng(7)
  x = tf.constant(rng.normal(size=(batch, steps, features)), dtype)
  lstm = LSTM(units, implementation=implementation, dtype=dtype, seed=11, **kwargs)
  lstm(x[:, :1])
  if source is None:
    randomize_weights(lstm.cell, 5)
  else:
    copy_cell_weights(source.cell, lstm.cell)
  out = lstm.cell.output_size
  state = LSTMState(h=tf.constant(rng.normal(size=(batch, out)), dtype),
                    c=tf.constant(rng.normal(size=(batch, units)), dtype))
  with tf.GradientTape() as tape:
    tape.watch([x, state.h, state.c])
    outputs, final = lstm(x, initial_state=state, mask=mask, training=training)
    # Every output and both parts of the final state reach the loss, with uneven weights.
    loss = (tf.reduce_sum(tf.sin(1.3 * outputs)) + tf.reduce_sum(final.h ** 3)
            + tf.reduce_sum(tf.cos(final.c)))
  assert lstm.resolved_implementation == implementation
  grads = tape.gradient(loss, [x, state.h, state.c] + lstm.trainable_weights)
  names = ["outputs", "h", "c", "d_inputs", "d_h0", "d_c0"] + [
      f"d_{w.name}" for w in lstm.trainable_weights]
  return lstm, dict(zip(names, [outputs, final.h, final.c] + grads))


def _assert_same(fused, loop, dtype, truth=None):
  """fused == loop within TOLERANCES[dtype]; with `truth` (float64 results) the gradients are
  checked normwise against the truth instead (see the module docstring)."""
  assert fused.keys() == loop.keys()
  for name, expected in loop.items():
    assert expected is not None and fused[name] is not None, name
    if truth is not None and name.startswith("d_"):
      fused_error = np.max(np.abs(np.asarray(fused[name], np.float64) - truth[name]))
      assert fused_error <= 1e-5 * max(1.0, np.max(np.abs(truth[name]))), (name, fused_error)
      continue
    np.testing.assert_allclose(fused[name], expected, err_msg=name, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", sorted(FUSED_VARIANTS))
def test_fused_equals_loop_with_a_mask_with_holes(variant, dtype):
  shape = SHAPES[0]
  mask = tf.constant(np.array([[1, 1, 0, 1, 0, 1], [0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], bool))
  reference, loop = _run("loop", FUSED_VARIANTS[variant], shape, dtype, mask, training=True)
  _, fused = _run("fused", FUSED_VARIANTS[variant], shape, dtype, mask, training=True,
                  source=reference)
  truth = None
  if dtype == "float32" and FUSED_VARIANTS[variant].get("layer_norm"):
    _, truth = _run("loop", FUSED_VARIANTS[variant], shape, "float64", mask, training=True,
                    source=reference)
    truth = {name: np.asarray(value) for name, value in truth.items()}
  _assert_same(fused, loop, dtype, truth)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=["B1", "T1", "u11_F13"])
@pytest.mark.parametrize("variant", ["plain", "everything"])
def test_fused_equals_loop_at_edge_shapes(variant, shape, training):
  reference, loop = _run("loop", FUSED_VARIANTS[variant], shape, "float64", None, training)
  _, fused = _run("fused", FUSED_VARIANTS[variant], shape, "float64", None, training,
                  source=reference)
  _assert_same(fused, loop, "float64")


def test_cell_clip_gradient_is_zero_where_the_clip_binds():
  # A clip this small binds almost everywhere: the loop's gradient is mostly zero, so is ours.
  reference, loop = _run("loop", dict(cell_clip=0.05), SHAPES[0], "float64", None, False)
  _, fused = _run("fused", dict(cell_clip=0.05), SHAPES[0], "float64", None, False,
                  source=reference)
  _assert_same(fused, loop, "float64")
  assert np.max(np.abs(loop["c"])) == pytest.approx(0.05)


def test_fused_is_deterministic():
  _, first = _run("fused", VARIANTS["everything"], SHAPES[0], "float32", None, False)
  _, second = _run("fused", VARIANTS["everything"], SHAPES[0], "float32", None, False)
  for name in first:
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_empty_sequence_keeps_the_state():
  lstm = LSTM(5, implementation="fused")
  state = LSTMState(h=tf.ones([2, 5]), c=2 * tf.ones([2, 5]))
  run = tf.function(lambda x: lstm(x, initial_state=state),
                    input_signature=[tf.TensorSpec([2, None, 3])])
  lstm(tf.zeros([2, 1, 3]))
  outputs, final = run(tf.zeros([2, 0, 3]))
  assert outputs.shape == (2, 0, 5) and lstm.resolved_implementation == "fused"
  np.testing.assert_array_equal(final.c, state.c)


@pytest.mark.parametrize("gemm", ["eigen", "mkl"])
def test_each_matrix_library_gives_the_loops_result(gemm, monkeypatch):
  if gemm == "mkl" and kernels.build.mkl() is None:
    pytest.skip("MKL is not installed: the kernel multiplies with Eigen only")
  monkeypatch.setattr(kernels, "gemm_mode", kernels.GEMM_EIGEN if gemm == "eigen" else
                      kernels.GEMM_MKL)
  reference, loop = _run("loop", VARIANTS["everything"], SHAPES[3], "float64", None, True)
  _, fused = _run("fused", VARIANTS["everything"], SHAPES[3], "float64", None, True,
                  source=reference)
  _assert_same(fused, loop, "float64")


# The kernel's work split across the intra-op threads (KernelThreads in lstm_ops.h), forced with
# $TBPTT_KERNEL_SPLIT: by rows (B = 3 on two threads: blocks of 1 and 2 rows), or by the columns of
# every product wide enough for two blocks of 16 columns. At (B, T, F, u) below with num_proj 33 all
# four products are: 4u = 160 columns forward, out = 33 (an uneven last block) for h_in R^T and the
# projection, u = 40 for m P^T.
SPLIT_SHAPE = (3, 6, 7, 40)
SPLIT_VARIANTS = {"plain": {}, "everything_and_dropout": dict(
    FUSED_VARIANTS["everything_and_dropout"], num_proj=33)}


def _intra_op_threads() -> int:
  return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()


@pytest.mark.parametrize("gemm", ["mkl", "eigen"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", sorted(SPLIT_VARIANTS))
@pytest.mark.parametrize("split", ["rows", "columns"])
def test_split_work_gives_the_one_thread_result_and_repeats(split, variant, dtype, gemm,
                                                            monkeypatch):
  if _intra_op_threads() < 2:
    pytest.skip("the intra-op pool has one thread: the kernel never splits its work")
  if gemm == "mkl" and kernels.build.mkl() is None:
    pytest.skip("MKL is not installed: the kernel multiplies with Eigen only")
  monkeypatch.setattr(kernels, "gemm_mode", kernels.GEMM_EIGEN if gemm == "eigen" else
                      kernels.GEMM_MKL)
  kwargs = SPLIT_VARIANTS[variant]
  monkeypatch.setenv("TBPTT_KERNEL_SPLIT", "none")
  reference, whole = _run("fused", kwargs, SPLIT_SHAPE, dtype, None, True)
  monkeypatch.setenv("TBPTT_KERNEL_SPLIT", split)
  _, first = _run("fused", kwargs, SPLIT_SHAPE, dtype, None, True, source=reference)
  _, second = _run("fused", kwargs, SPLIT_SHAPE, dtype, None, True, source=reference)
  for name, expected in whole.items():
    np.testing.assert_array_equal(second[name], first[name], err_msg=name)
    if dtype == "float64":
      np.testing.assert_allclose(first[name], expected, rtol=1e-12, atol=1e-12, err_msg=name)
    else:  # A block of fewer rows rounds differently; layer norm amplifies it (module docstring).
      error = np.max(np.abs(np.asarray(first[name]) - np.asarray(expected)))
      assert error <= 1e-5 * max(1.0, np.max(np.abs(expected))), (name, error)
