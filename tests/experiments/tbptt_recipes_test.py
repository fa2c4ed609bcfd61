"""End to end: the TBPTT recipes (varying chunk lengths, burn-in, the AWD-LSTM regularisers)
train through the launcher's path, log what they should, and resume bitwise."""

import numpy as np
import pytest
import tensorflow as tf

from experiment_test import run, tiny_bindings
from events import read_scalars, read_tags
from tbptt.experiments.data.chunk_schedule import draw_lengths

RECIPES = {
    "TextCorpus.variable_seq_len": True, "TextCorpus.seq_len_std": 3.0,
    "TextCorpus.full_seq_len_probability": 0.8, "TextCorpus.min_seq_len": 2,
    "TextCorpus.max_seq_len": 16, "TextCorpus.seq_len_seed": 7, "TextCorpus.burn_in": 5,
    "LanguageModel.dropout_input": 0.2, "LanguageModel.dropout_between": 0.1,
    "LanguageModel.dropout_output": 0.2, "LanguageModel.locked_dropout": True,
    "LanguageModel.embedding_dropout": 0.1, "LanguageModel.weight_drop": 0.3,
    "LanguageModel.activation_regularization": 2.0,
    "LanguageModel.temporal_activation_regularization": 1.0, "LanguageModel.num_layers": 2,
    "Trainer.optimizer": "@optimizers.SGD", "Trainer.learning_rate": 0.5,
    "Trainer.summary_interval": 1, "Trainer.log_interval": 2, "Trainer.steps_per_loop": 2,
    "Trainer.checkpoint_interval": 4, "Trainer.eval_interval": 2,
    "Trainer.weight_averaging": "@NTAveraging()", "NTAveraging.nonmono": 1,
}


STEPS = 12


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
  """Training text alternates a and b; validation text doubles each letter: once the model knows
  that b follows a, its validation loss rises and NT-ASGD's trigger fires (at step 8)."""
  root = tmp_path_factory.mktemp("corpus")
  texts = {"train": "ab" * 2000, "valid": "aabb" * 250, "test": "aabb" * 250}
  for split, text in texts.items():
    (root / f"{split}.txt").write_text(text)
  return {split: str(root / f"{split}.txt") for split in texts}


def _checkpoint_values(model_dir):
  path = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
  return {name: tf.train.load_variable(path, name) for name, _ in tf.train.list_variables(path)
          if "save_counter" not in name and name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus_files):
  model_dir = tmp_path_factory.mktemp("uninterrupted")
  run(model_dir, "train", tiny_bindings(corpus_files, **RECIPES, **{"Trainer.train_steps": STEPS}))
  return model_dir


def test_recipes_resume_bitwise(uninterrupted, corpus_files, tmp_path):
  """Varying lengths, burn-in, every regulariser and NT-ASGD (its history restored at step 6,
  its trigger at step 8, four iterates averaged after it)."""
  model_dir = tmp_path / "resumed"
  for steps in (STEPS // 2, STEPS):
    run(model_dir, "train", tiny_bindings(corpus_files, **RECIPES,
                                          **{"Trainer.train_steps": steps}))
  iterates = read_scalars(str(uninterrupted / "train"), "averaging/iterates")
  assert iterates[STEPS] == 4 and iterates[STEPS // 2] == 0
  for tag in ("loss", "grad_norm", "learning_rate", "ar", "tar", "averaging/iterates"):
    expected = read_scalars(str(uninterrupted / "train"), tag)
    assert len(expected) == STEPS, tag
    assert read_scalars(str(model_dir / "train"), tag) == expected, tag
  assert (read_scalars(str(model_dir / "eval"), "loss")
          == read_scalars(str(uninterrupted / "eval"), "loss"))
  expected = _checkpoint_values(uninterrupted)
  resumed = _checkpoint_values(model_dir)
  assert resumed.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_ar_and_tar_are_logged_and_the_rate_follows_the_chunk_length(uninterrupted):
  tags = read_tags(str(uninterrupted / "train"))
  assert {"ar", "tar", "loss", "learning_rate"} <= tags
  ar = read_scalars(str(uninterrupted / "train"), "ar")
  assert all(v > 0 for v in ar.values())
  rates = read_scalars(str(uninterrupted / "train"), "learning_rate")
  lengths = draw_lengths(STEPS, 12, std=3.0, full_probability=0.8, min_length=2, max_length=16,
                         seed=7)
  # The summary of step k + 1 holds the rate step k was taken with: 0.5 x l_k / seq_len (12).
  for k, length in enumerate(lengths):
    assert rates[k + 1] == pytest.approx(0.5 * length / 12, rel=1e-6)
  assert len(set(lengths)) > 2


@pytest.mark.slow
def test_recipes_train_on_two_replicas(corpus_files, tmp_path):
  bindings = tiny_bindings(corpus_files, **RECIPES, **{"distribution.strategy": "'mirrored'",
                                                       "Trainer.train_steps": 4})
  result = run(tmp_path, "train", bindings)
  assert result["step"] == 4 and np.isfinite(result["train"]["loss"])
  assert result["train"]["ar"] > 0 and np.isfinite(result["valid"]["bits_per_char"])
