"""Learning speed: valid bits/char at equal steps of our character LM, its PyTorch twin, Keras fit.

The model is the one of `benchmarks/charlm_twin.py`: Embedding 64 -> 2 x LSTM 256 -> Dense, B 32,
T 64, Adam 2e-3, global-norm clip 5, the state carried between chunks. Every candidate reads the
same training chunks in the same order (chunk `step mod num_chunks` of `TextCorpus`'s layout) and
is evaluated on the valid split the same way (every token counted, batch 1, `EvalLayout`):

  ours    `python -m tbptt` with configs/charlm.gin and the bindings above (our defaults)
  torch   the PyTorch twin, PyTorch's default initialisation
  keras   `keras.layers.LSTM(stateful=True)` + `model.fit`, Keras's defaults

Corpora: `embedded` (the standard library's own *.py files, configs/charlm.gin's default) and
`pydoc` (English prose: the standard library's `pydoc_data/topics.py`, first 90% of its characters
train, last 10% valid). Every run is its own process on one thread (TensorFlow's intra- and
inter-op pools, torch's): two threads make torch's OpenMP pool collapse on a busy 2-core machine.

  python benchmarks/learning_speed.py                        # ours, torch: 3 seeds x 2 corpora
  python benchmarks/learning_speed.py --candidates ours,torch,keras --seeds 0
  python benchmarks/learning_speed.py --ablation --corpora embedded --seeds 0,1
  python benchmarks/learning_speed.py --quick                # smoke run: a tiny model, 20 steps

Prints, per corpus, each candidate's valid bits/char (mean and spread over the seeds), its tokens/s
(median over the run's later windows) and both as a ratio to torch's; target (PASS/FAIL): ours
within 0.01 bits/char of torch or better on every corpus.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from benchmarks.timing import machine_line  # noqa: E402

CORPORA = ("embedded", "pydoc")
STEPS = 1500
BATCH, SEQ_LEN, UNITS, EMBEDDING = 32, 64, 256, 64
QUICK = {"steps": 20, "units": 16, "batch": 4, "seq_len": 16, "stdlib_bytes": 200_000}
TOLERANCE = 0.01  # bits/char

# Our initialisers one at a time, from Keras's defaults (the layers' own) to PyTorch's scheme.
KERAS_INIT = ("LanguageModel.embedding_initializer='uniform'",
              "LanguageModel.kernel_initializer='glorot_uniform'",
              "LanguageModel.recurrent_initializer='orthogonal'",
              "LanguageModel.bias_initializer='zeros'", "LanguageModel.unit_forget_bias=True",
              "LanguageModel.softmax_initializer='glorot_uniform'")
ABLATION = {
    "Keras defaults (U(+-0.05) embedding, Glorot/orthogonal LSTM, forget bias 1, Glorot softmax)":
        KERAS_INIT,
    "Keras defaults, N(0, 1) embedding":
        KERAS_INIT + ("LanguageModel.embedding_initializer='unit_normal'",),
    "Keras defaults, N(0, 1) embedding, no forget bias":
        KERAS_INIT + ("LanguageModel.embedding_initializer='unit_normal'",
                      "LanguageModel.unit_forget_bias=False"),
    "PyTorch's LSTM init (U(+-1/sqrt(u)), no forget bias), N(0, 1) embedding, Glorot softmax":
        KERAS_INIT + ("LanguageModel.embedding_initializer='unit_normal'",
                      "LanguageModel.kernel_initializer='lstm_uniform'",
                      "LanguageModel.recurrent_initializer='lstm_uniform'",
                      "LanguageModel.bias_initializer='lstm_uniform'",
                      "LanguageModel.unit_forget_bias=False"),
    "PyTorch's scheme throughout (LSTM, N(0, 1) embedding, fan-in uniform softmax)":
        KERAS_INIT + ("LanguageModel.embedding_initializer='unit_normal'",
                      "LanguageModel.kernel_initializer='lstm_uniform'",
                      "LanguageModel.recurrent_initializer='lstm_uniform'",
                      "LanguageModel.bias_initializer='lstm_uniform'",
                      "LanguageModel.unit_forget_bias=False",
                      "LanguageModel.softmax_initializer='fan_in_uniform'"),
}


def corpus_paths(corpus: str, workdir: str) -> dict:
  """TextCorpus arguments of a corpus; `pydoc` is split into two files in `workdir`."""
  if corpus == "embedded":
    return {"train_path": "stdlib", "valid_path": "stdlib"}
  source = pathlib.Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py"
  text = source.read_text(encoding="utf-8")
  cut = int(len(text) * 0.9)
  paths = {}
  for split, part in (("train", text[:cut]), ("valid", text[cut:])):
    path = pathlib.Path(workdir) / f"pydoc.{split}.txt"
    if not path.exists():
      path.write_text(part, encoding="utf-8")
    paths[f"{split}_path"] = str(path)
  return paths


def window_steps(quick: bool) -> int:
  """Steps per timing window (tokens/s is the median over the windows after the first)."""
  return min(50, sizes(quick)["steps"] // 2)


def sizes(quick: bool) -> dict:
  return QUICK if quick else {"steps": STEPS, "units": UNITS, "batch": BATCH, "seq_len": SEQ_LEN,
                              "stdlib_bytes": 2_000_000}


def text_corpus(job: dict):
  from tbptt.experiments.data.corpus import TextCorpus
  size = sizes(job["quick"])
  return TextCorpus(None, level="char", batch_size=size["batch"], seq_len=size["seq_len"],
                    eval_batch_size=1, stdlib_bytes=size["stdlib_bytes"], **job["paths"])


def eval_chunks(corpus):
  layout = corpus.evals["valid"]
  return (layout.window(k, 0, layout.batch_size) for k in range(layout.num_chunks))


# --- One run, in a child process ---------------------------------------------------------------

def run_ours(job: dict) -> dict:
  """`python -m tbptt`'s path: charlm.gin, the bindings, `run_experiment`; results from events."""
  from tbptt.experiments import experiment, gin_files
  size = sizes(job["quick"])
  steps = size["steps"]
  paths = [f"TextCorpus.{k}={v!r}" for k, v in job["paths"].items()]
  bindings = paths + [
      "TextCorpus.test_path=None", f"TextCorpus.stdlib_bytes={size['stdlib_bytes']}",
      f"TextCorpus.batch_size={size['batch']}", f"TextCorpus.seq_len={size['seq_len']}",
      "TextCorpus.eval_batch_size=1", f"LanguageModel.units={size['units']}",
      "LanguageModel.num_layers=2", f"LanguageModel.embedding_dim={EMBEDDING}",
      f"Trainer.train_steps={steps}", "Trainer.optimizer=@optimizers.Adam",
      "Trainer.learning_rate=0.002", "Trainer.clip_norm=5.0", f"Trainer.eval_interval={steps}",
      f"Trainer.checkpoint_interval={steps}", f"Trainer.histogram_interval={10 * steps}",
      f"Trainer.log_interval={steps}", f"Trainer.summary_interval={window_steps(job['quick'])}",
      f"Trainer.seed={job['seed']}", "LanguageModelTask.summary_sample_length=0",
  ] + list(job.get("bindings", ()))
  gin_files.parse(["charlm.gin"], bindings)
  model_dir = tempfile.mkdtemp(prefix=f"ours-{job['corpus']}-{job['seed']}-{job['tag']}-",
                               dir=job["workdir"])
  experiment.run_experiment(model_dir, "train")
  bits = _scalars(os.path.join(model_dir, "eval"), "bits_per_char")
  speed = _scalars(os.path.join(model_dir, "train"), "tokens_per_sec")
  later = [v for s, v in sorted(speed.items())][1:] or list(speed.values())
  return {"bits_per_char": bits[max(bits)], "tokens_per_sec": statistics.median(later)}


def _scalars(directory: str, tag: str) -> dict:
  from tensorboard.backend.event_processing import event_accumulator
  import tensorflow as tf
  accumulator = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
  accumulator.Reload()
  return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)}


def run_torch(job: dict) -> dict:
  import math
  import torch
  from benchmarks.charlm_twin import TorchCharLM
  torch.set_num_threads(1)
  size = sizes(job["quick"])
  corpus = text_corpus(job)
  twin = TorchCharLM(corpus.vocab.size, units=size["units"], embedding=EMBEDDING, seed=job["seed"])
  layout, t = corpus.train, size["seq_len"]
  window_times, start = [], time.perf_counter()
  for step in range(size["steps"]):
    k = step % layout.num_chunks
    window = layout.streams[:, k * t:(k + 1) * t + 1]
    twin.train_step(window[:, :-1], window[:, 1:], reset=k == 0)
    if (step + 1) % window_steps(job["quick"]) == 0:
      now = time.perf_counter()
      window_times.append(now - start)
      start = now
  total, count = twin.evaluate(eval_chunks(corpus))
  tokens = window_steps(job["quick"]) * size["batch"] * t
  speeds = [tokens / s for s in window_times[1:] or window_times] or [0.0]
  return {"bits_per_char": total / count / math.log(2), "tokens_per_sec": statistics.median(speeds)}


def run_keras(job: dict) -> dict:
  """`keras.layers.LSTM(stateful=True)` + `fit` on the same chunks, Keras's defaults."""
  import math
  import keras
  import numpy as np
  import tensorflow as tf
  size = sizes(job["quick"])
  keras.utils.set_random_seed(job["seed"])
  corpus = text_corpus(job)
  b, t, v = size["batch"], size["seq_len"], corpus.vocab.size

  def model_of(rows):
    return keras.Sequential([
        keras.Input(batch_shape=(rows, None), dtype="int32"),
        keras.layers.Embedding(v, EMBEDDING),
        keras.layers.LSTM(size["units"], return_sequences=True, stateful=True),
        keras.layers.LSTM(size["units"], return_sequences=True, stateful=True),
        keras.layers.Dense(v)])

  model = model_of(b)
  model.compile(keras.optimizers.Adam(0.002, global_clipnorm=5.0),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  layout = corpus.train
  chunks = [k % layout.num_chunks for k in range(size["steps"])]
  inputs = np.stack([layout.streams[:, k * t:(k + 1) * t] for k in chunks]).reshape(-1, t)
  targets = np.stack([layout.streams[:, k * t + 1:(k + 1) * t + 1] for k in chunks]).reshape(-1, t)

  class Cadence(keras.callbacks.Callback):
    """Zeroes the state where a pass over the text starts; times windows of 50 steps."""

    def __init__(self):
      super().__init__()
      self.times, self.start = [], time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
      if chunks[batch] == 0:
        for layer in self.model.layers:
          if isinstance(layer, keras.layers.LSTM):
            layer.reset_state()

    def on_train_batch_end(self, batch, logs=None):
      if (batch + 1) % window_steps(job["quick"]) == 0:
        now = time.perf_counter()
        self.times.append(now - self.start)
        self.start = now

  cadence = Cadence()
  model.fit(inputs, targets, batch_size=b, epochs=1, shuffle=False, verbose=0,
            callbacks=[cadence])
  evaluator = model_of(1)
  evaluator.set_weights(model.get_weights())
  step = tf.function(lambda x: evaluator(x, training=False))
  total = count = 0.0
  for x, y, w in eval_chunks(corpus):
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(y, step(tf.constant(x)))
    total += float(tf.reduce_sum(losses * w))
    count += float(w.sum())
  window = window_steps(job["quick"]) * b * t
  speeds = [window / s for s in cadence.times[1:] or cadence.times] or [0.0]
  return {"bits_per_char": total / count / math.log(2), "tokens_per_sec": statistics.median(speeds)}


def child(job: dict) -> None:
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
  if job["candidate"] != "torch":
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
  result = {"ours": run_ours, "torch": run_torch, "keras": run_keras}[job["candidate"]](job)
  print("RESULT " + json.dumps(result), flush=True)


# --- The parent: jobs, table ---------------------------------------------------------------------

def run_job(job: dict) -> dict:
  process = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)],
                           capture_output=True, text=True, cwd=_ROOT)
  for line in process.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"{job['candidate']} on {job['corpus']} (seed {job['seed']}) failed:\n"
                     + process.stderr[-3000:])


def summary(values: list[float]) -> str:
  if len(values) == 1:
    return f"{values[0]:.3f}"
  return f"{statistics.mean(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def report(results: dict, args, order: list) -> tuple[str, bool]:
  """results[(corpus, name)] = [per-seed dicts] -> (Markdown, target passed)."""
  size = sizes(args.quick)
  lines = [
      f"## Learning speed: valid bits/char after {size['steps']} steps (2 x {size['units']}, "
      f"B {size['batch']}, T {size['seq_len']}, Adam 2e-3, clip 5), seeds {args.seeds}",
      "", f"- {args.jobs} run(s) at once",
      f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
      f"- {machine_line()}", "- one thread per run; load average at the end: "
      + ", ".join(f"{v:.2f}" for v in os.getloadavg()), ""]
  passed = True
  for corpus in args.corpora:
    verdicts = []
    lines += [f"### {corpus}", "", "| candidate | valid bits/char | - torch | tokens/s | / torch |",
              "| --- | --- | --- | --- | --- |"]
    reference = results.get((corpus, "torch"))
    torch_bits = statistics.mean(r["bits_per_char"] for r in reference) if reference else None
    torch_speed = statistics.median(r["tokens_per_sec"] for r in reference) if reference else None
    for name in order:
      runs = results.get((corpus, name))
      if not runs:
        continue
      bits = [r["bits_per_char"] for r in runs]
      speed = statistics.median(r["tokens_per_sec"] for r in runs)
      delta = f"{statistics.mean(bits) - torch_bits:+.3f}" if torch_bits else ""
      ratio = f"{speed / torch_speed:.2f}" if torch_speed else ""
      lines.append(f"| {name} | {summary(bits)} | {delta} | {speed:,.0f} | {ratio} |")
      if name == "ours" and torch_bits is not None:
        ok = round(statistics.mean(bits) - torch_bits, 9) <= TOLERANCE
        passed &= ok
        verdicts.append(f"{'PASS' if ok else 'FAIL'}: ours {statistics.mean(bits):.3f} <= torch "
                        f"{torch_bits:.3f} + {TOLERANCE} on {corpus}")
    lines += [""] + verdicts + [""]
  return "\n".join(lines), passed


def report_file(args) -> int:
  """The table of the runs recorded in `args.report`, in their candidates' first-seen order."""
  results, order, seeds = {}, [], set()
  with open(args.report) as f:
    for line in f:
      run = json.loads(line)
      if run["corpus"] not in args.corpora:
        continue
      results.setdefault((run["corpus"], run["name"]), []).append(run)
      seeds.add(run["seed"])
      order += [] if run["name"] in order else [run["name"]]
      args.quick = run["quick"]
  args.seeds = sorted(seeds)
  text, passed = report(results, args, order)
  print(text)
  return 0 if passed or "torch" not in order else 1


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--candidates", default="ours,torch", help="ours, torch, keras")
  parser.add_argument("--corpora", default=",".join(CORPORA))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--ablation", action="store_true",
                      help="ours with each initialisation of ABLATION (and torch, if a candidate) "
                      "instead of the candidates")
  parser.add_argument("--jobs", type=int, default=1,
                      help="runs at once (their tokens/s then disturb each other)")
  parser.add_argument("--variants", help="with --ablation: which of them, as indices (default all)")
  parser.add_argument("--quick", action="store_true", help="smoke run: a tiny model, 20 steps")
  parser.add_argument("--workdir", help="where runs and the split pydoc text go (default: temp)")
  parser.add_argument("--results", help="also append each run's result to this JSON-lines file")
  parser.add_argument("--report", help="print the table of the runs in this JSON-lines file (from "
                      "--results, possibly of several invocations) and run nothing")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.candidates = args.candidates.split(",")
  args.corpora = args.corpora.split(",")
  args.seeds = [int(s) for s in args.seeds.split(",")]
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child:
    child(json.loads(args.child))
    return 0
  if args.report:
    return report_file(args)
  workdir = args.workdir or tempfile.mkdtemp(prefix="learning_speed-")
  os.makedirs(workdir, exist_ok=True)
  if args.ablation:
    variants = [name for i, name in enumerate(ABLATION)
                if args.variants is None or str(i) in args.variants.split(",")]
    names = (["torch"] if "torch" in args.candidates else []) + variants
    jobs = [("torch", "torch", ())] * ("torch" in args.candidates) + [
        ("ours", name, ABLATION[name]) for name in variants]
  else:
    names = args.candidates
    jobs = [(name, name, ()) for name in names]
  runs = [(corpus, seed, index, candidate, name, bindings)
          for corpus in args.corpora for seed in args.seeds
          for index, (candidate, name, bindings) in enumerate(jobs)]
  paths = {corpus: corpus_paths(corpus, workdir) for corpus in args.corpora}

  def one(run):
    corpus, seed, index, candidate, name, bindings = run
    result = run_job({"candidate": candidate, "corpus": corpus, "seed": seed,
                      "paths": paths[corpus], "bindings": bindings, "workdir": workdir,
                      "quick": args.quick, "tag": index})
    print(f"{corpus} seed {seed} {name}: {result['bits_per_char']:.4f} bits/char, "
          f"{result['tokens_per_sec']:,.0f} tokens/s", flush=True)
    if args.results:
      with open(args.results, "a") as f:
        f.write(json.dumps({"corpus": corpus, "seed": seed, "name": name, "jobs": args.jobs,
                            "quick": args.quick, **result}) + "\n")
    return result

  # Several runs at once share the cores: use --jobs 1 when tokens/s matter.
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    outcomes = list(pool.map(one, runs))
  results = {}
  for (corpus, _, _, _, name, _), result in zip(runs, outcomes):
    results.setdefault((corpus, name), []).append(result)
  text, passed = report(results, args, names)
  print(text)
  return 0 if passed or args.ablation or "torch" not in names else 1


if __name__ == "__main__":
  sys.exit(main())
