"""The trainer's knobs: one frozen value, configured by gin under the name `Trainer`, checked once.

  Trainer.train_steps = 2000          # gin: every knob below is `Trainer.<field>`
  config = TrainerConfig()            # gin fills in the bound values; __post_init__ validates
  config = dataclasses.replace(config, train_steps=10)   # validated again
"""

import dataclasses
import math
from typing import Any, Callable

import gin

from tbptt.trainer import optimizers
from tbptt.trainer.averaging import NTAveraging
from tbptt.trainer.errors import invalid
from tbptt.trainer.runtime import Runtime

INT64_MAX = 2**63 - 1  # Step counts and counters live in int64 variables.
NONFINITE_POLICIES = ("stop", "rollback")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


@gin.configurable("Trainer")
@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """Everything the Trainer can be told, validated in `__post_init__`.

  Attributes:
    train_steps: Final global step (steps).
    steps_per_loop: Steps per compiled loop call (steps).
    clip_norm: Clip the global gradient (all replicas, all variables) to this norm; None: off.
    summary_interval: Train scalars at multiples of this (steps).
    checkpoint_interval: Checkpoint at multiples of this (steps), at the end and on SIGINT/SIGTERM.
    eval_interval: Evaluate the 'valid' split at multiples of this (steps); None: only at the end.
    max_checkpoints: Newest checkpoints kept.
    seed, deterministic, mixed_precision: The process set-up (see `runtime.Runtime`), applied by
      the experiment before the model is built; the Trainer checks the model against them.
    max_nonfinite_steps: Non-finite steps in a row (each skipped) that end training ('stop') or
      trigger a rollback ('rollback').
    nonfinite_policy: 'stop' (TrainingError) or 'rollback': restore the newest checkpoint saved
      with no skipped step pending and go on with the learning rate times `rollback_lr_factor`.
    rollback_lr_factor: Learning-rate multiplier applied at each rollback, in (0, 1].
    max_rollbacks: Rollbacks over the run's whole life (resumes included) before the next streak
      ends training with TrainingError.
    optimizer: Optimizer factory, `optimizer(learning_rate=...)`, e.g. `@optimizers.Adam`.
    learning_rate: Base learning rate.
    lr_schedule: Schedule factory (e.g. `@schedules.EpochDecay`); None: constant.
    weight_averaging: `@NTAveraging()`: NT-ASGD's weight averaging (see `averaging`); None: off.
    jit_compile: Compile each replica's forward and backward pass with XLA.
    eval_steps: Cap on eval chunks per split (None: all).
    histogram_interval: Weight and gradient histograms at the first loop end past each multiple
      (steps; None: off).
    log_interval: A progress line at every multiple of this (steps).
    profile_steps: (start, stop): a TensorBoard profile of global steps [start, stop) in
      model_dir/train (the PROFILE tab); None: no profile.
  """

  train_steps: int = 1000
  steps_per_loop: int = 100
  clip_norm: float | None = None
  summary_interval: int = 100
  checkpoint_interval: int = 1000
  eval_interval: int | None = None
  max_checkpoints: int = 3
  seed: int = 0
  deterministic: bool = False
  mixed_precision: str | None = None
  max_nonfinite_steps: int = 10
  nonfinite_policy: str = "stop"
  rollback_lr_factor: float = 0.5
  max_rollbacks: int = 3
  optimizer: Callable[..., Any] = optimizers.Adam
  learning_rate: float = 1e-3
  lr_schedule: Callable[..., Any] | None = None
  weight_averaging: NTAveraging | None = None
  jit_compile: bool = False
  eval_steps: int | None = None
  histogram_interval: int | None = 1000
  log_interval: int = 100
  profile_steps: tuple[int, int] | None = None

  def __post_init__(self):
    for name in ("train_steps", "steps_per_loop", "summary_interval", "checkpoint_interval",
                 "max_checkpoints", "max_nonfinite_steps", "log_interval"):
      self._check_positive_int(name, allow_none=False)
    for name in ("eval_interval", "eval_steps", "histogram_interval"):
      self._check_positive_int(name, allow_none=True)
    clip = self.clip_norm
    if clip is not None and not (_is_number(clip) and math.isfinite(clip) and clip > 0):
      raise invalid("Trainer.clip_norm", "a positive number or None", clip)
    rate = self.learning_rate
    if not (_is_number(rate) and math.isfinite(rate) and rate > 0):
      raise invalid("Trainer.learning_rate", "a positive number", rate)
    if self.nonfinite_policy not in NONFINITE_POLICIES:
      raise invalid("Trainer.nonfinite_policy", "'stop' or 'rollback'", self.nonfinite_policy)
    factor = self.rollback_lr_factor
    if not (_is_number(factor) and 0 < factor <= 1):
      raise invalid("Trainer.rollback_lr_factor", "a number in (0, 1]", factor)
    if not _is_int(self.max_rollbacks) or self.max_rollbacks < 0:
      raise invalid("Trainer.max_rollbacks", "a non-negative integer", self.max_rollbacks)
    averaging = self.weight_averaging
    if averaging is NTAveraging:  # `@NTAveraging` without the call: the bound settings.
      object.__setattr__(self, "weight_averaging", averaging())
    elif averaging is not None and not isinstance(averaging, NTAveraging):
      raise invalid("Trainer.weight_averaging", "None or @NTAveraging()", averaging)
    if not isinstance(self.jit_compile, bool):
      raise invalid("Trainer.jit_compile", "True or False", self.jit_compile)
    profile = self.profile_steps
    if profile is not None:
      ok = (isinstance(profile, (list, tuple)) and len(profile) == 2 and all(map(_is_int, profile))
            and 0 <= profile[0] < profile[1])
      if not ok:
        raise invalid("Trainer.profile_steps", "None or (start, stop) with 0 <= start < stop",
                      profile)
      object.__setattr__(self, "profile_steps", tuple(profile))
    self.runtime  # Validates seed, deterministic and mixed_precision.

  def _check_positive_int(self, name: str, allow_none: bool) -> None:
    value = getattr(self, name)
    if value is None and allow_none:
      return
    if not _is_int(value) or not 0 < value <= INT64_MAX:
      expected = "a positive integer or None" if allow_none else "a positive integer"
      raise invalid(f"Trainer.{name}", expected, value)

  @property
  def runtime(self) -> Runtime:
    """The process set-up these settings ask for."""
    return Runtime(seed=self.seed, deterministic=self.deterministic,
                   mixed_precision=self.mixed_precision)
