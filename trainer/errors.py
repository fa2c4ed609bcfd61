"""Errors that map to the launcher's exit codes (see the CLI contract in the README)."""


class ConfigError(ValueError):
  """Usage or configuration error: bad flag, gin error, unusable data, a misfit checkpoint.

  The launcher prints `str(error)` as one line on stderr and exits 2. The message names the problem
  (file, parameter or value) and what to do about it.
  """


class TrainingError(RuntimeError):
  """Training failed (e.g. too many non-finite steps in a row). The launcher exits 1."""
