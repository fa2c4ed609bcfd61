"""Tests for experiments/demo.py (`make demo`) on a tiny version of the default job."""

import os
import shutil

import pytest
from absl import flags

from tbptt.experiments import demo as demo_lib

TINY = ["TextCorpus.stdlib_bytes = 150000", "TextCorpus.batch_size = 4", "TextCorpus.seq_len = 10",
        "TextCorpus.eval_batch_size = 4", "LanguageModel.units = 8",
        "LanguageModel.embedding_dim = 8", "Trainer.train_steps = 4", "Trainer.steps_per_loop = 2",
        "Trainer.histogram_interval = None", "Trainer.eval_steps = 3", "sample_text.length = 40"]


@pytest.mark.slow
def test_demo_trains_samples_and_resumes(tmp_path, capsys):
  model_dir = str(tmp_path / "demo")
  first = demo_lib.demo(model_dir, bindings=TINY)
  out = capsys.readouterr().out
  assert first["step"] == 4 and first["sample"].startswith("def ")
  assert f"Sample:\n\n{first['sample']}\n" in out  # Nothing between the heading and the text.
  assert out.count(first["sample"]) == 1 and "step 4 valid:" not in out
  next_steps = out.split("Next:", 1)[1]
  assert f"--logdir {model_dir}" in next_steps
  assert "Trainer.train_steps=5000'" in next_steps
  assert (f"tbptt --model_dir={model_dir} --gin_file=charlm.gin" in next_steps or
          f"-m tbptt --model_dir={model_dir} --gin_file=charlm.gin" in next_steps)
  # After `make demo` nothing is on PATH: each printed program must exist where the line says.
  programs = {line.split()[0] for line in next_steps.splitlines()
              if line.strip() and not line.startswith("      ")}
  assert programs and all(shutil.which(p) or os.path.exists(p) for p in programs), programs
  assert "bits/char" in out

  # A rerun finds the finished run and only samples again: same step, same (seeded) sample.
  second = demo_lib.demo(model_dir, bindings=TINY)
  assert second["step"] == 4 and second["sample"] == first["sample"]
  assert "Already trained to step 4." in capsys.readouterr().out


@pytest.mark.parametrize("step, target", [(4, 5000), (1500, 5000), (4999, 5000), (5000, 10000),
                                          (12000, 24000)])
def test_the_suggested_further_target_trains_further(step, target):
  assert demo_lib.further_target(step) == target > step


def test_demo_command_line_maps_errors_to_exit_codes(tmp_path, capsys):
  flags.FLAGS.unparse_flags()
  with pytest.raises(SystemExit) as exit_info:
    demo_lib.run(["demo", f"--model_dir={tmp_path}", "--gin_bindings=Trainer.train_steps=-1"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.splitlines() == [
      "tbptt: error: Trainer.train_steps must be a positive integer, got -1; "
      "set --gin_bindings='Trainer.train_steps=1000'"]
