"""Each action alone, with fakes for what it is given."""

import io
import logging
import re
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from events import read_scalars, read_tags
from tbptt.trainer.actions import (BestCheckpoint, Histograms, NonFinitePolicy, Progress,
                                   TaskSummaries, crossed)
from tbptt.trainer.errors import TrainingError
from tbptt.trainer.loop import TrainOutputs
from tbptt.trainer.progress import ProgressReporter
from tbptt.trainer.summaries import Summaries
from tbptt.trainer.train_step import NonFiniteCounters


def outputs(first, last, consecutive=0):
  """TrainOutputs of a loop that took steps first..last; the loss of step s is s / 100."""
  steps = np.arange(first, last + 1)
  return TrainOutputs(steps=len(steps), loss=steps / 100.0, grad_norm=np.ones(len(steps)),
                      learning_rate=np.full(len(steps), 0.1), weight=np.ones(len(steps)),
                      nonfinite_steps=np.zeros(len(steps), np.int64),
                      consecutive_nonfinite=consecutive, state_rms={})


SPEED = {"steps_per_sec": 12.5, "tokens_per_sec": 3200.0}


class FakeCheckpoints:
  """Checkpoints listed oldest first, each {key: value}; restore() puts the values back."""

  def __init__(self, runner=None, listed=()):
    self.directory = "/ckpt"
    self.runner = runner
    self.listed = dict(listed)
    self.saved, self.best, self.restored = [], [], []

  @property
  def checkpoints(self):
    return list(self.listed)

  @property
  def latest(self):
    return self.checkpoints[-1] if self.listed else None

  def read(self, path, key):
    return self.listed[path][key]

  def save(self, step):
    self.saved.append(step)

  def save_best(self, step):
    self.best.append(step)

  def restore(self, path):
    self.restored.append(path)
    self.runner.global_step.assign(self.listed[path]["step"])
    self.runner.learning_rate_factor.assign(1.0)  # A checkpoint's values come back...
    self.runner.counters.total.assign(0)


def test_crossed():
  assert crossed(9, 10, 5) and crossed(4, 11, 5) and not crossed(10, 14, 5)
  assert not crossed(0, 100, None)


def test_best_checkpoint_saves_on_each_improvement_of_the_valid_loss_only():
  best = tf.Variable(np.inf, dtype=tf.float32)
  checkpoints = FakeCheckpoints()
  action = BestCheckpoint(checkpoints, best)
  for step, split, loss in [(10, "valid", 3.0), (20, "valid", 2.0), (30, "valid", 2.5),
                            (30, "test", 1.0), (40, "valid", 1.5)]:
    action.on_eval(split, step, {"loss": loss})
  assert checkpoints.best == [10, 20, 40]
  assert float(best.numpy()) == 1.5


class Runner:
  def __init__(self, step=14, factor=1.0, total=5):
    self.global_step = tf.Variable(step, dtype=tf.int64)
    self.learning_rate_factor = tf.Variable(factor)
    self.counters = NonFiniteCounters(total=tf.Variable(total, dtype=tf.int64),
                                      consecutive=tf.Variable(3, dtype=tf.int64))

  @property
  def step(self):
    return int(self.global_step.numpy())


def policy(runner, checkpoints, rollbacks=0, **kwargs):
  settings = dict(max_steps=3, policy="rollback", lr_factor=0.5, max_rollbacks=2,
                  log=logging.getLogger("test"))
  settings.update(kwargs)
  return NonFinitePolicy(runner, checkpoints, tf.Variable(rollbacks, dtype=tf.int64), **settings)


def test_nonfinite_stop_policy_raises_naming_the_limit_and_the_fixes():
  runner = Runner()
  action = policy(runner, FakeCheckpoints(runner), policy="stop")
  action.on_train(14, outputs(12, 14, consecutive=2), SPEED)  # Below the limit: nothing.
  with pytest.raises(TrainingError, match=r"stopped at step 15: 3 steps in a row .*"
                                          r"\(Trainer.max_nonfinite_steps=3\).*"
                                          r"Trainer.nonfinite_policy='rollback'"):
    action.on_train(15, outputs(13, 15, consecutive=3), SPEED)


def test_rollback_restores_the_newest_checkpoint_without_a_pending_streak(caplog):
  runner = Runner(step=15, factor=0.5, total=7)
  listed = {"/ckpt/ckpt-5": {"step": 5, "nonfinite_in_a_row": 0},
            "/ckpt/ckpt-10": {"step": 10, "nonfinite_in_a_row": 0},
            "/ckpt/ckpt-14": {"step": 14, "nonfinite_in_a_row": 2}}
  checkpoints = FakeCheckpoints(runner, listed)
  action = policy(runner, checkpoints, rollbacks=1)
  with caplog.at_level(logging.WARNING):
    action.on_train(15, outputs(13, 15, consecutive=3), SPEED)
  assert checkpoints.restored == ["/ckpt/ckpt-10"] and runner.step == 10
  # Factor, count and skipped total do not come back from the checkpoint.
  assert float(runner.learning_rate_factor.numpy()) == 0.25
  assert int(action._rollbacks.numpy()) == 2
  assert int(runner.counters.total.numpy()) == 7
  assert "rolled back to the checkpoint of step 10 with the learning rate scaled by 0.25 " \
         "(rollback 2 of at most 2)" in caplog.text


def test_rollbacks_run_out_then_training_fails():
  runner = Runner()
  checkpoints = FakeCheckpoints(runner, {"/ckpt/ckpt-10": {"step": 10, "nonfinite_in_a_row": 0}})
  action = policy(runner, checkpoints, rollbacks=2)
  with pytest.raises(TrainingError, match=r"after 2 rollbacks \(Trainer.max_rollbacks=2\)"):
    action.on_train(15, outputs(13, 15, consecutive=3), SPEED)
  assert checkpoints.restored == []


def test_rollback_without_a_good_checkpoint_fails():
  runner = Runner()
  checkpoints = FakeCheckpoints(runner, {"/ckpt/ckpt-14": {"step": 14, "nonfinite_in_a_row": 1}})
  with pytest.raises(TrainingError, match="cannot roll back at step 14: no checkpoint in /ckpt"):
    policy(runner, checkpoints).on_train(15, outputs(13, 15, consecutive=3), SPEED)


def test_rollback_policy_checkpoints_the_start_when_there_is_no_checkpoint():
  runner = Runner(step=0)
  checkpoints = FakeCheckpoints(runner)
  policy(runner, checkpoints, policy="stop").on_start(0, 10)
  assert checkpoints.saved == []
  policy(runner, checkpoints).on_start(0, 10)
  assert checkpoints.saved == [0]
  checkpoints.listed = {"/ckpt/ckpt-0": {}}
  policy(runner, checkpoints).on_start(0, 10)
  assert checkpoints.saved == [0]


def test_histograms_of_weights_and_gradients_at_each_crossed_interval(tmp_path):
  w = keras.Variable([1.0, 2.0], name="w")
  runner = SimpleNamespace(task=SimpleNamespace(model=SimpleNamespace(trainable_variables=[w])),
                           global_step=tf.Variable(0, dtype=tf.int64), state=None)
  calls = []

  def gradient_pass(step, state):
    calls.append(int(step))
    return [tf.constant([0.5, 0.5])]

  summaries = Summaries(str(tmp_path))
  action = Histograms(summaries, runner, gradient_pass, interval=7)
  for first, last in [(1, 4), (5, 8), (9, 12), (13, 16)]:
    runner.global_step.assign(last)
    action.on_train(last, outputs(first, last), SPEED)
  summaries.flush()
  assert calls == [8, 16]  # Loops ending at 8 (past 7) and 16 (past 14).
  assert {"weights/w", "gradients/w"} <= read_tags(str(tmp_path / "train"))


def test_task_summaries_go_to_the_eval_writer_after_valid_only(tmp_path):
  written = []

  class Task:
    def write_eval_summaries(self, step):
      written.append(step)
      tf.summary.scalar("extra", 1.0)

  summaries = Summaries(str(tmp_path))
  action = TaskSummaries(Task(), summaries)
  action.on_eval("test", 5, {})
  action.on_eval("valid", 6, {})
  summaries.flush()
  assert written == [6]
  assert read_scalars(str(tmp_path / "eval"), "extra") == {6: 1.0}


LINE = re.compile(r"^\d\d:\d\d:\d\d step (\d+)/(\d+) \| loss (\S+) \| ([\d.]+) steps/s \| "
                  r"([\d,]+) tokens/s(?: \| ETA \S+)?$")


def test_progress_lines_at_every_log_interval_step_with_that_steps_loss():
  stream = io.StringIO()
  action = Progress(ProgressReporter(stream, live=False), log_interval=3)
  action.on_start(0, 11)
  for first, last in [(1, 4), (5, 8), (9, 11)]:  # Loops of 4 steps: 3, 6, 9 fall inside them.
    action.on_train(last, outputs(first, last), {"loss": last / 100.0, **SPEED})
  action.on_eval("valid", 11, {"loss": 1.25, "perplexity": 3.5})
  action.on_end(11)
  lines = stream.getvalue().splitlines()
  assert re.match(r"^\d\d:\d\d:\d\d training from step 0 to 11$", lines.pop(0))
  parsed = [LINE.match(line) for line in lines[:-1]]
  assert all(parsed), lines  # Our own clean lines: no logging prefix, no bar on a non-terminal.
  # Exact: 3, 6, 9 (each with its own step's loss), and the final step.
  assert [(int(m[1]), float(m[3])) for m in parsed] == [(3, 0.03), (6, 0.06), (9, 0.09),
                                                        (11, 0.11)]
  assert all(m[2] == "11" and m[5] == "3,200" for m in parsed)
  assert "\r" not in stream.getvalue()
  assert re.match(r"^\d\d:\d\d:\d\d eval valid at step 11: loss 1.2500 perplexity 3.5000$",
                  lines[-1])


def test_progress_draws_a_live_bar_on_a_terminal():
  stream = io.StringIO()
  action = Progress(ProgressReporter(stream, live=True), log_interval=100)
  action.on_start(0, 10)
  stream.truncate(0)
  stream.seek(0)
  action.on_train(4, outputs(1, 4), {"loss": 0.04, **SPEED})
  assert stream.getvalue().startswith("\r[============                  ] step 4/10 | loss 0.0400")
  action.on_end(4)
  assert stream.getvalue().endswith("\n")


def test_progress_goes_to_stdout_when_not_a_terminal(capsys):
  action = Progress(ProgressReporter(), log_interval=2)
  action.on_start(0, 2)
  action.on_train(2, outputs(1, 2), {"loss": 0.02, **SPEED})
  out = capsys.readouterr().out
  assert LINE.match(out.splitlines()[1]) and "\r" not in out
