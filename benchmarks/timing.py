"""What every benchmark shares: interleaved timing with medians, and a description of the machine.

Shared machines are noisy: candidates are timed in rounds, each candidate once per round in a
shuffled order, so that a change in load hits all of them alike; the median of the rounds is
reported.
"""

import os
import platform
import random
import statistics
import time
from typing import Callable


def time_interleaved(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                     pause: float = 0.0, seed: int = 0) -> dict[str, float]:
  """Median seconds per call of each candidate, measured in interleaved rounds.

  Args:
    candidates: Name -> a function that runs one unit of work and returns once it has finished.
    rounds: Timed rounds.
    warmup: Untimed calls of each candidate first (tracing, compilation, caches).
    pause: Seconds to sleep before each timed call, so the previous candidate's idle worker threads
      stop spinning before the next one starts (TF's and torch's pools compete for the same cores).
    seed: Seed of the shuffled order.
  """
  for run in candidates.values():
    for _ in range(warmup):
      run()
  times = {name: [] for name in candidates}
  order = list(candidates)
  rng = random.Random(seed)
  for _ in range(rounds):
    rng.shuffle(order)
    for name in order:
      time.sleep(pause)
      start = time.perf_counter()
      candidates[name]()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def cpu_model() -> str:
  """The CPU's model name, from /proc/cpuinfo where there is one."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine_line() -> str:
  """`CPU: <model> (<n> logical cores)` for a benchmark's header."""
  return f"CPU: {cpu_model()} ({os.cpu_count()} logical cores)"
