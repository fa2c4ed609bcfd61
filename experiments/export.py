"""Exports a task's model as a streaming SavedModel: `(inputs, state) -> (outputs, state)`.

The SavedModel in `model_dir/export` holds two tf.functions with fixed input signatures,

    outputs, state = loaded.step(inputs, state)          # inputs [B, T, ...]; the task's state nest
    state = loaded.initial_state(batch_size)             # zeros for batch_size rows

(`step` takes int32 or int64 token ids, float32 or float64 values: NumPy's default dtypes work),

and the same as flat serving signatures (for `saved_model_cli` and serving systems), where the state
nest is flattened into tensors `state_0`, `state_1`, ... (for an LSTM stack: h and c of each layer,
bottom first):

    signatures["serving_default"](inputs=..., state_0=..., ...) -> {"outputs", "state_0", ...}
    (a model whose inputs are a dict of tensors takes them by key instead of `inputs`)
    signatures["initial_state"](batch_size=...)                  -> {"state_0", ...}

Files a restored model needs besides its weights (a task's `asset_paths`, e.g. the vocabulary) are
copied into `export/assets.extra/`.
"""

import os
import shutil

import tensorflow as tf

from tbptt.layers import dispatch

EXPORT_DIR = "export"


def _example_inputs(task):
  """One row of model inputs as the model sees them at inference: an eval batch if there is one."""
  for split in ("valid", "test"):
    if task.num_eval_batches(split):
      return task.eval_batch(split, tf.constant(0), 0, 1)["inputs"]
  return task.train_batch(tf.constant(0, tf.int64), 0, 1)["inputs"]


def _batch_spec(t):
  """[b, T, ...] -> TensorSpec [None, None, ...]: any batch size and any chunk length."""
  return tf.TensorSpec([None] * min(t.shape.rank, 2) + t.shape[2:], t.dtype)


# Inputs that `step` takes besides the model's own dtype: NumPy's defaults for ints and floats.
_WIDER = {tf.int32: tf.int64, tf.float32: tf.float64}


def _accepted_input_specs(inputs_spec) -> list:
  """The model's input spec, and the same with int64 / float64 where the model takes int32 /
  float32."""
  wider = tf.nest.map_structure(
      lambda s: tf.TensorSpec(s.shape, _WIDER.get(s.dtype, s.dtype), s.name), inputs_spec)
  return [inputs_spec] + ([wider] if wider != inputs_spec else [])


class StreamingModel(tf.Module):
  """The model of a task, with signatures for step-by-step (streaming) inference.

  Args:
    task: A built `tbptt.trainer.task.Task`; its model is called as
      `model(inputs, state, training=False)`.
  """

  def __init__(self, task):
    super().__init__(name="streaming_model")
    self.model = task.model
    # Specs live in closures, not attributes: tf.Module would wrap a dict attribute in a trackable
    # container, and nests packed from that container confuse models that test for a Mapping.
    example = _example_inputs(task)
    inputs_spec = tf.nest.map_structure(_batch_spec, example)
    state_spec = tf.nest.map_structure(lambda t: tf.TensorSpec([None] + t.shape[1:], t.dtype),
                                       task.initial_state(1))
    # The flat signatures name each input: "inputs" for a tensor, the key for a dict of tensors.
    names = ["inputs"] if tf.is_tensor(example) else sorted(example)
    flat_inputs_spec = [tf.TensorSpec(s.shape, s.dtype, name=n)
                        for n, s in zip(names, tf.nest.flatten(inputs_spec))]
    flat_state_spec = [tf.TensorSpec(s.shape, s.dtype, name=f"state_{i}")
                       for i, s in enumerate(tf.nest.flatten(state_spec))]
    batch_size_spec = tf.TensorSpec([], tf.int32, name="batch_size")

    def step(inputs, state):
      # int64 ids (NumPy's default integer) and float64 values are cast to what the model takes.
      inputs = tf.nest.map_structure(lambda t, s: tf.cast(t, s.dtype), inputs, inputs_spec)
      return self.model(inputs, state, training=False)

    def flat(state) -> dict:
      return {f"state_{i}": t for i, t in enumerate(tf.nest.flatten(state))}

    def serving_step(*tensors):
      inputs = tf.nest.pack_sequence_as(inputs_spec, list(tensors[:len(flat_inputs_spec)]))
      state = tf.nest.pack_sequence_as(state_spec, list(tensors[len(flat_inputs_spec):]))
      outputs, state = step(inputs, state)
      return {"outputs": outputs, **flat(state)}

    # No input_signature: one concrete function per accepted input dtype is traced and saved, and
    # the loaded `step` picks the one that matches its arguments.
    self.step = tf.function(step)
    for accepted in _accepted_input_specs(inputs_spec):
      self.step.get_concrete_function(accepted, state_spec)
    self.initial_state = tf.function(task.initial_state, input_signature=[batch_size_spec])
    self.serving_step = tf.function(serving_step,
                                    input_signature=flat_inputs_spec + flat_state_spec)
    self.serving_initial_state = tf.function(
        lambda batch_size: flat(task.initial_state(batch_size)), input_signature=[batch_size_spec])

  def signatures(self) -> dict:
    return {"serving_default": self.serving_step.get_concrete_function(),
            "initial_state": self.serving_initial_state.get_concrete_function()}


def export(task, model_dir: str) -> str:
  """Writes a SavedModel of `task`'s current weights to `model_dir/export` (replacing an old one).

  Written to a temporary directory first and renamed, so a crash never leaves a partial export.

  Returns:
    The export directory.
  """
  target = os.path.join(model_dir, EXPORT_DIR)
  tmp = f"{target}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  # Trace the layers' graph loop, not the fused C++ op: the SavedModel loads in plain TensorFlow.
  with dispatch.export_scope():
    module = StreamingModel(task)
    tf.saved_model.save(module, tmp, signatures=module.signatures())
  paths = [p for p in getattr(task, "asset_paths", ()) if p and os.path.exists(p)]
  if paths:
    os.makedirs(os.path.join(tmp, "assets.extra"))
    for path in paths:
      shutil.copy(path, os.path.join(tmp, "assets.extra"))
  shutil.rmtree(target, ignore_errors=True)
  os.rename(tmp, target)
  return target
