"""Corpora at scale: tokenization throughput, peak memory and step speed on synthetic text.

Generates its own English-like text (Zipf-distributed words, 3% of them with accented letters, lines
of 5-20 words) of 100 MB and 1 GB, then measures with a fresh token cache:

  tokenize     char and word level MB/s of the first run (streaming passes into the cache)
  peak RSS     of a whole 50-step `tbptt` run (charlm.gin) on the 100 MB and the 1 GB file
  cache hit    seconds from launch to the start of training when the ids are cached
  steps/s      of the same model on the 100 MB file and on the embedded corpus, side by side

Targets: peak RSS on 1 GB < 2 GB and < 1.10x the 100 MB run's; char >= 50 MB/s; word >= 15 MB/s;
cache hit < 10 s; steps/s on 100 MB no lower than on the embedded corpus (interleaved runs,
medians; the synthetic alphabet of ~90 characters is close to the embedded corpus's ~100, so the
output layers are of about the same size).

  python benchmarks/corpus_scale.py                # 100 MB and 1 GB (a few minutes, ~4 GB of disk)
  python benchmarks/corpus_scale.py --quick        # 4 MB and 8 MB: a smoke run
"""

import argparse
import datetime
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks.timing import machine_line  # noqa: E402
from tbptt.experiments.data import token_cache  # noqa: E402
from tbptt.experiments.data.text_source import TextSource  # noqa: E402

MB = 1_000_000
RUN_BINDINGS = ["TextCorpus.batch_size=32", "TextCorpus.seq_len=100", "LanguageModel.units=128",
                "Trainer.histogram_interval=None", "Trainer.eval_interval=100000",
                "Trainer.checkpoint_interval=100000", "TextCorpus.test_path=None"]
_TRAINING = re.compile(r"training from step", re.IGNORECASE)
_SPEED = re.compile(r"step (\d+)/\d+ .*?([\d.]+) steps/s")


def synthetic_text(path: pathlib.Path, size: int, seed: int = 0) -> None:
  """Writes `size` bytes (about) of English-like lines to `path`, block by block."""
  rng = np.random.default_rng(seed)
  letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
  vocabulary = ["".join(rng.choice(letters, rng.integers(1, 10))) for _ in range(30_000)]
  marks = list(",;:()'\"-?!0123456789") + [c.upper() for c in "etaoinshrdlcumwfgypbvkjxqz"]
  for i in range(0, len(vocabulary), 7):  # Capitals, digits and punctuation, as in real prose.
    vocabulary[i] += marks[i % len(marks)]
  accents = dict(zip("aeiounc", "àéîöüñç"))
  for i in range(0, len(vocabulary), 33):  # 3% of the words carry an accented letter.
    vocabulary[i] = "".join(accents.get(c, c) for c in vocabulary[i])
  weights = 1.0 / np.arange(1, len(vocabulary) + 1)
  weights /= weights.sum()
  lengths = rng.integers(5, 21, 50_000)
  words = iter(rng.choice(len(vocabulary), lengths.sum(), p=weights))
  lines = [" ".join(vocabulary[next(words)] for _ in range(n)).capitalize() + ".\n"
           for n in lengths]
  pool = np.array(lines, dtype=object)
  written = 0
  with open(path, "wb") as f:
    while written < size:
      block = "".join(pool[rng.permutation(len(pool))]).encode("utf-8")[:size - written]
      block = block.decode("utf-8", errors="ignore").encode("utf-8")  # No character cut in two.
      f.write(block)
      written += len(block)


def tokenize_rate(path: pathlib.Path, level: str, cache: pathlib.Path) -> float:
  """MB/s of a first (uncached) tokenization of `path` at `level`, in this process."""
  shutil.rmtree(cache, ignore_errors=True)
  os.environ["TBPTT_CACHE_DIR"] = str(cache)
  start = time.perf_counter()
  token_cache.train_ids(TextSource("train", str(path)), level)
  return os.path.getsize(path) / MB / (time.perf_counter() - start)


def launch(model_dir, train_path, valid_path, steps, extra=(), cache=None) -> dict:
  """One `python -m tbptt` run: its peak RSS, the seconds to the start of training, its speeds."""
  shutil.rmtree(model_dir, ignore_errors=True)  # A fresh run, even in a reused --workdir.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  if cache is not None:
    env["TBPTT_CACHE_DIR"] = str(cache)
  argv = [sys.executable, "-m", "tbptt", f"--model_dir={model_dir}", "--gin_file=charlm.gin",
          f"--gin_bindings=TextCorpus.train_path='{train_path}'",
          f"--gin_bindings=TextCorpus.valid_path='{valid_path}'",
          f"--gin_bindings=Trainer.train_steps={steps}"] + [
              f"--gin_bindings={b}" for b in RUN_BINDINGS + list(extra)]
  start = time.perf_counter()
  process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
  to_training, speeds, output = None, {}, []
  for line in process.stdout:
    output.append(line)
    if to_training is None and _TRAINING.search(line):
      to_training = time.perf_counter() - start
    match = _SPEED.search(line)
    if match:
      speeds[int(match[1])] = float(match[2])
  _, status, usage = os.wait4(process.pid, 0)
  if status != 0:
    raise RuntimeError(f"the run failed:\n{''.join(output[-20:])}")
  with open(pathlib.Path(model_dir) / "vocab.json") as f:
    vocab_size = len(json.load(f)["tokens"])
  return {"peak_rss_mb": usage.ru_maxrss / 1024, "to_training": to_training, "speeds": speeds,
          "wall": time.perf_counter() - start, "vocab_size": vocab_size}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="4 MB and 8 MB files: a smoke run")
  parser.add_argument("--rounds", type=int, default=3, help="interleaved speed runs per corpus")
  parser.add_argument("--speed_steps", type=int, default=300,
                      help="steps of each speed run (longer runs: steadier medians)")
  parser.add_argument("--speed_only", action="store_true", help="only the steps/s comparison "
                      "(the text files of an earlier --workdir are reused)")
  parser.add_argument("--workdir", default=None, help="where the text files go (default: a "
                      "temporary folder, removed at the end)")
  args = parser.parse_args(argv)
  small, large = (4 * MB, 8 * MB) if args.quick else (100 * MB, 1000 * MB)
  speed_steps = 100 if args.quick else args.speed_steps
  work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="tbptt-corpus-scale-"))
  work.mkdir(parents=True, exist_ok=True)
  try:
    texts = {}
    for name, size in (("small", small), ("large", large)):
      texts[name] = work / f"{name}.txt"
      if not texts[name].exists():
        synthetic_text(texts[name], size, seed=len(name))
    valid = work / "valid.txt"
    synthetic_text(valid, 1 * MB, seed=7)
    cache = work / "cache-runs"
    rates, runs = {}, {}
    if not args.speed_only:
      rates = {level: tokenize_rate(texts["small"], level, work / f"cache-{level}")
               for level in ("char", "word")}
      shutil.rmtree(cache, ignore_errors=True)
    for name in (() if args.speed_only else ("small", "large")):
      first = launch(work / f"run-{name}-1", texts[name], valid, 50, cache=cache)
      runs[name] = first
      runs[f"{name}-hit"] = launch(work / f"run-{name}-2", texts[name], valid, 50, cache=cache)

    speeds = {"file": [], "embedded": []}
    for round_index in range(args.rounds):
      for kind in (("file", "embedded") if round_index % 2 == 0 else ("embedded", "file")):
        train = texts["small"] if kind == "file" else "stdlib"
        run = launch(work / f"speed-{kind}-{round_index}", train,
                     valid if kind == "file" else "stdlib", speed_steps, cache=cache,
                     extra=["Trainer.log_interval=50", "Trainer.steps_per_loop=50"])
        later = [v for step, v in sorted(run["speeds"].items()) if step > 50]
        speeds[kind].append(statistics.median(later))
        speeds[f"{kind} vocabulary"] = run["vocab_size"]
  finally:
    if args.workdir is None:
      shutil.rmtree(work, ignore_errors=True)
  if args.speed_only:
    print(speed_report(speeds, small))
    return 0 if statistics.median(speeds["file"]) >= statistics.median(speeds["embedded"]) else 1
  text, passed = report(rates, runs, speeds, small, large)
  print(text)
  return 0 if passed else 1


def speed_report(speeds, small) -> str:
  file_speed, embedded_speed = (statistics.median(speeds[k]) for k in ("file", "embedded"))
  return (f"steps/s, {small // MB} MB file: {', '.join(f'{v:.2f}' for v in speeds['file'])} "
          f"(median {file_speed:.2f}); embedded corpus: "
          f"{', '.join(f'{v:.2f}' for v in speeds['embedded'])} (median {embedded_speed:.2f}); "
          f"file / embedded = {file_speed / embedded_speed:.3f}")


def report(rates, runs, speeds, small, large) -> tuple:
  """The printed table and whether every target was met."""
  file_speed = statistics.median(speeds["file"])
  embedded_speed = statistics.median(speeds["embedded"])
  growth = runs["large"]["peak_rss_mb"] / runs["small"]["peak_rss_mb"]
  lines = [f"# Corpora at scale ({datetime.date.today()}, {machine_line()})", "",
           "| measure | value |", "| --- | --- |",
           f"| tokenize, char level, {small // MB} MB | {rates['char']:.0f} MB/s |",
           f"| tokenize, word level, {small // MB} MB | {rates['word']:.0f} MB/s |"]
  for name, size in (("small", small), ("large", large)):
    lines.append(f"| peak RSS, 50 steps, {size // MB} MB char corpus, first run | "
                 f"{runs[name]['peak_rss_mb']:,.0f} MB |")
    lines.append(f"| peak RSS, 50 steps, {size // MB} MB, cached ids | "
                 f"{runs[name + '-hit']['peak_rss_mb']:,.0f} MB |")
    lines.append(f"| launch to training, {size // MB} MB, cached ids | "
                 f"{runs[name + '-hit']['to_training']:.1f} s |")
  lines += [f"| steps/s, {small // MB} MB file ({speeds['file vocabulary']} characters) | "
            f"{file_speed:.2f} |",
            f"| steps/s, embedded corpus ({speeds['embedded vocabulary']} characters) | "
            f"{embedded_speed:.2f} |", ""]
  checks = [
      (runs["large"]["peak_rss_mb"] < 2000,
       f"peak RSS on {large // MB} MB = {runs['large']['peak_rss_mb']:,.0f} MB < 2,000 MB"),
      (growth < 1.10, f"peak RSS {large // MB} MB / {small // MB} MB = {growth:.3f} < 1.10"),
      (rates["char"] >= 50, f"char tokenization = {rates['char']:.0f} MB/s >= 50"),
      (rates["word"] >= 15, f"word tokenization = {rates['word']:.0f} MB/s >= 15"),
      (runs["large-hit"]["to_training"] < 10,
       f"launch to training with cached ids = {runs['large-hit']['to_training']:.1f} s < 10 s"),
      (file_speed >= embedded_speed,
       f"steps/s file / embedded = {file_speed / embedded_speed:.3f} >= 1.0"),
  ]
  lines += [f"- {'PASS' if ok else 'FAIL'} {what}" for ok, what in checks]
  return "\n".join(lines), all(ok for ok, _ in checks)


if __name__ == "__main__":
  sys.exit(main())
