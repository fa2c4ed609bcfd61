"""The trainer's config and runtime: gin fills them, validation names the parameter and values."""

import dataclasses

import gin
import keras
import numpy as np
import pytest

from toy_task import DelayTask
from tbptt.trainer import Runtime, Trainer, TrainerConfig, runtime
from tbptt.trainer.errors import ConfigError


def test_gin_bindings_of_trainer_fill_the_config():
  gin.parse_config("Trainer.train_steps = 25\nTrainer.clip_norm = 1.5\nTrainer.seed = 7\n"
                   "Trainer.profile_steps = [2, 4]")
  config = TrainerConfig()
  assert (config.train_steps, config.clip_norm, config.seed) == (25, 1.5, 7)
  assert config.profile_steps == (2, 4)
  assert config.runtime == Runtime(seed=7, deterministic=False, mixed_precision=None)


def test_the_config_is_frozen_and_replace_validates_again():
  config = TrainerConfig()
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.train_steps = 5
  with pytest.raises(ConfigError) as raised:
    dataclasses.replace(config, steps_per_loop=0)
  assert raised.value.parameter == "Trainer.steps_per_loop"
  first = str(raised.value).splitlines()[0]
  assert first == "Trainer.steps_per_loop must be a positive integer, got 0"


@pytest.mark.parametrize("field, value, message", [
    ("seed", -1, "Trainer.seed must be an integer in [0, 2**32), got -1"),
    ("deterministic", 1, "Trainer.deterministic must be True or False, got 1"),
    ("mixed_precision", "float8",
     "Trainer.mixed_precision must be None, 'mixed_float16' or 'mixed_bfloat16', got 'float8'"),
    ("rollback_lr_factor", 2, "Trainer.rollback_lr_factor must be a number in (0, 1], got 2"),
    ("profile_steps", (4, 2),
     "Trainer.profile_steps must be None or (start, stop) with 0 <= start < stop, got (4, 2)"),
    ("eval_interval", True, "Trainer.eval_interval must be a positive integer or None, got True"),
])
def test_each_invalid_value_names_parameter_expectation_and_value(field, value, message):
  with pytest.raises(ConfigError) as raised:
    TrainerConfig(**{field: value})
  assert str(raised.value).splitlines()[0] == message
  assert raised.value.parameter == f"Trainer.{field}"


def test_the_runtime_seeds_and_sets_the_precision_policy():
  try:
    Runtime(seed=7, mixed_precision="mixed_bfloat16").apply()
    assert runtime.seeded_with() == 7
    assert keras.config.dtype_policy().name == "mixed_bfloat16"
    drawn = keras.random.uniform([3], seed=None).numpy()
    keras.utils.set_random_seed(7)
    np.testing.assert_array_equal(drawn, keras.random.uniform([3], seed=None).numpy())
  finally:
    keras.config.set_dtype_policy("float32")


def test_the_trainer_takes_its_config_and_overrides(tmp_path):
  config = TrainerConfig(train_steps=9, histogram_interval=None)
  trainer = Trainer(task=DelayTask(units=8), model_dir=str(tmp_path), config=config,
                    steps_per_loop=3)
  assert trainer.config == dataclasses.replace(config, steps_per_loop=3)


def test_nothing_in_the_trainer_reads_gin_parameters():
  import pathlib
  import tbptt.trainer
  root = pathlib.Path(tbptt.trainer.__file__).parent
  sources = {p.name: p.read_text() for p in root.rglob("*.py")}
  assert not [name for name, text in sources.items() if "gin.query_parameter" in text]
  assert not [name for name, text in sources.items() if "--gin_bindings" in text]
