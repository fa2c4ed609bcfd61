"""Tests of the model_dir lock: one training run per directory, released however the holder ends."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tbptt.experiments import run_lock
from tbptt.experiments.run_lock import LOCK_FILE, RunLock
from tbptt.trainer.errors import ConfigError

import launcher_testing as lt

IN_USE = re.compile(r"^tbptt: error: model_dir (?P<dir>\S+) is in use by another run \(pid "
                    r"(?P<pid>\d+) on (?P<host>\S+), started [0-9-]+ [0-9:]+\); wait for it to "
                    r"finish or choose another --model_dir$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return lt.write_corpus(tmp_path_factory.mktemp("corpus"))


def test_second_lock_is_refused_and_names_the_holder(tmp_path):
  model_dir = str(tmp_path / "run")
  with RunLock(model_dir, command="first run"):
    with open(os.path.join(model_dir, LOCK_FILE)) as f:
      info = json.load(f)
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert info["command"] == "first run"
    before = lt.snapshot(model_dir)
    # flock is per open file: a second open in this same process conflicts like another process.
    with pytest.raises(ConfigError, match=rf"model_dir {model_dir} is in use by another run "
                       rf"\(pid {os.getpid()} on {re.escape(socket.gethostname())}, started "):
      RunLock(model_dir).acquire()
    assert lt.snapshot(model_dir) == before
  with RunLock(model_dir, command="second run"):  # Released: free again.
    with open(os.path.join(model_dir, LOCK_FILE)) as f:
      assert json.load(f)["command"] == "second run"


def _fail_inside(lock):
  with pytest.raises(ConfigError, match="bad binding"):
    with lock:
      raise ConfigError("bad binding")


def test_a_failed_run_leaves_model_dir_as_it_found_it(tmp_path):
  fresh = tmp_path / "a" / "b"
  _fail_inside(RunLock(str(fresh)))
  assert not fresh.exists() and (tmp_path / "a").is_dir()

  older = tmp_path / "older"  # A run directory without a lock file.
  older.mkdir()
  (older / "vocab.json").write_text("{}")
  before = lt.snapshot(older)
  _fail_inside(RunLock(str(older)))
  assert lt.snapshot(older) == before

  with RunLock(str(older), command="a finished run"):
    pass
  before = lt.snapshot(older)
  assert "a finished run" in before[LOCK_FILE][2].decode()
  _fail_inside(RunLock(str(older), command="a failed run"))
  assert lt.snapshot(older) == before  # Contents and mtime of the lock file are back.


def test_a_successful_run_keeps_its_directory_and_lock_file(tmp_path):
  fresh = tmp_path / "run"
  with RunLock(str(fresh)):
    assert os.listdir(fresh) == [LOCK_FILE]
  assert os.listdir(fresh) == [LOCK_FILE]


HOLD = """
import sys, time
from tbptt.experiments.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  model_dir = str(tmp_path / "run")
  holder = subprocess.Popen([sys.executable, "-c", HOLD, model_dir], cwd=lt.REPO,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=rf"\(pid {holder.pid} on "):
      RunLock(model_dir).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
  with RunLock(model_dir):  # The kernel dropped the lock with the process.
    pass


@pytest.mark.parametrize("tf_config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
     True),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}},
     False),
    ({"cluster": {"worker": ["a:1"], "evaluator": ["e:1"]}, "task": {"type": "evaluator"}}, False),
    ({"cluster": {"worker": ["a:1"]}}, True),
    ("not json", True),
])
def test_only_the_chief_takes_the_lock(tf_config, chief):
  environ = {} if tf_config is None else {
      "TF_CONFIG": tf_config if isinstance(tf_config, str) else json.dumps(tf_config)}
  assert run_lock.is_chief(environ) is chief


def test_training_modes_lock_and_the_others_do_not(corpus, tmp_path, monkeypatch):
  model_dir = tmp_path / "run"
  assert lt.launch(lt.argv(model_dir, *corpus))[0] == 0
  with RunLock(str(model_dir)):
    before = lt.snapshot(model_dir)
    for mode in ("train", "train_and_eval"):
      line = lt.error_line(*lt.launch(lt.argv(model_dir, *corpus, "Trainer.train_steps = 6",
                                              mode=mode)))
      assert IN_USE.match(line) and IN_USE.match(line)["dir"] == str(model_dir), line
      assert lt.snapshot(model_dir) == before
    # Evaluating, sampling and exporting while a run trains are normal.
    for mode in ("eval", "sample", "export"):
      assert lt.launch(lt.argv(model_dir, *corpus, mode=mode))[0] == 0, mode
    # Every worker of a multi-worker job gets the same model_dir: only the chief locks it.
    worker = {"cluster": {"worker": ["localhost:1", "localhost:2"]},
              "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(worker))
    assert lt.launch(lt.argv(model_dir, *corpus, "Trainer.train_steps = 6"))[0] == 0
    monkeypatch.setenv("TF_CONFIG", json.dumps(dict(worker, task={"type": "worker", "index": 0})))
    assert IN_USE.match(lt.error_line(*lt.launch(lt.argv(model_dir, *corpus,
                                                         "Trainer.train_steps = 9"))))


@pytest.mark.slow
def test_two_processes_on_one_model_dir(corpus, tmp_path):
  """A real run holds the lock; a second run exits 2 and changes nothing; the first finishes."""
  model_dir = tmp_path / "run"
  args = lt.argv(model_dir, *corpus, "Trainer.train_steps = 3000", "Trainer.steps_per_loop = 10",
                 "Trainer.checkpoint_interval = 20", "Trainer.eval_interval = None")
  first = lt.start(args)
  try:
    deadline = time.monotonic() + 300
    while not (model_dir / "checkpoints" / "checkpoint").exists():
      assert first.poll() is None, first.communicate()
      assert time.monotonic() < deadline, "the first run wrote no checkpoint"
      time.sleep(0.1)
    # Frozen (still holding the lock), so its own writes cannot blur the comparison.
    first.send_signal(signal.SIGSTOP)
    try:
      before = lt.snapshot(model_dir)
      line = lt.error_line(*lt.launch(args))
      assert lt.snapshot(model_dir) == before
    finally:
      first.send_signal(signal.SIGCONT)
    match = IN_USE.match(line)
    assert match and int(match["pid"]) == first.pid, line
    out, err = first.communicate(timeout=600)
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()
  assert first.returncode == 0, err
  assert (model_dir / "checkpoints" / "ckpt-3000.index").exists()
  assert "eval valid at step 3000: loss" in out
