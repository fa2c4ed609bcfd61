"""Controller cadence, scripted runner: loop sizes, checkpoint/eval steps, summaries, signals."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from tbptt.trainer import controller as controller_lib
from tbptt.trainer.controller import Controller, TrainingInterrupted
from tbptt.trainer.errors import TrainingError
from tbptt.trainer.loop import TrainOutputs
from tbptt.trainer.summaries import Summaries, read_scalars, read_tags


class ScriptedRunner:
  """Loss of step s is s; non-finite steps are scripted; `on_loop(index)` runs inside each loop.

  A stop request ends the loop after the step it arrives in (as the compiled loop does). A rollback
  goes back to the last saved step; a scripted non-finite step is non-finite the first time only.
  """

  def __init__(self, nonfinite=(), on_loop=None):
    self.step = 0
    self.loops, self.saved, self.evals, self.best = [], [], [], []
    self.configs, self.histogram_steps, self.rolled_back = [], [], []
    self.rollbacks = 0
    self.stop_requested = threading.Event()
    self._nonfinite = set(nonfinite)
    self._taken = 0
    self._on_loop = on_loop
    self._total = self._in_a_row = 0

  def train_loop(self, num_steps):
    if self._on_loop:
      self._on_loop(len(self.loops))
    steps, totals = [], []
    for _ in range(num_steps):
      s = self.step + 1
      bad = s in self._nonfinite and s > self._taken
      self._taken = max(self._taken, s)
      self._total += bad
      self._in_a_row = self._in_a_row + 1 if bad else 0
      steps.append(s)
      totals.append(self._total)
      self.step = s
      if self.stop_requested.is_set():
        break
    self.loops.append(len(steps))
    steps = np.array(steps)
    return TrainOutputs(steps=len(steps), loss=steps.astype(np.float32),
                        grad_norm=np.ones(len(steps)),
                        learning_rate=np.full(len(steps), 0.5), weight=np.full(len(steps), 10.0),
                        nonfinite_steps=np.array(totals), consecutive_nonfinite=self._in_a_row,
                        state_rms={"h": 2.0, "c": 3.0}, stopped=self.stop_requested.is_set())

  def request_stop(self, signum):
    del signum
    self.stop_requested.set()

  def rollback(self):
    self.rollbacks += 1
    self.step = max(self.saved, default=0)
    self._in_a_row = 0
    self.rolled_back.append(self.step)
    return self.step, 0.5 ** self.rollbacks

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


def wait_for(event, seconds=5.0):
  assert event.wait(seconds), "the signal thread did not pass the stop request on"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_after_the_current_step_checkpoints_there_and_exits(tmp_path, capsys, signum,
                                                                         code):
  before = signal.getsignal(signum)
  runner = ScriptedRunner()

  def send(loop_index):
    if loop_index == 1:
      os.kill(os.getpid(), signum)
      wait_for(runner.stop_requested)

  runner._on_loop = send
  with pytest.raises(TrainingInterrupted) as raised:
    make_controller(tmp_path, runner, train_steps=1000, eval_interval=None).train()
  # Loop 0 took steps 1-4; loop 1 (4 steps asked) stopped after its first step.
  assert raised.value.code == code and raised.value.step == 5
  assert runner.loops == [4, 1] and runner.saved == [5]
  assert "Stopped at step 5; rerun the same command to resume." in capsys.readouterr().out
  assert signal.getsignal(signum) is before


def test_second_signal_exits_at_once(tmp_path, monkeypatch):
  exits = []
  exited = threading.Event()

  def fake_exit(code):  # Runs in the signal thread; the real one ends the process there.
    exits.append(code)
    exited.set()

  monkeypatch.setattr(controller_lib.os, "_exit", fake_exit)

  def send_twice(loop_index):
    if loop_index == 1:
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGINT)
      wait_for(exited)

  runner = ScriptedRunner(on_loop=send_twice)
  with pytest.raises(TrainingInterrupted):
    make_controller(tmp_path, runner, train_steps=1000).train()
  assert exits == [130]


class DeafRunner(ScriptedRunner):
  """Ignores stop requests: its loop never reports `stopped`."""

  def request_stop(self, signum):
    self.signalled = signum


def test_without_local_stop_only_the_loops_stop_request_ends_training(tmp_path):
  runner = DeafRunner()

  def send(loop_index):
    if loop_index == 1:
      os.kill(os.getpid(), signal.SIGTERM)
      deadline = time.time() + 5
      while not hasattr(runner, "signalled") and time.time() < deadline:
        time.sleep(0.01)

  runner._on_loop = send
  result = make_controller(tmp_path, runner, local_stop=False).train()
  assert runner.signalled == signal.SIGTERM and result["step"] == 23


def test_a_peer_stop_ends_training_with_143(tmp_path, capsys):
  runner = ScriptedRunner(on_loop=lambda i: runner.stop_requested.set() if i == 2 else None)
  with pytest.raises(TrainingInterrupted) as raised:
    make_controller(tmp_path, runner, local_stop=False).train()
  assert raised.value.code == 143 and raised.value.step == 7 and runner.saved == [7]
  assert "Stopped at step 7 with the other workers" in capsys.readouterr().out


def test_rollback_policy_goes_back_to_the_last_checkpoint_and_finishes(tmp_path):
  runner = ScriptedRunner(nonfinite=(12, 13, 14))
  result = make_controller(tmp_path, runner, nonfinite_policy="rollback", max_rollbacks=1,
                           eval_interval=None).train()
  assert runner.rolled_back == [10] and runner.rollbacks == 1
  assert result["step"] == 23 and runner.saved == [10, 20, 23]
  # Summaries of the replayed steps are written again; the newest value of a step wins.
  assert read_scalars(os.path.join(tmp_path, "train"), "loss")[15] == 15.0


def test_rollbacks_are_limited_then_training_fails(tmp_path):
  runner = ScriptedRunner(nonfinite=range(12, 100))
  with pytest.raises(TrainingError, match=r"after 2 rollbacks \(Trainer.max_rollbacks=2\)"):
    make_controller(tmp_path, runner, steps_per_loop=3, nonfinite_policy="rollback",
                    max_rollbacks=2, eval_interval=None).train()
  assert runner.rolled_back == [10, 10] and runner.rollbacks == 2
