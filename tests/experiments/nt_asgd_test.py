"""NT-ASGD through the gin root: `--mode=eval`, `sample` and `export` use the averaged weights."""

import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments import experiment, gin_files
from tbptt.experiments.language_model import LanguageModelTask


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
  """Training text alternates a and b; validation text doubles each letter. The better a model
  knows that b follows a, the worse its validation loss: the trigger fires early."""
  root = tmp_path_factory.mktemp("corpus")
  texts = {"train": "ab" * 2000, "valid": "aabb" * 250, "test": "aabb" * 250}
  for split, text in texts.items():
    (root / f"{split}.txt").write_text(text)
  return {split: str(root / f"{split}.txt") for split in texts}


def bindings(corpus_files, **overrides):
  values = {
      "TextCorpus.train_path": repr(corpus_files["train"]),
      "TextCorpus.valid_path": repr(corpus_files["valid"]),
      "TextCorpus.test_path": repr(corpus_files["test"]),
      "TextCorpus.batch_size": 4, "TextCorpus.seq_len": 12, "TextCorpus.eval_batch_size": 4,
      "LanguageModel.units": 16, "LanguageModel.embedding_dim": 8,
      "Trainer.train_steps": 12, "Trainer.steps_per_loop": 2, "Trainer.eval_interval": 2,
      "Trainer.checkpoint_interval": 6, "Trainer.summary_interval": 2, "Trainer.log_interval": 6,
      "Trainer.histogram_interval": None, "Trainer.eval_steps": 5, "sample_text.length": 20,
      "Trainer.learning_rate": 0.02,
      "Trainer.weight_averaging": "@NTAveraging()", "NTAveraging.nonmono": 1,
  }
  values.update(overrides)
  return [f"{k} = {v}" for k, v in values.items()]


def run(model_dir, mode, gin_bindings):
  gin.clear_config()
  gin_files.parse(["charlm.gin"], gin_bindings)
  return experiment.run_experiment(str(model_dir), mode)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_files):
  model_dir = tmp_path_factory.mktemp("run")
  result = run(model_dir, "train", bindings(corpus_files))
  gin.clear_config()
  checkpoint = os.path.join(model_dir, "checkpoints", "ckpt-12")
  start = int(tf.train.load_variable(checkpoint, "averaging_start_step/.ATTRIBUTES/VARIABLE_VALUE"))
  assert 0 < start < 12, "the trigger did not fire before the last evaluation"
  return model_dir, result, checkpoint


def averaged_weights(checkpoint):
  names = sorted((n for n, _ in tf.train.list_variables(checkpoint)
                  if n.startswith("averaged_weights/")), key=lambda n: int(n.split("/")[1]))
  return [tf.train.load_variable(checkpoint, n) for n in names]


def raw_model(model_dir, corpus_files, checkpoint):
  """(task, trainer) without averaging, the model holding the checkpoint's raw weights."""
  gin.clear_config()
  gin_files.parse(["charlm.gin"], bindings(corpus_files, **{"Trainer.weight_averaging": None}))
  _, task, trainer = experiment.build(str(model_dir), LanguageModelTask)
  tf.train.Checkpoint(model=task.model).restore(checkpoint).expect_partial()
  return task, trainer


def test_operative_config_records_the_settings(trained):
  model_dir, _, _ = trained
  config = (model_dir / "operative_config.gin").read_text()
  assert "Trainer.weight_averaging = @NTAveraging()" in config
  assert "NTAveraging.nonmono = 1" in config


def test_eval_mode_reproduces_the_averaged_loss_of_training(trained, corpus_files):
  model_dir, result, checkpoint = trained
  evaluated = run(model_dir, "eval", bindings(corpus_files))
  assert evaluated["valid"]["loss"] == result["valid"]["loss"]
  # The raw weights, restored from the same checkpoint, give another loss.
  _, raw = raw_model(model_dir, corpus_files, checkpoint)
  assert raw.runner.evaluate("valid")["loss"] != result["valid"]["loss"]


def test_sample_mode_samples_the_averages(trained, corpus_files, monkeypatch):
  model_dir, _, checkpoint = trained
  seen = []

  def sample_text(task):
    seen.append([v.numpy() for v in task.model.trainable_variables])
    return "sampled"

  monkeypatch.setattr(experiment.sampling, "sample_text", sample_text)
  assert run(model_dir, "sample", bindings(corpus_files)) == {"step": 12, "sample": "sampled"}
  (weights,) = seen
  for w, avg in zip(weights, averaged_weights(checkpoint), strict=True):
    np.testing.assert_array_equal(w, avg)


def test_exported_weights_are_the_averages(trained, corpus_files):
  model_dir, _, checkpoint = trained
  path = run(model_dir, "export", bindings(corpus_files))["export"]
  variables = os.path.join(path, "variables", "variables")
  exported = [tf.train.load_variable(variables, n) for n, _ in tf.train.list_variables(variables)
              if n.endswith("VARIABLE_VALUE")]
  averages = averaged_weights(checkpoint)
  raw_task, _ = raw_model(model_dir, corpus_files, checkpoint)
  raw = [v.numpy() for v in raw_task.model.trainable_variables]
  assert len(averages) == 9  # Embedding, 2 x (kernel, recurrent kernel, bias), softmax (2).
  for avg in averages:
    assert any(e.shape == avg.shape and np.array_equal(e, avg) for e in exported)
  for r in raw:
    if r.ndim == 2:  # A kernel: its raw value is nowhere in the export.
      assert not any(e.shape == r.shape and np.array_equal(e, r) for e in exported)
