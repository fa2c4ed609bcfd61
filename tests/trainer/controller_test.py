"""Controller cadence, scripted runner: loop sizes, checkpoint/eval steps, summaries, signals."""

import os
import signal

import numpy as np
import pytest

from trainer import controller as controller_lib
from trainer.controller import Controller, TrainingInterrupted
from trainer.errors import TrainingError
from trainer.loop import TrainOutputs
from trainer.summaries import Summaries, read_scalars, read_tags


class ScriptedRunner:
  """Loss of step s is s; non-finite steps are scripted; `on_loop(index)` runs inside each loop."""

  def __init__(self, nonfinite=(), on_loop=None):
    self.step = 0
    self.loops, self.saved, self.evals, self.best = [], [], [], []
    self.configs, self.histogram_steps = [], []
    self._nonfinite = set(nonfinite)
    self._on_loop = on_loop
    self._total = self._in_a_row = 0

  def train_loop(self, num_steps):
    if self._on_loop:
      self._on_loop(len(self.loops))
    self.loops.append(num_steps)
    steps = np.arange(self.step + 1, self.step + num_steps + 1)
    totals = []
    for s in steps:
      bad = int(s) in self._nonfinite
      self._total += bad
      self._in_a_row = self._in_a_row + 1 if bad else 0
      totals.append(self._total)
    self.step += num_steps
    return TrainOutputs(steps=num_steps, loss=steps.astype(np.float32),
                        grad_norm=np.ones(num_steps),
                        learning_rate=np.full(num_steps, 0.5), weight=np.full(num_steps, 10.0),
                        nonfinite_steps=np.array(totals), consecutive_nonfinite=self._in_a_row,
                        state_rms={"h": 2.0, "c": 3.0})

  def evaluate_split(self, split):
    self.evals.append((split, self.step))
    return {"loss": 100.0 / self.step}

  def save_checkpoint(self, step):
    self.saved.append(step)

  def save_best(self, step, eval_loss):
    self.best.append((step, eval_loss))

  def histograms(self):
    self.histogram_steps.append(self.step)
    return {"weights": {"w": np.arange(4.0)}}

  def write_operative_config(self, step):
    self.configs.append(step)


def make_controller(tmp_path, runner, **overrides):
  kwargs = dict(train_steps=23, steps_per_loop=4, summary_interval=5, checkpoint_interval=10,
                eval_interval=6, histogram_interval=7, log_interval=10, max_nonfinite_steps=3)
  kwargs.update(overrides)
  return Controller(runner=runner, summaries=Summaries(str(tmp_path)), **kwargs)


def test_loops_end_exactly_on_checkpoint_eval_and_final_steps(tmp_path):
  runner = ScriptedRunner()
  result = make_controller(tmp_path, runner).train()
  ends = np.cumsum(runner.loops).tolist()
  assert result["step"] == runner.step == 23
  assert max(runner.loops) <= 4
  assert {6, 10, 12, 18, 20, 23} <= set(ends)
  assert runner.saved == [10, 20, 23]
  assert runner.evals == [("valid", 6), ("valid", 12), ("valid", 18), ("valid", 23)]
  assert [s for s, _ in runner.best] == [6, 12, 18, 23]
  assert runner.configs == [ends[0]]
  assert runner.histogram_steps == [e for p, e in zip([0] + ends, ends) if e // 7 > p // 7]
  assert result["valid"] == {"loss": 100.0 / 23}
  assert result["train"]["loss"] == 23.0


def test_each_summary_step_logs_its_own_step_values(tmp_path):
  runner = ScriptedRunner()
  make_controller(tmp_path, runner, steps_per_loop=3, checkpoint_interval=100,
                  eval_interval=None).train()
  train_dir = os.path.join(tmp_path, "train")
  # Loss of step s is s: every multiple of 5 holds exactly its own loss, across loop boundaries.
  assert read_scalars(train_dir, "loss") == {5: 5.0, 10: 10.0, 15: 15.0, 20: 20.0}
  assert set(read_scalars(train_dir, "learning_rate")) == {5, 10, 15, 20}
  assert {"loss", "grad_norm", "learning_rate", "steps_per_sec", "tokens_per_sec",
          "nonfinite_steps", "state/h", "state/c", "weights/w"} <= read_tags(train_dir)
  assert read_scalars(os.path.join(tmp_path, "eval"), "loss") == {23: pytest.approx(100.0 / 23)}


def test_training_resumes_from_the_runners_step(tmp_path):
  runner = ScriptedRunner()
  runner.step = 17
  result = make_controller(tmp_path, runner).train()
  assert runner.step == 23 and result["step"] == 23
  assert runner.saved == [20, 23]
  assert sum(runner.loops) == 6


def test_nonfinite_run_raises_training_error_without_checkpoint(tmp_path):
  runner = ScriptedRunner(nonfinite=range(5, 100))
  with pytest.raises(TrainingError, match="Trainer.max_nonfinite_steps=3"):
    make_controller(tmp_path, runner, steps_per_loop=2).train()
  assert runner.step == 8  # steps 5..8 skipped: the loop ending at 8 is the first to end with >= 3
  assert runner.saved == []


def test_scattered_nonfinite_steps_do_not_stop_training(tmp_path):
  runner = ScriptedRunner(nonfinite=(3, 4, 9, 10))
  result = make_controller(tmp_path, runner).train()
  assert result["step"] == 23 and result["train"]["nonfinite_steps"] == 4


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_at_the_reached_step_and_exits(tmp_path, capsys, signum, code):
  before = signal.getsignal(signum)

  def send(loop_index):
    if loop_index == 1:
      os.kill(os.getpid(), signum)

  runner = ScriptedRunner(on_loop=send)
  with pytest.raises(TrainingInterrupted) as raised:
    make_controller(tmp_path, runner, train_steps=1000, eval_interval=None).train()
  assert raised.value.code == code and raised.value.step == 8
  assert runner.saved == [8]
  assert "Stopped at step 8; rerun the same command to resume." in capsys.readouterr().out
  assert signal.getsignal(signum) is before


def test_second_signal_exits_at_once(tmp_path, monkeypatch):
  class Exited(Exception):
    pass

  def fake_exit(code):
    raise Exited(code)

  monkeypatch.setattr(controller_lib.os, "_exit", fake_exit)

  def send_twice(loop_index):
    if loop_index == 1:
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGINT)

  runner = ScriptedRunner(on_loop=send_twice)
  with pytest.raises(Exited) as raised:
    make_controller(tmp_path, runner, train_steps=1000).train()
  assert raised.value.args == (130,)
  assert runner.saved == []
