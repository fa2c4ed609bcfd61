"""Helpers for tests that run the launcher: a tiny job, in-process or as a process; snapshots."""

import contextlib
import io
import os
import subprocess
import sys

import gin
from absl import flags

from tbptt.experiments import main as main_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT = "for i in range(10):\n  print(i * i)\n" * 60
TINY = ["TextCorpus.test_path = None", "TextCorpus.batch_size = 2", "TextCorpus.seq_len = 4",
        "TextCorpus.eval_batch_size = 2", "LanguageModel.units = 4", "LanguageModel.num_layers = 1",
        "LanguageModel.embedding_dim = 4", "LanguageModel.dropout = 0.0",
        "LanguageModelTask.summary_sample_length = 0", "Trainer.train_steps = 3",
        "Trainer.steps_per_loop = 3", "Trainer.histogram_interval = None", "Trainer.eval_steps = 2"]


def write_corpus(directory) -> tuple[str, str]:
  """Writes train.txt and valid.txt into `directory`; returns their paths."""
  paths = []
  for name, text in (("train", TEXT), ("valid", TEXT[:600])):
    path = os.path.join(directory, f"{name}.txt")
    with open(path, "w") as f:
      f.write(text)
    paths.append(path)
  return tuple(paths)


def argv(model_dir, train_path, valid_path, *bindings, mode=None) -> list[str]:
  """Launcher arguments of the tiny job; `bindings` come last and win."""
  corpus = [f"TextCorpus.train_path = '{train_path}'", f"TextCorpus.valid_path = '{valid_path}'"]
  args = [f"--model_dir={model_dir}", "--gin_file=charlm.gin"]
  args += [f"--gin_bindings={b}" for b in corpus + TINY + list(bindings)]
  return args + ([f"--mode={mode}"] if mode else [])


def launch(args) -> tuple[int, str]:
  """Runs the launcher in this process; returns (exit code, stderr).

  Raises whatever the launcher lets escape (anything but SystemExit is a launcher bug).
  """
  flags.FLAGS.unparse_flags()
  gin.clear_config()
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      main_lib.run(["tbptt"] + list(args))
  except SystemExit as e:
    code = e.code
  else:
    code = None  # app.run always exits: reaching here is a failure the caller will see.
  finally:
    gin.clear_config()
  return code, err.getvalue()


def start(args, **kwargs) -> subprocess.Popen:
  """Starts the launcher as its own process (stdout and stderr to pipes)."""
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env.update(kwargs.pop("env", {}))
  return subprocess.Popen([sys.executable, "-m", "tbptt"] + list(args), cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kwargs)


def snapshot(directory) -> dict:
  """Every file and directory under `directory`: relative path -> (size, mtime_ns, bytes|None)."""
  listing = {}
  for root, dirs, names in os.walk(directory):
    for name in dirs + names:
      path = os.path.join(root, name)
      stat = os.lstat(path)
      content = None
      if os.path.isfile(path):
        with open(path, "rb") as f:
          content = f.read()
      listing[os.path.relpath(path, directory)] = (stat.st_size, stat.st_mtime_ns, content)
  return listing


def error_line(code: int, err: str) -> str:
  """The one `tbptt: error:` line of a failed run; asserts exit code 2 and nothing else printed."""
  lines = err.splitlines()
  assert code == 2, (code, err)
  assert len(lines) == 1 and lines[0].startswith("tbptt: error: "), err
  return lines[0]
