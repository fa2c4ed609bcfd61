"""Non-finite steps: the injection hook, the stop and rollback policies, the launcher's exit."""

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from nonfinite_injection import InjectNonFinite
from toy_task import DelayTask
from tbptt.trainer import Trainer, runtime
from tbptt.trainer.errors import ConfigError, TrainingError
from events import read_scalars, read_tags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUIET = dict(histogram_interval=None, log_interval=10**6, eval_interval=None)
LEARNING_RATE = 0.01


def make_trainer(model_dir, nonfinite_injection_steps=(), **kwargs):
  runtime.seed_everything(5, deterministic=True)
  settings = dict(train_steps=20, steps_per_loop=5, checkpoint_interval=10, summary_interval=1,
                  max_nonfinite_steps=3, learning_rate=LEARNING_RATE, clip_norm=1.0, seed=5,
                  deterministic=True, **QUIET)
  settings.update(kwargs)
  task = InjectNonFinite(DelayTask(units=8), steps=nonfinite_injection_steps)
  return Trainer(task=task, model_dir=str(model_dir), **settings)


def rollbacks(trainer) -> int:
  """The run's rollback count (the checkpointed variable's current value)."""
  return int(trainer.checkpoints.objects["rollbacks"].numpy())


def test_injected_steps_are_skipped_and_counted(tmp_path):
  trainer = make_trainer(tmp_path, train_steps=6, steps_per_loop=6,
                         nonfinite_injection_steps=[2, 3])
  metrics = trainer.train()
  assert metrics["step"] == 6 and metrics["train"]["nonfinite_steps"] == 2
  assert int(trainer.runner.optimizer.iterations) == 4  # Steps 2 and 3 (0-based) changed nothing.
  counts = read_scalars(str(tmp_path / "train"), "nonfinite_steps")
  assert [counts[s] for s in range(1, 7)] == [0, 0, 1, 2, 2, 2]
  assert np.isnan(read_scalars(str(tmp_path / "train"), "loss")[3])


def test_stop_policy_raises_after_max_nonfinite_steps_in_a_row(tmp_path):
  trainer = make_trainer(tmp_path, nonfinite_injection_steps=range(12, 100))
  with pytest.raises(TrainingError, match=r"stopped at step 15: 3 steps in a row .*"
                                          r"Trainer.nonfinite_policy='rollback'"):
    trainer.train()
  assert read_scalars(str(tmp_path / "train"), "nonfinite_steps")[15] == 3


@pytest.fixture(scope="module")
def rollback(tmp_path_factory):
  """A run whose steps 12-14 (0-based) fail once, with its reference: the same run resumed from
  step 10 at half the learning rate, which is what the rollback must amount to."""
  root = tmp_path_factory.mktemp("rollback")
  trainer = make_trainer(root / "rolled", nonfinite_injection_steps=[12, 13, 14],
                         nonfinite_policy="rollback", rollback_lr_factor=0.5, max_rollbacks=1)
  metrics = trainer.train()
  make_trainer(root / "reference", train_steps=10).train()
  make_trainer(root / "reference", learning_rate=LEARNING_RATE / 2).train()
  return SimpleNamespace(root=root, trainer=trainer, metrics=metrics)


def test_rollback_replays_from_the_last_good_checkpoint_at_the_lower_rate(rollback):
  assert rollback.metrics["step"] == 20 and rollbacks(rollback.trainer) == 1
  # Every value the rollback restored (weights, optimizer, carried state, step) shows in the
  # losses: bitwise those of the reference run from step 10 on at half the rate.
  rolled = read_scalars(str(rollback.root / "rolled" / "train"), "loss")
  reference = read_scalars(str(rollback.root / "reference" / "train"), "loss")
  assert sorted(rolled) == list(range(1, 21))
  assert rolled == reference
  rates = read_scalars(str(rollback.root / "rolled" / "train"), "learning_rate")
  assert [rates[s] for s in range(1, 21)] == pytest.approx([LEARNING_RATE] * 10 +
                                                           [LEARNING_RATE / 2] * 10)
  # The skipped steps still count; the run's last loss is finite.
  assert rollback.metrics["train"]["nonfinite_steps"] == 3
  assert np.isfinite(rollback.metrics["train"]["loss"])


def test_reduced_learning_rate_and_rollback_count_survive_a_resume(rollback):
  checkpointer = rollback.trainer.checkpoints
  assert float(checkpointer.read(checkpointer.latest, "learning_rate_factor")) == 0.5
  assert int(checkpointer.read(checkpointer.latest, "rollbacks")) == 1
  resumed = make_trainer(rollback.root / "rolled", train_steps=25, nonfinite_policy="rollback",
                         rollback_lr_factor=0.5)
  resumed.train()
  assert rollbacks(resumed) == 1
  rates = read_scalars(str(rollback.root / "rolled" / "train"), "learning_rate")
  assert [rates[s] for s in range(21, 26)] == pytest.approx([LEARNING_RATE / 2] * 5)


def test_rollback_policy_checkpoints_the_start_so_a_first_streak_can_roll_back(tmp_path):
  trainer = make_trainer(tmp_path, train_steps=6, steps_per_loop=3,
                         nonfinite_injection_steps=[0, 1, 2], nonfinite_policy="rollback")
  assert trainer.train()["step"] == 6
  assert rollbacks(trainer) == 1 and int(trainer.runner.optimizer.iterations) == 6


def test_rollbacks_run_out_then_training_fails(tmp_path):
  trainer = make_trainer(tmp_path, train_steps=40, nonfinite_injection_steps=range(12, 100),
                         nonfinite_policy="rollback", max_rollbacks=2)
  with pytest.raises(TrainingError, match=r"after 2 rollbacks \(Trainer.max_rollbacks=2\)"):
    trainer.train()
  assert rollbacks(trainer) == 2
  # Each rollback went back to step 10, the newest checkpoint saved outside a streak.
  assert read_scalars(str(tmp_path / "train"), "learning_rate")[11] == pytest.approx(
      LEARNING_RATE / 4)


@pytest.mark.parametrize("kwargs, message", [
    ({"nonfinite_policy": "retry"}, "Trainer.nonfinite_policy must be 'stop' or 'rollback'"),
    ({"rollback_lr_factor": 0.0}, "Trainer.rollback_lr_factor must be a number in (0, 1]"),
    ({"rollback_lr_factor": 2}, "Trainer.rollback_lr_factor must be a number in (0, 1]"),
    ({"max_rollbacks": -1}, "Trainer.max_rollbacks must be a non-negative integer"),
])
def test_invalid_values_raise_config_error(tmp_path, kwargs, message):
  with pytest.raises(ConfigError) as raised:
    make_trainer(tmp_path, **kwargs)
  assert message in str(raised.value)


def launch(model_dir, corpus, *bindings):
  text = "for i in range(10):\n  print(i * i)\n" * 60
  for name, content in (("train", text), ("valid", text[:600])):
    (corpus / f"{name}.txt").write_text(content)
  tiny = [f"TextCorpus.train_path = '{corpus / 'train.txt'}'",
          f"TextCorpus.valid_path = '{corpus / 'valid.txt'}'", "TextCorpus.test_path = None",
          "TextCorpus.batch_size = 2", "TextCorpus.seq_len = 4", "TextCorpus.eval_batch_size = 2",
          "LanguageModel.units = 4", "LanguageModel.num_layers = 1",
          "LanguageModel.embedding_dim = 4", "LanguageModelTask.summary_sample_length = 0",
          "Trainer.train_steps = 12", "Trainer.steps_per_loop = 4", "Trainer.summary_interval = 1",
          "Trainer.histogram_interval = None", "Trainer.eval_steps = 2",
          "Trainer.checkpoint_interval = 4", "Trainer.max_nonfinite_steps = 2"]
  args = [f"--model_dir={model_dir}", "--gin_file=charlm.gin"]
  args += [f"--gin_bindings={b}" for b in tiny + list(bindings)]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, LAUNCH] + args, cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


LAUNCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch_with_hooks.py")
INJECT = ["run_experiment.task_fn = @InjectNonFinite",
          "InjectNonFinite.task_fn = @LanguageModelTask", "InjectNonFinite.steps = [5, 6, 7]"]


@pytest.mark.slow
def test_launcher_exits_1_after_max_nonfinite_steps_and_logs_them(tmp_path):
  done = launch(tmp_path / "run", tmp_path, *INJECT)
  assert done.returncode == 1, done.stderr
  assert done.stderr.splitlines()[-1] == (
      "tbptt: error: training stopped at step 7: 2 steps in a row had a non-finite loss or "
      "gradient and were skipped (Trainer.max_nonfinite_steps=2); lower the learning rate, set "
      "Trainer.clip_norm or Trainer.nonfinite_policy='rollback', then resume from the last "
      "checkpoint")
  counts = read_scalars(str(tmp_path / "run" / "train"), "nonfinite_steps")
  assert [counts[s] for s in range(4, 8)] == [0, 0, 1, 2]
  assert "nonfinite_steps" in read_tags(str(tmp_path / "run" / "train"))


@pytest.mark.slow
def test_launcher_rolls_back_and_finishes(tmp_path):
  done = launch(tmp_path / "run", tmp_path, *INJECT, "Trainer.nonfinite_policy = 'rollback'")
  assert done.returncode == 0, done.stderr
  assert "rolled back to the checkpoint of step 4 with the learning rate scaled by 0.5" in (
      done.stderr)
  rates = read_scalars(str(tmp_path / "run" / "train"), "learning_rate")
  assert rates[12] == pytest.approx(rates[4] / 2)
