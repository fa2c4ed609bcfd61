r"""`make demo`: trains the default job (configs/charlm.gin), prints a sample and what to do next.

  python -m tbptt.experiments.demo --model_dir=runs/demo [--gin_bindings=...]

A character-level LSTM learns Python source from the standard library's own files (no download) in a
few minutes on two CPU cores. Rerunning resumes from the newest checkpoint; once training is done it
only prints a new sample.
"""

import functools
import os
import sys
import time

from tbptt.experiments import main as launcher  # Quiets the TF import; defines the flags.

from absl import app  # noqa: E402,I100
from absl import flags  # noqa: E402

from tbptt.experiments import console, experiment, gin_files, hints  # noqa: E402
from tbptt.trainer.errors import ConfigError, TrainingError  # noqa: E402

FLAGS = flags.FLAGS
DEFAULT_DIR = "runs/demo"
CONFIG = "charlm.gin"


def _command(name: str, fallback: str) -> str:
  """How to call a program of this interpreter's environment (e.g. `.venv/bin/tensorboard`).

  After `make demo` nothing is on PATH: the commands printed must name the virtualenv's programs.
  """
  path = os.path.join(os.path.dirname(sys.executable), name)
  if not os.path.exists(path):
    return fallback
  relative = os.path.relpath(path)
  return relative if not relative.startswith("..") else path


def further_target(step: int) -> int:
  """A `Trainer.train_steps` that trains on from `step`: 5000, or twice the step once past it."""
  return 5000 if step < 5000 else 2 * step


def demo(model_dir: str, extra_files=(), bindings=()) -> dict:
  """Trains (or resumes) the default job in model_dir; prints a sample and the next commands."""
  gin_files.parse([CONFIG, *extra_files], bindings)
  print(f"Training a character-level LSTM on Python source ({CONFIG}) in {model_dir}.\n"
        "Ctrl-C stops after writing a checkpoint; rerun to resume.", flush=True)
  start = time.time()
  result = experiment.run_experiment(model_dir, "train")
  minutes = (time.time() - start) / 60
  valid = result.get("valid")
  if valid:
    print(f"\nStep {result['step']} after {minutes:.1f} minutes: valid "
          f"{valid['bits_per_char']:.3f} bits/char.", flush=True)
  else:
    print(f"\nAlready trained to step {result['step']}.", flush=True)
  sample = experiment.run_experiment(model_dir, "sample")
  print(f"\nSample:\n\n{sample['sample']}", flush=True)
  python = _command(os.path.basename(sys.executable), sys.executable)
  tensorboard = _command("tensorboard", f"{python} -m tensorboard.main")
  tbptt = _command("tbptt", f"{python} -m tbptt")
  print(f"""
Next:
  {tensorboard} --logdir {model_dir}     # curves, histograms, the operative config
  {tbptt} --model_dir={model_dir} --gin_file={CONFIG} \\
      --gin_bindings='Trainer.train_steps={further_target(result["step"])}'     # train further
  {tbptt} --model_dir={model_dir} --gin_file={CONFIG} --mode=sample \\
      --gin_bindings="sample_text.prompt='class '"  # more samples""", flush=True)
  return {**result, "sample": sample["sample"], "minutes": minutes}


def main(argv) -> int:
  console.configure(FLAGS.verbosity)
  if len(argv) > 1:
    return launcher.fail(2, launcher.unexpected_arguments_message(argv[1:]))
  try:
    demo(FLAGS.model_dir or DEFAULT_DIR, FLAGS.gin_file, FLAGS.gin_bindings)
  except ConfigError as e:
    return launcher.fail(2, hints.with_hint(e))
  except TrainingError as e:
    return launcher.fail(1, e)
  return 0


def run(argv=None):
  app.run(main, argv=argv,
          flags_parser=functools.partial(launcher.parse_flags, require_model_dir=False,
                                         usage=lambda: __doc__.lstrip("`")))


if __name__ == "__main__":
  run()
