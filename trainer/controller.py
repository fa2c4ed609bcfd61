"""Cadence: when to train, evaluate, checkpoint, write summaries, show progress, stop on a signal.

The controller never touches the model. It drives a runner (the Trainer) through this interface:

  runner.step -> int                              global step
  runner.train_loop(num_steps) -> TrainOutputs    runs the steps, returns per-step metrics
  runner.evaluate_split(split) -> dict | None     eval metrics of one split (None: split is empty)
  runner.save_checkpoint(step); runner.save_best(step, eval_loss)
  runner.histograms() -> dict                     weight and gradient tensors for histograms
  runner.write_operative_config(step)
  runner.request_stop(signum)                     (any thread) end the running loop after a step
  runner.rollbacks -> int; runner.rollback() -> (step, learning_rate_factor)
                                                  restore the newest checkpoint without skipped
                                                  steps, with a lower learning rate
"""

import datetime
import math
import os
import signal
import sys
import threading
import time
from typing import Protocol

from absl import logging

from tbptt.trainer.errors import TrainingError
from tbptt.trainer.loop import TrainOutputs
from tbptt.trainer.summaries import Summaries

EVAL_SPLIT = "valid"


class Runner(Protocol):
  step: int

  def train_loop(self, num_steps: int) -> TrainOutputs: ...
  def evaluate_split(self, split: str) -> dict | None: ...
  def save_checkpoint(self, step: int) -> None: ...
  def save_best(self, step: int, eval_loss: float) -> None: ...
  def histograms(self) -> dict: ...
  def write_operative_config(self, step: int) -> None: ...
  def request_stop(self, signum: int) -> None: ...
  rollbacks: int
  def rollback(self) -> tuple[int, float]: ...


NONFINITE_POLICIES = ("stop", "rollback")


class TrainingInterrupted(SystemExit):
  """SIGINT/SIGTERM stopped training after a checkpoint; exits with 130 (SIGINT) / 143 (SIGTERM).

  Under multi-worker training a worker that was not signalled stops with its peers, with 143.
  """

  def __init__(self, signum: int, step: int):
    super().__init__(128 + signum)
    self.signum = signum
    self.step = step


def eval_writer_name(split: str) -> str:
  """'valid' -> 'eval' (DESIGN's model_dir/eval), any other split -> 'eval_<split>'."""
  return "eval" if split == EVAL_SPLIT else f"eval_{split}"


class _StopSignals:
  """While active: the first SIGINT/SIGTERM asks for a clean stop; a second one exits at once.

  The signals are read by a thread from a wakeup fd (`signal.set_wakeup_fd`), not by a Python
  handler: Python runs handlers only when the main thread is back in the interpreter, which it is
  not while a compiled loop or a checkpoint write runs. The thread calls `on_stop(signum)` on the
  first signal (the Trainer sets the variable its loop reads before every step) and `os._exit`s
  on the second, even in the middle of a save: the `checkpoint` state file still names the previous
  complete checkpoint, which the next start restores.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self, on_stop=None):
    self.signum = None
    self._on_stop = on_stop
    self._previous = {}
    self._previous_fd = None
    self._pipe = None
    self._thread = None

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # Signals are delivered to the main thread's handlers only.
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd requires it; a full pipe drops bytes.
    self._pipe = (read_fd, write_fd)
    for signum in self.SIGNALS:
      # The C-level handler writes the byte; the Python one only has to exist (and do nothing).
      self._previous[signum] = signal.signal(signum, lambda *_: None)
    self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    self._thread = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    if self._pipe is None:
      return
    signal.set_wakeup_fd(self._previous_fd)
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
    os.close(self._pipe[1])  # The watcher's read returns b"" and it ends.
    self._thread.join()
    os.close(self._pipe[0])
    self._pipe = None

  def _watch(self):
    while True:
      data = os.read(self._pipe[0], 64)
      if not data:
        return
      for signum in data:
        if signum in self.SIGNALS:
          self._handle(signum)

  def _handle(self, signum):
    name = signal.Signals(signum).name
    if self.signum is not None:
      print(f"\nSecond {name}: exiting now, without a checkpoint (the last complete one stays "
            "usable).", file=sys.stderr, flush=True)
      os._exit(128 + signum)
    self.signum = signum
    print(f"\n{name}: stopping after the current step (send it again to exit at once).",
          file=sys.stderr, flush=True)
    if self._on_stop is not None:
      self._on_stop(signum)


class Controller:
  """Runs training to a step, evaluating, checkpointing and writing summaries on their intervals.

  Loops end on every multiple of `checkpoint_interval` and `eval_interval`, so checkpoints and evals
  land exactly there; summaries and progress lines need no alignment (each loop reports every step).

  Args:
    runner: The Trainer (see the module docstring).
    summaries: Writers for model_dir/train, model_dir/eval, ...
    train_steps: Default final step.
    steps_per_loop: Steps per compiled loop call.
    summary_interval: Write train scalars at multiples of this step count.
    checkpoint_interval: Save at multiples of this (and at the end, and on a signal).
    eval_interval: Evaluate 'valid' at multiples of this (None: only at the end).
    histogram_interval: Weight and gradient histograms at the first loop end past each multiple
      (None: off).
    log_interval: Progress line at the first loop end past each multiple.
    max_nonfinite_steps: Skipped steps in a row that end training with TrainingError ('stop'), or
      that trigger a rollback ('rollback').
    tokens_per_step: Target positions per global step for tokens/s (None: the weight sums).
    nonfinite_policy: 'stop' or 'rollback' (`runner.rollback()`, at most `max_rollbacks` times).
    max_rollbacks: Rollbacks (counted by the runner, across resumes) before training fails.
    local_stop: Whether a signal may also end training between loops (e.g. during an eval). False
      under multi-worker training: the workers must stop after the same step, which only the
      loop's all-reduced stop request guarantees.
  """

  def __init__(self, *, runner: Runner, summaries: Summaries, train_steps: int, steps_per_loop: int,
               summary_interval: int, checkpoint_interval: int, eval_interval: int | None,
               histogram_interval: int | None, log_interval: int, max_nonfinite_steps: int,
               tokens_per_step: int | None = None, nonfinite_policy: str = "stop",
               max_rollbacks: int = 0, local_stop: bool = True):
    self._runner = runner
    self._summaries = summaries
    self.train_steps = train_steps
    self._steps_per_loop = steps_per_loop
    self._summary_interval = summary_interval
    self._checkpoint_interval = checkpoint_interval
    self._eval_interval = eval_interval
    self._histogram_interval = histogram_interval
    self._log_interval = log_interval
    self._max_nonfinite = max_nonfinite_steps
    self._tokens_per_step = tokens_per_step
    self._nonfinite_policy = nonfinite_policy
    self._max_rollbacks = max_rollbacks
    self._local_stop = local_stop
    self._tty = sys.stdout.isatty()
    self._bar_open = False
    self._logged = 0
    self._wrote_config = False

  # -- training ------------------------------------------------------------------------------------

  def _loop_size(self, step: int, until: int) -> int:
    size = min(self._steps_per_loop, until - step)
    for interval in (self._checkpoint_interval, self._eval_interval):
      if interval:
        size = min(size, interval - step % interval)
    return size

  def train(self, until_step: int | None = None) -> dict:
    """Trains from the runner's step to `until_step` (default `train_steps`).

    Returns:
      {"step": final step, "train": last train metrics, "valid": last eval metrics (if any)}.

    Raises:
      TrainingError: `max_nonfinite_steps` non-finite steps in a row.
      TrainingInterrupted: SIGINT/SIGTERM (after saving a checkpoint at the step reached).
    """
    until = self.train_steps if until_step is None else until_step
    step = self._runner.step
    result = {"step": step, "train": {}}
    if step >= until:
      logging.info("Already at step %d (target %d): nothing to train.", step, until)
      self._write_config_once(step)
      return result
    logging.info("Training from step %d to %d.", step, until)
    self._logged = step // self._log_interval
    start_time, start_step = time.perf_counter(), step
    with _StopSignals(on_stop=getattr(self._runner, "request_stop", None)) as stop:
      while step < until:
        size = self._loop_size(step, until)
        begin = time.perf_counter()
        outputs = self._runner.train_loop(size)
        seconds = time.perf_counter() - begin
        previous, step = step, step + outputs.steps
        self._write_config_once(step)
        result["train"] = self._train_summaries(previous, outputs, seconds)
        result["step"] = step
        if self._crossed(previous, step, self._histogram_interval):
          self._summaries.histograms("train", step, self._runner.histograms())
        if outputs.consecutive_nonfinite >= self._max_nonfinite:
          step = self._recover(step)
          start_time, start_step = time.perf_counter(), step
          continue
        self._progress(step, until, result["train"], start_step, start_time)
        done = step >= until
        stopping = outputs.stopped or (self._local_stop and stop.signum is not None)
        if done or (self._eval_interval and step % self._eval_interval == 0):
          valid = self._evaluate_split(EVAL_SPLIT, step)
          if valid is not None:
            result[EVAL_SPLIT] = valid
            self._runner.save_best(step, valid["loss"])
        if done or step % self._checkpoint_interval == 0 or stopping:
          self._runner.save_checkpoint(step)
          self._summaries.flush()
        if stopping and not done:
          self._end_progress_bar()
          if stop.signum is None:
            print(f"Stopped at step {step} with the other workers (one of them was signalled); "
                  "rerun the same command to resume.", flush=True)
          else:
            print(f"Stopped at step {step}; rerun the same command to resume.", flush=True)
          raise TrainingInterrupted(stop.signum or signal.SIGTERM, step)
    self._end_progress_bar()
    self._summaries.flush()
    return result

  def _recover(self, step: int) -> int:
    """After `max_nonfinite_steps` skipped steps in a row: roll back, or raise TrainingError."""
    self._summaries.flush()
    self._end_progress_bar()
    limit = self._max_nonfinite
    what = (f"{limit} steps in a row had a non-finite loss or gradient and were skipped "
            f"(Trainer.max_nonfinite_steps={limit})")
    if self._nonfinite_policy != "rollback":
      raise TrainingError(
          f"training stopped at step {step}: {what}; lower the learning rate, set "
          "Trainer.clip_norm or Trainer.nonfinite_policy='rollback', then resume from the last "
          "checkpoint")
    done = self._runner.rollbacks
    if done >= self._max_rollbacks:
      raise TrainingError(
          f"training stopped at step {step}: {what}, after {done} rollbacks "
          f"(Trainer.max_rollbacks={self._max_rollbacks}); lower Trainer.learning_rate or set "
          "Trainer.clip_norm, then resume from the last checkpoint")
    restored, factor = self._runner.rollback()
    logging.warning("Step %d: %s; rolled back to the checkpoint of step %d with the learning rate "
                    "scaled by %g (rollback %d of at most %d).", step, what, restored, factor,
                    done + 1, self._max_rollbacks)
    self._logged = restored // self._log_interval
    return restored

  @staticmethod
  def _crossed(previous: int, step: int, interval: int | None) -> bool:
    return bool(interval) and step // interval > previous // interval

  def _train_summaries(self, previous: int, outputs: TrainOutputs, seconds: float) -> dict:
    steps_per_sec = outputs.steps / max(seconds, 1e-9)
    tokens = (self._tokens_per_step * outputs.steps if self._tokens_per_step
              else float(outputs.weight.sum()))
    tokens_per_sec = tokens / max(seconds, 1e-9)

    def metrics(i):
      return {"loss": float(outputs.loss[i]), "grad_norm": float(outputs.grad_norm[i]),
              "learning_rate": float(outputs.learning_rate[i]),
              "nonfinite_steps": int(outputs.nonfinite_steps[i]),
              "steps_per_sec": steps_per_sec, "tokens_per_sec": tokens_per_sec}

    # Each step's own values at its own step (not loop averages), so a resumed run repeats them
    # exactly.
    first = self._summary_interval - previous % self._summary_interval
    for i in range(first - 1, outputs.steps, self._summary_interval):
      self._summaries.scalars("train", previous + i + 1, metrics(i))
    end = previous + outputs.steps
    if self._crossed(previous, end, self._summary_interval):
      self._summaries.scalars("train", end, {"state": outputs.state_rms})
    return metrics(outputs.steps - 1)

  def _evaluate_split(self, split: str, step: int) -> dict | None:
    begin = time.perf_counter()
    metrics = self._runner.evaluate_split(split)
    if metrics is None:
      return None
    self._summaries.scalars(eval_writer_name(split), step, metrics)
    write_extra = getattr(self._runner, "write_eval_summaries", None)
    if write_extra is not None:  # The task's images/text, next to the split's scalars.
      with self._summaries.writer(eval_writer_name(split)).as_default(step=step):
        write_extra(split, step)
    self._end_progress_bar()
    logging.info("eval %s at step %d: %s (%.1fs)", split, step,
                 " ".join(f"{k} {v:.4f}" for k, v in metrics.items()), time.perf_counter() - begin)
    return metrics

  def evaluate(self, splits, step: int) -> dict:
    """Evaluates each split at `step` and writes its summaries; returns {split: metrics}."""
    results = {}
    for split in splits:
      metrics = self._evaluate_split(split, step)
      if metrics is not None:
        results[split] = metrics
    self._write_config_once(step)
    self._summaries.flush()
    return results

  def _write_config_once(self, step: int) -> None:
    # After the first compiled call, so the config lists what the traced graph used.
    if not self._wrote_config:
      self._runner.write_operative_config(step)
      self._wrote_config = True

  # -- progress ------------------------------------------------------------------------------------

  def _progress(self, step: int, until: int, metrics: dict, start_step: int,
                start_time: float) -> None:
    rate = (step - start_step) / max(time.perf_counter() - start_time, 1e-9)
    eta = datetime.timedelta(seconds=round((until - step) / rate)) if rate > 0 else "?"
    line = (f"step {step}/{until} | loss {metrics.get('loss', math.nan):.4f} | "
            f"{metrics.get('steps_per_sec', 0.0):.1f} steps/s | "
            f"{metrics.get('tokens_per_sec', 0.0):,.0f} tokens/s | ETA {eta}")
    if self._tty:
      width = 30
      filled = int(width * step / max(until, 1))
      sys.stdout.write(f"\r[{'=' * filled}{' ' * (width - filled)}] {line}")
      sys.stdout.flush()
      self._bar_open = True
    if step // self._log_interval > self._logged or step >= until:
      self._logged = step // self._log_interval
      self._end_progress_bar()
      logging.info(line)

  def _end_progress_bar(self) -> None:
    if self._bar_open:
      sys.stdout.write("\n")
      sys.stdout.flush()
      self._bar_open = False
