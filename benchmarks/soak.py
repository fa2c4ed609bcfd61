"""Soak test: one process trains a tiny language model for 10,000 steps; does it leak or retrace?

The run uses base.gin's cadence (summaries every 50 steps, eval and checkpoint every 500,
histograms every 1000, a text sample after each eval) on the embedded corpus. It is measured twice:
after a warm-up (the first 10% of the steps, and at least one of every periodic event, so that every
compiled function has been traced once) and at the end.

  peak RSS     growth from the warm-up to the end, target < 5% (a leak grows with the steps)
  retraces     tf.function traces after the warm-up, target 0 (each would recompile a graph and
               keep it in memory)

  python benchmarks/soak.py                 # 10,000 steps
  python benchmarks/soak.py --steps 3000
  python benchmarks/soak.py --quick         # smoke run: 300 steps, cadence scaled down 10x
"""

import argparse
import datetime
import os
import pathlib
import resource
import sys
import tempfile
import time

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks.timing import machine_line  # noqa: E402
from tbptt.experiments import experiment, gin_files  # noqa: E402
from tbptt.experiments.language_model import LanguageModelTask  # noqa: E402

RSS_GROWTH_LIMIT = 0.05
WARMUP_FRACTION = 0.1
# A tiny model on a slice of the embedded corpus; the cadence is base.gin's.
MODEL = ["TextCorpus.train_path = 'stdlib'", "TextCorpus.valid_path = 'stdlib'",
         "TextCorpus.test_path = None", "TextCorpus.stdlib_bytes = 300000",
         "TextCorpus.batch_size = 8", "TextCorpus.seq_len = 32", "LanguageModel.units = 32",
         "LanguageModel.num_layers = 1", "LanguageModel.embedding_dim = 16",
         "LanguageModelTask.summary_sample_length = 100"]
QUICK_CADENCE = ["Trainer.steps_per_loop = 10", "Trainer.summary_interval = 5",
                 "Trainer.log_interval = 50", "Trainer.eval_interval = 50",
                 "Trainer.checkpoint_interval = 50", "Trainer.histogram_interval = 100"]
CADENCES = ("eval_interval", "checkpoint_interval", "histogram_interval")
_OURS = "tbptt."  # Walk only this package's objects.


def compiled_functions(root, name: str = "trainer", depth: int = 6, seen=None) -> dict:
  """Every tf.function reachable from `root` through this project's objects, by attribute path.

  Walks the attributes of objects defined in trainer/, experiments/ and layers/ (and the dicts,
  lists and tuples they hold), `depth` levels deep, so functions created later (a split's first
  eval, the first histogram) are found wherever the Trainer keeps them.
  """
  seen = set() if seen is None else seen
  if depth < 0 or id(root) in seen:
    return {}
  seen.add(id(root))
  if isinstance(root, tf.types.experimental.PolymorphicFunction):
    return {name: root}
  if isinstance(root, dict):
    items = root.items()
  elif isinstance(root, (list, tuple)):
    items = enumerate(root)
  elif type(root).__module__.startswith(_OURS) and hasattr(root, "__dict__"):
    items = vars(root).items()
  else:
    return {}
  found = {}
  for key, value in list(items):
    found.update(compiled_functions(value, f"{name}.{key}", depth - 1, seen))
  return found


def traces(trainer) -> dict[str, int]:
  """Traces so far of each compiled function of the trainer (and its task)."""
  return {name: fn.experimental_get_tracing_count()
          for name, fn in compiled_functions(trainer).items()}


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB.


def current_rss_mib() -> float:
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except OSError:
    return float("nan")


def measure(trainer, step: int, seconds: float) -> dict:
  return {"step": step, "seconds": seconds, "peak_rss": peak_rss_mib(),
          "rss": current_rss_mib(), "traces": traces(trainer)}


def soak(steps: int, bindings: list[str], model_dir: str) -> tuple[dict, dict, dict]:
  """Trains to `steps`; returns (measures after the warm-up, at the end, the run's cadence)."""
  gin.clear_config()
  gin_files.parse(["base.gin"], MODEL + [f"Trainer.train_steps = {steps}"] + bindings)
  _, task, trainer = experiment.build(model_dir, LanguageModelTask)
  cadence = {name: getattr(trainer.config, name) for name in CADENCES}
  warmup = max([int(steps * WARMUP_FRACTION)] + [v for v in cadence.values() if v])
  if warmup >= steps:
    raise ValueError(f"--steps {steps} leaves nothing after the warm-up ({warmup} steps: every "
                     f"periodic event once, {cadence}); use more steps")
  trainer.restore()
  task.write_assets()
  start = time.perf_counter()
  trainer.train(until_step=warmup)
  warm = measure(trainer, trainer.step, time.perf_counter() - start)
  trainer.train()
  end = measure(trainer, trainer.step, time.perf_counter() - start)
  trainer._summaries.close()  # Its writers hold files open; the run is over.
  gin.clear_config()
  return warm, end, cadence


def report(warm: dict, end: dict, cadence: dict) -> tuple[str, bool]:
  """The Markdown report and whether both targets pass."""
  growth = end["peak_rss"] / warm["peak_rss"] - 1
  retraced = {name: count - warm["traces"].get(name, 0) for name, count in end["traces"].items()
              if count != warm["traces"].get(name, 0)}
  steps_after = end["step"] - warm["step"]
  rate = steps_after / max(end["seconds"] - warm["seconds"], 1e-9)
  cadence_text = ", ".join(f"{k} {v}" for k, v in cadence.items())
  lines = [
      f"## Soak: {end['step']:,} steps in one process (warm-up: {warm['step']:,} steps)",
      "",
      f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
      f"- {machine_line()}",
      f"- TensorFlow {tf.__version__}, Keras {keras.__version__}",
      f"- model: {', '.join(b.split('.', 1)[1] for b in MODEL if 'LanguageModel.' in b)}; "
      f"cadence: {cadence_text}",
      f"- {rate:.0f} steps/s after the warm-up",
      f"- compiled functions: {', '.join(sorted(end['traces']))}",
      "",
      "| measure | after warm-up | end | change |",
      "|---|---|---|---|",
      f"| step | {warm['step']:,} | {end['step']:,} | +{steps_after:,} |",
      f"| peak RSS (MiB) | {warm['peak_rss']:.1f} | {end['peak_rss']:.1f} | {growth:+.2%} |",
      f"| current RSS (MiB) | {warm['rss']:.1f} | {end['rss']:.1f} | "
      f"{end['rss'] / warm['rss'] - 1:+.2%} |",
      f"| tf.function traces | {sum(warm['traces'].values())} | {sum(end['traces'].values())} | "
      f"+{sum(retraced.values())} |",
  ]
  checks = [(f"peak RSS growth after the warm-up {growth:+.2%} < {RSS_GROWTH_LIMIT:.0%}",
             growth < RSS_GROWTH_LIMIT),
            ("retraces after the warm-up: " + (", ".join(f"{k} +{v}" for k, v in retraced.items())
                                               or "0"), not retraced)]
  lines += ["", "Targets:"] + [f"- {'PASS' if ok else 'FAIL'} {text}" for text, ok in checks]
  return "\n".join(lines), all(ok for _, ok in checks)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=None,
                      help="training steps (default 10,000; 300 with --quick)")
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: 300 steps, cadence scaled down 10x")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="extra gin bindings, e.g. 'Trainer.steps_per_loop = 10'")
  parser.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  steps = args.steps or (300 if args.quick else 10_000)
  bindings = (QUICK_CADENCE if args.quick else []) + args.gin_bindings
  logging.set_verbosity(logging.WARNING)
  with tempfile.TemporaryDirectory(prefix="tbptt_soak_") as model_dir:
    print(f"soak: {steps} steps ...", file=sys.stderr, flush=True)
    warm, end, cadence = soak(steps, bindings, model_dir)
  text, passed = report(warm, end, cadence)
  print(text)
  return 1 if args.strict and not passed else 0


if __name__ == "__main__":
  sys.exit(main())
