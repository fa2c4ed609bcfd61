"""Which library should multiply the fused LSTM kernel's per-step matrices?

Two measurements, printed as Markdown tables:
  1. The per-step recurrent product h [B, out] x R [out, 4u] alone, at the three shapes of
     benchmarks/lstm_layers.py, in a small C++ program (benchmarks/spike/gemm_spike.cc): Eigen's
     matrix product on one thread, Eigen's tensor contraction on a 2-thread pool (what tf.matmul
     runs), MKL's cblas_sgemm on 1 and 2 threads (PyPI `mkl-devel`) and oneDNN's dnnl_sgemm (PyPI
     `onednn-devel`). MKL and oneDNN are dlopen'ed by path: a library that is not installed in this
     Python environment is left out of the table.
  2. A whole training step (forward + backward) of `LSTM(implementation='fused')` with the kernel's
     products done by Eigen and by MKL (`kernels.gemm_mode`), interleaved, medians.

  python benchmarks/lstm_kernel_spike.py [--rounds 21]
"""

import argparse
import glob
import os
import pathlib
import subprocess
import sys
import tempfile

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from benchmarks.lstm_layers import SHAPES, tf_train_step  # noqa: E402
from benchmarks.timing import machine_line, time_interleaved  # noqa: E402
from tbptt.layers import LSTM, kernels  # noqa: E402
from tbptt.layers.kernels import build  # noqa: E402

SPIKE_SOURCE = _ROOT / "benchmarks" / "spike" / "gemm_spike.cc"


def onednn_library() -> str | None:
  found = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libdnnl.so*")))
  return found[-1] if found else None


def gemm_table(reps: int) -> str:
  """Compiles and runs gemm_spike.cc; returns its figures as a table (microseconds per product)."""
  with tempfile.TemporaryDirectory() as directory:
    binary = os.path.join(directory, "gemm_spike")
    flags = [f for f in build.compile_flags() if f not in ("-shared", "-fPIC")]
    subprocess.run(build._compiler() + flags + [str(SPIKE_SOURCE), "-o", binary, "-ldl",
                                                "-lpthread"], check=True)
    mkl = build.mkl()
    # oneDNN's own dependencies (TBB, OpenMP) sit beside it in the environment's lib folder.
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(sys.prefix, "lib"))
    mkl_rt = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*"))) if mkl else []
    result = subprocess.run([binary, mkl_rt[-1] if mkl_rt else "", onednn_library() or "",
                             str(reps)], check=True, capture_output=True, text=True, env=env)
  rows = {}
  for line in result.stdout.splitlines():
    name, b, out, n, micros = line.split()
    rows.setdefault(name, {})[f"[{b}, {out}] x [{out}, {n}]"] = float(micros)
  products = list(next(iter(rows.values())))
  lines = ["| library | " + " | ".join(products) + " |", "|---|" + "---|" * len(products)]
  for name, figures in rows.items():
    lines.append(f"| {name} | " + " | ".join(f"{figures[p]:.1f}" for p in products) + " |")
  return "\n".join(lines)


def step_table(rounds: int) -> str:
  """Fused training step (ms) with Eigen and with MKL products, per shape."""
  if build.mkl() is None:
    return "(MKL is not installed: the kernel multiplies with Eigen only)"
  lines = ["| B, T, F, H | fused, Eigen ms | fused, MKL ms | MKL / Eigen |", "|---|---|---|---|"]
  for shape in SHAPES["all"]:
    x = tf.random.stateless_normal([shape.batch, shape.steps, shape.features], seed=[1, 2])
    runs = {}
    for name, mode in (("eigen", kernels.GEMM_EIGEN), ("mkl", kernels.GEMM_MKL)):
      step = tf_train_step(LSTM(shape.units, implementation="fused"), x)

      def run(step=step, mode=mode):
        kernels.gemm_mode = mode  # read when the step is traced (its first, untimed call)
        return step()
      run()
      runs[name] = run
    ms = {k: 1e3 * v for k, v in time_interleaved(runs, rounds, warmup=2, pause=0.01).items()}
    lines.append(f"| {shape.batch}, {shape.steps}, {shape.features}, {shape.units} | "
                 f"{ms['eigen']:.1f} | {ms['mkl']:.1f} | {ms['mkl'] / ms['eigen']:.2f} |")
  kernels.gemm_mode = kernels.GEMM_BEST
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rounds", type=int, default=21, help="timed rounds of the training step")
  parser.add_argument("--reps", type=int, default=51, help="timed repetitions of each product")
  args = parser.parse_args(argv)
  if not kernels.available():
    raise SystemExit(f"the fused kernel is not built: {kernels.error()}")
  print(f"## Per-step recurrent product, median microseconds\n\n- {machine_line()}\n")
  print(gemm_table(args.reps))
  print(f"\n## Fused training step, median of {args.rounds} interleaved rounds\n")
  print(step_table(args.rounds))
  return 0


if __name__ == "__main__":
  sys.exit(main())
