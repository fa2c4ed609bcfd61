"""A deterministic run resumes only with the LSTM implementations of its checkpoint."""

import json
import os
import subprocess
import sys

import pytest

from main_test import TINY, base_argv, files, snapshot  # noqa: F401 (files is a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _launch(model_dir, files, *bindings):  # noqa: F811
  argv = ([sys.executable, "-m", "tbptt"] + base_argv(model_dir, files)
          + ["--gin_bindings=Trainer.deterministic = True"]
          + [f"--gin_bindings={b}" for b in bindings])
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_deterministic_resume_with_another_implementation_exits_2(files, tmp_path):  # noqa: F811
  model_dir = tmp_path / "run"
  first = _launch(model_dir, files, "LanguageModel.implementation = 'fused'")
  assert first.returncode == 0, first.stderr
  with open(model_dir / "lstm_implementations.json") as f:
    assert json.load(f) == {"implementations": ["fused", "fused"]}
  before = snapshot(model_dir)
  other = _launch(model_dir, files, "LanguageModel.implementation = 'loop'",
                  "Trainer.train_steps = 6")
  assert other.returncode == 2
  lines = [line for line in other.stderr.splitlines() if line.startswith("tbptt: error:")]
  assert len(lines) == 1 and other.stderr.strip().endswith(lines[0]), other.stderr
  assert ("checkpoint at step 3 was trained with LSTM implementations ['fused', 'fused'] and this "
          "run would use ['loop', 'loop']") in lines[0]
  assert "LanguageModel.implementation='fused'" in lines[0]
  assert snapshot(model_dir) == before
  same = _launch(model_dir, files, "LanguageModel.implementation = 'auto'",
                 "Trainer.train_steps = 6")
  assert same.returncode == 0, same.stderr
  assert "ckpt-6.index" in os.listdir(model_dir / "checkpoints")
