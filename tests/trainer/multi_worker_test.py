"""Two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy from TF_CONFIG), CPU only.

One cluster run is stopped by SIGTERM on one worker, then resumed to step 30; it is compared with
one process training the same global batch. Then workers of the launcher are killed or frozen: the
survivor must fail with one line naming the lost worker, in bounded time.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from events import read_scalars

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SCRIPT = os.path.join(HERE, "toy_run.py")
STEPS = 30
ROWS = 4  # Global batch: worker r of 2 owns rows [2r, 2r + 2).


def free_ports(count):
  with contextlib.ExitStack() as stack:
    sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]


def tf_config(ports, index):
  return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}})


def start(argv, tf_config_value=None, **kwargs):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("TF_CONFIG", None)
  if tf_config_value is not None:
    env["TF_CONFIG"] = tf_config_value
  return subprocess.Popen([sys.executable] + argv, env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs)


def toy(model_dir, train_steps, *args, index=None, ports=None):
  argv = [SCRIPT, str(model_dir), str(train_steps), *args, "--dropout", "0"]
  return start(argv, None if index is None else tf_config(ports, index))


def finish(process, timeout=300):
  out, err = process.communicate(timeout=timeout)
  return SimpleNamespace(code=process.returncode, out=out, err=err)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  """A 2-worker run stopped by SIGTERM to worker 1, resumed to step 30 by a second 2-worker run;
  and one process trained to step 30 on the same global batch."""
  root = tmp_path_factory.mktemp("cluster")
  model_dir, progress = root / "run", str(root / "progress")
  reference = toy(root / "reference", STEPS, "--dump_state", str(root / "reference.npz"))
  ports = free_ports(2)
  slow = ["0", "--slow_seconds", "0.05", "--steps_per_loop", "1000"]
  workers = [toy(model_dir, 10**5, *slow, index=0, ports=ports),
             toy(model_dir, 10**5, *slow, "--progress_file", progress, index=1, ports=ports)]
  deadline = time.time() + 180
  while not os.path.exists(progress) or int(open(progress).read() or 0) < 14:
    assert time.time() < deadline and all(w.poll() is None for w in workers), \
        [finish(w).err[-2000:] for w in workers]
    time.sleep(0.01)
  workers[1].send_signal(signal.SIGTERM)
  stopped = [finish(w) for w in workers]

  ports = free_ports(2)
  workers = [toy(model_dir, STEPS, "--dump_state", str(root / f"worker{i}.npz"), index=i,
                 ports=ports) for i in range(2)]
  resumed = [finish(w) for w in workers]
  return SimpleNamespace(root=root, model_dir=model_dir, stopped=stopped, resumed=resumed,
                         reference=finish(reference))


def test_sigterm_on_one_worker_stops_every_worker_after_the_same_step(cluster):
  assert [r.code for r in cluster.stopped] == [143, 143], [r.err[-3000:] for r in cluster.stopped]
  steps = [int(re.search(r"Stopped at step (\d+)", r.out)[1]) for r in cluster.stopped]
  assert steps[0] == steps[1] and 14 < steps[0] < STEPS
  assert "with the other workers (one of them was signalled)" in cluster.stopped[0].out
  assert "SIGTERM: stopping after the current step" in cluster.stopped[1].err
  saves = [line for line in cluster.stopped[0].out.splitlines() if line.startswith("saved ")]
  assert saves[-1] == f"saved {cluster.model_dir}/checkpoints/ckpt-{steps[0]}"


def test_the_chief_keeps_checkpoints_the_other_worker_writes_and_deletes_its_own(cluster):
  model_dir = str(cluster.model_dir)
  chief, worker = ([line for run in runs for line in run.out.splitlines()
                    if line.startswith("saved ")]
                   for runs in zip(cluster.stopped, cluster.resumed))
  stop = int(re.search(r"Stopped at step (\d+)", cluster.stopped[0].out)[1])
  steps = sorted({10, 20, stop, STEPS})
  assert chief == [f"saved {model_dir}/checkpoints/ckpt-{s}" for s in steps]
  assert worker == [f"saved {model_dir}/workertemp_worker_1/ckpt-{s}" for s in steps]
  assert not [n for n in os.listdir(model_dir) if n.startswith("workertemp")]


def test_resumed_cluster_continues_from_the_chiefs_checkpoint(cluster):
  assert [r.code for r in cluster.resumed] == [0, 0], [r.err[-3000:] for r in cluster.resumed]
  stop = int(re.search(r"Stopped at step (\d+)", cluster.stopped[0].out)[1])
  # Each worker's first loop started at the restored step (loops end on multiples of 10, the
  # checkpoint interval, and are at most 5 steps long).
  first = stop + min(5, STEPS - stop, 10 - stop % 10)
  for run in cluster.resumed:
    assert next(line for line in run.out.splitlines() if line.startswith("step ")) == (
        f"step {first}")


def test_losses_match_one_process_with_the_same_global_batch(cluster):
  assert cluster.reference.code == 0, cluster.reference.err[-3000:]
  cluster_losses = read_scalars(str(cluster.model_dir / "train"), "loss")
  reference = read_scalars(str(cluster.root / "reference" / "train"), "loss")
  assert sorted(cluster_losses) == list(range(1, STEPS + 1))
  for step, loss in reference.items():
    assert cluster_losses[step] == pytest.approx(loss, rel=1e-3)


def test_each_worker_carries_the_state_of_its_own_rows(cluster):
  reference = np.load(cluster.root / "reference.npz")
  assert reference["h"].shape[0] == ROWS
  for index in range(2):
    local = np.load(cluster.root / f"worker{index}.npz")
    rows = slice(index * ROWS // 2, (index + 1) * ROWS // 2)
    assert int(local["row_start"]) == rows.start and local["h"].shape[0] == ROWS // 2
    np.testing.assert_allclose(local["h"], reference["h"][rows], atol=1e-5)
    np.testing.assert_allclose(local["c"], reference["c"][rows], atol=1e-5)
  # The chief's checkpoint holds every worker's rows, gathered.
  latest = tf.train.latest_checkpoint(str(cluster.model_dir / "checkpoints"))
  saved = tf.train.load_variable(latest, "train_state/0/.ATTRIBUTES/VARIABLE_VALUE")
  np.testing.assert_allclose(saved, reference["h"], atol=1e-5)


def test_every_worker_skips_a_corrupt_newest_checkpoint_alike(cluster, tmp_path):
  """The resumed cluster's newest checkpoint (step 30) gets flipped bytes: both workers restore
  step 20, the chief moves step 30 to corrupt/, and steps 21-30 repeat the first run's losses."""
  model_dir = tmp_path / "run"
  shutil.copytree(cluster.model_dir, model_dir)
  data = model_dir / "checkpoints" / f"ckpt-{STEPS}.data-00000-of-00001"
  damaged = bytearray(data.read_bytes())
  for i in range(64):
    damaged[(len(damaged) // 2 + i) % len(damaged)] ^= 0xFF
  data.write_bytes(bytes(damaged))
  ports = free_ports(2)
  workers = [toy(model_dir, STEPS, index=i, ports=ports) for i in range(2)]
  runs = [finish(w) for w in workers]
  assert [r.code for r in runs] == [0, 0], [r.err[-3000:] for r in runs]
  # The chief warns and repairs; the other worker warns too unless the chief's repair came first
  # (then the state file it reads no longer lists ckpt-30). Either way both restore step 20.
  assert f"ckpt-{STEPS} is damaged (checksum mismatch); using ckpt-20" in runs[0].err, \
      runs[0].err[-2000:]
  for run in runs:
    assert next(line for line in run.out.splitlines() if line.startswith("step ")) == "step 25"
  assert sorted(os.listdir(model_dir / "checkpoints" / "corrupt")) == [
      f"ckpt-{STEPS}.data-00000-of-00001", f"ckpt-{STEPS}.index"]
  first = read_scalars(str(cluster.model_dir / "train"), "loss")
  again = read_scalars(str(model_dir / "train"), "loss")
  for step in range(21, STEPS + 1):
    assert again[step] == pytest.approx(first[step], rel=1e-6), step


def launcher_argv(model_dir, corpus, *bindings):
  tiny = [f"TextCorpus.train_path = '{corpus}/train.txt'",
          f"TextCorpus.valid_path = '{corpus}/valid.txt'", "TextCorpus.test_path = None",
          "TextCorpus.batch_size = 2", "TextCorpus.seq_len = 4", "TextCorpus.eval_batch_size = 2",
          "LanguageModel.units = 4", "LanguageModel.num_layers = 1",
          "LanguageModel.embedding_dim = 4", "LanguageModelTask.summary_sample_length = 0",
          "Trainer.train_steps = 100000", "Trainer.steps_per_loop = 5",
          "Trainer.histogram_interval = None", "Trainer.eval_interval = None",
          "Trainer.checkpoint_interval = 20", "distribution.strategy = 'multi_worker'",
          "distribution.heartbeat_timeout_seconds = 5"]
  args = ["-m", "tbptt", f"--model_dir={model_dir}", "--gin_file=charlm.gin"]
  return args + [f"--gin_bindings={b}" for b in tiny + list(bindings)]


@pytest.mark.parametrize("victim, how", [(1, signal.SIGKILL), (0, signal.SIGKILL),
                                         (1, signal.SIGSTOP)],
                         ids=["worker-killed", "chief-killed", "worker-frozen"])
def test_a_lost_worker_ends_the_other_with_one_line_naming_it(tmp_path, victim, how):
  text = "for i in range(10):\n  print(i * i)\n" * 60
  (tmp_path / "train.txt").write_text(text)
  (tmp_path / "valid.txt").write_text(text[:600])
  ports = free_ports(2)
  argv = launcher_argv(tmp_path / "run", tmp_path)
  workers = [start(argv, tf_config(ports, i)) for i in range(2)]
  survivor = workers[1 - victim]
  try:
    state = tmp_path / "run" / "checkpoints" / "checkpoint"
    deadline = time.time() + 180
    while not (state.exists() and "ckpt-20" in state.read_text()):
      assert time.time() < deadline and all(w.poll() is None for w in workers), \
          [finish(w).err[-2000:] for w in workers]
      time.sleep(0.05)
    workers[victim].send_signal(how)
    lost_at = time.time()
    done = finish(survivor, timeout=120)
    detected_after = time.time() - lost_at
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
        worker.communicate()
  assert done.code == 1, done.err[-3000:]
  assert detected_after < 60
  line = done.err.splitlines()[-1]
  why = ("it stopped sending heartbeats" if how == signal.SIGSTOP
         else "(it stopped sending heartbeats|its connection was lost)")
  assert re.fullmatch(
      rf"tbptt: error: multi-worker training lost worker {victim} \(127\.0\.0\.1:{ports[victim]}\) "
      rf"at step \d+: {why}.*; check that worker's log, then restart every worker with the same "
      r"command to resume from the last checkpoint", line), line
