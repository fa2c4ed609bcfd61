"""Cadence: when to train, evaluate, checkpoint and write train scalars; everything else is actions.

The controller never touches the model. It is given a runner, a checkpointer, the summary writers
and a list of actions (see `actions`), and calls back into none of them beyond this:

  runner.step -> int                          the global step
  runner.train(num_steps) -> TrainOutputs     runs the steps (fewer on a stop or a non-finite run)
  runner.evaluate(split) -> dict | None       eval metrics of one split (None: it has no data)
  runner.request_stop(signum)                 (any thread) end the running loop after its step
  checkpoints.save(step)
"""

import signal
import time

from tbptt.trainer.actions import Action
from tbptt.trainer.errors import TrainingInterrupted
from tbptt.trainer.loop import TrainOutputs
from tbptt.trainer.signals import StopSignals
from tbptt.trainer.summaries import Summaries

EVAL_SPLIT = "valid"

__all__ = ["Controller", "TrainingInterrupted", "eval_writer_name"]


def eval_writer_name(split: str) -> str:
  """'valid' -> 'eval' (DESIGN's model_dir/eval), any other split -> 'eval_<split>'."""
  return "eval" if split == EVAL_SPLIT else f"eval_{split}"


class Controller:
  """Runs training to a step; evaluates, checkpoints and writes train scalars on their intervals.

  Loops end on every multiple of `checkpoint_interval` and `eval_interval` (and where an action
  asks), so checkpoints and evals land exactly there; train scalars need no alignment (each loop
  reports every step's own values).

  Args:
    runner: Runs loops and evaluations (see the module docstring).
    checkpoints: `save(step)`.
    summaries: Writers for model_dir/train, model_dir/eval, ...
    actions: Called in order at each point (see `actions`).
    steps_per_loop: Steps per compiled loop call.
    summary_interval: Train scalars at multiples of this step count.
    checkpoint_interval: Save at multiples of this (and at the end, and on a signal).
    eval_interval: Evaluate 'valid' at multiples of this (None: only at the end).
    tokens_per_step: Target positions per global step for tokens/s (None: the weight sums).
    local_stop: Whether a signal may also end training between loops (e.g. during an eval). False
      under multi-worker training: the workers must stop after the same step, which only the
      loop's all-reduced stop request guarantees.
  """

  def __init__(self, *, runner, checkpoints, summaries: Summaries, actions=(),
               steps_per_loop: int, summary_interval: int, checkpoint_interval: int,
               eval_interval: int | None, tokens_per_step: int | None = None,
               local_stop: bool = True):
    self._runner = runner
    self._checkpoints = checkpoints
    self._summaries = summaries
    self._actions: list[Action] = list(actions)
    self._steps_per_loop = steps_per_loop
    self._summary_interval = summary_interval
    self._checkpoint_interval = checkpoint_interval
    self._eval_interval = eval_interval
    self._tokens_per_step = tokens_per_step
    self._local_stop = local_stop
    self._saved_step = None  # The step of the checkpoint that holds exactly the current values.

  def train(self, until: int) -> dict:
    """Trains from the runner's step to `until`.

    Returns:
      {"step": final step, "train": last train metrics, "valid": last eval metrics (if any)}.

    Raises:
      TrainingError: raised by an action (e.g. too many non-finite steps in a row).
      TrainingInterrupted: SIGINT/SIGTERM (after saving a checkpoint at the step reached).
    """
    step = self._runner.step
    result = {"step": step, "train": {}}
    self._call("on_start", step, until)
    with StopSignals(on_stop=self._runner.request_stop) as stop:
      while step < until:
        outputs, metrics = self._train_loop(step, until)
        step, result["step"], result["train"] = self._runner.step, self._runner.step, metrics
        if not self._call_train_actions(step, outputs, metrics):
          step = self._runner.step  # An action rolled training back.
          continue
        stopping = outputs.stopped or (self._local_stop and stop.signum is not None)
        if step >= until or (self._eval_interval and step % self._eval_interval == 0):
          result.update(self.evaluate([EVAL_SPLIT], step, end=False))
        if step >= until or step % self._checkpoint_interval == 0 or stopping:
          self.save(step)
        if stopping and step < until:
          raise self._interrupted(stop.signum, step)
    self._call("on_end", step)
    self._summaries.flush()
    return result

  def evaluate(self, splits, step: int, end: bool = True) -> dict:
    """Evaluates each split at `step` and writes its scalars; returns {split: metrics}."""
    results = {}
    for split in splits:
      metrics = self._runner.evaluate(split)
      if metrics is not None:
        self._summaries.scalars(eval_writer_name(split), step, metrics)
        self._call("on_eval", split, step, metrics)
        results[split] = metrics
    if end:
      self._call("on_end", step)
      self._summaries.flush()
    return results

  def save(self, step: int) -> None:
    """Checkpoints `step` unless the newest checkpoint already holds exactly these values."""
    if step != self._saved_step:
      self._checkpoints.save(step)
      self._saved_step = step
    self._summaries.flush()

  def mark_saved(self, step: int | None) -> None:
    """Tells the controller that the checkpoint of `step` holds the current values (a restore)."""
    self._saved_step = step

  # -- helpers -------------------------------------------------------------------------------------

  def _call(self, point: str, *args) -> None:
    for action in self._actions:
      getattr(action, point)(*args)

  def _call_train_actions(self, step: int, outputs: TrainOutputs, metrics: dict) -> bool:
    """Calls on_train until an action moves the runner's step; False if one did."""
    for action in self._actions:
      action.on_train(step, outputs, metrics)
      if self._runner.step != step:
        self._saved_step = None  # The restored values differ from the checkpoint's.
        return False
    return True

  def _loop_size(self, step: int, until: int) -> int:
    ends = [until, step + self._steps_per_loop]
    for interval in (self._checkpoint_interval, self._eval_interval):
      if interval:
        ends.append(step + interval - step % interval)
    ends += [b for b in (a.next_boundary(step) for a in self._actions) if b is not None]
    return min(ends) - step

  def _train_loop(self, step: int, until: int) -> tuple[TrainOutputs, dict]:
    begin = time.perf_counter()
    outputs = self._runner.train(self._loop_size(step, until))
    seconds = max(time.perf_counter() - begin, 1e-9)
    if outputs.steps:
      self._saved_step = None
    tokens = (self._tokens_per_step * outputs.steps if self._tokens_per_step
              else float(outputs.weight.sum()))
    speed = {"steps_per_sec": outputs.steps / seconds, "tokens_per_sec": tokens / seconds}

    def metrics(i):
      return {"loss": float(outputs.loss[i]), "grad_norm": float(outputs.grad_norm[i]),
              "learning_rate": float(outputs.learning_rate[i]),
              "nonfinite_steps": int(outputs.nonfinite_steps[i]),
              **{k: float(v[i]) for k, v in (outputs.task or {}).items()}, **speed}

    # Each step's own values at its own step (not loop averages), so a resumed run repeats them
    # exactly.
    # The RMS of the carried state after the loop, at its last step, if the loop crossed a multiple
    # of summary_interval (in the same write as that step's scalars when it is one).
    first = self._summary_interval - step % self._summary_interval
    written = range(first - 1, outputs.steps, self._summary_interval)
    for i in written:
      values = metrics(i)
      if i == outputs.steps - 1:
        values["state"] = outputs.state_rms
      self._summaries.scalars("train", step + i + 1, values)
    if written and written[-1] != outputs.steps - 1:
      self._summaries.scalars("train", step + outputs.steps, {"state": outputs.state_rms})
    return outputs, metrics(outputs.steps - 1)

  def _interrupted(self, signum, step: int) -> TrainingInterrupted:
    self._call("on_end", step)
    if signum is None:
      print(f"Stopped at step {step} with the other workers (one of them was signalled); "
            "rerun the same command to resume.", flush=True)
    else:
      print(f"Stopped at step {step}; rerun the same command to resume.", flush=True)
    return TrainingInterrupted(signum or signal.SIGTERM, step)
