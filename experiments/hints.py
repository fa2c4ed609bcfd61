"""The command line's one place for flag hints: a library error naming a gin parameter becomes the
line users see, with how to set that parameter.

  Trainer.clip_norm must be a positive number or None, got 0.0
  -> Trainer.clip_norm must be a positive number or None, got 0.0; set
     --gin_bindings='Trainer.clip_norm=5.0'

The library (`trainer/`, `layers/`) names the parameter (`ConfigError.parameter`) and knows
nothing of flags.
"""

# A typical value of each parameter, shown in the hint (gin syntax).
EXAMPLES = {
    "Trainer.train_steps": "1000",
    "Trainer.steps_per_loop": "100",
    "Trainer.clip_norm": "5.0",
    "Trainer.summary_interval": "100",
    "Trainer.checkpoint_interval": "1000",
    "Trainer.eval_interval": "1000",
    "Trainer.max_checkpoints": "3",
    "Trainer.seed": "0",
    "Trainer.deterministic": "True",
    "Trainer.mixed_precision": "'mixed_bfloat16'",
    "Trainer.max_nonfinite_steps": "10",
    "Trainer.nonfinite_policy": "'rollback'",
    "Trainer.rollback_lr_factor": "0.5",
    "Trainer.max_rollbacks": "3",
    "Trainer.optimizer": "@optimizers.Adam",
    "Trainer.learning_rate": "0.001",
    "Trainer.lr_schedule": "@schedules.EpochDecay",
    "Trainer.jit_compile": "True",
    "Trainer.eval_steps": "100",
    "Trainer.histogram_interval": "1000",
    "Trainer.log_interval": "100",
    "Trainer.profile_steps": "(10, 20)",
    "Trainer.weight_averaging": "@NTAveraging()",
    "NTAveraging.nonmono": "5",
    "distribution.strategy": "'mirrored'",
    "distribution.cpu_devices": "2",
    "distribution.heartbeat_timeout_seconds": "10",
    "distribution.collective_timeout_seconds": "300",
}


def gin_binding_flag(parameter: str, value: str) -> str:
  """`--gin_bindings='P=V'`, or with double quotes when V holds a single quote."""
  quote = '"' if "'" in value else "'"
  return f"--gin_bindings={quote}{parameter}={value}{quote}"


def with_hint(error: BaseException) -> str:
  """The first line of `error`, plus how to set the parameter it names (if it names one).

  Args:
    error: Usually a `ConfigError`; any exception with a `parameter` attribute naming a gin
      parameter gets the hint, others are returned as their first line.

  Returns:
    One line for stderr.
  """
  text = str(error).strip()
  line = text.splitlines()[0] if text else type(error).__name__
  parameter = getattr(error, "parameter", None)
  if parameter in EXAMPLES and "--gin_bindings" not in line:
    line = f"{line}; set {gin_binding_flag(parameter, EXAMPLES[parameter])}"
  return line
