"""Errors that map to the launcher's exit codes (see the CLI contract in the README)."""


class ConfigError(ValueError):
  """Usage or configuration error: a bad value, unusable data, a misfit checkpoint.

  The launcher prints the first line of `str(error)` on stderr and exits 2. The message names the
  parameter (e.g. `Trainer.clip_norm`), what was expected and what came; it knows nothing of
  flags: the command line adds how to set the parameter (see `tbptt.experiments.hints`).

  Attributes:
    parameter: The gin parameter at fault ('Trainer.clip_norm'), or None if there is none.
  """

  def __init__(self, message: str, *, parameter: str | None = None):
    super().__init__(message)
    self.parameter = parameter


def invalid(parameter: str, expected: str, received) -> ConfigError:
  """`ConfigError('<parameter> must be <expected>, got <received!r>')` naming `parameter`."""
  return ConfigError(f"{parameter} must be {expected}, got {received!r}", parameter=parameter)


class TrainingError(RuntimeError):
  """Training failed (e.g. too many non-finite steps in a row). The launcher exits 1."""


class TrainingInterrupted(SystemExit):
  """SIGINT/SIGTERM stopped training after a checkpoint; exits with 130 (SIGINT) / 143 (SIGTERM).

  Under multi-worker training a worker that was not signalled stops with its peers, with 143.
  """

  def __init__(self, signum: int, step: int):
    super().__init__(128 + signum)
    self.signum = signum
    self.step = step
