"""Tokens per second of the tbptt Trainer against `keras.Model.fit`, and the Trainer's own overhead.

Every candidate trains the same language model (Embedding -> LSTM -> Dense, SGD with global-norm
clipping) on the same batch layout: B contiguous token streams cut into chunks of T, the LSTM state
carried from chunk to chunk.

  trainer        `Trainer.train()` at its default cadence (100 steps per loop, summaries every 100
                 steps, histograms and a checkpoint every 1000), model built with keras.layers.LSTM
  trainer/tbptt  the same with the tbptt `layers.LSTM`
  bare           the Trainer's compiled step loop called back to back: no summaries, no checkpoints
  fit            `model.fit` of a Sequential with keras.layers.LSTM(stateful=True),
  steps_per_execution=1 fit/spe        the same with steps_per_execution = the Trainer's steps per
  loop

Candidates run in interleaved rounds of `--steps` steps after one untimed warm-up round each; the
table reports median tokens/s. Targets (PASS/FAIL): trainer >= fit, and the Trainer's overhead over
the bare loop (bare / trainer - 1) under 3%.

`--versus_torch` times instead the character language model of configs/charlm.gin at 2 x 256 units
(`LanguageModel`, Adam, global-norm clip 5, B 32, T 64) trained by the Trainer, against its PyTorch
twin (the same layers, optimizer, clipping and state carried between chunks, written as a PyTorch
user would). Candidates: ours with implementation='auto' (the fused kernel where it is built),
ours with 'loop', and torch. Target: ours >= torch in tokens/s.

  python benchmarks/trainer.py                # 5 rounds of 1000 steps
  python benchmarks/trainer.py --quick        # smoke run: a tiny model, 2 rounds of 20 steps
  python benchmarks/trainer.py --versus_torch # ours against PyTorch, 5 rounds of 200 steps
"""

import argparse
import contextlib
import datetime
import os
import pathlib
import sys
import tempfile
from typing import Callable, NamedTuple

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks.timing import machine_line, time_interleaved  # noqa: E402
from tbptt.experiments.language_model import LanguageModel  # noqa: E402
from tbptt.layers import LSTM, LSTMState, kernels  # noqa: E402
from tbptt.trainer import Trainer, runtime  # noqa: E402
from tbptt.trainer.task import Task  # noqa: E402

try:
  import torch

  from benchmarks.charlm_twin import TorchCharLM
except ImportError:
  torch = None

OVERHEAD_LIMIT = 0.03
LEARNING_RATE = 1.0
CLIP_NORM = 5.0


class Shape(NamedTuple):
  batch: int
  steps: int
  vocab: int
  units: int

  def __str__(self):
    return f"B={self.batch} T={self.steps} V={self.vocab} E=H={self.units}"


SHAPES = {"small": Shape(20, 35, 1000, 64), "ptb": Shape(20, 35, 2000, 200)}
QUICK_SHAPE = Shape(4, 10, 50, 16)

# The character LM against PyTorch: 2 layers of 256 units over a 100-character vocabulary.
CHARLM_SHAPE = Shape(32, 64, 100, 256)
CHARLM_QUICK_SHAPE = Shape(4, 10, 50, 16)
CHARLM_LAYERS = 2
CHARLM_EMBEDDING = 64
CHARLM_LEARNING_RATE = 0.002
CHARLM_STEPS = 200
CHUNKS = 50  # chunks per pass over the synthetic streams


class LM(keras.Model):
  """Embedding -> LSTM -> Dense, state in and out: `lm(tokens, state) -> (logits, state)`."""

  def __init__(self, shape: Shape, tbptt_lstm: bool):
    super().__init__()
    self.units = shape.units
    self.embedding = keras.layers.Embedding(shape.vocab, shape.units)
    self.tbptt_lstm = tbptt_lstm
    self.lstm = (LSTM(shape.units) if tbptt_lstm
                 else keras.layers.LSTM(shape.units, return_sequences=True, return_state=True))
    self.head = keras.layers.Dense(shape.vocab)

  def call(self, inputs, state, training=False):
    x = self.embedding(inputs)
    if self.tbptt_lstm:
      outputs, state = self.lstm(x, initial_state=state, training=training)
    else:
      outputs, h, c = self.lstm(x, initial_state=[state.h, state.c], training=training)
      state = LSTMState(h, c)
    return self.head(outputs), state


def token_streams(shape: Shape) -> np.ndarray:
  """[B, CHUNKS * T + 1] random tokens: B contiguous streams (+1 token for the last target)."""
  return np.random.default_rng(0).integers(0, shape.vocab, (shape.batch, CHUNKS * shape.steps + 1),
                                           dtype=np.int32)


class StreamTask(Task):
  """Next-token prediction over the streams; chunk k = step mod CHUNKS, rows reset at chunk 0.

  The model is `LM(shape, tbptt_lstm)`, or `model` if given (then it has `initial_state`).
  """

  def __init__(self, shape: Shape, tbptt_lstm: bool, model=None):
    self.shape = shape
    self._streams = tf.constant(token_streams(shape))
    self._model = model or LM(shape, tbptt_lstm)

  @property
  def model(self):
    return self._model

  @property
  def global_batch_size(self):
    return self.shape.batch

  @property
  def tokens_per_step(self):
    return self.shape.batch * self.shape.steps

  def initial_state(self, batch_size):
    if isinstance(self._model, LanguageModel):
      return self._model.initial_state(batch_size)
    zeros = tf.zeros([batch_size, self.shape.units])
    return LSTMState(zeros, zeros)

  def train_batch(self, step, row_start, num_rows):
    t = self.shape.steps
    k = tf.cast(step % CHUNKS, tf.int32)
    window = tf.slice(self._streams, [tf.cast(row_start, tf.int32), k * t], [num_rows, t + 1])
    return {"inputs": window[:, :-1], "targets": window[:, 1:], "weights": tf.ones([num_rows, t]),
            "reset": tf.fill([num_rows], tf.equal(k, 0))}

  def loss(self, batch, predictions):
    return keras.losses.sparse_categorical_crossentropy(batch["targets"], predictions,
                                                        from_logits=True)

  def num_eval_batches(self, split):
    return 0

  def eval_batch(self, split, index, row_start, num_rows):
    raise ValueError("no eval splits")


def make_trainer(shape: Shape, model_dir: str, tbptt_lstm: bool, **kwargs) -> Trainer:
  runtime.seed_everything(0)
  return Trainer(task=StreamTask(shape, tbptt_lstm), model_dir=model_dir, train_steps=10**9,
                 optimizer=keras.optimizers.SGD, learning_rate=LEARNING_RATE, clip_norm=CLIP_NORM,
                 **kwargs)


def trainer_round(trainer: Trainer, steps: int) -> Callable[[], None]:
  return lambda: trainer.train(until_step=trainer.step + steps)


def bare_round(trainer: Trainer, steps: int, steps_per_loop: int) -> Callable[[], None]:
  def run():
    done = 0
    while done < steps:
      n = min(steps_per_loop, steps - done)
      trainer.runner.train(n)  # Returns NumPy values: the steps have run when it returns.
      done += n
  return run


def fit_round(shape: Shape, steps: int, steps_per_execution: int) -> Callable[[], None]:
  runtime.seed_everything(0)
  model = keras.Sequential([
      keras.Input(batch_shape=(shape.batch, shape.steps), dtype="int32"),
      keras.layers.Embedding(shape.vocab, shape.units),
      keras.layers.LSTM(shape.units, return_sequences=True, stateful=True),
      keras.layers.Dense(shape.vocab),
  ])
  model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, global_clipnorm=CLIP_NORM),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                steps_per_execution=steps_per_execution)
  streams = token_streams(shape)
  t = shape.steps
  # Batch k of the dataset is chunk k: rows k*B .. k*B + B - 1 are the B streams' k-th chunks.
  x = np.concatenate([streams[:, k * t:(k + 1) * t] for k in range(CHUNKS)])
  y = np.concatenate([streams[:, k * t + 1:(k + 1) * t + 1] for k in range(CHUNKS)])
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(shape.batch, drop_remainder=True)
  dataset = dataset.repeat()
  # shuffle=False: the chunk order carries the state. (Keras ignores shuffle for a dataset, but
  # warns unless it is False.)
  return lambda: model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)


def candidates(shape: Shape, steps: int, steps_per_loop: int, directory: str, quick: bool) -> dict:
  cadence = {}
  if quick:  # The default cadence scaled down to the short rounds.
    cadence = dict(summary_interval=5, checkpoint_interval=steps, histogram_interval=steps,
                   log_interval=steps)
  cadence["steps_per_loop"] = steps_per_loop
  trainer = make_trainer(shape, os.path.join(directory, "trainer"), tbptt_lstm=False, **cadence)
  tbptt = make_trainer(shape, os.path.join(directory, "tbptt"), tbptt_lstm=True, **cadence)
  bare = make_trainer(shape, os.path.join(directory, "bare"), tbptt_lstm=False, **cadence)
  bare_tbptt = make_trainer(shape, os.path.join(directory, "bare_tbptt"), tbptt_lstm=True,
                            **cadence)
  return {"trainer": trainer_round(trainer, steps),
          "trainer/tbptt": trainer_round(tbptt, steps),
          "bare": bare_round(bare, steps, steps_per_loop),
          "bare/tbptt": bare_round(bare_tbptt, steps, steps_per_loop),
          "fit": fit_round(shape, steps, 1),
          "fit/spe": fit_round(shape, steps, steps_per_loop)}


def charlm_trainer(shape: Shape, model_dir: str, implementation: str, quick: bool) -> Trainer:
  """The Trainer on the character LM (LanguageModel, Adam, clip 5), summaries at their default."""
  runtime.seed_everything(0)
  model = LanguageModel(shape.vocab, units=shape.units, num_layers=CHARLM_LAYERS,
                        embedding_dim=CHARLM_EMBEDDING, implementation=implementation)
  cadence = dict(summary_interval=5, checkpoint_interval=10**9, histogram_interval=10**9,
                 log_interval=10**9, steps_per_loop=10) if quick else {}
  return Trainer(task=StreamTask(shape, True, model=model), model_dir=model_dir,
                 train_steps=10**9, optimizer=keras.optimizers.Adam,
                 learning_rate=CHARLM_LEARNING_RATE, clip_norm=CLIP_NORM, **cadence)


def torch_charlm_round(shape: Shape, steps: int) -> Callable[[], None]:
  """The PyTorch twin of the character LM (`benchmarks/charlm_twin.py`) on the same streams."""
  twin = TorchCharLM(shape.vocab, units=shape.units, layers=CHARLM_LAYERS,
                     embedding=CHARLM_EMBEDDING, learning_rate=CHARLM_LEARNING_RATE,
                     clip_norm=CLIP_NORM, seed=0)
  streams = token_streams(shape)
  t = shape.steps
  carried = {"step": 0}

  def run():
    for _ in range(steps):
      k = carried["step"] % CHUNKS
      window = streams[:, k * t:(k + 1) * t + 1]
      twin.train_step(window[:, :-1], window[:, 1:], reset=k == 0)
      carried["step"] += 1

  return run


def versus_torch_candidates(shape: Shape, steps: int, directory: str, quick: bool) -> tuple:
  """(name -> one round, the 'ours' candidate's model)."""
  ours = charlm_trainer(shape, os.path.join(directory, "auto"), "auto", quick)
  loop = charlm_trainer(shape, os.path.join(directory, "loop"), "loop", quick)
  runs = {"ours": trainer_round(ours, steps), "ours/loop": trainer_round(loop, steps)}
  if torch is not None:
    runs["torch"] = torch_charlm_round(shape, steps)
  return runs, ours.task.model


def versus_torch_report(seconds: dict, shape: Shape, steps: int, rounds: int,
                        implementations: str) -> tuple[str, bool]:
  """The Markdown table and the target line (ours >= torch); returns (text, target passed)."""
  tokens = {name: steps * shape.batch * shape.steps / s for name, s in seconds.items()}
  lines = [
      f"## Character LM ({CHARLM_LAYERS} x {shape.units}, B={shape.batch} T={shape.steps} "
      f"V={shape.vocab}, Adam, clip {CLIP_NORM:g}): Trainer against PyTorch, median of {rounds} "
      f"interleaved rounds of {steps} steps",
      "",
      f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
      f"- {machine_line()}",
      "- load average (1, 5, 15 min) at the end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
      f"- TensorFlow {tf.__version__}, Keras {keras.__version__}"
      + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else "")
      + f", TF intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}"
      + f"; ours ran {implementations}",
      "",
      "| candidate | tokens/s | ours / candidate |",
      "|---|---|---|",
  ]
  for name, rate in tokens.items():
    lines.append(f"| {name} | {rate:,.0f} | {tokens['ours'] / rate:.2f} |")
  checks = []
  if "torch" in tokens:
    ratio = tokens["ours"] / tokens["torch"]
    checks.append((f"ours / torch tokens/s = {ratio:.2f} >= 1.0", ratio >= 1.0))
  lines += ["", "Targets:"] + [f"- {'PASS' if ok else 'FAIL'} {text}" for text, ok in checks]
  return "\n".join(lines), all(ok for _, ok in checks)


def report(seconds: dict, shape: Shape, steps: int, rounds: int) -> tuple[str, bool]:
  """The Markdown table and target lines; returns (text, every target passed)."""
  tokens = {name: steps * shape.batch * shape.steps / s for name, s in seconds.items()}
  lines = [
      f"## Trainer throughput, {shape}, median of {rounds} interleaved rounds of {steps} steps",
      "",
      f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
      f"- {machine_line()}",
      "- load average (1, 5, 15 min) at the end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
      f"- TensorFlow {tf.__version__}, Keras {keras.__version__}",
      "",
      "| candidate | tokens/s | steps/s | trainer / candidate |",
      "|---|---|---|---|",
  ]
  for name, rate in tokens.items():
    lines.append(f"| {name} | {rate:,.0f} | {steps / seconds[name]:.1f} | "
                 f"{tokens['trainer'] / rate:.2f} |")
  overhead = tokens["bare"] / tokens["trainer"] - 1
  checks = [(f"trainer / fit = {tokens['trainer'] / tokens['fit']:.2f} >= 1.0",
             tokens["trainer"] >= tokens["fit"]),
            (f"trainer overhead over the bare loop = {overhead:+.1%} < {OVERHEAD_LIMIT:.0%}",
             overhead < OVERHEAD_LIMIT)]
  if "bare/tbptt" in tokens:  # The same with our fastest layer (the fused kernel where built).
    overhead = tokens["bare/tbptt"] / tokens["trainer/tbptt"] - 1
    checks.append((f"trainer overhead over the bare loop, our LSTM = {overhead:+.1%} < "
                   f"{OVERHEAD_LIMIT:.0%}", overhead < OVERHEAD_LIMIT))
  lines += ["", "Targets:"] + [f"- {'PASS' if ok else 'FAIL'} {text}" for text, ok in checks]
  return "\n".join(lines), all(ok for _, ok in checks)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shape", choices=sorted(SHAPES), default="small",
                      help="small: B,T,V,H = 20,35,1000,64; ptb: 20,35,2000,200")
  parser.add_argument("--steps", type=int, default=None,
                      help=f"training steps per timed round (default 1000; {CHARLM_STEPS} with "
                           "--versus_torch)")
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each candidate once)")
  parser.add_argument("--steps_per_loop", type=int, default=100, help="Trainer.steps_per_loop")
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: a tiny model, 2 rounds of 20 steps")
  parser.add_argument("--threads", type=int, default=0,
                      help="with --versus_torch: TensorFlow and torch on this many threads each "
                           "(0: their defaults)")
  parser.add_argument("--versus_torch", action="store_true",
                      help="the character LM against its PyTorch twin (see the module docstring)")
  parser.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  shape, steps, rounds = SHAPES[args.shape], args.steps or 1000, args.rounds
  steps_per_loop = args.steps_per_loop
  if args.quick:
    shape, steps, rounds, steps_per_loop = QUICK_SHAPE, 20, 2, 10
  logging.set_verbosity(logging.WARNING)
  if args.versus_torch:
    return versus_torch(args)
  with tempfile.TemporaryDirectory(prefix="tbptt_bench_") as directory:
    print(f"timing {shape}, {rounds} rounds of {steps} steps ...", file=sys.stderr, flush=True)
    # The Trainer's progress lines go to stderr with the other chatter; stdout is the table.
    with contextlib.redirect_stdout(sys.stderr):
      runs = candidates(shape, steps, steps_per_loop, directory, args.quick)
      seconds = time_interleaved(runs, rounds)
  text, passed = report(seconds, shape, steps, rounds)
  print(text)
  return 1 if args.strict and not passed else 0


def versus_torch(args) -> int:
  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if torch is not None:
      torch.set_num_threads(args.threads)
  shape, rounds = CHARLM_SHAPE, args.rounds
  steps = CHARLM_STEPS if args.steps is None else args.steps
  if args.quick:
    shape, steps, rounds = CHARLM_QUICK_SHAPE, 20, 2
  with tempfile.TemporaryDirectory(prefix="tbptt_bench_") as directory:
    print(f"timing the character LM {shape}, {rounds} rounds of {steps} steps ...",
          file=sys.stderr, flush=True)
    runs, model = versus_torch_candidates(shape, steps, directory, args.quick)
    # A pause before each round lets the other framework's idle threads stop spinning first.
    seconds = time_interleaved(runs, rounds, pause=0.5)
  ran = "/".join(sorted(set(model.implementations)))
  text, passed = versus_torch_report(seconds, shape, steps, rounds, f"implementation {ran!r} "
                                     f"(kernel: {kernels.gemm_library() or 'not built'})")
  print(text)
  return 1 if args.strict and not passed else 0


if __name__ == "__main__":
  sys.exit(main())
