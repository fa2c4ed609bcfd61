"""The AWD-LSTM recipe against the plain TBPTT recipe at equal wall time: valid perplexity of each.

Both recipes train the same word-level model, scaled down from configs/awd_lstm_ptb.gin to run in
minutes on a CPU: 3 LSTM layers (256, 256, 128 units), a tied 128-wide embedding, B 20, bptt 35.

  plain   fixed 35-token chunks, no dropout, SGD at lr 1 (clip 5, init U(+-0.1)), as
          configs/ptb_small.gin
  awd     configs/awd_lstm_ptb.gin's recipe: variable-length BPTT N(35, 5) / N(17.5, 5), weight drop
          0.5, embedding dropout 0.1, locked dropout (0.4, 0.3, 0.4), AR 2, TAR 1, SGD at lr 30
          (clip 0.25, weight decay 1.2e-6), NT-ASGD (n = 5 evaluations, one per epoch)

Corpora: `embedded` (the standard library's *.py files at word level: configs/charlm.gin's default
corpus, tokenized by words) and `pydoc` (English prose: the standard library's
`pydoc_data/topics.py`, first 90% train, last 10% valid; see benchmarks/learning_speed.py).

Each run is its own process on both cores. It builds its experiment through gin (the launcher's
path) and trains, evaluating once per epoch as the recipes do, until a timer stops it after
`--seconds` of wall time (tracing included), the way a signal would; then it evaluates the valid
split (every token, batch 1; the averaged weights once NT-ASGD has triggered). The recipes of a
corpus run one after the other, so both meet the same machine; the table gives each run's steps,
its process CPU seconds and the load average.

  python benchmarks/awd_recipe.py                            # 2 corpora x 2 recipes, 240 s each
  python benchmarks/awd_recipe.py --corpora pydoc --seconds 600
  python benchmarks/awd_recipe.py --quick                    # smoke run: tiny model, a few steps
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import threading
import time

_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT / "benchmarks"))

from learning_speed import corpus_paths  # noqa: E402

RECIPES = ("plain", "awd")
CORPORA = ("embedded", "pydoc")
BATCH, BPTT, EMBEDDING, UNITS = 20, 35, 128, [256, 256, 128]
EMBEDDED_BYTES = 2_000_000

COMMON = [
    "TextCorpus.level = 'word'", f"TextCorpus.batch_size = {BATCH}",
    f"TextCorpus.seq_len = {BPTT}", "TextCorpus.eval_batch_size = 1",
    "TextCorpus.test_path = None", "LanguageModel.num_layers = 3",
    f"LanguageModel.units = {UNITS}", f"LanguageModel.embedding_dim = {EMBEDDING}",
    "LanguageModel.tie_weights = True", "LanguageModel.init_scale = 0.1",
    "LanguageModelTask.summary_sample_length = 0", "Trainer.histogram_interval = None",
    "Trainer.train_steps = 100000000",
]
BINDINGS = {
    "plain": ["Trainer.learning_rate = 1.0", "Trainer.clip_norm = 5.0",
              "Trainer.optimizer = @optimizers.SGD"],
    "awd": [f"TextCorpus.max_seq_len = {BPTT + 15}"],
}
CONFIG = {"plain": "ptb_small.gin", "awd": "awd_lstm_ptb.gin"}
QUICK = {"seconds": 8.0, "round_steps": 4, "bindings": [
    "LanguageModel.units = [16, 16, 8]", "LanguageModel.embedding_dim = 8",
    "TextCorpus.batch_size = 4", "TextCorpus.seq_len = 8", "TextCorpus.max_seq_len = 12",
    "TextCorpus.stdlib_bytes = 120000", "Trainer.eval_steps = 20"]}


def bindings_of(job: dict) -> list:
  """Gin bindings of one run: the corpus, the shared model, the recipe's own, --quick's."""
  paths = corpus_paths(job["corpus"], job["workdir"])
  corpus = [f"TextCorpus.{k} = {v!r}" for k, v in paths.items()]
  if job["corpus"] == "embedded":
    corpus.append(f"TextCorpus.stdlib_bytes = {EMBEDDED_BYTES}")
  interval = [f"Trainer.eval_interval = {job['epoch_steps']}",
              f"Trainer.checkpoint_interval = {job['epoch_steps']}",
              f"Trainer.log_interval = {job['epoch_steps']}",
              f"Trainer.summary_interval = {job['round_steps']}"]
  quick = QUICK["bindings"] if job["quick"] else []
  rate = job.get("learning_rate", {}).get(job["recipe"])
  rate = [] if rate is None else [f"Trainer.learning_rate = {rate}"]
  return corpus + COMMON + BINDINGS[job["recipe"]] + interval + [
      f"Trainer.seed = {job['seed']}"] + rate + quick


def epoch_steps(corpus: str, workdir: str, quick: bool) -> int:
  """Steps in one pass over the training text at bptt (the recipes' evaluation interval)."""
  from tbptt.experiments.data.corpus import TextCorpus
  paths = corpus_paths(corpus, workdir)
  size = {"batch_size": 4, "seq_len": 8, "stdlib_bytes": 120000} if quick else {
      "batch_size": BATCH, "seq_len": BPTT, "stdlib_bytes": EMBEDDED_BYTES}
  text = TextCorpus(None, level="word", **paths, **size)
  return text.train.num_chunks


def run_recipe(job: dict) -> dict:
  """One run (in a child process): train for the wall-time budget, then evaluate valid."""
  import gin

  from tbptt.experiments import experiment, gin_files
  from tbptt.trainer.errors import TrainingInterrupted
  gin_files.parse([CONFIG[job["recipe"]]], bindings_of(job))
  model_dir = tempfile.mkdtemp(prefix=f"{job['recipe']}-{job['corpus']}-", dir=job["workdir"])
  task_fn = gin.query_parameter("run_experiment.task_fn").scoped_configurable_fn
  _, task, trainer = experiment.build(model_dir, task_fn)
  # One training run (tracing included) that a timer stops after the budget, as a signal would:
  # the recipe's own evaluations (one per epoch) are the only ones inside it.
  timer = threading.Timer(job["seconds"], trainer.runner.request_stop)
  begin, cpu_begin = time.perf_counter(), time.process_time()
  timer.start()
  try:
    trainer.train()
  except TrainingInterrupted:
    pass
  timer.cancel()
  seconds, cpu = time.perf_counter() - begin, time.process_time() - cpu_begin
  step = trainer.step
  valid = trainer.evaluate(splits=("valid",))["valid"]
  averages = trainer.runner.averages
  averaging = None if averages is None else averages.start_step
  return {"steps": step, "seconds": seconds, "cpu_seconds": cpu, "loss": valid["loss"],
          "perplexity": math.exp(valid["loss"]), "averaging_from": averaging,
          "vocab": task.vocab.size, "load": os.getloadavg()[0]}


def run_job(job: dict) -> dict:
  process = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)],
                           capture_output=True, text=True, cwd=_ROOT,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  for line in process.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"{job['recipe']} on {job['corpus']} failed:\n" + process.stderr[-3000:])


def report(results: dict, args) -> str:
  """A markdown table: per corpus and recipe, valid perplexity at equal wall time."""
  rate = "" if args.awd_learning_rate is None else f", AWD at lr {args.awd_learning_rate:g}"
  lines = [f"AWD-LSTM vs plain TBPTT at equal wall time ({args.seconds:.0f} s of training per "
           f"run{rate}), {datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPUs",
           "", "| corpus | recipe | valid perplexity | steps | CPU s | load | NT-ASGD from step |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for corpus in args.corpora:
    for recipe in RECIPES:
      r = results.get((corpus, recipe))
      if r is None:
        continue
      lines.append(f"| {corpus} (V {r['vocab']}) | {recipe} | {r['perplexity']:.1f} | "
                   f"{r['steps']} | {r['cpu_seconds']:.0f} | {r['load']:.1f} | "
                   f"{r['averaging_from'] if r['averaging_from'] is not None else '-'} |")
  return "\n".join(lines)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--corpora", type=lambda s: s.split(","), default=list(CORPORA))
  parser.add_argument("--seconds", type=float, default=240.0, help="training wall time per run")
  parser.add_argument("--round_steps", type=int, default=20,
                      help="steps between train summaries (and stop checks between loop calls)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--recipes", type=lambda s: s.split(","), default=list(RECIPES))
  parser.add_argument("--awd_learning_rate", type=float, default=None,
                      help="the AWD recipe's rate instead of the paper's 30")
  parser.add_argument("--workdir", default=None, help="run directories (default: a temp dir)")
  parser.add_argument("--quick", action="store_true", help="a smoke run: tiny model, seconds")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.quick:
    args.seconds, args.round_steps = QUICK["seconds"], QUICK["round_steps"]
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child is not None:
    print("RESULT " + json.dumps(run_recipe(json.loads(args.child))), flush=True)
    return 0
  workdir = args.workdir or tempfile.mkdtemp(prefix="awd-recipe-")
  os.makedirs(workdir, exist_ok=True)
  results = {}
  for corpus in args.corpora:
    steps = epoch_steps(corpus, workdir, args.quick)
    for recipe in args.recipes:
      job = {"corpus": corpus, "recipe": recipe, "seconds": args.seconds, "seed": args.seed,
             "round_steps": args.round_steps, "epoch_steps": steps, "workdir": workdir,
             "quick": args.quick, "learning_rate": {"awd": args.awd_learning_rate}}
      results[(corpus, recipe)] = run_job(job)
      print(f"{corpus} {recipe}: {json.dumps(results[(corpus, recipe)])}", flush=True)
  print(report(results, args))
  return 0


if __name__ == "__main__":
  sys.exit(main())
