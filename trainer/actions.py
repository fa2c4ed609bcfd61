"""Actions: what happens around the training loops, each a small object the controller calls.

The controller calls every action with the step and the metrics at five points:
  on_start(step, until)            training (until: final step) or evaluation (until None) begins
  on_train(step, outputs, metrics) a loop ended at `step`; outputs: its `TrainOutputs` (one value
                                   per step), metrics: the last step's scalars (speed included)
  on_eval(split, step, metrics)    `split` was evaluated at `step`
  on_end(step)                     training or evaluation finished at `step`
  next_boundary(step) -> int|None  a step after `step` at which a loop must end (None: any)
An action touches only what it was given. Periodic ones fire at the first loop end at or past each
multiple of their interval, except where a test of theirs says otherwise.
"""

import contextlib
import math

import tensorflow as tf

from tbptt.trainer.errors import TrainingError
from tbptt.trainer.progress import ProgressReporter, Rate, format_eta
from tbptt.trainer.summaries import Summaries


def crossed(previous: int, step: int, interval: int | None) -> bool:
  """Whether a multiple of `interval` lies in (previous, step]."""
  return bool(interval) and step // interval > previous // interval


class Action:
  """Does nothing at every point; subclasses override what they need."""

  def on_start(self, step: int, until: int | None) -> None:
    pass

  def on_train(self, step: int, outputs, metrics: dict) -> None:
    pass

  def on_eval(self, split: str, step: int, metrics: dict) -> None:
    pass

  def on_end(self, step: int) -> None:
    pass

  def next_boundary(self, step: int) -> int | None:
    return None


class BestCheckpoint(Action):
  """Keeps a copy of the checkpoint with the lowest 'valid' loss in checkpoints/best.

  Args:
    checkpoints: The `Checkpointer` (`save_best(step)`).
    best_loss: float32 scalar variable, checkpointed (+inf before the first eval).
  """

  def __init__(self, checkpoints, best_loss: tf.Variable, split: str = "valid"):
    self._checkpoints = checkpoints
    self._best = best_loss
    self._split = split

  def on_eval(self, split, step, metrics):
    if split == self._split and metrics["loss"] < float(self._best.numpy()):
      self._best.assign(metrics["loss"])
      self._checkpoints.save_best(step)


class NonFinitePolicy(Action):
  """After `max_steps` skipped steps in a row: stop with TrainingError, or roll back.

  A rollback restores the newest checkpoint saved with no skipped step pending (model, optimizer,
  step, carried state, RNG states) and multiplies the learning-rate factor by `lr_factor`; the
  rollback count goes up by one and the total of skipped steps keeps counting (none of the three
  come back from the checkpoint). Under 'rollback' a checkpoint is written at the start if there is
  none, so that a first streak has something to go back to.

  Args:
    runner: Its `counters` and `learning_rate_factor` variables are read and set.
    checkpoints: The `Checkpointer` (`latest`, `checkpoints`, `read`, `restore`, `save`).
    rollbacks: int64 scalar variable, checkpointed: rollbacks over the run's whole life.
    max_steps, policy, lr_factor, max_rollbacks: `Trainer.max_nonfinite_steps`,
      `.nonfinite_policy`, `.rollback_lr_factor`, `.max_rollbacks`.
    log: A `logging.Logger` for the rollback warning.
  """

  def __init__(self, runner, checkpoints, rollbacks: tf.Variable, *, max_steps: int, policy: str,
               lr_factor: float, max_rollbacks: int, log):
    self._runner = runner
    self._checkpoints = checkpoints
    self._rollbacks = rollbacks
    self._max_steps = max_steps
    self._policy = policy
    self._lr_factor = float(lr_factor)
    self._max_rollbacks = max_rollbacks
    self._log = log

  def on_start(self, step, until):
    if until is not None and self._policy == "rollback" and self._checkpoints.latest is None:
      self._checkpoints.save(step)

  def on_train(self, step, outputs, metrics):
    if outputs.consecutive_nonfinite < self._max_steps:
      return
    limit = self._max_steps
    what = (f"{limit} steps in a row had a non-finite loss or gradient and were skipped "
            f"(Trainer.max_nonfinite_steps={limit})")
    if self._policy != "rollback":
      raise TrainingError(
          f"training stopped at step {step}: {what}; lower the learning rate, set "
          "Trainer.clip_norm or Trainer.nonfinite_policy='rollback', then resume from the last "
          "checkpoint")
    done = int(self._rollbacks.numpy())
    if done >= self._max_rollbacks:
      raise TrainingError(
          f"training stopped at step {step}: {what}, after {done} rollbacks "
          f"(Trainer.max_rollbacks={self._max_rollbacks}); lower Trainer.learning_rate or set "
          "Trainer.clip_norm, then resume from the last checkpoint")
    restored, factor = self._roll_back()
    self._log.warning("Step %d: %s; rolled back to the checkpoint of step %d with the learning "
                      "rate scaled by %g (rollback %d of at most %d).", step, what, restored,
                      factor, done + 1, self._max_rollbacks)

  def _roll_back(self) -> tuple[int, float]:
    checkpoints, runner = self._checkpoints, self._runner
    good = [p for p in checkpoints.checkpoints
            if int(checkpoints.read(p, "nonfinite_in_a_row")) == 0]
    if not good:
      raise TrainingError(f"training cannot roll back at step {runner.step}: no checkpoint in "
                          f"{checkpoints.directory} was saved between non-finite streaks")
    factor = float(runner.learning_rate_factor.numpy()) * self._lr_factor
    rollbacks = int(self._rollbacks.numpy()) + 1
    skipped = int(runner.counters.total.numpy())
    checkpoints.restore(good[-1])
    runner.learning_rate_factor.assign(factor)
    self._rollbacks.assign(rollbacks)
    runner.counters.total.assign(skipped)
    return runner.step, factor


class Histograms(Action):
  """Weight histograms, and gradient histograms of the next chunk, about every `interval` steps.

  Args:
    summaries: Written to its 'train' writer as `weights/<path>` and `gradients/<path>`.
    runner: Its model, global step and carried state are read.
    gradient_pass: A `loop.GradientPass` (leaves training's random streams untouched).
    interval: Steps (None: never).
  """

  def __init__(self, summaries: Summaries, runner, gradient_pass, interval: int | None):
    self._summaries = summaries
    self._runner = runner
    self._gradients = gradient_pass
    self._interval = interval

  def on_train(self, step, outputs, metrics):
    if not crossed(step - outputs.steps, step, self._interval):
      return
    variables = self._runner.task.model.trainable_variables
    grads = self._gradients(self._runner.global_step.read_value(), self._runner.state)
    self._summaries.histograms("train", step, {
        "weights": {v.path: tf.convert_to_tensor(v) for v in variables},
        "gradients": {v.path: tf.convert_to_tensor(g) for v, g in zip(variables, grads)}})


class TaskSummaries(Action):
  """The task's own eval summaries (e.g. forecast images, a text sample), next to the 'valid'
  scalars, written with the weights evaluation uses.

  Args:
    task: Its `write_eval_summaries(step)` is called.
    summaries: The writers.
    evaluation_weights: A context-manager factory in which the model holds the evaluation weights
      (the runner's `evaluation_weights`: NT-ASGD's averages once there are any); None: as it is.
  """

  def __init__(self, task, summaries: Summaries, split: str = "valid", writer: str = "eval",
               evaluation_weights=None):
    self._task = task
    self._summaries = summaries
    self._split = split
    self._writer = writer
    self._evaluation_weights = evaluation_weights or contextlib.nullcontext

  def on_eval(self, split, step, metrics):
    if split == self._split:
      with self._summaries.writer(self._writer).as_default(step=step), self._evaluation_weights():
        self._task.write_eval_summaries(step)


class Progress(Action):
  """Where training starts; a progress line at every multiple of `log_interval` (exact: taken from
  each step's own loss, printed when its loop returns) and at the final step; a live bar in
  between on a terminal; one line per evaluation.

  Args:
    reporter: The `ProgressReporter`.
    log_interval: Steps.
  """

  def __init__(self, reporter: ProgressReporter, log_interval: int):
    self._reporter = reporter
    self._interval = log_interval
    self._rate = Rate()
    self._until = None
    self._last = None

  def on_start(self, step, until):
    self._until = until
    self._rate.restart(step)
    self._last = step
    if until is not None:
      self._reporter.line(f"training from step {step} to {until}" if step < until else
                          f"already at step {step} (target {until}): nothing to train")

  def on_train(self, step, outputs, metrics):
    previous = step - outputs.steps
    if self._last is not None and previous < self._last:  # Rolled back: the ETA starts again.
      self._rate.restart(previous)
    self._last = step
    until = self._until or step
    eta = format_eta(self._rate.eta(step, until))
    first = (previous // self._interval + 1) * self._interval
    kept = list(range(first, step + 1, self._interval))
    if step >= until and step not in kept:
      kept.append(step)
    for s in kept:
      self._reporter.line(self._text(s, until, float(outputs.loss[s - previous - 1]), metrics,
                                     eta if s == step else None))
    self._reporter.bar(step / max(until, 1),
                       self._text(step, until, metrics["loss"], metrics, eta))

  @staticmethod
  def _text(step, until, loss, metrics, eta) -> str:
    text = (f"step {step}/{until} | loss {loss:.4f} | {metrics['steps_per_sec']:.1f} steps/s | "
            f"{metrics['tokens_per_sec']:,.0f} tokens/s")
    return text if eta is None else f"{text} | ETA {eta}"

  def on_eval(self, split, step, metrics):
    values = " ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                      if isinstance(v, float) and math.isfinite(v))
    self._reporter.line(f"eval {split} at step {step}: {values}")

  def on_end(self, step):
    self._reporter.close_bar()


class WeightAveraging(Action):
  """NT-ASGD's trigger and its TensorBoard scalars (see `averaging`).

  Each 'valid' evaluation made while training (the periodic ones and the one at the end of a
  run; not `Trainer.evaluate`) is recorded, and starts the averaging when the non-monotonic rule
  says so, with one log line. Train scalars at every multiple of `summary_interval`:
  `averaging/active` (0 or 1), `averaging/iterates` (iterates averaged after that step) and, once
  active, `averaging/start_step`.

  Args:
    averages: The runner's `WeightAverages`.
    summaries: Written to its 'train' writer.
    summary_interval: Steps.
    log: A `logging.Logger` for the line that says averaging started (INFO).
  """

  def __init__(self, averages, summaries: Summaries, summary_interval: int, log,
               split: str = "valid"):
    self._averages = averages
    self._summaries = summaries
    self._interval = summary_interval
    self._log = log
    self._split = split
    self._training = False

  def on_start(self, step, until):
    self._training = until is not None
    start = self._averages.start_step
    if self._training and start is not None:
      self._log.info("Weight averaging (NT-ASGD) is active since step %d (%d iterates averaged).",
                     start, self._averages.count)

  def on_train(self, step, outputs, metrics):
    start = self._averages.start_step
    count = self._averages.count
    previous = step - outputs.steps
    first = self._interval - previous % self._interval
    for i in range(first - 1, outputs.steps, self._interval):
      values = {"active": 0.0, "iterates": 0.0}
      if start is not None:
        # Updates applied after step i (skipped steps add to the running total and average
        # nothing) are not yet in the count at step i.
        skipped_after = int(outputs.nonfinite_steps[-1] - outputs.nonfinite_steps[i])
        values = {"active": 1.0, "iterates": count - (outputs.steps - 1 - i - skipped_after),
                  "start_step": start}
      self._summaries.scalars("train", previous + i + 1, {"averaging": values})

  def on_eval(self, split, step, metrics):
    if not self._training or split != self._split:
      return
    if self._averages.record(step, metrics["loss"]):
      nonmono = self._averages.settings.nonmono
      self._log.info(
          "Step %d: validation loss %.4f is worse than the best before the last %d evaluations "
          "(%.4f); averaging the weights from here on (NT-ASGD): evaluations, samples and "
          "exports use the averages.", step, metrics["loss"], nonmono,
          min(self._averages.history[:-nonmono - 1]))

  def on_end(self, step):
    self._training = False
