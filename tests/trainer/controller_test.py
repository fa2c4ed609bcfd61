"""Controller cadence with a scripted runner: loop sizes, checkpoint/eval steps, summaries, signals,
actions (called at each point, able to stop training or move its step)."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from events import read_scalars, read_tags
from tbptt.trainer import signals as signals_lib
from tbptt.trainer.actions import Action
from tbptt.trainer.controller import Controller
from tbptt.trainer.errors import TrainingError, TrainingInterrupted
from tbptt.trainer.loop import TrainOutputs
from tbptt.trainer.summaries import Summaries


class ScriptedRunner:
  """Loss of step s is s; `on_loop(index)` runs inside each loop.

  A stop request ends the loop after the step it arrives in (as the compiled loop does).
  """

  def __init__(self, on_loop=None):
    self.step = 0
    self.loops, self.evals = [], []
    self.stop_requested = threading.Event()
    self._on_loop = on_loop

  def train(self, num_steps):
    if self._on_loop:
      self._on_loop(len(self.loops))
    steps = []
    for _ in range(num_steps):
      self.step += 1
      steps.append(self.step)
      if self.stop_requested.is_set():
        break
    self.loops.append(len(steps))
    steps = np.array(steps)
    return TrainOutputs(steps=len(steps), loss=steps.astype(np.float32),
                        grad_norm=np.ones(len(steps)),
                        learning_rate=np.full(len(steps), 0.5), weight=np.full(len(steps), 10.0),
                        nonfinite_steps=np.zeros(len(steps), np.int64), consecutive_nonfinite=0,
                        state_rms={"h": 2.0, "c": 3.0}, stopped=self.stop_requested.is_set())

  def request_stop(self, signum):
    del signum
    self.stop_requested.set()

  def evaluate(self, split):
    self.evals.append((split, self.step))
    return {"loss": 100.0 / self.step} if split != "empty" else None


class FakeCheckpoints:
  def __init__(self):
    self.saved = []

  def save(self, step):
    self.saved.append(step)


class Recorder(Action):
  """Records every call it gets."""

  def __init__(self):
    self.calls = []

  def on_start(self, step, until):
    self.calls.append(("start", step, until))

  def on_train(self, step, outputs, metrics):
    self.calls.append(("train", step, outputs.steps, metrics["loss"]))

  def on_eval(self, split, step, metrics):
    self.calls.append(("eval", split, step))

  def on_end(self, step):
    self.calls.append(("end", step))


def make_controller(tmp_path, runner, actions=(), checkpoints=None, **overrides):
  kwargs = dict(steps_per_loop=4, summary_interval=5, checkpoint_interval=10, eval_interval=6)
  kwargs.update(overrides)
  return Controller(runner=runner, checkpoints=checkpoints or FakeCheckpoints(),
                    summaries=Summaries(str(tmp_path)), actions=actions, **kwargs)


def test_loops_end_exactly_on_checkpoint_eval_and_final_steps(tmp_path):
  runner, checkpoints, recorder = ScriptedRunner(), FakeCheckpoints(), Recorder()
  result = make_controller(tmp_path, runner, [recorder], checkpoints).train(23)
  ends = np.cumsum(runner.loops).tolist()
  assert result["step"] == runner.step == 23
  assert max(runner.loops) <= 4
  assert {6, 10, 12, 18, 20, 23} <= set(ends)
  assert checkpoints.saved == [10, 20, 23]
  assert runner.evals == [("valid", 6), ("valid", 12), ("valid", 18), ("valid", 23)]
  assert result["valid"] == {"loss": 100.0 / 23}
  assert result["train"]["loss"] == 23.0
  # The actions saw every point, in order, with the step and the last step's metrics.
  assert recorder.calls[0] == ("start", 0, 23) and recorder.calls[-1] == ("end", 23)
  trains = [c for c in recorder.calls if c[0] == "train"]
  assert [c[1] for c in trains] == ends and all(c[3] == c[1] for c in trains)
  assert [c for c in recorder.calls if c[0] == "eval"] == [
      ("eval", "valid", s) for s in (6, 12, 18, 23)]


def test_each_summary_step_logs_its_own_step_values(tmp_path):
  runner = ScriptedRunner()
  make_controller(tmp_path, runner, steps_per_loop=3, checkpoint_interval=100,
                  eval_interval=None).train(23)
  train_dir = os.path.join(tmp_path, "train")
  # Loss of step s is s: every multiple of 5 holds exactly its own loss, across loop boundaries.
  assert read_scalars(train_dir, "loss") == {5: 5.0, 10: 10.0, 15: 15.0, 20: 20.0}
  assert set(read_scalars(train_dir, "learning_rate")) == {5, 10, 15, 20}
  assert {"loss", "grad_norm", "learning_rate", "steps_per_sec", "tokens_per_sec",
          "nonfinite_steps", "state/h", "state/c"} <= read_tags(train_dir)
  assert read_scalars(os.path.join(tmp_path, "eval"), "loss") == {23: pytest.approx(100.0 / 23)}


def test_training_resumes_from_the_runners_step(tmp_path):
  runner, checkpoints = ScriptedRunner(), FakeCheckpoints()
  runner.step = 17
  result = make_controller(tmp_path, runner, checkpoints=checkpoints).train(23)
  assert runner.step == 23 and result["step"] == 23
  assert checkpoints.saved == [20, 23]
  assert sum(runner.loops) == 6


def test_a_step_already_reached_trains_nothing_but_calls_start_and_end(tmp_path):
  runner, checkpoints, recorder = ScriptedRunner(), FakeCheckpoints(), Recorder()
  runner.step = 30
  result = make_controller(tmp_path, runner, [recorder], checkpoints).train(23)
  assert result == {"step": 30, "train": {}}
  assert runner.loops == [] and checkpoints.saved == []
  assert recorder.calls == [("start", 30, 23), ("end", 30)]


def test_an_action_boundary_ends_a_loop_there(tmp_path):
  class At(Action):
    def next_boundary(self, step):
      return 7 if step < 7 else None

  runner = ScriptedRunner()
  make_controller(tmp_path, runner, [At()], eval_interval=None).train(12)
  assert 7 in np.cumsum(runner.loops).tolist()


def test_a_save_of_the_step_just_restored_is_skipped(tmp_path):
  runner, checkpoints = ScriptedRunner(), FakeCheckpoints()
  controller = make_controller(tmp_path, runner, checkpoints=checkpoints)
  runner.step = 10
  controller.mark_saved(10)
  controller.save(10)
  assert checkpoints.saved == []
  controller.save(11)
  assert checkpoints.saved == [11]


def test_an_action_error_ends_training_without_checkpoint(tmp_path):
  class Fail(Action):
    def on_train(self, step, outputs, metrics):
      if step >= 8:
        raise TrainingError("stop here")

  runner, checkpoints = ScriptedRunner(), FakeCheckpoints()
  with pytest.raises(TrainingError, match="stop here"):
    make_controller(tmp_path, runner, [Fail()], checkpoints, steps_per_loop=2,
                    eval_interval=None).train(23)
  assert runner.step == 8 and checkpoints.saved == []


def test_an_action_that_moves_the_step_back_is_followed(tmp_path):
  """A rollback: later actions skip that loop, the step's checkpoint is written again."""
  class RollBackOnce(Action):
    def __init__(self, runner):
      self.runner, self.done = runner, False

    def on_train(self, step, outputs, metrics):
      if step >= 14 and not self.done:
        self.done = True
        self.runner.step = 10

  runner, checkpoints, recorder = ScriptedRunner(), FakeCheckpoints(), Recorder()
  controller = make_controller(tmp_path, runner, [RollBackOnce(runner), recorder], checkpoints,
                               eval_interval=None)
  result = controller.train(23)
  assert result["step"] == 23 and checkpoints.saved == [10, 20, 23]
  trains = [c[1] for c in recorder.calls if c[0] == "train"]
  # The loop that ended at 14 went back to 10: the recorder (after it) saw only the replay.
  assert trains == [4, 8, 10, 14, 18, 20, 23]
  # Summaries of the replayed steps are written again; the newest value of a step wins.
  assert read_scalars(os.path.join(tmp_path, "train"), "loss")[15] == 15.0


def wait_for(event, seconds=5.0):
  assert event.wait(seconds), "the signal thread did not pass the stop request on"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_after_the_current_step_checkpoints_there_and_exits(tmp_path, capsys, signum,
                                                                         code):
  before = signal.getsignal(signum)
  runner, checkpoints, recorder = ScriptedRunner(), FakeCheckpoints(), Recorder()

  def send(loop_index):
    if loop_index == 1:
      os.kill(os.getpid(), signum)
      wait_for(runner.stop_requested)

  runner._on_loop = send
  with pytest.raises(TrainingInterrupted) as raised:
    make_controller(tmp_path, runner, [recorder], checkpoints, eval_interval=None).train(1000)
  # Loop 0 took steps 1-4; loop 1 (4 steps asked) stopped after its first step.
  assert raised.value.code == code and raised.value.step == 5
  assert runner.loops == [4, 1] and checkpoints.saved == [5]
  assert recorder.calls[-1] == ("end", 5)
  assert "Stopped at step 5; rerun the same command to resume." in capsys.readouterr().out
  assert signal.getsignal(signum) is before


def test_second_signal_exits_at_once(tmp_path, monkeypatch):
  exits = []
  exited = threading.Event()

  def fake_exit(code):  # Runs in the signal thread; the real one ends the process there.
    exits.append(code)
    exited.set()

  monkeypatch.setattr(signals_lib.os, "_exit", fake_exit)

  def send_twice(loop_index):
    if loop_index == 1:
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGINT)
      wait_for(exited)

  runner = ScriptedRunner(on_loop=send_twice)
  with pytest.raises(TrainingInterrupted):
    make_controller(tmp_path, runner).train(1000)
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
  result = make_controller(tmp_path, runner, local_stop=False).train(23)
  assert runner.signalled == signal.SIGTERM and result["step"] == 23


def test_a_peer_stop_ends_training_with_143(tmp_path, capsys):
  checkpoints = FakeCheckpoints()
  runner = ScriptedRunner(on_loop=lambda i: runner.stop_requested.set() if i == 2 else None)
  with pytest.raises(TrainingInterrupted) as raised:
    make_controller(tmp_path, runner, checkpoints=checkpoints, local_stop=False).train(23)
  assert raised.value.code == 143 and raised.value.step == 7 and checkpoints.saved == [7]
  assert "Stopped at step 7 with the other workers" in capsys.readouterr().out


def test_evaluate_writes_each_split_with_data_and_calls_the_actions(tmp_path):
  runner, recorder = ScriptedRunner(), Recorder()
  runner.step = 4
  results = make_controller(tmp_path, runner, [recorder]).evaluate(["valid", "empty", "test"], 4)
  assert set(results) == {"valid", "test"}
  assert "loss" in read_tags(os.path.join(tmp_path, "eval_test"))
  assert recorder.calls == [("eval", "valid", 4), ("eval", "test", 4), ("end", 4)]
