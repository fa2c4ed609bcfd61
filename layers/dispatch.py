"""Which implementation an `LSTM` runs: the fused C++ kernel, the graph loop, or cuDNN on a GPU.

`choose()` is a pure function of what is known at trace time, so every branch is tested on a CPU.
  'loop'  : always the tf.while_loop (every variant, XLA, SavedModel, any device).
  'fused' : the C++ kernel; a ValueError when it does not apply (names why), a RuntimeError when
            it is not built.
  'cudnn' : cuDNN's LSTM through the routine `keras.layers.LSTM` calls on a GPU; a ValueError when
            the layer is not on a GPU or its variant is not the plain one (names why).
  'auto'  : the kernel where it is built and applies on a CPU; cuDNN on a GPU for the plain variant
            (as `keras.layers.LSTM`); otherwise the loop.
Inside an XLA compilation, and while tracing for a SavedModel export, every request runs the loop:
the kernel has no XLA lowering and a SavedModel must load in TensorFlow without this package.
A mask is only known at run time: with one, the cuDNN path checks that every row is right-padded
and not empty (what cuDNN's sequence lengths can express) and runs the loop otherwise.
"""

import contextlib
import threading

import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util
from tensorflow.python.saved_model import save_context

IMPLEMENTATIONS = ("auto", "fused", "loop", "cudnn")
FUSED, LOOP, CUDNN = "fused", "loop", "cudnn"

_export = threading.local()


def check_implementation(value: str) -> str:
  if value not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {value!r}")
  return value


@contextlib.contextmanager
def export_scope():
  """Layers called inside this scope trace the loop (for a SavedModel that plain TF can load)."""
  depth = getattr(_export, "depth", 0)
  _export.depth = depth + 1
  try:
    yield
  finally:
    _export.depth = depth


def exporting() -> bool:
  """True inside `export_scope()` or while `tf.saved_model.save` traces functions."""
  return getattr(_export, "depth", 0) > 0 or save_context.in_save_context()


def in_xla() -> bool:
  """True while tracing inside `tf.function(jit_compile=True)` (or an XLA context around it)."""
  return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def device_type(tensor) -> str:
  """'GPU' or 'CPU': where `tensor` lives, else where an unplaced op would go."""
  device = getattr(tensor, "device", "") or ""
  if device:
    return tf.DeviceSpec.from_string(device).device_type or "CPU"
  return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def fused_unsupported(cell) -> str | None:
  """Why the kernel cannot run this cell's variant and dtype (None: it can)."""
  if cell.compute_dtype != cell.state_dtype:
    return (f"the kernel computes in one dtype; the {cell.dtype_policy.name} policy computes in "
            f"{cell.compute_dtype} and keeps the state in {cell.state_dtype}")
  if cell.compute_dtype not in ("float32", "float64"):
    return f"the kernel has float32 and float64 code, the layer computes in {cell.compute_dtype}"
  return None


def cudnn_unsupported(cell) -> str | None:
  """Why cuDNN's LSTM cannot run this cell's variant (None: it can).

  cuDNN computes exactly the plain variant (tanh and sigmoid, a bias): no peepholes, projection,
  clip, layer norm, zoneout or recurrent dropout (input dropout is applied before it, and weight
  drop hands it the masked recurrent kernel), in one dtype.
  """
  features = [name for name, on in (
      ("use_peepholes", cell.use_peepholes), ("num_proj", cell.num_proj is not None),
      ("cell_clip", cell.cell_clip is not None), ("layer_norm", cell.layer_norm),
      ("zoneout_cell", cell.zoneout_cell), ("zoneout_hidden", cell.zoneout_hidden),
      ("recurrent_dropout", cell.recurrent_dropout)) if on]
  if features:
    return f"cuDNN runs the plain variant only, the layer sets {', '.join(features)}"
  if cell.compute_dtype != cell.state_dtype:
    return (f"cuDNN keeps the state in the compute dtype; the {cell.dtype_policy.name} policy "
            f"computes in {cell.compute_dtype} and keeps the state in {cell.state_dtype}")
  return None


def cudnn_applicable(cell) -> bool:
  """True if cuDNN's LSTM computes this cell's variant (see `cudnn_unsupported`)."""
  return cudnn_unsupported(cell) is None


def choose(requested: str, *, unsupported: str | None, kernel_error: str | None, xla: bool,
           export: bool, device: str, cudnn_ok: bool, cudnn_why: str | None = None) -> tuple:
  """The implementation to run and why.

  Args:
    requested: 'auto', 'fused', 'loop' or 'cudnn'.
    unsupported: `fused_unsupported(cell)`.
    kernel_error: Why the kernel is not built, or None.
    xla: Tracing under XLA.
    export: Tracing for a SavedModel.
    device: 'CPU' or 'GPU'.
    cudnn_ok: `cudnn_applicable(cell)`.
    cudnn_why: `cudnn_unsupported(cell)`, for the message when 'cudnn' cannot run.

  Returns:
    (implementation, reason): FUSED, LOOP or CUDNN and a short reason.

  Raises:
    ValueError: 'fused' or 'cudnn' was requested for a variant, dtype or device it does not cover.
    RuntimeError: 'fused' was requested and the kernel is not built.
  """
  check_implementation(requested)
  if export:
    return LOOP, "a SavedModel export traces the loop"
  if xla:
    return LOOP, "the kernel has no XLA lowering"
  if requested == LOOP:
    return LOOP, "requested"
  if requested == FUSED:
    if unsupported:
      raise ValueError(f"implementation='fused' cannot run this layer: {unsupported}; use 'auto' "
                       "or 'loop'")
    if device != "CPU":
      raise ValueError(f"implementation='fused' has CPU code only, the layer runs on {device}; "
                       "use 'auto' or 'loop'")
    if kernel_error:
      raise RuntimeError(f"implementation='fused' but the kernel is not built: {kernel_error}")
    return FUSED, "requested"
  if requested == CUDNN:
    if device != "GPU":
      raise ValueError(f"implementation='cudnn' needs a GPU, the layer runs on {device}; use "
                       "'auto' or 'loop'")
    if not cudnn_ok:
      raise ValueError(f"implementation='cudnn' cannot run this layer: "
                       f"{cudnn_why or 'variant not on cuDNN'}; use 'auto' or 'loop'")
    return CUDNN, "requested"
  if device == "GPU":
    return (CUDNN, "plain variant on a GPU") if cudnn_ok else (LOOP, "variant not on cuDNN")
  if unsupported:
    return LOOP, unsupported
  if kernel_error:
    return LOOP, f"kernel not built: {kernel_error}"
  return FUSED, "kernel built and applicable"
