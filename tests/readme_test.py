"""The README's code runs exactly as written: the layer patterns and the export example."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _canonical_snippets():
  text = README.read_text()
  section = text.split("### Three canonical patterns", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_has_the_three_patterns():
  assert len(_canonical_snippets()) == 3


@pytest.mark.parametrize("index", range(3))
def test_canonical_pattern_runs_as_written(index):
  namespace = {}
  setup = "import tensorflow as tf\nfrom tbptt.layers import LSTM\n"
  exec(compile(setup + _canonical_snippets()[index], f"README pattern {index}", "exec"), namespace)
  outputs = namespace["outputs"]
  final_state = namespace.get("final_state", namespace.get("state"))
  assert final_state.h.shape[-1] == 64 and final_state.c.shape[-1] == 64
  if index == 1:
    assert outputs.shape == (10, 1, 64)


def _export_example() -> str:
  section = README.read_text().split("### Using an export", 1)[1].split("\n### ", 1)[0]
  (snippet,) = re.findall(r"```python\n(.*?)```", section, re.S)
  return snippet


def test_export_example_is_short():
  assert len(_export_example().strip().splitlines()) <= 20


@pytest.mark.slow
def test_export_example_runs_as_written_without_this_package(tmp_path):
  """Trains and exports a tiny character model to runs/charlm, then runs the README's streaming
  generation example in a plain Python process that never imports tbptt."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  tiny = ["TextCorpus.stdlib_bytes=150000", "TextCorpus.batch_size=4", "TextCorpus.seq_len=10",
          "TextCorpus.eval_batch_size=4", "LanguageModel.units=8", "LanguageModel.embedding_dim=8",
          "Trainer.train_steps=2", "Trainer.steps_per_loop=2", "Trainer.histogram_interval=None",
          "Trainer.eval_steps=2"]
  command = ([sys.executable, "-m", "tbptt", "--model_dir=runs/charlm", "--gin_file=charlm.gin"]
             + [f"--gin_bindings={b}" for b in tiny])
  for mode in ("train", "export"):
    done = subprocess.run(command + [f"--mode={mode}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
  check = "\nimport sys\nassert not [m for m in sys.modules if m.startswith('tbptt')]\n"
  done = subprocess.run([sys.executable, "-c", _export_example() + check], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  text = done.stdout.rstrip("\n")
  assert text.startswith("def ") and len(text) > 100, text
