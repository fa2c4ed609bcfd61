"""Optimizers and learning-rate schedules, registered with gin.

Optimizers are Keras's, registered under the gin module `optimizers`:
`Trainer.optimizer = @optimizers.SGD`, `optimizers.SGD.momentum = 0.9`. The Trainer calls the
factory as `factory(learning_rate=...)`; leave clipping to `Trainer.clip_norm` (it clips the global
gradient once, across replicas).

Schedules live under the gin module `schedules` (`Trainer.lr_schedule = @schedules.EpochDecay`,
`schedules.EpochDecay.decay = 0.5`). The Trainer calls the factory as
`factory(learning_rate, steps_per_epoch=task.steps_per_epoch, total_steps=Trainer.train_steps)`; the
schedule is evaluated at the optimizer's update count (skipped non-finite steps do not advance it).
"""

import math

import gin
import keras
import tensorflow as tf

from tbptt.trainer.errors import ConfigError, invalid

SGD = gin.external_configurable(keras.optimizers.SGD, module="optimizers")
Adam = gin.external_configurable(keras.optimizers.Adam, module="optimizers")
AdamW = gin.external_configurable(keras.optimizers.AdamW, module="optimizers")
RMSprop = gin.external_configurable(keras.optimizers.RMSprop, module="optimizers")
Adagrad = gin.external_configurable(keras.optimizers.Adagrad, module="optimizers")
Adafactor = gin.external_configurable(keras.optimizers.Adafactor, module="optimizers")
Lion = gin.external_configurable(keras.optimizers.Lion, module="optimizers")
Nadam = gin.external_configurable(keras.optimizers.Nadam, module="optimizers")


@keras.saving.register_keras_serializable(package="tbptt")
@gin.register(module="schedules")
class Constant(keras.optimizers.schedules.LearningRateSchedule):
  """lr(step) = learning_rate."""

  def __init__(self, learning_rate: float, steps_per_epoch: int | None = None,
               total_steps: int | None = None):
    del steps_per_epoch, total_steps  # Part of the factory protocol; unused.
    self.learning_rate = _positive(learning_rate, "Trainer.learning_rate")

  def __call__(self, step):
    del step
    return tf.constant(self.learning_rate, tf.float32)

  def get_config(self):
    return {"learning_rate": self.learning_rate}


@keras.saving.register_keras_serializable(package="tbptt")
@gin.register(module="schedules")
class EpochDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Per-epoch exponential decay after some epochs at the full rate (Zaremba et al. 2014, PTB).

  Epochs count from 1: epoch(step) = step // steps_per_epoch + 1 (or the unfloored fraction when
  `staircase=False`), and

      lr(step) = max(min_learning_rate,
                     learning_rate * decay ** max(0, epoch(step) - decay_start_epoch))

  so epochs 1..decay_start_epoch run at `learning_rate` and every later epoch multiplies it by
  `decay`. Zaremba's "small" PTB recipe (lr 1, lr_decay 0.5, max_epoch 4) is learning_rate=1,
  decay=0.5, decay_start_epoch=4; "medium" is decay=0.8, decay_start_epoch=6; "large" decay=1/1.15,
  decay_start_epoch=14.

  Args:
    learning_rate: The initial rate.
    steps_per_epoch: Training steps in one epoch (the task's `steps_per_epoch`).
    total_steps: Unused (factory protocol).
    decay: Multiplier per epoch once decaying, in (0, 1].
    decay_start_epoch: The last epoch at the full rate (>= 0).
    staircase: Decay once per epoch (True) or continuously (False).
    min_learning_rate: Floor.
  """

  def __init__(self, learning_rate: float, steps_per_epoch: int | None = None,
               total_steps: int | None = None, *, decay: float = 0.5, decay_start_epoch: int = 4,
               staircase: bool = True, min_learning_rate: float = 0.0):
    del total_steps
    self.learning_rate = _positive(learning_rate, "Trainer.learning_rate")
    if steps_per_epoch is None or int(steps_per_epoch) <= 0:
      raise ConfigError(f"schedules.EpochDecay needs a positive steps_per_epoch, got "
                        f"{steps_per_epoch!r}; the task must report steps_per_epoch")
    self.steps_per_epoch = int(steps_per_epoch)
    if not 0.0 < float(decay) <= 1.0:
      raise ConfigError(f"schedules.EpochDecay.decay must be in (0, 1], got {decay!r}")
    if int(decay_start_epoch) < 0:
      raise ConfigError("schedules.EpochDecay.decay_start_epoch must be >= 0, got "
                        f"{decay_start_epoch!r}")
    self.decay = float(decay)
    self.decay_start_epoch = int(decay_start_epoch)
    self.staircase = bool(staircase)
    self.min_learning_rate = float(min_learning_rate)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    epoch = step / self.steps_per_epoch
    if self.staircase:
      epoch = tf.floor(epoch)
    exponent = tf.maximum(0.0, epoch + 1.0 - self.decay_start_epoch)
    lr = self.learning_rate * tf.pow(self.decay, exponent)
    return tf.maximum(lr, self.min_learning_rate)

  def get_config(self):
    return {"learning_rate": self.learning_rate, "steps_per_epoch": self.steps_per_epoch,
            "decay": self.decay, "decay_start_epoch": self.decay_start_epoch,
            "staircase": self.staircase, "min_learning_rate": self.min_learning_rate}


@keras.saving.register_keras_serializable(package="tbptt")
@gin.register(module="schedules")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup, then cosine decay to `final_learning_rate` at `total_steps`.

      step < warmup_steps:  lr = learning_rate * (step + 1) / warmup_steps
      otherwise:            lr = final + (learning_rate - final) * (1 + cos(pi * p)) / 2,
                            p = min(1, (step - warmup_steps) / (total_steps - warmup_steps))

  Args:
    learning_rate: Peak rate (reached at the end of warmup).
    steps_per_epoch: Unused (factory protocol).
    total_steps: Steps of the whole schedule (the Trainer passes `Trainer.train_steps`).
    warmup_steps: Steps of linear warmup (0: none); must be < total_steps.
    final_learning_rate: Rate at and after `total_steps`.
  """

  def __init__(self, learning_rate: float, steps_per_epoch: int | None = None,
               total_steps: int | None = None, *, warmup_steps: int = 0,
               final_learning_rate: float = 0.0):
    del steps_per_epoch
    self.learning_rate = _positive(learning_rate, "Trainer.learning_rate")
    if total_steps is None or int(total_steps) <= 0:
      raise ConfigError(f"schedules.WarmupCosine needs a positive total_steps, got {total_steps!r}")
    if not 0 <= int(warmup_steps) < int(total_steps):
      raise ConfigError("schedules.WarmupCosine.warmup_steps must be in "
                        f"[0, total_steps={total_steps}), got {warmup_steps!r}")
    self.total_steps = int(total_steps)
    self.warmup_steps = int(warmup_steps)
    self.final_learning_rate = float(final_learning_rate)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warm = self.learning_rate * (step + 1.0) / max(self.warmup_steps, 1)
    progress = tf.minimum(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
    cosine = self.final_learning_rate + (self.learning_rate - self.final_learning_rate) * 0.5 * (
        1.0 + tf.cos(math.pi * progress))
    return tf.where(step < self.warmup_steps, warm, cosine)

  def get_config(self):
    return {"learning_rate": self.learning_rate, "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps, "final_learning_rate": self.final_learning_rate}


class Scaled(keras.optimizers.schedules.LearningRateSchedule):
  """lr(step) = schedule(step) * factor [* step_factor]; both factors are variables.

  `factor` is the Trainer's (its rollbacks lower it; checkpointed); `step_factor` is set before
  every step from the input source's `learning_rate_scale` (chunks of varying length). Not
  serialisable on its own.
  """

  def __init__(self, schedule, factor: tf.Variable, step_factor: tf.Variable | None = None):
    self.schedule = schedule
    self.factor = factor
    self.step_factor = step_factor

  def __call__(self, step):
    rate = self.schedule(step) if callable(self.schedule) else self.schedule
    rate = tf.cast(rate, tf.float32) * tf.cast(self.factor, tf.float32)
    if self.step_factor is not None:
      rate *= tf.cast(self.step_factor, tf.float32)
    return rate

  def get_config(self):
    raise NotImplementedError("Scaled holds a variable; rebuild it with build_optimizer")


def _positive(value, parameter):
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  if not number or not value > 0 or not math.isfinite(value):
    raise invalid(parameter, "a positive number", value)
  return float(value)


def build_optimizer(factory, learning_rate: float, lr_schedule=None, *, steps_per_epoch=None,
                    total_steps=None, loss_scaling: bool = False,
                    factor: tf.Variable | None = None,
                    step_factor: tf.Variable | None = None) -> keras.optimizers.Optimizer:
  """Builds the optimizer the Trainer applies its clipped global gradient with.

  Args:
    factory: `factory(learning_rate=...) -> keras.optimizers.Optimizer` (e.g. `optimizers.SGD`).
    learning_rate: Base learning rate (`Trainer.learning_rate`).
    lr_schedule: Optional schedule factory (see the module docstring); None: constant rate.
    steps_per_epoch: Passed to the schedule factory.
    total_steps: Passed to the schedule factory.
    loss_scaling: Wrap in `keras.optimizers.LossScaleOptimizer` (float16 compute).
    factor: Optional float32 scalar variable the rate (or schedule) is multiplied by (`Scaled`).
    step_factor: Optional second such variable (set per step; needs `factor`).

  Returns:
    The (unbuilt) optimizer.

  Raises:
    ConfigError: Bad learning rate, schedule or factory, or clipping configured on the optimizer.
  """
  learning_rate = _positive(learning_rate, "Trainer.learning_rate")
  rate = learning_rate
  if lr_schedule is not None:
    if not callable(lr_schedule):
      raise invalid("Trainer.lr_schedule", "a schedule factory such as @schedules.EpochDecay",
                    lr_schedule)
    rate = lr_schedule(learning_rate, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    if not isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
      raise invalid("Trainer.lr_schedule", "a factory of a keras LearningRateSchedule", rate)
  if factor is not None:
    rate = Scaled(rate, factor, step_factor)
  if not callable(factory):
    raise invalid("Trainer.optimizer", "an optimizer factory such as @optimizers.Adam", factory)
  optimizer = factory(learning_rate=rate)
  if not isinstance(optimizer, keras.optimizers.Optimizer):
    raise invalid("Trainer.optimizer", "a factory of a keras.optimizers.Optimizer", optimizer)
  for knob in ("clipnorm", "global_clipnorm", "clipvalue"):
    if getattr(optimizer, knob, None) is not None:
      raise ConfigError(f"The optimizer has {knob}={getattr(optimizer, knob)}; clip with "
                        "Trainer.clip_norm instead (it clips the global gradient once, after the "
                        "cross-replica sum)", parameter="Trainer.clip_norm")
  if loss_scaling:
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer
