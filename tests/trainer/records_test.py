"""The operative config, HParams and profile actions: alone, and through a Trainer."""

import glob
import os

import gin
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import metadata as hparams_metadata

from events import read_tags
from toy_task import DelayTask
from tbptt.trainer import Trainer
from tbptt.trainer.records import HParams, OperativeConfig, Profiler, bound_values
from tbptt.trainer.summaries import OPERATIVE_CONFIG, Summaries


def text_steps(directory, tag):
  """Steps at which `tag` was written in the event files of `directory`."""
  steps = []
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      steps += [event.step for v in event.summary.value if v.tag == tag]
  return steps


def session_hparams(directory):
  """The hparams of the HParams session start info written to `directory` ({} if none)."""
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == hparams_metadata.SESSION_START_INFO_TAG:
          info = hparams_metadata.parse_session_start_info_plugin_data(
              value.metadata.plugin_data.content)
          return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                  for k, v in info.hparams.items()}
  return {}


def test_operative_config_is_written_once_at_the_step_the_run_started_from(tmp_path):
  gin.parse_config("Trainer.train_steps = 90")
  summaries = Summaries(str(tmp_path))
  action = OperativeConfig(str(tmp_path), summaries)
  action.on_start(50, 90)
  assert not os.path.exists(tmp_path / OPERATIVE_CONFIG)  # Not before the first compiled call.
  action.on_train(60, None, {})
  action.on_train(70, None, {})
  action.on_end(90)
  summaries.flush()
  assert text_steps(str(tmp_path / "train"), "operative_config") == [50]
  assert os.path.exists(tmp_path / OPERATIVE_CONFIG)


def test_operative_config_of_an_evaluation_is_written_at_its_end(tmp_path):
  summaries = Summaries(str(tmp_path))
  action = OperativeConfig(str(tmp_path), summaries)
  action.on_end(25)
  summaries.flush()
  assert text_steps(str(tmp_path / "train"), "operative_config") == [25]


def test_operative_config_only_on_the_chief(tmp_path):
  action = OperativeConfig(str(tmp_path), Summaries(str(tmp_path), enabled=False), enabled=False)
  action.on_end(3)
  assert not os.path.exists(tmp_path / OPERATIVE_CONFIG)


def test_bound_values_reads_every_binding_as_an_hparams_value():
  config = """import tbptt.experiments.language_model

# Parameters for Trainer:
# ==============================================================================
Trainer.clip_norm = 1.0
Trainer.eval_interval = None
Trainer.optimizer = @optimizers.Adam
Trainer.profile_steps = (3, 5)
Trainer.train_steps = 25
distribution.strategy = 'default'
train/Trainer.deterministic = True
LanguageModel.dropout = \\
    0.25
"""
  assert bound_values(config) == {
      "Trainer.clip_norm": 1.0, "Trainer.eval_interval": "None",
      "Trainer.optimizer": "@optimizers.Adam", "Trainer.profile_steps": "(3, 5)",
      "Trainer.train_steps": 25, "distribution.strategy": "default",
      "train/Trainer.deterministic": True, "LanguageModel.dropout": 0.25}


def test_hparams_session_holds_the_bound_values(tmp_path):
  gin.parse_config("Trainer.clip_norm = 2.0\nTrainer.train_steps = 7")
  gin.get_configurable("Trainer")()  # Makes the bindings operative.
  summaries = Summaries(str(tmp_path))
  action = HParams(summaries)
  action.on_start(0, 7)
  action.on_train(4, None, {})
  summaries.flush()
  values = session_hparams(str(tmp_path))
  assert values["Trainer.clip_norm"] == 2.0 and values["Trainer.train_steps"] == 7.0


def test_profiler_asks_for_loop_ends_at_start_and_stop():
  action = Profiler("/unused", 3, 5, enabled=False)
  assert [action.next_boundary(s) for s in (0, 2, 3, 4, 5, 9)] == [3, 3, 5, 5, None, None]


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("profiled")
  gin.clear_config()
  gin.parse_config("Trainer.clip_norm = 1.0\nTrainer.train_steps = 6")
  trainer = Trainer(task=DelayTask(units=8), model_dir=str(model_dir), steps_per_loop=4,
                    eval_interval=None, histogram_interval=None, profile_steps=(2, 4),
                    log_interval=10**6)
  loops = []
  train = trainer.runner.train
  trainer.runner.train = lambda n: loops.append(n) or train(n)
  trainer.train()
  gin.clear_config()
  return model_dir, loops


def test_profile_steps_write_a_tensorboard_profile(profiled_run):
  model_dir, loops = profiled_run
  assert loops == [2, 2, 2]  # Loops end where the profile starts and stops.
  assert glob.glob(str(model_dir / "train" / "plugins" / "profile" / "*" / "*.xplane.pb"))


def test_a_trainer_run_is_an_hparams_session_with_eval_metrics(profiled_run):
  model_dir, _ = profiled_run
  values = session_hparams(str(model_dir))
  assert values["Trainer.clip_norm"] == 1.0 and values["Trainer.train_steps"] == 6.0
  # The session's metrics are its runs' scalars: the final eval's, in model_dir/eval.
  assert {"loss", "perplexity", "accuracy"} <= read_tags(str(model_dir / "eval"))


def test_a_resumed_run_logs_its_operative_config_at_the_step_it_resumed_from(profiled_run):
  model_dir, _ = profiled_run
  trainer = Trainer(task=DelayTask(units=8), model_dir=str(model_dir), train_steps=9,
                    steps_per_loop=4, eval_interval=None, histogram_interval=None,
                    log_interval=10**6)
  trainer.train()
  assert sorted(text_steps(str(model_dir / "train"), "operative_config")) == [0, 6]
