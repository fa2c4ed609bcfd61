"""The gin-configurable `Trainer`: optimizer, loops, checkpoints and controller around a Task.

  strategy = make_strategy()
  with strategy.scope():
    task = SomeTask(...)
    trainer = Trainer(task=task, model_dir=model_dir, strategy=strategy)
  metrics = trainer.train()     # resumes from the newest checkpoint, trains to Trainer.train_steps
  metrics = trainer.evaluate(splits=("valid", "test"))
"""

import contextlib
import math
import os

import gin
import tensorflow as tf
from absl import logging

from tbptt.layers.state import reset_rows
from tbptt.trainer import distribute, optimizers, runtime
from tbptt.trainer import summaries as summaries_lib
from tbptt.trainer.checkpointing import Checkpointer
from tbptt.trainer.controller import NONFINITE_POLICIES, Controller
from tbptt.trainer.errors import ConfigError, TrainingError
from tbptt.trainer.loop import EvalLoop, NonFiniteInjection, TrainLoop, TrainOutputs, state_paths
from tbptt.trainer.task import Task
from tbptt.trainer.train_step import NonFiniteCounters, SUM, forward_backward


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


_INT64_MAX = 2**63 - 1  # Step counts and counters live in int64 variables.


def _positive_int(name: str, value, example: int, allow_none: bool = False):
  if value is None and allow_none:
    return None
  if not _is_int(value) or not 0 < value <= _INT64_MAX:
    none = " or None" if allow_none else ""
    raise ConfigError(f"Trainer.{name} must be a positive integer{none}, got {value!r}; "
                      f"set --gin_bindings='Trainer.{name}={example}'")
  return value


def _step_list(steps) -> list[int]:
  """Trainer.nonfinite_injection_steps as a sorted list of non-negative ints."""
  if isinstance(steps, range):
    steps = list(steps)
  if not isinstance(steps, (list, tuple)) or not all(_is_int(s) and s >= 0 for s in steps):
    raise ConfigError("Trainer.nonfinite_injection_steps must be a list of global steps (a "
                      f"test/debug hook), got {steps!r}; e.g. "
                      "--gin_bindings='Trainer.nonfinite_injection_steps=[5, 6, 7]'")
  return sorted(set(steps))


@gin.configurable("Trainer", denylist=["task", "model_dir", "strategy"])
class Trainer:
  """Trains a `Task` with truncated backpropagation through time; resumable and distributable.

  Everything a bit-exact resume needs is checkpointed: model, optimizer, global step, the carried
  train state (all replicas' rows, [B, ...]), the non-finite counters, Keras seed-generator states
  (dropout masks), the best eval loss, and the rollback count and learning-rate factor.

  Args:
    task: The task (model, data, loss, metrics), built inside `strategy.scope()`.
    model_dir: Run directory: checkpoints/, train/ and eval/ event files, operative_config.gin.
    strategy: The strategy the task was built under (default: the current one).
    train_steps: Final global step (steps).
    steps_per_loop: Steps per compiled loop call (steps).
    clip_norm: Clip the global gradient (all replicas, all variables) to this norm; None: no
      clipping.
    summary_interval: Train scalars at multiples of this (steps).
    checkpoint_interval: Checkpoint at multiples of this (steps), at the end and on SIGINT/SIGTERM.
    eval_interval: Evaluate the 'valid' split at multiples of this (steps); None: only at the end.
    max_checkpoints: Newest checkpoints kept.
    seed: Seed for Python, NumPy, TensorFlow and Keras (applied by `make_strategy()` before the
      model is built; applied here too if it was not).
    deterministic: Make every op deterministic (a resumed run then repeats an uninterrupted one
      bitwise).
    max_nonfinite_steps: Non-finite steps in a row (each skipped) that end training with
      TrainingError ('stop') or trigger a rollback ('rollback').
    nonfinite_policy: 'stop' or 'rollback': restore the newest checkpoint saved without skipped
      steps pending (model, optimizer, step, carried state) and go on with the learning rate
      multiplied by `rollback_lr_factor`. A checkpoint is written at the start if there is none.
    rollback_lr_factor: Learning-rate multiplier applied at each rollback, in (0, 1]; the product
      is checkpointed, so a resumed run keeps the reduced rate.
    max_rollbacks: Rollbacks (over the run's whole life, resumes included) before the next
      `max_nonfinite_steps` streak ends training with TrainingError.
    nonfinite_injection_steps: TEST/DEBUG HOOK, leave empty in real runs. Global steps whose loss
      is made NaN the first time this process takes them (a transient fault: a rollback that
      replays them trains through), to exercise the non-finite paths from a config.
    optimizer: Optimizer factory, `optimizer(learning_rate=...)`, e.g. `@optimizers.SGD`.
    learning_rate: Base learning rate.
    lr_schedule: Schedule factory (e.g. `@schedules.EpochDecay`); None: constant.
    jit_compile: Compile each replica's forward and backward pass with XLA.
    mixed_precision: None, 'mixed_float16' or 'mixed_bfloat16'; must match the policy the model was
      built with (`make_strategy()` sets it from this binding). float16 uses dynamic loss scaling.
    eval_steps: Cap on eval chunks per split (None: all).
    histogram_interval: Weight and gradient histograms about every this many steps (None: off).
    log_interval: Progress line about every this many steps.

  Raises:
    ConfigError: An invalid value (the message names the gin parameter), a batch that does not split
      over the replicas, or a model built with another dtype policy than `mixed_precision`.
  """

  def __init__(self, task: Task, model_dir: str, strategy: tf.distribute.Strategy | None = None, *,
               train_steps: int = 1000, steps_per_loop: int = 100, clip_norm: float | None = None,
               summary_interval: int = 100, checkpoint_interval: int = 1000,
               eval_interval: int | None = None, max_checkpoints: int = 3,
               seed: int = runtime.DEFAULT_SEED,
               deterministic: bool = runtime.DEFAULT_DETERMINISTIC, max_nonfinite_steps: int = 10,
               optimizer=optimizers.Adam, learning_rate: float = 1e-3,
               lr_schedule=None, jit_compile: bool = False,
               mixed_precision: str | None = runtime.DEFAULT_MIXED_PRECISION,
               eval_steps: int | None = None, histogram_interval: int | None = 1000,
               log_interval: int = 100, nonfinite_policy: str = "stop",
               rollback_lr_factor: float = 0.5, max_rollbacks: int = 3,
               nonfinite_injection_steps=()):
    self.train_steps = _positive_int("train_steps", train_steps, 1000)
    _positive_int("steps_per_loop", steps_per_loop, 100)
    _positive_int("summary_interval", summary_interval, 100)
    _positive_int("checkpoint_interval", checkpoint_interval, 1000)
    _positive_int("eval_interval", eval_interval, 1000, allow_none=True)
    _positive_int("max_checkpoints", max_checkpoints, 3)
    _positive_int("max_nonfinite_steps", max_nonfinite_steps, 10)
    _positive_int("eval_steps", eval_steps, 100, allow_none=True)
    _positive_int("histogram_interval", histogram_interval, 1000, allow_none=True)
    _positive_int("log_interval", log_interval, 100)
    if nonfinite_policy not in NONFINITE_POLICIES:
      raise ConfigError(f"Trainer.nonfinite_policy must be 'stop' or 'rollback', got "
                        f"{nonfinite_policy!r}; set --gin_bindings=\"Trainer.nonfinite_policy="
                        "'rollback'\"")
    factor_ok = isinstance(rollback_lr_factor, (int, float)) and not isinstance(
        rollback_lr_factor, bool) and 0 < rollback_lr_factor <= 1
    if not factor_ok:
      raise ConfigError(f"Trainer.rollback_lr_factor must be a number in (0, 1], got "
                        f"{rollback_lr_factor!r}; set "
                        "--gin_bindings='Trainer.rollback_lr_factor=0.5'")
    if not _is_int(max_rollbacks) or max_rollbacks < 0:
      raise ConfigError(f"Trainer.max_rollbacks must be a non-negative integer, got "
                        f"{max_rollbacks!r}; set --gin_bindings='Trainer.max_rollbacks=3'")
    injection_steps = _step_list(nonfinite_injection_steps)
    number = isinstance(clip_norm, (int, float)) and not isinstance(clip_norm, bool)
    if clip_norm is not None and (not number or not math.isfinite(clip_norm) or clip_norm <= 0):
      raise ConfigError(f"Trainer.clip_norm must be a positive number or None, got {clip_norm!r}; "
                        "set --gin_bindings='Trainer.clip_norm=5.0'")
    if not isinstance(jit_compile, bool):
      raise ConfigError(f"Trainer.jit_compile must be True or False, got {jit_compile!r}")
    runtime.check_seed(seed)
    runtime.check_deterministic(deterministic)
    runtime.check_mixed_precision(mixed_precision)
    if not isinstance(task, Task):
      raise TypeError(f"task must be a tbptt.trainer.task.Task, got {type(task).__name__}")
    if runtime.seeded_with() != seed:
      runtime.seed_everything(seed, deterministic)
    elif deterministic:  # Seeded already (by make_strategy): do not restart the random streams.
      runtime.enable_determinism()

    self.task = task
    self.model_dir = model_dir
    self.strategy = strategy or tf.distribute.get_strategy()
    self._chief = distribute.is_chief(self.strategy)
    self._multi_worker = distribute.is_multi_worker(self.strategy)
    self._rollback_lr_factor = float(rollback_lr_factor)
    self._rows = distribute.rows_per_replica(self.strategy, task.global_batch_size,
                                             "Task.global_batch_size")
    eval_rows = distribute.rows_per_replica(self.strategy, task.eval_batch_size,
                                            "Task.eval_batch_size")
    os.makedirs(model_dir, exist_ok=True)

    with self.strategy.scope():
      self._build_model()
      loss_scaling = self._check_precision(mixed_precision)
      self._lr_factor = self._variable(1.0, tf.float32, "learning_rate_factor")
      self._rollbacks = self._variable(0, tf.int64, "rollbacks")
      self.optimizer = optimizers.build_optimizer(
          optimizer, learning_rate, lr_schedule, steps_per_epoch=task.steps_per_epoch,
          total_steps=train_steps, loss_scaling=loss_scaling, factor=self._lr_factor)
      self.optimizer.build(task.model.trainable_variables)
      self.global_step = self._variable(0, tf.int64, "global_step")
      self._counters = NonFiniteCounters(
          total=self._variable(0, tf.int64, "nonfinite_steps"),
          consecutive=self._variable(0, tf.int64, "nonfinite_in_a_row"))
      self._best_eval_loss = self._variable(math.inf, tf.float32, "best_eval_loss")
      initial = task.initial_state(task.global_batch_size)
      self._state_structure = initial
      self._state_variables = [self._variable(tf.zeros_like(t), t.dtype, f"train_state/{p}")
                               for t, p in zip(tf.nest.flatten(initial), state_paths(initial))]
      # Not checkpointed: set by the signal thread, read by the loop in every step.
      self._stop_request = self._variable(0.0, tf.float32, "stop_request")
      injection = None
      if injection_steps:
        injection = NonFiniteInjection(
            steps=tf.constant(injection_steps, tf.int64),
            first_untaken=self._variable(0, tf.int64, "nonfinite_injection_first_untaken"))

    # Every worker restores the chief's checkpoints; the others save into a scratch directory that
    # each save deletes again (all must save: the carried state is gathered with collectives).
    self.checkpointer = Checkpointer(
        os.path.join(model_dir, "checkpoints"), max_to_keep=max_checkpoints,
        write_directory=None if self._chief else os.path.join(
            model_dir, f"workertemp_{distribute.task_name(self.strategy).replace(' ', '_')}"),
        model=task.model, optimizer=self.optimizer,
        step=self.global_step, nonfinite_steps=self._counters.total,
        nonfinite_in_a_row=self._counters.consecutive, best_eval_loss=self._best_eval_loss,
        train_state=list(self._state_variables),
        learning_rate_factor=self._lr_factor, rollbacks=self._rollbacks,
        # Keras seed generators (dropout masks) are not reached through the model's checkpoint.
        model_non_trainable=list(task.model.non_trainable_variables))
    self._nonfinite_policy = nonfinite_policy
    self._train_loop = TrainLoop(
        self.strategy, task, self.optimizer, global_step=self.global_step, counters=self._counters,
        rows=self._rows, clip_norm=None if clip_norm is None else float(clip_norm),
        max_nonfinite_steps=max_nonfinite_steps, jit_compile=jit_compile,
        stop_request=self._stop_request, injection=injection)
    self._eval_loop = EvalLoop(self.strategy, task, rows=eval_rows, max_batches=eval_steps)
    self.summaries = summaries_lib.Summaries(model_dir, enabled=self._chief)
    self.controller = Controller(
        runner=self, summaries=self.summaries, train_steps=train_steps,
        steps_per_loop=steps_per_loop, summary_interval=summary_interval,
        checkpoint_interval=checkpoint_interval, eval_interval=eval_interval,
        histogram_interval=histogram_interval, log_interval=log_interval,
        max_nonfinite_steps=max_nonfinite_steps, tokens_per_step=task.tokens_per_step,
        nonfinite_policy=nonfinite_policy, max_rollbacks=max_rollbacks,
        local_stop=not self._multi_worker)
    self._gradient_fn = None
    # Compiled once: an eager strategy.gather would retrace on every checkpoint.
    self._gather_fn = tf.function(lambda state: distribute.gather_rows(self.strategy, state))
    self._restored = False
    self._saved_step = None  # The step of the checkpoint that holds exactly the current values.
    self._state = self._zero_state()

  # -- construction --------------------------------------------------------------------------------

  def _variable(self, initial, dtype, name):
    return tf.Variable(initial, dtype=dtype, trainable=False, name=name,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

  def _build_model(self):
    """Creates the model's variables (in the strategy's scope) with an inference call on chunk 0."""
    model = self.task.model
    if not model.built or not model.trainable_variables:
      batch = self.task.train_batch(tf.constant(0, tf.int64), 0, self._rows)
      model(batch["inputs"], self.task.initial_state(self._rows), training=False)
    if not model.trainable_variables:
      raise ConfigError(f"the task's model {model.name!r} has no trainable variables")

  def _check_precision(self, mixed_precision) -> bool:
    """Checks the model's dtype policy against Trainer.mixed_precision; True if loss scaling."""
    policy = self.task.model.dtype_policy.name
    if mixed_precision is not None and policy != mixed_precision:
      raise ConfigError(
          f"Trainer.mixed_precision={mixed_precision!r} but the model was built with dtype policy "
          f"{policy!r}; the policy must be set before the model is built (make_strategy() sets it "
          "from Trainer.mixed_precision)")
    return self.task.model.compute_dtype == "float16"

  # -- carried state -------------------------------------------------------------------------------

  def _zero_state(self):
    rows = self._rows
    return self.strategy.experimental_distribute_values_from_function(
        lambda _: self.task.initial_state(rows))

  def _state_from_variables(self):
    values = tf.nest.pack_sequence_as(self._state_structure,
                                      [v.read_value() for v in self._state_variables])
    return distribute.distribute_rows(self.strategy, values, self._rows)

  def _state_to_variables(self):
    gathered = tf.nest.flatten(self._gather_fn(self._state))
    for variable, value in zip(self._state_variables, gathered):
      variable.assign(value)

  def carried_state(self):
    """The carried train state of all replicas' rows, a nest of global [B, ...] tensors."""
    return self._gather_fn(self._state)

  # -- public API ----------------------------------------------------------------------------------

  @property
  def step(self) -> int:
    """The global step (steps taken, skipped ones included)."""
    return int(self.global_step.numpy())

  def restore(self) -> int | None:
    """Restores the newest checkpoint (model, optimizer, step, state...); returns its step or None.

    Raises:
      ConfigError: The checkpoint does not fit the model (its files are left untouched).
    """
    with self.strategy.scope():
      path = self.checkpointer.restore()
      self._restored = True
      if path is None:
        return None
      self._state = self._state_from_variables()
    self._saved_step = self.step
    logging.info("Restored %s (step %d).", path, self.step)
    return self.step

  def train(self, until_step: int | None = None) -> dict:
    """Restores the newest checkpoint (once), then trains to `until_step` (default: train_steps).

    Evaluates 'valid' every eval_interval and at the end, checkpoints every checkpoint_interval and
    at the end.

    Returns:
      {"step": int, "train": {loss, grad_norm, learning_rate, steps_per_sec, tokens_per_sec,
      nonfinite_steps} of the last step, "valid": eval metrics of the last eval (if the task has a
      'valid' split)}.

    Raises:
      TrainingError: Too many non-finite steps in a row (after `max_rollbacks` rollbacks under
        'rollback'); under multi-worker training, a worker was lost (the message names it).
      TrainingInterrupted: (a SystemExit, code 130/143) SIGINT/SIGTERM; a checkpoint was written.
      ConfigError: The newest checkpoint does not fit the model.
    """
    with self._collectives_failing_as_training_errors():
      if not self._restored:
        self.restore()
      self._stop_request.assign(0.0)
      if self._nonfinite_policy == "rollback" and self.checkpointer.latest is None:
        self.save_checkpoint(self.step)  # Something to roll back to.
      return self.controller.train(until_step)

  def evaluate(self, splits=("valid", "test")) -> dict:
    """Restores the newest checkpoint, evaluates each split, writes eval summaries.

    Returns:
      {split: metrics} for every split that has data.
    """
    with self._collectives_failing_as_training_errors():
      self.restore()
      return self.controller.evaluate(splits, self.step)

  @contextlib.contextmanager
  def _collectives_failing_as_training_errors(self):
    """Multi-worker: a collective that fails because a peer died is one TrainingError naming it."""
    if not self._multi_worker:
      yield
      return
    try:
      yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError, tf.errors.InternalError) as e:
      message = distribute.lost_worker_message(self.strategy, e, self.step)
      if message is None:
        raise
      raise TrainingError(message) from None

  # -- runner interface (driven by the Controller) -------------------------------------------------

  def train_loop(self, num_steps: int) -> TrainOutputs:
    self._state, outputs = self._train_loop(num_steps, self._state)
    if outputs.steps:
      self._saved_step = None
    return outputs

  def request_stop(self, signum: int) -> None:
    """Ends the running loop after its current step (called from the signal thread)."""
    del signum
    self._stop_request.assign(1.0)

  @property
  def rollbacks(self) -> int:
    """Rollbacks so far, over the run's whole life (checkpointed)."""
    return int(self._rollbacks.numpy())

  def rollback(self) -> tuple[int, float]:
    """Restores the newest checkpoint saved with no skipped step pending; lowers the learning rate.

    The model, optimizer, step, carried state and RNG states come back from that checkpoint; the
    learning-rate factor becomes (factor before) * rollback_lr_factor, the rollback count goes up by
    one and the total of skipped steps keeps counting (none of the three are rolled back).

    Returns:
      (the restored step, the new learning-rate factor).

    Raises:
      TrainingError: No checkpoint without a pending non-finite streak exists.
    """
    good = [p for p in self.checkpointer.checkpoints
            if int(self.checkpointer.read(p, "nonfinite_in_a_row")) == 0]
    if not good:
      raise TrainingError(f"training cannot roll back at step {self.step}: no checkpoint in "
                          f"{self.checkpointer.directory} was saved between non-finite streaks")
    factor = float(self._lr_factor.numpy()) * self._rollback_lr_factor
    rollbacks = self.rollbacks + 1
    skipped = int(self._counters.total.numpy())
    with self.strategy.scope():
      self.checkpointer.restore(good[-1])
      self._lr_factor.assign(factor)
      self._rollbacks.assign(rollbacks)
      self._counters.total.assign(skipped)
      self._state = self._state_from_variables()
    self._saved_step = None  # The factor and count differ from the restored checkpoint's.
    return self.step, factor

  def evaluate_split(self, split: str) -> dict | None:
    sums = self._eval_loop(split)
    if sums is None:
      return None
    return {k: float(v) for k, v in self.task.eval_metrics(sums).items()}

  def write_eval_summaries(self, split: str, step: int) -> None:
    """The task's extra eval summaries (e.g. forecast images), after the 'valid' eval only."""
    if split == "valid":
      self.task.write_eval_summaries(step)

  def save_checkpoint(self, step: int) -> None:
    if step == self._saved_step:  # Nothing changed since that checkpoint was written or restored.
      return
    self._state_to_variables()
    path = self.checkpointer.save(step)
    self._saved_step = step
    logging.info("Saved %s.", path)

  def save_best(self, step: int, eval_loss: float) -> None:
    if eval_loss < float(self._best_eval_loss.numpy()):
      self._best_eval_loss.assign(eval_loss)
      self._state_to_variables()
      self.checkpointer.save_best(step)

  def write_operative_config(self, step: int) -> None:
    if self._chief:
      summaries_lib.write_operative_config(self.model_dir, self.summaries, step)

  def histograms(self) -> dict:
    """{"weights": {path: value}, "gradients": {path: gradient of the next chunk at these weights}}.

    The gradient pass draws dropout masks; the model's non-trainable variables (seed-generator
    states) are put back afterwards, so histograms never change what training does next.
    """
    variables = self.task.model.trainable_variables
    if self._gradient_fn is None:
      self._gradient_fn = tf.function(self._gradients)
    kept = [(v, tf.identity(v)) for v in self.task.model.non_trainable_variables]
    grads = self._gradient_fn(self.global_step.read_value(), self._state)
    for variable, value in kept:
      variable.assign(value)
    return {"weights": {v.path: tf.convert_to_tensor(v) for v in variables},
            "gradients": {v.path: tf.convert_to_tensor(g) for v, g in zip(variables, grads)}}

  def _gradients(self, step, state):
    def replica(step, state):
      ctx = tf.distribute.get_replica_context()
      batch = self.task.train_batch(step, ctx.replica_id_in_sync_group * self._rows, self._rows)
      weight = ctx.all_reduce(SUM, tf.reduce_sum(tf.cast(batch["weights"], tf.float32)))
      _, _, grads = forward_backward(self.task, batch, reset_rows(state, batch["reset"]), weight)
      grads = [tf.convert_to_tensor(g) for g in grads]
      return ctx.all_reduce(SUM, grads)
    return distribute.first_replica(self.strategy, self.strategy.run(replica, args=(step, state)))
