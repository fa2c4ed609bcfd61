"""The runner: the compiled train and eval loops and the state they carry, nothing else.

  runner = Runner(task, strategy, config)      # inside strategy.scope()
  outputs = runner.train(100)                  # TrainOutputs: one value per step taken
  metrics = runner.evaluate("valid")           # {"loss": ..., task metrics}, None for no data

The controller drives it; checkpoints reach its variables through `trackables()` and move the
carried state in and out of them with `state_to_variables()` / `state_from_variables()`.
"""

import contextlib

import tensorflow as tf

from tbptt.trainer import distribute, optimizers
from tbptt.trainer.averaging import WeightAverages
from tbptt.trainer.config import TrainerConfig
from tbptt.trainer.errors import ConfigError
from tbptt.trainer.loop import EvalLoop, TrainLoop, TrainOutputs, state_paths
from tbptt.trainer.task import Task
from tbptt.trainer.train_step import NonFiniteCounters


def variable(initial, dtype, name) -> tf.Variable:
  """A non-trainable variable every replica reads the same value of (create it in the scope)."""
  return tf.Variable(initial, dtype=dtype, trainable=False, name=name,
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class Runner:
  """Owns the model's optimizer, the global step, the carried train state and the loops, and with
  `Trainer.weight_averaging` the NT-ASGD averages (`averages`, a `WeightAverages`; else None).

  Args:
    task: The task, built inside `strategy.scope()`.
    strategy: The strategy the task was built under.
    config: The trainer's settings (steps, clipping, optimizer, precision, ...).

  Raises:
    ConfigError: A batch that does not split over the replicas, a model without trainable
      variables, or one built with another dtype policy than `config.mixed_precision`.
  """

  def __init__(self, task: Task, strategy: tf.distribute.Strategy, config: TrainerConfig):
    if not isinstance(task, Task):
      raise TypeError(f"task must be a tbptt.trainer.task.Task, got {type(task).__name__}")
    self.task = task
    self.strategy = strategy
    self._rows = distribute.rows_per_replica(strategy, task.global_batch_size,
                                             "Task.global_batch_size")
    eval_rows = distribute.rows_per_replica(strategy, task.eval_batch_size, "Task.eval_batch_size")
    with strategy.scope():
      self._build_model()
      loss_scaling = self._check_precision(config.mixed_precision)
      self.learning_rate_factor = variable(1.0, tf.float32, "learning_rate_factor")
      # Set before every step from the step alone (chunks of varying length): not checkpointed.
      self.learning_rate_scale = variable(1.0, tf.float32, "learning_rate_scale")
      self.optimizer = optimizers.build_optimizer(
          config.optimizer, config.learning_rate, config.lr_schedule,
          steps_per_epoch=task.steps_per_epoch, total_steps=config.train_steps,
          loss_scaling=loss_scaling, factor=self.learning_rate_factor,
          step_factor=self.learning_rate_scale)
      self.optimizer.build(task.model.trainable_variables)
      self.global_step = variable(0, tf.int64, "global_step")
      self.counters = NonFiniteCounters(total=variable(0, tf.int64, "nonfinite_steps"),
                                        consecutive=variable(0, tf.int64, "nonfinite_in_a_row"))
      initial = task.initial_state(task.global_batch_size)
      self._state_structure = initial
      self._state_variables = [variable(tf.zeros_like(t), t.dtype, f"train_state/{p}")
                               for t, p in zip(tf.nest.flatten(initial), state_paths(initial))]
      # Not checkpointed: set by the signal thread, read by the loop in every step.
      self._stop_request = variable(0.0, tf.float32, "stop_request")
    self._train_loop = TrainLoop(
        strategy, task, self.optimizer, global_step=self.global_step, counters=self.counters,
        rows=self._rows, clip_norm=None if config.clip_norm is None else float(config.clip_norm),
        max_nonfinite_steps=config.max_nonfinite_steps, jit_compile=config.jit_compile,
        stop_request=self._stop_request, learning_rate_scale=self.learning_rate_scale)
    self._eval_loop = EvalLoop(strategy, task, rows=eval_rows, max_batches=config.eval_steps)
    # Compiled once: an eager strategy.gather would retrace on every checkpoint.
    self._gather = tf.function(lambda state: distribute.gather_rows(strategy, state))
    self.state = self._zero_state()
    self._step = None  # The global step as the loops left it; None: read the variable.
    # NT-ASGD (Trainer.weight_averaging): the averaged weights, updated in the train step.
    self.averages = None
    if config.weight_averaging is not None:
      with strategy.scope():
        self.averages = WeightAverages(config.weight_averaging, task.model, strategy)
      self.averages.attach(self.optimizer)

  # -- construction --------------------------------------------------------------------------------

  def _build_model(self):
    """Creates the model's variables (in the strategy's scope) with an inference call on chunk 0."""
    model = self.task.model
    if not model.built or not model.trainable_variables:
      batch = self.task.inputs.train_batch(tf.constant(0, tf.int64), 0, self._rows)
      model(batch["inputs"], self.task.initial_state(self._rows), training=False)
    if not model.trainable_variables:
      raise ConfigError(f"the task's model {model.name!r} has no trainable variables")

  def _check_precision(self, mixed_precision) -> bool:
    """Checks the model's dtype policy against `mixed_precision`; True if loss scaling."""
    policy = self.task.model.dtype_policy.name
    if mixed_precision is not None and policy != mixed_precision:
      raise ConfigError(
          f"Trainer.mixed_precision={mixed_precision!r} but the model was built with dtype policy "
          f"{policy!r}; the policy must be set before the model is built (apply the config's "
          "runtime first)")
    return self.task.model.compute_dtype == "float16"

  def _zero_state(self):
    rows = self._rows
    return self.strategy.experimental_distribute_values_from_function(
        lambda _: self.task.initial_state(rows))

  # -- the two jobs --------------------------------------------------------------------------------

  @property
  def step(self) -> int:
    """The global step (steps taken, skipped ones included).

    Read from its variable once, then counted along with the loops (each step taken adds one);
    read again after a restore.
    """
    if self._step is None:
      self._step = int(self.global_step.numpy())
    return self._step

  def train(self, num_steps: int) -> TrainOutputs:
    """Runs `num_steps` steps (fewer if a stop was requested or too many were non-finite)."""
    step = self.step
    self._step = None  # Unknown until the loop returns (and if it raises).
    self.state, outputs = self._train_loop(num_steps, self.state)
    self._step = step + outputs.steps
    return outputs

  def evaluate(self, split: str) -> dict | None:
    """The task's metrics over `split` from a zero state (the evaluation weights); None if the
    split has no data."""
    with self.evaluation_weights():
      sums = self._eval_loop(split)
    if sums is None:
      return None
    return {k: float(v) for k, v in self.task.eval_metrics(sums).items()}

  def evaluation_weights(self):
    """Context: the model holds the weights that evaluation, sampling and export use: the averaged
    ones once NT-ASGD has averaged an update, otherwise (and after it) the raw ones."""
    return self.averages.applied() if self.averages is not None else contextlib.nullcontext()

  def request_stop(self, signum: int | None = None) -> None:
    """Ends the running loop after its current step (any thread); `clear_stop()` undoes it."""
    del signum
    self._stop_request.assign(1.0)

  def clear_stop(self) -> None:
    self._stop_request.assign(0.0)

  # -- checkpointed values -------------------------------------------------------------------------

  def trackables(self) -> dict:
    """What a checkpoint must hold to continue exactly, by checkpoint key."""
    return dict(
        model=self.task.model, optimizer=self.optimizer, step=self.global_step,
        nonfinite_steps=self.counters.total, nonfinite_in_a_row=self.counters.consecutive,
        train_state=list(self._state_variables), learning_rate_factor=self.learning_rate_factor,
        # Keras seed generators (dropout masks) are not reached through the model's checkpoint.
        model_non_trainable=list(self.task.model.non_trainable_variables),
        **(self.averages.trackables() if self.averages is not None else {}))

  def state_to_variables(self) -> None:
    """Copies every replica's carried rows into the checkpointed [B, ...] variables."""
    for v, value in zip(self._state_variables, tf.nest.flatten(self._gather(self.state))):
      v.assign(value)

  def state_from_variables(self) -> None:
    """Sets the carried state from the checkpointed variables (after a restore)."""
    self._step = None  # The restore set the step too.
    with self.strategy.scope():
      values = tf.nest.pack_sequence_as(self._state_structure,
                                        [v.read_value() for v in self._state_variables])
      self.state = distribute.distribute_rows(self.strategy, values, self._rows)

  def carried_state(self):
    """The carried train state of all replicas' rows, a nest of global [B, ...] tensors."""
    return self._gather(self.state)

  @property
  def rows(self) -> int:
    """Training rows per replica."""
    return self._rows
