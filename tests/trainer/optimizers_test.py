"""Schedules give the documented learning rates; optimizers and schedules are reachable from gin."""

import math

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tbptt.trainer import optimizers
from tbptt.trainer.errors import ConfigError


def rates(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


def test_constant():
  assert rates(optimizers.Constant(0.3), [0, 10, 10**6]) == pytest.approx([0.3] * 3)


def test_epoch_decay_matches_zaremba_small():
  # lr 1, decay 0.5 after epoch 4, 10 steps per epoch: epochs 1-4 full, epoch 5 halves, epoch 6
  # quarters.
  schedule = optimizers.EpochDecay(1.0, steps_per_epoch=10, decay=0.5, decay_start_epoch=4)
  steps = [0, 9, 39, 40, 49, 50, 99]
  assert rates(schedule, steps) == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25, 0.5**6])


def test_epoch_decay_continuous_and_floor():
  schedule = optimizers.EpochDecay(2.0, steps_per_epoch=10, decay=0.5, decay_start_epoch=1,
                                   staircase=False, min_learning_rate=0.3)
  # epoch(step) = step / 10 + 1; exponent = max(0, epoch - 1) = step / 10.
  assert rates(schedule, [0, 5, 10, 30]) == pytest.approx([2.0, 2.0 * 0.5**0.5, 1.0, 0.3])


def test_warmup_cosine():
  schedule = optimizers.WarmupCosine(1.0, total_steps=110, warmup_steps=10, final_learning_rate=0.1)
  got = rates(schedule, [0, 4, 9, 10, 60, 110, 500])
  cosine_mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))
  assert got == pytest.approx([0.1, 0.5, 1.0, 1.0, cosine_mid, 0.1, 0.1])


@pytest.mark.parametrize("make", [
    lambda: optimizers.EpochDecay(1.0, steps_per_epoch=None),
    lambda: optimizers.EpochDecay(1.0, steps_per_epoch=10, decay=1.5),
    lambda: optimizers.WarmupCosine(1.0, total_steps=None),
    lambda: optimizers.WarmupCosine(1.0, total_steps=10, warmup_steps=10),
    lambda: optimizers.Constant(-1.0),
])
def test_bad_schedule_arguments_raise_config_error(make):
  with pytest.raises(ConfigError):
    make()


def test_gin_builds_the_bound_optimizer_and_schedule():
  gin.parse_config("""
      optimizers.SGD.momentum = 0.9
      schedules.EpochDecay.decay = 0.25
      schedules.EpochDecay.decay_start_epoch = 1
  """)
  factory = gin.get_configurable("optimizers.SGD")
  schedule = gin.get_configurable("schedules.EpochDecay")
  optimizer = optimizers.build_optimizer(factory, 0.8, schedule, steps_per_epoch=5, total_steps=100)
  assert isinstance(optimizer, keras.optimizers.SGD)
  assert optimizer.momentum == 0.9
  assert rates(optimizer._learning_rate, [0, 4, 5, 10]) == pytest.approx([0.8, 0.8, 0.2, 0.05])


@pytest.mark.parametrize(
    "name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adafactor", "Lion", "Nadam"])
def test_every_registered_optimizer_builds(name):
  optimizer = optimizers.build_optimizer(gin.get_configurable(f"optimizers.{name}"), 0.01)
  assert isinstance(optimizer, keras.optimizers.Optimizer)
  assert float(optimizer.learning_rate) == pytest.approx(0.01)


def test_clipping_on_the_optimizer_is_refused():
  gin.parse_config("optimizers.Adam.clipnorm = 1.0")
  with pytest.raises(ConfigError, match="Trainer.clip_norm"):
    optimizers.build_optimizer(gin.get_configurable("optimizers.Adam"), 0.01)


def test_loss_scaling_wraps_in_loss_scale_optimizer():
  optimizer = optimizers.build_optimizer(optimizers.SGD, 0.1, loss_scaling=True)
  assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  assert isinstance(optimizer.inner_optimizer, keras.optimizers.SGD)


@pytest.mark.parametrize("learning_rate", [0, -0.1, float("nan"), "0.1", True])
def test_bad_learning_rate_names_the_gin_parameter(learning_rate):
  with pytest.raises(ConfigError, match="Trainer.learning_rate"):
    optimizers.build_optimizer(optimizers.SGD, learning_rate)


@pytest.mark.parametrize("schedule", [None, optimizers.EpochDecay])
def test_factor_variable_scales_the_rate_or_schedule_it_is_given(schedule):
  factor = tf.Variable(1.0)
  kwargs = dict(decay=0.5, decay_start_epoch=1) if schedule else {}
  factory = (lambda lr, **kw: schedule(lr, **kw, **kwargs)) if schedule else None
  optimizer = optimizers.build_optimizer(optimizers.SGD, 2.0, factory, steps_per_epoch=10,
                                         factor=factor)
  optimizer.build([tf.Variable(1.0)])
  optimizer.iterations.assign(10)  # Epoch 2: EpochDecay halves the rate.
  base = 1.0 if schedule else 2.0
  assert float(optimizer.learning_rate) == pytest.approx(base)
  factor.assign(0.25)
  assert float(optimizer.learning_rate) == pytest.approx(base * 0.25)
