"""Every config in configs/ parses and builds its experiment; bindings reach the objects they
name."""

import glob
import os

import gin
import keras
import numpy as np
import pytest

from tbptt.experiments import experiment, gin_files
from tbptt.experiments.forecasting import ForecastTask
from tbptt.experiments.language_model import LanguageModelTask
from tbptt.trainer import optimizers
from tbptt.trainer.errors import ConfigError

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS_DIR, "*.gin")))
WORDS = "the cat sat on the mat\nthe dog ate the cat\n" * 100

# Small sizes so that every config builds in a moment; everything else comes from the file.
TINY_LM = ["LanguageModel.units = 8", "LanguageModel.embedding_dim = 8",
           "TextCorpus.stdlib_bytes = 150000"]
TINY_FORECAST = ["Seq2SeqForecaster.units = 4"]


@pytest.fixture(scope="module")
def ptb_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("ptb")
  for split in ("train", "valid", "test"):
    (root / f"ptb.{split}.txt").write_text(WORDS)
  return [f"TextCorpus.{split}_path = '{root / f'ptb.{split}.txt'}'"
          for split in ("train", "valid", "test")]


def build(config, bindings, model_dir):
  gin_files.parse([config], bindings)
  task_fn = gin.query_parameter("run_experiment.task_fn").scoped_configurable_fn
  return experiment.build(str(model_dir), task_fn)


def test_the_packaged_configs_are_all_here():
  expected = {"base.gin", "charlm.gin", "ptb_small.gin", "ptb_medium.gin", "ptb_large.gin",
              "awd_lstm_ptb.gin"}
  assert expected <= set(CONFIGS)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c != "base.gin"])
def test_config_builds_its_experiment(config, ptb_files, tmp_path):
  gin_files.parse([config], [])
  task_fn = gin.query_parameter("run_experiment.task_fn").scoped_configurable_fn
  gin.clear_config()
  if task_fn is LanguageModelTask:
    bindings = TINY_LM + (ptb_files if "ptb" in config else [])
    if config == "awd_lstm_ptb.gin":
      bindings += ["TextCorpus.batch_size = 4"]  # 40 rows of 85 tokens need more than the text
  else:
    bindings = TINY_FORECAST
  _, task, trainer = build(config, bindings, tmp_path)
  assert isinstance(task, (LanguageModelTask, ForecastTask))
  batch = task.train_batch(0, 0, task.global_batch_size)
  predictions, _ = task.model(batch["inputs"], task.initial_state(task.global_batch_size))
  loss = task.loss(batch, predictions)
  assert loss.shape == batch["weights"].shape
  assert trainer.config.train_steps > 0 and task.steps_per_epoch > 0
  assert os.listdir(tmp_path) == []  # Building writes nothing.


def test_base_config_needs_a_task(tmp_path):
  gin_files.parse(["base.gin"], [])
  with pytest.raises(ConfigError, match="run_experiment.task_fn is not set"):
    experiment.run_experiment(str(tmp_path), "train")


@pytest.mark.parametrize("config, units, seq_len, dropout, init_scale, clip, decay, start", [
    ("ptb_small.gin", 200, 20, 0.0, 0.1, 5.0, 0.5, 4),
    ("ptb_medium.gin", 650, 35, 0.5, 0.05, 5.0, 0.8, 6),
    ("ptb_large.gin", 1500, 35, 0.65, 0.04, 10.0, 1 / 1.15, 14),
])
def test_ptb_configs_follow_zaremba(config, units, seq_len, dropout, init_scale, clip, decay, start,
                                    ptb_files, tmp_path):
  # Built at full size except the vocabulary (the tiny text's): the objects carry the paper's
  # settings.
  _, task, trainer = build(config, ptb_files, tmp_path)
  model = task.model
  assert model.rnn.units == [units, units] and model.embedding_dim == units
  assert task.corpus.level == "word" and task.corpus.batch_size == 20
  assert task.corpus.seq_len == seq_len
  assert model.input_dropout.rate == dropout and model.rnn.dropout_between == dropout
  cells = [layer.cell for layer in model.rnn.layers_]
  assert all(not c.unit_forget_bias for c in cells)
  kernel = cells[0].kernel.numpy()
  assert abs(kernel).max() <= init_scale and abs(kernel).max() > 0.9 * init_scale
  assert isinstance(trainer.runner.optimizer, keras.optimizers.SGD)
  # Keras exposes only the current rate publicly; the Trainer scales the schedule by its
  # rollback factor (optimizers.Scaled).
  schedule = trainer.runner.optimizer._learning_rate.schedule
  assert isinstance(schedule, optimizers.EpochDecay)
  assert schedule.learning_rate == 1.0 and schedule.decay == pytest.approx(decay)
  assert schedule.decay_start_epoch == start
  assert gin.query_parameter("Trainer.clip_norm") == clip


def test_override_binding_reaches_its_object(tmp_path):
  overrides = ["TextCorpus.seq_len = 7", "TextCorpus.batch_size = 6", "LanguageModel.num_proj = 4",
               "Trainer.learning_rate = 0.0123"]
  _, task, trainer = build("charlm.gin", TINY_LM + overrides, tmp_path)
  assert task.train_batch(0, 0, 6)["inputs"].shape == (6, 7)
  assert all(layer.cell.num_proj == 4 for layer in task.model.rnn.layers_)
  assert float(trainer.runner.optimizer.learning_rate) == pytest.approx(0.0123)


def test_awd_config_has_the_papers_recipe_and_trains_a_few_steps(ptb_files, tmp_path):
  gin_files.parse(["awd_lstm_ptb.gin"], [])
  assert gin.query_parameter("LanguageModel.units") == [1150, 1150, 400]
  assert gin.query_parameter("LanguageModel.embedding_dim") == 400
  assert gin.query_parameter("LanguageModel.weight_drop") == 0.5
  assert gin.query_parameter("TextCorpus.seq_len") == 70
  assert gin.query_parameter("Trainer.learning_rate") == 30.0
  assert gin.query_parameter("NTAveraging.nonmono") == 5
  gin.clear_config()
  small = TINY_LM + ptb_files + [
      "TextCorpus.batch_size = 4", "TextCorpus.seq_len = 8", "TextCorpus.max_seq_len = 12",
      "TextCorpus.eval_batch_size = 2", "Trainer.train_steps = 4", "Trainer.eval_interval = 2",
      "Trainer.checkpoint_interval = 2", "Trainer.eval_steps = 3", "Trainer.steps_per_loop = 2",
      "Trainer.histogram_interval = None", "sample_text.length = 5"]
  gin_files.parse(["awd_lstm_ptb.gin"], small)
  result = experiment.run_experiment(str(tmp_path), "train")
  gin.clear_config()
  assert result["step"] == 4
  assert np.isfinite(result["train"]["loss"]) and np.isfinite(result["valid"]["loss"])
  assert {"ar", "tar"} <= set(result["train"])
