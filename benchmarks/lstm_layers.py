"""Times one training step (forward + backward) of the tbptt `LSTM` against `keras.layers.LSTM`.

Both implementations of ours (the graph loop and the fused C++ kernel), each plain, with peepholes
and with layer norm, and `torch.nn.LSTM` when torch is installed.
Candidates are interleaved in rounds (every candidate once per round, in a shuffled order) after a
warm-up, so that a change in machine load hits all of them alike; the table reports the median
milliseconds per step and the ratios.

  python benchmarks/lstm_layers.py                 # all shapes, 21 rounds
  python benchmarks/lstm_layers.py --shapes small --rounds 30
  python benchmarks/lstm_layers.py --quick         # smoke run: smallest shape, 2 rounds
  python benchmarks/lstm_layers.py --threads 1      # one thread each: steadier ratios of op costs

Targets (printed as PASS/FAIL): the loop no slower than keras.layers.LSTM at every shape (ratio
<= 1 within `--noise`), its peephole and layer-norm variants within 1.3x of it; the fused kernel at
most torch.nn.LSTM's time in the geometric mean over the shapes and at most 1.15x at any shape, its
layer-norm variant within 1.15x and its peephole variant within 1.05x of fused plain.
"""

import argparse
import datetime
import os
import pathlib
import statistics
import sys
from typing import Callable, NamedTuple

# Run as a script from a checkout: make the repository's packages importable without installing.
_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.timing import machine_line, time_interleaved  # noqa: E402
from tbptt.layers import LSTM, kernels  # noqa: E402

try:
  import torch
except ImportError:
  torch = None


class Shape(NamedTuple):
  batch: int
  steps: int
  features: int
  units: int

  def __str__(self):
    return f"B={self.batch} T={self.steps} F={self.features} H={self.units}"


# PTB small and medium (Zaremba et al. 2014), and a forecasting-sized model.
SHAPES = {"small": [Shape(20, 35, 200, 200), Shape(64, 50, 32, 64)],
          "all": [Shape(20, 35, 200, 200), Shape(20, 35, 650, 650), Shape(64, 50, 32, 64)]}
QUICK_SHAPE = Shape(64, 50, 32, 64)

PEEPHOLE_LIMIT = 1.3
LAYER_NORM_LIMIT = 1.3
FUSED_TORCH_MEAN_LIMIT = 1.0
FUSED_TORCH_LIMIT = 1.15
FUSED_PEEPHOLE_LIMIT = 1.05
FUSED_LAYER_NORM_LIMIT = 1.15


def tf_train_step(layer, x) -> Callable[[], float]:
  """A compiled forward + backward step of a Keras layer whose first output is the sequence."""
  layer(x)  # Build the weights outside the function.

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      outputs = layer(x)
      outputs = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
      loss = tf.reduce_mean(tf.square(outputs))
    return loss, tape.gradient(loss, layer.trainable_variables)

  return lambda: float(step()[0])


def torch_train_step(shape: Shape) -> Callable[[], float]:
  lstm = torch.nn.LSTM(shape.features, shape.units, batch_first=True)
  x = torch.randn(shape.batch, shape.steps, shape.features)

  def step():
    lstm.zero_grad(set_to_none=True)
    outputs, _ = lstm(x)
    loss = outputs.square().mean()
    loss.backward()
    return float(loss.detach())

  return step


def candidates(shape: Shape) -> dict[str, Callable[[], float]]:
  """Name -> a function that runs one training step and returns the loss."""
  x = tf.random.stateless_normal([shape.batch, shape.steps, shape.features], seed=[1, 2])

  def ours(implementation, **kwargs):
    return tf_train_step(LSTM(shape.units, implementation=implementation, **kwargs), x)
  steps = {
      "ours": ours("loop"),
      "keras": tf_train_step(keras.layers.LSTM(shape.units, return_sequences=True,
                                               use_cudnn=False), x),
      "peephole": ours("loop", use_peepholes=True),
      "layer_norm": ours("loop", layer_norm=True),
      "fused": ours("fused"),
      "fused_peephole": ours("fused", use_peepholes=True),
      "fused_layer_norm": ours("fused", layer_norm=True),
  }
  if torch is not None:
    steps["torch"] = torch_train_step(shape)
  return steps


def set_threads(count: int) -> None:
  """Runs TensorFlow (intra- and inter-op pools) and torch on `count` threads each.

  With one thread the ratios measure the ops' own cost, without the scheduling of two pools on
  shared cores, and move less from run to run. Must come before TensorFlow runs its first op.
  """
  try:
    tf.config.threading.set_intra_op_parallelism_threads(count)
    tf.config.threading.set_inter_op_parallelism_threads(count)
  except RuntimeError as error:
    raise SystemExit(f"--threads {count}: {error} Pass --threads only when starting the script.")
  if torch is not None:
    torch.set_num_threads(count)


def thread_settings() -> str:
  def auto(n):
    return f"{n}" if n else f"auto ({os.cpu_count()} cores)"
  parts = [f"TF intra-op {auto(tf.config.threading.get_intra_op_parallelism_threads())}",
           f"inter-op {auto(tf.config.threading.get_inter_op_parallelism_threads())}"]
  if torch is not None:
    parts.append(f"torch {torch.get_num_threads()}")
  parts.append(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
  # The fused kernel's split of its work across TensorFlow's intra-op threads (lstm_ops.h).
  parts.append(f"TBPTT_KERNEL_SPLIT={os.environ.get('TBPTT_KERNEL_SPLIT', 'unset')}")
  return ", ".join(parts)


def report(results: dict, rounds: int, noise: float) -> tuple[str, bool]:
  """The Markdown table and target lines; returns (text, every target passed).

  results: shape -> candidate name -> milliseconds. "ours" and its variants are the graph loop.
  """
  with_torch = any("torch" in r for r in results.values())
  lines = [
      f"## LSTM training step (forward + backward), median of {rounds} interleaved rounds",
      "",
      f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
      f"- {machine_line()}",
      f"- threads: {thread_settings()}",
      "- load average (1, 5, 15 min) at the end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
      f"- TensorFlow {tf.__version__}, Keras {keras.__version__}"
      + (f", torch {torch.__version__}" if with_torch and torch is not None else "")
      + f"; fused kernel multiplies with {kernels.gemm_library() or 'nothing (not built)'}",
      "",
  ]
  header = ["shape", "loop ms", "keras ms", "loop/keras", "loop peephole/loop",
            "loop layer norm/loop", "fused ms", "fused/loop", "fused peephole/fused",
            "fused layer norm/fused"]
  if with_torch:
    header += ["torch ms", "fused/torch"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  checks = []

  def ms(value):  # Tiny shapes (--quick) take well under 0.1 ms: keep two significant digits.
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"

  for shape, r in results.items():
    ours, fused = r["ours"], r["fused"]
    row = [str(shape), ms(ours), ms(r["keras"]), f"{ours / r['keras']:.2f}",
           f"{r['peephole'] / ours:.2f}", f"{r['layer_norm'] / ours:.2f}", ms(fused),
           f"{fused / ours:.2f}", f"{r['fused_peephole'] / fused:.2f}",
           f"{r['fused_layer_norm'] / fused:.2f}"]
    if with_torch:
      ratio = fused / r["torch"]
      row += [ms(r["torch"]), f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"]
    lines.append("| " + " | ".join(row) + " |")
    checks += [
        (f"{shape}: loop/keras = {ours / r['keras']:.2f} <= 1.0 (+{noise:.0%} noise)",
         ours / r["keras"] <= 1.0 + noise),
        (f"{shape}: loop peephole/loop = {r['peephole'] / ours:.2f} <= {PEEPHOLE_LIMIT}",
         r["peephole"] / ours <= PEEPHOLE_LIMIT),
        (f"{shape}: loop layer norm/loop = {r['layer_norm'] / ours:.2f} <= {LAYER_NORM_LIMIT}",
         r["layer_norm"] / ours <= LAYER_NORM_LIMIT),
        (f"{shape}: fused peephole/fused = {r['fused_peephole'] / fused:.2f} <= "
         f"{FUSED_PEEPHOLE_LIMIT}", r["fused_peephole"] / fused <= FUSED_PEEPHOLE_LIMIT),
        (f"{shape}: fused layer norm/fused = {r['fused_layer_norm'] / fused:.2f} <= "
         f"{FUSED_LAYER_NORM_LIMIT}", r["fused_layer_norm"] / fused <= FUSED_LAYER_NORM_LIMIT),
    ]
    if with_torch:
      checks.append((f"{shape}: fused/torch = {fused / r['torch']:.2f} <= {FUSED_TORCH_LIMIT}",
                     fused / r["torch"] <= FUSED_TORCH_LIMIT))
  if with_torch:
    mean = statistics.geometric_mean([r["fused"] / r["torch"] for r in results.values()])
    checks.append((f"geometric mean of fused/torch = {mean:.2f} <= {FUSED_TORCH_MEAN_LIMIT}",
                   mean <= FUSED_TORCH_MEAN_LIMIT))
  lines += ["", "Targets:"]
  lines += [f"- {'PASS' if ok else 'FAIL'} {text}" for text, ok in checks]
  return "\n".join(lines), all(ok for _, ok in checks)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rounds", type=int, default=21, help="timed rounds (each candidate once)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps per candidate first")
  parser.add_argument("--shapes", choices=sorted(SHAPES), default="all",
                      help="small: B,T,F,H = 20,35,200,200 and 64,50,32,64; "
                           "all: also 20,35,650,650")
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: the smallest shape, 2 rounds, 1 warm-up step")
  parser.add_argument("--noise", type=float, default=0.05,
                      help="ours/keras may exceed 1.0 by this fraction and still pass")
  parser.add_argument("--pause", type=float, default=0.01,
                      help="seconds of idle time before each timed step")
  parser.add_argument("--threads", type=int, default=0,
                      help="run TensorFlow and torch on this many threads each (0: their defaults)")
  parser.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
  args = parser.parse_args(argv)
  if args.threads < 0:
    parser.error(f"--threads must be 0 (the defaults) or a positive count, got {args.threads}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  shapes = SHAPES[args.shapes]
  rounds, warmup = args.rounds, args.warmup
  if args.threads:
    set_threads(args.threads)
  if args.quick:
    shapes, rounds, warmup = [QUICK_SHAPE], 2, 1
  results = {}
  for shape in shapes:
    print(f"timing {shape} ...", file=sys.stderr, flush=True)
    seconds = time_interleaved(candidates(shape), rounds, warmup, args.pause)
    results[shape] = {name: 1e3 * t for name, t in seconds.items()}
  text, passed = report(results, rounds, args.noise)
  print(text)
  return 1 if args.strict and not passed else 0


if __name__ == "__main__":
  sys.exit(main())
