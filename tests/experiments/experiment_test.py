"""End-to-end tests of the gin root (experiments/experiment.py) on a tiny language model."""

import math
import os
import re
import shutil

import gin
import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments import experiment, gin_files
from tbptt.experiments.language_model import LanguageModelTask
from tbptt.trainer.errors import ConfigError
from events import read_scalars, read_tags

TEXT = "def add(a, b):\n  return a + b\n\nclass Point:\n  x = 0\n  y = 1\n" * 40


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  for split in ("train", "valid", "test"):
    (root / f"{split}.txt").write_text(TEXT if split == "train" else TEXT[: 2000])
  return {split: str(root / f"{split}.txt") for split in ("train", "valid", "test")}


def tiny_bindings(corpus_files, **overrides):
  bindings = {
      "TextCorpus.train_path": repr(corpus_files["train"]),
      "TextCorpus.valid_path": repr(corpus_files["valid"]),
      "TextCorpus.test_path": repr(corpus_files["test"]),
      "TextCorpus.batch_size": 4, "TextCorpus.seq_len": 12, "TextCorpus.eval_batch_size": 4,
      "LanguageModel.units": 16, "LanguageModel.embedding_dim": 8,
      "Trainer.train_steps": 6, "Trainer.steps_per_loop": 3, "Trainer.eval_interval": 3,
      "Trainer.checkpoint_interval": 3, "Trainer.summary_interval": 3, "Trainer.log_interval": 3,
      "Trainer.histogram_interval": None, "Trainer.eval_steps": 5, "sample_text.length": 30,
  }
  bindings.update(overrides)
  return [f"{k} = {v}" for k, v in bindings.items()]


def run(model_dir, mode, bindings):
  gin.clear_config()
  gin_files.parse(["charlm.gin"], bindings)
  return experiment.run_experiment(str(model_dir), mode)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_files):
  """A run directory trained for 6 steps, and what train_and_eval returned."""
  model_dir = tmp_path_factory.mktemp("run")
  result = run(model_dir, "train_and_eval", tiny_bindings(corpus_files))
  gin.clear_config()
  return model_dir, result


def test_train_writes_the_run_directory(trained):
  model_dir, result = trained
  assert result["step"] == 6
  checkpoints = set(os.listdir(model_dir / "checkpoints"))
  assert {"ckpt-6.index", "ckpt-3.index", "checkpoint"} <= checkpoints
  assert (model_dir / "vocab.json").exists()
  config = (model_dir / "operative_config.gin").read_text()
  assert "TextCorpus.seq_len = 12" in config and "LanguageModel.units = 16" in config
  train_tags = read_tags(str(model_dir / "train"))
  assert {"loss", "grad_norm", "learning_rate", "tokens_per_sec", "operative_config"} <= train_tags
  assert {"loss", "bits_per_char", "sample"} <= read_tags(str(model_dir / "eval"))


def test_train_and_eval_reports_both_splits(trained):
  _, result = trained
  for split in ("valid", "test"):
    metrics = result["eval"][split]
    assert metrics["bits_per_char"] == pytest.approx(metrics["loss"] / math.log(2))
    assert 0 < metrics["bits_per_char"] < math.log2(50)


def test_eval_mode_reads_the_latest_checkpoint(trained, corpus_files, capsys):
  model_dir, result = trained
  evaluated = run(model_dir, "eval", tiny_bindings(corpus_files))
  assert evaluated["valid"]["loss"] == pytest.approx(result["eval"]["valid"]["loss"], rel=1e-5)
  out = capsys.readouterr().out
  assert re.search(r"eval valid at step 6: loss \d", out) and "eval test at step 6" in out


def test_rerun_resumes_and_extends(trained, corpus_files, tmp_path):
  model_dir, _ = trained
  copy = tmp_path / "copy"
  shutil.copytree(model_dir, copy)
  again = run(copy, "train", tiny_bindings(corpus_files))
  assert again["step"] == 6 and "ckpt-9.index" not in os.listdir(copy / "checkpoints")
  result = run(copy, "train", tiny_bindings(corpus_files, **{"Trainer.train_steps": 9}))
  assert result["step"] == 9
  assert "ckpt-9.index" in os.listdir(copy / "checkpoints")
  assert sorted(read_scalars(str(copy / "train"), "loss")) == [3, 6, 9]


def test_sample_mode_is_seeded(trained, corpus_files, capsys):
  model_dir, _ = trained
  bindings = tiny_bindings(corpus_files, **{"sample_text.prompt": "'def '"})
  first = run(model_dir, "sample", bindings)
  second = run(model_dir, "sample", bindings)
  assert first["step"] == 6 and first["sample"] == second["sample"]
  assert first["sample"].startswith("def ") and len(first["sample"]) == 4 + 30
  other = run(model_dir, "sample", bindings + ["sample_text.seed = 7"])
  assert other["sample"] != first["sample"]


def test_export_mode_matches_the_trained_model(trained, corpus_files):
  model_dir, _ = trained
  result = run(model_dir, "export", tiny_bindings(corpus_files))
  loaded = tf.saved_model.load(result["export"])
  # The in-process reference: the same experiment restored from the same checkpoint.
  _, task, trainer = experiment.build(str(model_dir), LanguageModelTask)
  assert trainer.restore() == 6
  ids = task.corpus.evals["valid"].chunk(0)["inputs"]
  state, ref_state = loaded.initial_state(4), task.initial_state(4)
  for t in range(0, 12, 4):
    outputs, state = loaded.step(ids[:, t:t + 4], state)
    expected, ref_state = task.model(ids[:, t:t + 4], ref_state)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["eval", "sample", "export"])
def test_modes_that_need_a_checkpoint(mode, corpus_files, tmp_path):
  with pytest.raises(ConfigError, match=f"--mode={mode} needs a trained model"):
    run(tmp_path / "empty", mode, tiny_bindings(corpus_files))


def test_unknown_mode_and_missing_task(tmp_path):
  with pytest.raises(ConfigError, match="--mode must be one of"):
    experiment.run_experiment(str(tmp_path), "fit")
  with pytest.raises(ConfigError, match="run_experiment.task_fn is not set"):
    experiment.run_experiment(str(tmp_path), "train")


def test_layer_argument_errors_become_config_errors(corpus_files, tmp_path):
  with pytest.raises(ConfigError, match="^LanguageModel: units must be a positive integer, got 0"):
    run(tmp_path, "train", tiny_bindings(corpus_files, **{"LanguageModel.units": 0}))


@pytest.mark.slow
def test_mirrored_strategy_trains(corpus_files, tmp_path):
  bindings = tiny_bindings(corpus_files, **{"distribution.strategy": "'mirrored'",
                                            "Trainer.train_steps": 3})
  result = run(tmp_path, "train", bindings)
  assert result["step"] == 3 and np.isfinite(result["train"]["loss"])
  assert np.isfinite(result["valid"]["bits_per_char"])


def test_build_applies_the_configs_runtime_before_the_model_is_built(corpus_files, tmp_path):
  from tbptt.trainer import runtime
  gin.clear_config()
  gin_files.parse(["charlm.gin"], tiny_bindings(
      corpus_files, **{"Trainer.seed": 7, "Trainer.mixed_precision": "'mixed_bfloat16'"}))
  try:
    _, task, trainer = experiment.build(str(tmp_path), LanguageModelTask)
    assert runtime.seeded_with() == 7
    assert task.model.compute_dtype == "bfloat16"
    assert trainer.config.runtime == runtime.Runtime(seed=7, mixed_precision="mixed_bfloat16")
  finally:
    runtime.set_mixed_precision(None)
