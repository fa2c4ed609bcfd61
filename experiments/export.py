"""Exports a task's model as a streaming SavedModel: `(inputs, state) -> (outputs, state)`.

The SavedModel in `model_dir/export` holds two tf.functions with fixed input signatures,

    outputs, state = loaded.step(inputs, state)          # inputs [B, T, ...], state: the task's nest
    state = loaded.initial_state(batch_size)             # zeros for batch_size rows

and the same as flat serving signatures (for `saved_model_cli` and serving systems), where the state
nest is flattened into tensors `state_0`, `state_1`, ... (for an LSTM stack: h and c of each layer,
bottom first):

    signatures["serving_default"](inputs=..., state_0=..., ...) -> {"outputs", "state_0", ...}
    signatures["initial_state"](batch_size=...)                  -> {"state_0", ...}

Files a restored model needs besides its weights (a task's `asset_paths`, e.g. the vocabulary) are
copied into `export/assets.extra/`.
"""

import os
import shutil

import tensorflow as tf

EXPORT_DIR = "export"


class StreamingModel(tf.Module):
  """The model of a task, with signatures for step-by-step (streaming) inference.

  Args:
    task: A built `trainer.task.Task`; its model is called as `model(inputs, state, training=False)`.
  """

  def __init__(self, task):
    super().__init__(name="streaming_model")
    self.model = task.model
    self._initial_state_fn = task.initial_state
    example = task.train_batch(tf.constant(0, tf.int64), 0, 1)["inputs"]
    self._inputs_spec = tf.TensorSpec([None, None] + example.shape[2:], example.dtype, name="inputs")
    self._state_spec = tf.nest.map_structure(
        lambda t: tf.TensorSpec([None] + t.shape[1:], t.dtype), task.initial_state(1))
    self._flat_state_spec = [tf.TensorSpec(s.shape, s.dtype, name=f"state_{i}")
                             for i, s in enumerate(tf.nest.flatten(self._state_spec))]
    self.step = tf.function(self._step, input_signature=[self._inputs_spec, self._state_spec])
    self.initial_state = tf.function(
        self._initial_state, input_signature=[tf.TensorSpec([], tf.int32, name="batch_size")])
    self.serving_step = tf.function(self._serving_step,
                                    input_signature=[self._inputs_spec] + self._flat_state_spec)
    self.serving_initial_state = tf.function(
        self._serving_initial_state, input_signature=[tf.TensorSpec([], tf.int32, name="batch_size")])

  def _step(self, inputs, state):
    return self.model(inputs, state, training=False)

  def _initial_state(self, batch_size):
    return self._initial_state_fn(batch_size)

  def _flat(self, state) -> dict:
    return {f"state_{i}": t for i, t in enumerate(tf.nest.flatten(state))}

  def _serving_step(self, inputs, *flat_state):
    state = tf.nest.pack_sequence_as(self._state_spec, list(flat_state))
    outputs, state = self._step(inputs, state)
    return {"outputs": outputs, **self._flat(state)}

  def _serving_initial_state(self, batch_size):
    return self._flat(self._initial_state(batch_size))

  def signatures(self) -> dict:
    return {"serving_default": self.serving_step.get_concrete_function(),
            "initial_state": self.serving_initial_state.get_concrete_function()}


def export(task, model_dir: str) -> str:
  """Writes the SavedModel of `task`'s current weights to `model_dir/export`, replacing an older one.

  Written to a temporary directory first and renamed, so a crash never leaves a partial export.

  Returns:
    The export directory.
  """
  target = os.path.join(model_dir, EXPORT_DIR)
  tmp = f"{target}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
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
