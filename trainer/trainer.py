"""The `Trainer` facade: builds the runner, the checkpoints, the actions and the controller.

  strategy = make_strategy()
  config = TrainerConfig()           # gin: Trainer.train_steps = ..., Trainer.clip_norm = ...
  config.runtime.apply()             # seeds, determinism, precision: before the model is built
  with strategy.scope():
    task = SomeTask(...)
    trainer = Trainer(task, model_dir, strategy, config=config)
  metrics = trainer.train()          # resumes from the newest checkpoint, trains to train_steps
  metrics = trainer.evaluate(splits=("valid", "test"))
"""

import dataclasses
import logging
import os

import tensorflow as tf

from tbptt.trainer import distribute
from tbptt.trainer.actions import BestCheckpoint, Histograms, NonFinitePolicy, Progress
from tbptt.trainer.actions import TaskSummaries, WeightAveraging
from tbptt.trainer.checkpointing import Checkpointer
from tbptt.trainer.config import TrainerConfig
from tbptt.trainer.controller import Controller
from tbptt.trainer.loop import GradientPass
from tbptt.trainer.progress import ProgressReporter
from tbptt.trainer.records import HParams, OperativeConfig, Profiler
from tbptt.trainer.runner import Runner, variable
from tbptt.trainer.summaries import Summaries
from tbptt.trainer.task import Task

_log = logging.getLogger("tbptt.trainer")


class Trainer:
  """Trains a `Task` with truncated backpropagation through time; resumable and distributable.

  Everything a bit-exact resume needs is checkpointed: model, optimizer, global step, the carried
  train state (all replicas' rows, [B, ...]), the non-finite counters, Keras seed-generator states
  (dropout masks), the best eval loss, the rollback count and learning-rate factor, and with
  `weight_averaging` (NT-ASGD) the averaged weights, their count, the step averaging started at and
  the validation losses its trigger compares.

  Args:
    task: The task (model, data, loss, metrics), built inside `strategy.scope()`.
    model_dir: Run directory: checkpoints/, train/ and eval/ event files, operative_config.gin.
    strategy: The strategy the task was built under (default: the current one).
    config: The settings (default: `TrainerConfig()`, i.e. the gin bindings of `Trainer.*`).
    **overrides: `TrainerConfig` fields that replace the config's (validated again).

  Attributes:
    task, model_dir, config: As given.
    runner: The `Runner` (model optimizer, global step, carried state, loops).
    checkpoints: The `Checkpointer` of model_dir/checkpoints.

  Raises:
    ConfigError: An invalid setting (the message names the parameter), a batch that does not
      split over the replicas, or a model built with another dtype policy than the config's.
  """

  def __init__(self, task: Task, model_dir: str, strategy: tf.distribute.Strategy | None = None,
               *, config: TrainerConfig | None = None, **overrides):
    config = config if config is not None else TrainerConfig()
    self.config = dataclasses.replace(config, **overrides) if overrides else config
    self.config.runtime.apply_seed_once()
    self.task = task
    self.model_dir = model_dir
    strategy = strategy or tf.distribute.get_strategy()
    self._strategy = strategy
    chief = distribute.is_chief(strategy)
    self.runner = runner = Runner(task, strategy, self.config)
    os.makedirs(model_dir, exist_ok=True)
    with strategy.scope():
      best_loss = variable(float("inf"), tf.float32, "best_eval_loss")
      rollbacks = variable(0, tf.int64, "rollbacks")
    # Every worker restores the chief's checkpoints; the others save into a scratch directory that
    # each save deletes again (all must save: the carried state is gathered with collectives).
    scratch = os.path.join(model_dir, f"workertemp_{distribute.task_name(strategy)}".replace(
        " ", "_"))
    self.checkpoints = Checkpointer(
        os.path.join(model_dir, "checkpoints"), max_to_keep=self.config.max_checkpoints,
        write_directory=None if chief else scratch, before_save=runner.state_to_variables,
        after_restore=runner.state_from_variables, best_eval_loss=best_loss, rollbacks=rollbacks,
        **runner.trackables())
    self._summaries = Summaries(model_dir, enabled=chief)
    self._controller = Controller(
        runner=runner, checkpoints=self.checkpoints, summaries=self._summaries,
        actions=self._actions(chief, best_loss, rollbacks),
        steps_per_loop=self.config.steps_per_loop, summary_interval=self.config.summary_interval,
        checkpoint_interval=self.config.checkpoint_interval,
        eval_interval=self.config.eval_interval, tokens_per_step=task.tokens_per_step,
        local_stop=not distribute.is_multi_worker(strategy))
    self._restored = False

  def _actions(self, chief: bool, best_loss, rollbacks) -> list:
    config, runner, summaries = self.config, self.runner, self._summaries
    actions = [
        OperativeConfig(self.model_dir, summaries, enabled=chief),
        HParams(summaries),
        Histograms(summaries, runner, GradientPass(self._strategy, self.task, rows=runner.rows),
                   config.histogram_interval),
        NonFinitePolicy(runner, self.checkpoints, rollbacks,
                        max_steps=config.max_nonfinite_steps, policy=config.nonfinite_policy,
                        lr_factor=config.rollback_lr_factor, max_rollbacks=config.max_rollbacks,
                        log=_log),
        # NT-ASGD's trigger comes before BestCheckpoint, whose copy then holds the state after it.
        *([] if runner.averages is None else [
            WeightAveraging(runner.averages, summaries, config.summary_interval, _log)]),
        BestCheckpoint(self.checkpoints, best_loss),
        TaskSummaries(self.task, summaries, evaluation_weights=runner.evaluation_weights),
        Progress(ProgressReporter(live=None if chief else False), config.log_interval)]
    if config.profile_steps is not None:
      actions.append(Profiler(os.path.join(self.model_dir, "train"), *config.profile_steps,
                              enabled=chief))
    return actions

  @property
  def step(self) -> int:
    """The global step (steps taken, skipped ones included)."""
    return self.runner.step

  def restore(self, read_only: bool = False) -> int | None:
    """Restores the newest checkpoint that restores cleanly (model, optimizer, step, state...);
    returns its step or None. A damaged state file is rebuilt and a damaged newest checkpoint is
    moved to checkpoints/corrupt/, each with a warning, unless `read_only`.

    Raises:
      ConfigError: The checkpoint does not fit the model, or none restores cleanly (the files are
        left untouched).
    """
    with self._strategy.scope():
      path = self.checkpoints.restore(read_only=read_only)
    self._restored = True
    if path is None:
      return None
    self._controller.mark_saved(self.step)
    # DEBUG: the progress line says where training starts; evaluating restores again.
    _log.debug("Restored %s (step %d).", path, self.step)
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
    until = self.config.train_steps if until_step is None else until_step
    with distribute.lost_workers_as_training_errors(self._strategy, lambda: self.step):
      if not self._restored:
        self.restore()
      self.runner.clear_stop()
      return self._controller.train(until)

  def evaluation_weights(self):
    """Context: the model holds the weights evaluation, sampling and export use (NT-ASGD's averages
    once it has averaged an update; the raw weights otherwise). Restore first."""
    return self.runner.evaluation_weights()

  def evaluate(self, splits=("valid", "test")) -> dict:
    """Restores the newest checkpoint, evaluates each split, writes eval summaries.

    Returns:
      {split: metrics} for every split that has data.
    """
    with distribute.lost_workers_as_training_errors(self._strategy, lambda: self.step):
      self.restore(read_only=True)  # Evaluating changes nothing in checkpoints/.
      return self._controller.evaluate(splits, self.step)
