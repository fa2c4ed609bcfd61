"""The Trainer end to end on the toy task: what lands in model_dir, resumption, parity, failures."""

import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from file_digest import digest
from toy_task import DelayTask
from tbptt.trainer import Trainer, TrainerConfig, runtime
from tbptt.trainer.distribute import make_strategy
from tbptt.trainer.errors import ConfigError, TrainingError, TrainingInterrupted
from tbptt.trainer.inputs import InputSource
from events import read_scalars, read_tags

TRAIN_TAGS = {"loss", "grad_norm", "learning_rate", "steps_per_sec", "tokens_per_sec",
              "nonfinite_steps", "state/h", "state/c", "operative_config"}
QUIET = dict(histogram_interval=None, log_interval=10**6)

GIN_CONFIG = """
Trainer.train_steps = 25              # steps
Trainer.steps_per_loop = 4
Trainer.clip_norm = 1.0
Trainer.summary_interval = 5
Trainer.checkpoint_interval = 10
Trainer.eval_interval = 10
Trainer.max_checkpoints = 2
Trainer.seed = 1
Trainer.deterministic = False
Trainer.max_nonfinite_steps = 5
Trainer.optimizer = @optimizers.Adam
Trainer.learning_rate = 0.01
Trainer.lr_schedule = None
Trainer.jit_compile = False
Trainer.mixed_precision = None
Trainer.eval_steps = 4
Trainer.histogram_interval = 10
Trainer.log_interval = 10
distribution.strategy = 'default'
distribution.cpu_devices = 0
"""


def weights(model):
  return [np.array(v) for v in model.weights]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One 25-step run configured entirely through gin."""
  model_dir = str(tmp_path_factory.mktemp("run"))
  gin.clear_config()
  gin.parse_config(GIN_CONFIG)
  config = TrainerConfig()
  strategy = make_strategy()
  config.runtime.apply()
  with strategy.scope():
    task = DelayTask(units=8)
    trainer = Trainer(task=task, model_dir=model_dir, strategy=strategy, config=config)
  metrics = trainer.train()
  gin.clear_config()
  return SimpleNamespace(model_dir=model_dir, trainer=trainer, task=task, metrics=metrics)


def test_trains_exactly_to_train_steps(run):
  assert run.metrics["step"] == run.trainer.step == 25
  assert set(run.metrics["train"]) == {"loss", "grad_norm", "learning_rate", "steps_per_sec",
                                       "tokens_per_sec", "nonfinite_steps"}
  assert set(run.metrics["valid"]) == {"loss", "perplexity", "accuracy"}
  assert run.metrics["valid"]["perplexity"] == pytest.approx(math.exp(run.metrics["valid"]["loss"]))


def test_checkpoint_files(run):
  names = set(os.listdir(os.path.join(run.model_dir, "checkpoints")))
  assert {"checkpoint", "ckpt-20.index", "ckpt-25.index", "ckpt-25.data-00000-of-00001",
          "best"} <= names
  assert "ckpt-10.index" not in names  # Trainer.max_checkpoints = 2
  best = os.listdir(os.path.join(run.model_dir, "checkpoints", "best"))
  assert any(n.endswith(".index") for n in best)


def test_event_files_hold_every_train_and_eval_tag(run):
  train_dir = os.path.join(run.model_dir, "train")
  tags = read_tags(train_dir)
  assert TRAIN_TAGS <= tags
  assert any(t.startswith("weights/") for t in tags)
  assert any(t.startswith("gradients/") for t in tags)
  assert set(read_scalars(train_dir, "loss")) == {5, 10, 15, 20, 25}
  eval_dir = os.path.join(run.model_dir, "eval")
  assert {"loss", "perplexity", "accuracy"} <= read_tags(eval_dir)
  assert set(read_scalars(eval_dir, "loss")) == {10, 20, 25}
  assert read_scalars(eval_dir, "loss")[25] == pytest.approx(run.metrics["valid"]["loss"], rel=1e-6)


def test_operative_config_is_saved(run):
  with open(os.path.join(run.model_dir, "operative_config.gin")) as f:
    config = f.read()
  assert "Trainer.train_steps = 25" in config and "distribution.strategy = 'default'" in config
  assert not [n for n in os.listdir(run.model_dir) if ".tmp" in n]


def fresh_trainer(model_dir, **kwargs):
  task = DelayTask(units=8)
  return task, Trainer(task=task, model_dir=model_dir, eval_steps=4, **QUIET, **kwargs)


def test_newest_checkpoint_restores_model_and_carried_state(run):
  task, trainer = fresh_trainer(run.model_dir)
  assert trainer.restore() == 25
  for got, want in zip(weights(task.model), weights(run.task.model)):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(trainer.runner.carried_state(), run.trainer.runner.carried_state()):
    np.testing.assert_array_equal(np.array(got), np.array(want))
  assert int(trainer.runner.optimizer.iterations) == 25


def test_evaluate_restores_and_writes_each_split(run):
  _, trainer = fresh_trainer(run.model_dir)
  metrics = trainer.evaluate(splits=("valid", "test"))
  assert set(metrics) == {"valid", "test"}
  assert metrics["valid"]["loss"] == pytest.approx(run.metrics["valid"]["loss"], rel=1e-6)
  assert "loss" in read_tags(os.path.join(run.model_dir, "eval_test"))


@pytest.mark.parametrize("binding, message", [
    ("Trainer.train_steps = -5", "Trainer.train_steps must be a positive integer, got -5"),
    ("Trainer.train_steps = 0", "Trainer.train_steps must be a positive integer, got 0"),
    ("Trainer.train_steps = 2.5", "Trainer.train_steps must be a positive integer, got 2.5"),
    ("Trainer.steps_per_loop = 0", "Trainer.steps_per_loop must be a positive integer"),
    ("Trainer.clip_norm = 0.0", "Trainer.clip_norm must be a positive number or None, got 0.0"),
    ("Trainer.clip_norm = -1", "Trainer.clip_norm must be a positive number"),
    ("Trainer.summary_interval = 0", "Trainer.summary_interval must be a positive integer"),
    ("Trainer.checkpoint_interval = -10", "Trainer.checkpoint_interval must be a positive integer"),
    ("Trainer.eval_interval = 0", "Trainer.eval_interval must be a positive integer or None"),
    ("Trainer.max_checkpoints = 0", "Trainer.max_checkpoints must be a positive integer"),
    ("Trainer.max_nonfinite_steps = 0", "Trainer.max_nonfinite_steps must be a positive integer"),
    ("Trainer.eval_steps = 0", "Trainer.eval_steps must be a positive integer or None"),
    ("Trainer.histogram_interval = -1",
     "Trainer.histogram_interval must be a positive integer or None"),
    ("Trainer.log_interval = 0", "Trainer.log_interval must be a positive integer"),
    ("Trainer.seed = -1", "Trainer.seed must be an integer in [0, 2**32)"),
    ("Trainer.seed = 4294967296", "Trainer.seed must be an integer in [0, 2**32)"),
    ("Trainer.max_nonfinite_steps = 9223372036854775808",
     "Trainer.max_nonfinite_steps must be a positive integer"),
    ("Trainer.deterministic = 'yes'", "Trainer.deterministic must be True or False"),
    ("Trainer.mixed_precision = 'float8'", "Trainer.mixed_precision must be None, 'mixed_float16'"),
    ("Trainer.jit_compile = 1", "Trainer.jit_compile must be True or False"),
    ("Trainer.learning_rate = -0.1", "Trainer.learning_rate must be a positive number"),
    ("Trainer.nonfinite_policy = 'retry'", "Trainer.nonfinite_policy must be 'stop' or 'rollback'"),
    ("Trainer.profile_steps = (5, 5)", "Trainer.profile_steps must be None or (start, stop)"),
])
def test_invalid_gin_values_raise_config_error(tmp_path, binding, message):
  gin.parse_config(binding)
  with pytest.raises(ConfigError) as raised:
    Trainer(task=DelayTask(units=8), model_dir=str(tmp_path))
  # gin appends "In call to configurable ..." on a line of its own; the launcher prints the first
  # line. The library names the parameter and knows nothing of flags.
  first = str(raised.value).splitlines()[0]
  assert message in first and "--gin_bindings" not in first
  assert raised.value.parameter == binding.split(" =")[0]


def test_batch_that_does_not_split_over_replicas(tmp_path):
  strategy = make_strategy("mirrored", cpu_devices=2)
  with strategy.scope():
    task = DelayTask(batch_size=3, units=8)
    with pytest.raises(ConfigError, match="global_batch_size is 3, which does not split evenly"):
      Trainer(task=task, model_dir=str(tmp_path), strategy=strategy)


def test_model_built_with_another_precision_policy(tmp_path):
  with pytest.raises(ConfigError, match="built with dtype policy 'float32'"):
    Trainer(task=DelayTask(units=8), model_dir=str(tmp_path), mixed_precision="mixed_bfloat16")


@pytest.fixture(scope="module")
def carry_runs(tmp_path_factory):
  """The same task trained with its state carried between chunks, and with the state dropped."""
  results = {}
  for carry in (True, False):
    runtime.seed_everything(0)
    task = DelayTask(carry=carry, delay=2, units=24, stream_len=512, eval_len=128)
    trainer = Trainer(task=task, model_dir=str(tmp_path_factory.mktemp(f"carry{carry}")),
                      train_steps=300, steps_per_loop=100, learning_rate=0.03, clip_norm=1.0,
                      **QUIET)
    initial = trainer.runner.evaluate("valid")["loss"]
    results[carry] = (initial, trainer.train()["valid"]["loss"])
  return results


def test_toy_loss_halves(carry_runs):
  initial, final = carry_runs[True]
  assert initial > 0.9 * math.log(8)
  assert final < initial / 2


def test_carried_state_beats_dropped_state_on_dependencies_across_chunks(carry_runs):
  # Target t is token t-2: the first 2 of every 8 positions need the state carried from the last
  # chunk.
  assert carry_runs[True][1] < carry_runs[False][1] - 0.3


def deterministic_run(model_dir, train_steps, steps_per_loop, histogram_interval):
  runtime.seed_everything(11, deterministic=True)
  task = DelayTask(units=8, dropout=0.2)
  trainer = Trainer(task=task, model_dir=model_dir, train_steps=train_steps,
                    steps_per_loop=steps_per_loop, summary_interval=1, checkpoint_interval=10,
                    eval_interval=10, seed=11, deterministic=True, learning_rate=0.01,
                    clip_norm=1.0, histogram_interval=histogram_interval, log_interval=10**6)
  trainer.train()
  return task, trainer


def test_stop_at_20_and_resume_to_40_is_bitwise_the_uninterrupted_run(tmp_path):
  whole_dir, split_dir = str(tmp_path / "whole"), str(tmp_path / "split")
  whole_task, _ = deterministic_run(whole_dir, 40, steps_per_loop=8, histogram_interval=7)
  deterministic_run(split_dir, 20, steps_per_loop=8, histogram_interval=7)
  # Resumed with other loop boundaries and histogram steps: neither may change the numbers.
  split_task, split = deterministic_run(split_dir, 40, steps_per_loop=6, histogram_interval=9)
  assert split.step == 40
  whole_losses = read_scalars(os.path.join(whole_dir, "train"), "loss")
  split_losses = read_scalars(os.path.join(split_dir, "train"), "loss")
  assert sorted(whole_losses) == list(range(1, 41))
  assert split_losses == whole_losses
  for a, b in zip(weights(whole_task.model), weights(split_task.model)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_killed_run_resumes_bitwise(tmp_path):
  script = os.path.join(os.path.dirname(__file__), "toy_run.py")
  whole_dir, killed_dir = str(tmp_path / "whole"), str(tmp_path / "killed")
  whole = subprocess.Popen([sys.executable, script, whole_dir, "40"])
  killed = subprocess.Popen([sys.executable, script, killed_dir, "40", "20"])
  state_file = os.path.join(killed_dir, "checkpoints", "checkpoint")
  deadline = time.time() + 300
  while time.time() < deadline and killed.poll() is None:
    if os.path.exists(state_file) and '"ckpt-20"' in open(state_file).read():
      break
    time.sleep(0.05)
  assert killed.poll() is None, "the run ended before it could be killed"
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert whole.wait(timeout=300) == 0
  assert subprocess.run([sys.executable, script, killed_dir, "40"], timeout=300).returncode == 0
  whole_losses = read_scalars(os.path.join(whole_dir, "train"), "loss")
  resumed_losses = read_scalars(os.path.join(killed_dir, "train"), "loss")
  assert sorted(whole_losses) == list(range(1, 41))
  after_kill = range(21, 41)
  assert {s: resumed_losses[s] for s in after_kill} == {s: whole_losses[s] for s in after_kill}


def test_mirrored_matches_default(tmp_path):
  losses, norms = {}, {}
  for name in ("default", "mirrored"):
    strategy = make_strategy(name, cpu_devices=2 if name == "mirrored" else 0)
    runtime.seed_everything(4)
    with strategy.scope():
      task = DelayTask(units=8)
      trainer = Trainer(task=task, model_dir=str(tmp_path / name), strategy=strategy, train_steps=8,
                        steps_per_loop=4, summary_interval=1, clip_norm=0.1, learning_rate=0.05,
                        **QUIET)
    trainer.train()
    losses[name] = read_scalars(str(tmp_path / name / "train"), "loss")
    norms[name] = read_scalars(str(tmp_path / name / "train"), "grad_norm")
  assert strategy.num_replicas_in_sync == 2
  assert min(norms["default"].values()) > 0.1  # clipping is active on every step
  assert sorted(losses["mirrored"]) == list(range(1, 9))
  for step, loss in losses["default"].items():
    assert losses["mirrored"][step] == pytest.approx(loss, rel=1e-3)
    assert norms["mirrored"][step] == pytest.approx(norms["default"][step], rel=1e-3)


def test_nonfinite_steps_in_a_row_raise_training_error(tmp_path):
  task = DelayTask(units=8, nan_steps=range(3, 100))
  trainer = Trainer(task=task, model_dir=str(tmp_path), train_steps=50, steps_per_loop=10,
                    max_nonfinite_steps=4, summary_interval=1, **QUIET)
  expected = r"stopped at step 7: 4 steps in a row .*max_nonfinite_steps=4"
  with pytest.raises(TrainingError, match=expected):
    trainer.train()
  assert trainer.step == 7
  assert read_scalars(str(tmp_path / "train"), "nonfinite_steps")[7] == 4


def test_isolated_nonfinite_steps_are_skipped_and_counted(tmp_path):
  task = DelayTask(units=8, nan_steps=(2, 3))
  trainer = Trainer(task=task, model_dir=str(tmp_path), train_steps=6, steps_per_loop=6,
                    max_nonfinite_steps=3, summary_interval=1, **QUIET)
  metrics = trainer.train()
  assert metrics["train"]["nonfinite_steps"] == 2 and metrics["step"] == 6
  assert int(trainer.runner.optimizer.iterations) == 4
  counts = read_scalars(str(tmp_path / "train"), "nonfinite_steps")
  assert [counts[s] for s in range(1, 7)] == [0, 0, 1, 2, 2, 2]


def test_checkpoint_of_another_model_raises_config_error_and_is_untouched(tmp_path):
  Trainer(task=DelayTask(units=8), model_dir=str(tmp_path), train_steps=2, steps_per_loop=2,
          **QUIET).train()
  before = digest(tmp_path / "checkpoints")
  other = Trainer(task=DelayTask(units=12), model_dir=str(tmp_path), train_steps=4, **QUIET)
  expected = f"checkpoint {tmp_path}/checkpoints/ckpt-2 does not fit the model"
  with pytest.raises(ConfigError, match=expected):
    other.train()
  assert digest(tmp_path / "checkpoints") == before


def test_sigterm_checkpoints_and_exits_143(tmp_path, capsys):
  trainer = Trainer(task=DelayTask(units=8), model_dir=str(tmp_path), train_steps=10**6,
                    steps_per_loop=5, **QUIET)
  timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
  timer.start()
  try:
    with pytest.raises(TrainingInterrupted) as raised:
      trainer.train()
  finally:
    timer.cancel()
  step = raised.value.step
  assert raised.value.code == 143 and 0 < step < 10**6
  assert trainer.step == step  # The loop ended after the step the signal arrived in.
  assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith(f"ckpt-{step}")
  assert f"Stopped at step {step}; rerun the same command to resume." in capsys.readouterr().out


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_float32_state(tmp_path, policy):
  runtime.set_mixed_precision(policy)
  try:
    task = DelayTask(units=8)
    trainer = Trainer(task=task, model_dir=str(tmp_path), train_steps=30, steps_per_loop=10,
                      learning_rate=0.02, clip_norm=1.0, mixed_precision=policy, summary_interval=1,
                      **QUIET)
  finally:
    runtime.set_mixed_precision(None)
  metrics = trainer.train()
  losses = read_scalars(str(tmp_path / "train"), "loss")
  assert all(np.isfinite(list(losses.values())))
  assert np.mean([losses[s] for s in range(26, 31)]) < np.mean([losses[s] for s in range(1, 6)])
  assert all(t.dtype == tf.float32 for t in trainer.runner.carried_state())
  assert task.model.compute_dtype == policy.split("_")[1]
  scaled = isinstance(trainer.runner.optimizer, keras.optimizers.LossScaleOptimizer)
  assert scaled == (policy == "mixed_float16")
  assert metrics["train"]["nonfinite_steps"] == 0


def test_jit_compile_matches_graph_mode(tmp_path):
  losses = {}
  for jit in (False, True):
    runtime.seed_everything(2)
    trainer = Trainer(task=DelayTask(units=8), model_dir=str(tmp_path / str(jit)), train_steps=5,
                      steps_per_loop=5, summary_interval=1, jit_compile=jit, learning_rate=0.01,
                      **QUIET)
    trainer.train()
    losses[jit] = read_scalars(str(tmp_path / str(jit) / "train"), "loss")
  for step, loss in losses[False].items():
    assert losses[True][step] == pytest.approx(loss, rel=1e-4)


def test_console_chatter_goes_through_logging_at_debug_only(tmp_path, caplog, capsys):
  Trainer(task=DelayTask(units=8), model_dir=str(tmp_path), train_steps=2, steps_per_loop=2,
          **QUIET).train()
  trainer = Trainer(task=DelayTask(units=8), model_dir=str(tmp_path), train_steps=4,
                    steps_per_loop=2, **QUIET)
  capsys.readouterr()
  logging.getLogger("tensorflow").setLevel(logging.INFO)
  try:
    with caplog.at_level(logging.INFO):
      trainer.restore()
      trainer.train()
      trainer.evaluate(splits=("valid",))
  finally:
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
  # Nothing logged at INFO (TensorFlow's checkpoint chatter included): the console has only our
  # own lines, and they say where training resumed.
  assert [(r.name, r.getMessage()) for r in caplog.records] == []
  assert re.search(r"^\d\d:\d\d:\d\d training from step 2 to 4$", capsys.readouterr().out,
                   re.MULTILINE)
  with caplog.at_level(logging.DEBUG):  # A verbose run shows the restores.
    trainer.restore()
  assert [r.getMessage() for r in caplog.records if r.name == "tbptt.trainer"] == [
      f"Restored {tmp_path}/checkpoints/ckpt-4 (step 4)."]


class SourceOnly(InputSource):
  """The toy task's data served by an object of its own (as a memory-mapped corpus would be)."""

  def __init__(self, task):
    self._task = task

  @property
  def global_batch_size(self):
    return self._task.global_batch_size

  def train_batch(self, step, row_start, num_rows):
    return DelayTask.train_batch(self._task, step, row_start, num_rows)

  def num_eval_batches(self, split):
    return DelayTask.num_eval_batches(self._task, split)

  def eval_batch(self, split, index, row_start, num_rows):
    return DelayTask.eval_batch(self._task, split, index, row_start, num_rows)


class DelegatingTask(DelayTask):
  """Reads every batch through `inputs`; its own batch methods must not be called."""

  @property
  def inputs(self):
    return SourceOnly(self)

  def train_batch(self, step, row_start, num_rows):
    raise AssertionError("the trainer read around the input interface")

  def eval_batch(self, split, index, row_start, num_rows):
    raise AssertionError("the trainer read around the input interface")


def test_the_trainer_reads_batches_only_through_the_tasks_input_source(tmp_path):
  losses = {}
  for name, task_class in (("own", DelayTask), ("delegated", DelegatingTask)):
    runtime.seed_everything(6)
    trainer = Trainer(task=task_class(units=8), model_dir=str(tmp_path / name), train_steps=4,
                      steps_per_loop=2, summary_interval=1, eval_interval=2, **QUIET)
    result = trainer.train()
    losses[name] = (read_scalars(str(tmp_path / name / "train"), "loss"), result["valid"])
  assert losses["delegated"] == losses["own"]
