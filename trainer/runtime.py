"""Process-wide settings needed before the model is built: seeds, determinism, mixed precision.

They are `Trainer` parameters (`Trainer.seed`, `Trainer.deterministic`, `Trainer.mixed_precision`),
but a model's initial weights, dropout seeds and dtype policy are fixed when the task builds it,
before the Trainer exists. So `make_strategy()`, the first call of an experiment, applies them from
the gin bindings, and the Trainer checks that what it finds matches.
"""

import gin
import keras
import tensorflow as tf

from tbptt.trainer.errors import ConfigError

DEFAULT_SEED = 0
DEFAULT_DETERMINISTIC = False
DEFAULT_MIXED_PRECISION = None
MIXED_PRECISION_POLICIES = (None, "mixed_float16", "mixed_bfloat16")

_applied = {"seed": None}


def _binding(name: str, default):
  """The value bound to `Trainer.<name>` in the gin config, or `default` when unbound."""
  try:
    value = gin.query_parameter(f"Trainer.{name}")
  except ValueError:
    return default
  if isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
    value = value.scoped_configurable_fn()  # A macro (%NAME): its value.
  return value


def configure_from_gin() -> None:
  """Applies the gin bindings of `Trainer.seed`, `.deterministic` and `.mixed_precision`."""
  seed_everything(_binding("seed", DEFAULT_SEED), _binding("deterministic", DEFAULT_DETERMINISTIC))
  unbound = object()
  policy = _binding("mixed_precision", unbound)
  if policy is not unbound:  # Unbound: leave whatever policy the program set.
    set_mixed_precision(policy)


def check_seed(seed) -> int:
  # NumPy's seed is 32 bits: a larger one would fail later with a message that names no binding.
  if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
    raise ConfigError(f"Trainer.seed must be an integer in [0, 2**32), got {seed!r}; "
                      "set --gin_bindings='Trainer.seed=0'")
  return seed


def check_deterministic(deterministic) -> bool:
  if not isinstance(deterministic, bool):
    raise ConfigError(f"Trainer.deterministic must be True or False, got {deterministic!r}")
  return deterministic


def seed_everything(seed: int, deterministic: bool = False) -> None:
  """Seeds Python, NumPy, TensorFlow and Keras; `deterministic` also makes every op deterministic.

  Op determinism is process-wide and cannot be turned off again.
  """
  check_seed(seed)
  check_deterministic(deterministic)
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


def check_mixed_precision(policy) -> None:
  if policy not in MIXED_PRECISION_POLICIES:
    raise ConfigError("Trainer.mixed_precision must be None, 'mixed_float16' or 'mixed_bfloat16', "
                      f"got {policy!r}; set "
                      "--gin_bindings=\"Trainer.mixed_precision='mixed_bfloat16'\"")


def set_mixed_precision(policy: str | None) -> None:
  """Sets the Keras dtype policy: float16/bfloat16 compute, float32 variables (None: float32)."""
  check_mixed_precision(policy)
  keras.config.set_dtype_policy(policy or "float32")
