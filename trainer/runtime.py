"""Process set-up that must precede building the model: seeds, op determinism, mixed precision.

A model's initial weights, dropout seeds and dtype policy are fixed when the task builds it, before
the Trainer exists. So the experiment applies a `Runtime` (taken from the trainer's config: the gin
names are `Trainer.seed`, `Trainer.deterministic`, `Trainer.mixed_precision`) right after creating
the strategy, builds the task, and hands the same config to the Trainer, which checks the model
against it. Nothing here reads gin.
"""

import dataclasses

import keras
import tensorflow as tf

from tbptt.trainer.errors import invalid

MIXED_PRECISION_POLICIES = (None, "mixed_float16", "mixed_bfloat16")

_applied = {"seed": None}


@dataclasses.dataclass(frozen=True)
class Runtime:
  """Seed, determinism and dtype policy of one process.

  Attributes:
    seed: Seed for Python, NumPy, TensorFlow and Keras, in [0, 2**32) (NumPy's seeds are 32 bits).
    deterministic: Make every op deterministic (process-wide; cannot be undone), so a resumed run
      repeats an uninterrupted one bitwise.
    mixed_precision: None (float32), 'mixed_float16' or 'mixed_bfloat16'.

  Raises:
    ConfigError: A value out of range (named as its gin parameter, `Trainer.<name>`).
  """

  seed: int = 0
  deterministic: bool = False
  mixed_precision: str | None = None

  def __post_init__(self):
    if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
      raise invalid("Trainer.seed", "an integer in [0, 2**32)", self.seed)
    if not isinstance(self.deterministic, bool):
      raise invalid("Trainer.deterministic", "True or False", self.deterministic)
    if self.mixed_precision not in MIXED_PRECISION_POLICIES:
      raise invalid("Trainer.mixed_precision", "None, 'mixed_float16' or 'mixed_bfloat16'",
                    self.mixed_precision)

  def apply(self) -> None:
    """Seeds everything, enables determinism if asked, sets the Keras dtype policy."""
    seed_everything(self.seed, self.deterministic)
    set_mixed_precision(self.mixed_precision)

  def apply_seed_once(self) -> None:
    """Seeds (and enables determinism) unless this seed was applied already.

    Seeding again after the model was built would restart the random streams its layers draw from.
    """
    if seeded_with() != self.seed:
      seed_everything(self.seed, self.deterministic)
    elif self.deterministic:
      enable_determinism()


def seed_everything(seed: int, deterministic: bool = False) -> None:
  """Seeds Python, NumPy, TensorFlow and Keras; `deterministic` also makes every op deterministic.

  Op determinism is process-wide and cannot be turned off again.
  """
  Runtime(seed=seed, deterministic=deterministic)  # Validates.
  keras.utils.set_random_seed(seed)
  _applied["seed"] = seed
  if deterministic:
    enable_determinism()


def enable_determinism() -> None:
  """Makes every TensorFlow op deterministic (process-wide; cannot be turned off again)."""
  tf.config.experimental.enable_op_determinism()


def seeded_with() -> int | None:
  """The seed `seed_everything` last applied in this process (None if never)."""
  return _applied["seed"]


def set_mixed_precision(policy: str | None) -> None:
  """Sets the Keras dtype policy: float16/bfloat16 compute, float32 variables (None: float32)."""
  Runtime(mixed_precision=policy)  # Validates.
  keras.config.set_dtype_policy(policy or "float32")
