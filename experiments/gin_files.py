"""Finding and parsing gin files, with every gin error turned into a one-line `ConfigError`.

A --gin_file that does not exist relative to the working directory is looked up among the packaged
configs (the installed `tbptt.configs` package), so `charlm.gin` and `configs/charlm.gin` work from
anywhere; `include` statements inside .gin files resolve the same way.
"""

import contextlib
import difflib
import importlib.resources
import importlib.util  # noqa: F401  (gin's missing-file path uses it without importing it)
import inspect
import logging
import os
import re
import tokenize

import gin

from tbptt.trainer.errors import ConfigError

_search_path_added = []
_LOCATION = re.compile(
    r'In file "(?P<file>[^"]+)", line (?P<line>\d+)|In bindings string line (?P<b>\d+)')


def packaged_configs_dir() -> str:
  """The directory of the packaged .gin files."""
  return str(importlib.resources.files("tbptt.configs"))


def packaged_configs() -> list:
  """The names of the packaged .gin files, sorted."""
  return sorted(f for f in os.listdir(packaged_configs_dir()) if f.endswith(".gin"))


def resolve(path: str) -> str:
  """The file a --gin_file value names: the path itself if it exists, else a packaged config.

  Raises:
    ConfigError: neither exists.
  """
  if os.path.isfile(path):
    return path
  name = path[len("configs/"):] if path.startswith("configs/") else path
  packaged = os.path.join(packaged_configs_dir(), name)
  if os.path.isfile(packaged):
    return packaged
  available = ", ".join(packaged_configs())
  raise ConfigError(f"--gin_file={path}: no such file here or among the packaged configs "
                    f"({available})")


_UNKNOWN_PARAMETER = re.compile(
    r"Configurable '(?P<configurable>[^']+)' doesn't have a parameter named '(?P<parameter>\w+)'")


def _parameter_names(configurable_name: str) -> list:
  """The parameters a gin configurable takes by name ([] if gin does not know it)."""
  try:
    configurable = gin.get_configurable(configurable_name)
  except ValueError:
    return []
  fn = configurable.__init__ if inspect.isclass(configurable) else configurable
  try:
    parameters = inspect.signature(inspect.unwrap(fn)).parameters.values()
  except (TypeError, ValueError):  # A builtin without a signature.
    return []
  named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  return [p.name for p in parameters if p.kind in named and p.name != "self"]


def spelling_hint(message: str) -> str:
  """`did you mean `Trainer.train_steps`?` for gin's unknown-parameter message, else the generic
  advice."""
  match = _UNKNOWN_PARAMETER.search(message)
  if match:
    close = difflib.get_close_matches(match["parameter"],
                                      _parameter_names(match["configurable"]), n=1, cutoff=0.6)
    if close:
      return f"did you mean `{match['configurable']}.{close[0]}`?"
  return "check the spelling (a run's operative_config.gin lists every parameter)"


def _one_line(error: Exception, source: str) -> str:
  """gin's multi-line message as `file:line: problem (statement)`."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  problem = lines[0] if lines else type(error).__name__
  for i, line in enumerate(lines[1:], 1):
    match = _LOCATION.search(line)
    if match:
      where = (f"{match['file']}:{match['line']}" if match["file"]
               else f"--gin_bindings line {match['b']}")
      statement = lines[i + 1] if i + 1 < len(lines) and not _LOCATION.search(lines[i + 1]) else ""
      return f"{where}: {problem}" + (f" ({statement})" if statement else "")
  return f"{source}: {problem}"


@contextlib.contextmanager
def _gin_errors(source: str):
  # gin logs failed lookups of include files at ERROR level; the ConfigError below says it once.
  logging.disable(logging.ERROR)
  try:
    yield
  except SyntaxError as e:  # gin's parser: msg and a location with the file and line.
    location = e.args[1] if len(e.args) > 1 else None
    where = (f"{getattr(location, 'filename', None) or source}:"
             f"{getattr(location, 'line_num', None) or e.lineno}")
    detail = [line.strip() for line in str(e.args[0]).splitlines() if line.strip()][-1:] or ["?"]
    raise ConfigError(f"{where}: {detail[0]}; fix the gin syntax") from None
  except tokenize.TokenError as e:  # An unclosed bracket or string: found at the end of the file.
    raise ConfigError(f"{source}: {e.args[0]} (an unclosed bracket or string?)") from None
  except OSError as e:
    raise ConfigError(_one_line(e, source) + "; fix the include path") from None
  except ImportError as e:  # An `import` statement naming a module that is not installed.
    raise ConfigError(_one_line(e, source) + "; install it or remove the import") from None
  except (ValueError, NameError, AttributeError, TypeError) as e:
    raise ConfigError(f"{_one_line(e, source)}; {spelling_hint(str(e))}") from None
  finally:
    logging.disable(logging.NOTSET)


def parse(files, bindings) -> None:
  """Parses gin files (resolved with `resolve`), then bindings, as
  `gin.parse_config_files_and_bindings` does, with every error raised as a one-line ConfigError
  naming the file (or binding) and line."""
  if not _search_path_added:
    gin.add_config_file_search_path(packaged_configs_dir())
    _search_path_added.append(True)
  for path in files:
    resolved = resolve(path)
    with _gin_errors(resolved):
      gin.parse_config_file(resolved)
  with _gin_errors("--gin_bindings"):
    gin.parse_config(list(bindings))
