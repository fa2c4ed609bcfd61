"""Trains the toy task in its own process (kill, signal, multi-worker and resume tests).

  python tests/trainer/toy_run.py MODEL_DIR TRAIN_STEPS [SLOW_AFTER] [--flags]

Deterministic, with dropout (unless --dropout=0), checkpoints every 10 steps, every step's loss in
model_dir/train. With SLOW_AFTER, each step from that step on also sleeps --slow_seconds (a slow
input pipeline), which leaves time to kill or signal the process between checkpoints; each slow
step first writes its step number to --progress_file (if given). Under TF_CONFIG the run is one
worker of a multi-worker cluster. Prints `step <n>` after each loop and `saved <path>` after each
checkpoint, and with --dump_state writes this process's carried rows (and their offset in the
global batch) to an .npz file at the end.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gin  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from toy_task import DelayTask  # noqa: E402
from tbptt.trainer import Trainer, TrainerConfig  # noqa: E402
from tbptt.trainer.distribute import make_strategy  # noqa: E402

CONFIG = """
Trainer.checkpoint_interval = 10
Trainer.summary_interval = 1
Trainer.eval_interval = None
Trainer.histogram_interval = None
Trainer.seed = 3
Trainer.learning_rate = 0.01
Trainer.clip_norm = 1.0
"""


class SlowDelayTask(DelayTask):
  """DelayTask whose chunks from step `slow_after` on take `seconds` longer to produce."""

  def __init__(self, slow_after, seconds, progress_file=None, **kwargs):
    super().__init__(**kwargs)
    self._slow_after = slow_after
    self._seconds = seconds
    self._progress_file = progress_file

  def _wait(self, step):
    if self._progress_file:
      with open(self._progress_file + ".tmp", "w") as f:
        f.write(str(int(step)))
      os.replace(self._progress_file + ".tmp", self._progress_file)
    time.sleep(self._seconds)

  def train_batch(self, step, row_start, num_rows):
    batch = dict(super().train_batch(step, row_start, num_rows))

    def wait():
      tf.py_function(self._wait, [step], [])
      return tf.constant(0.0)

    delay = tf.cond(step >= self._slow_after, wait, lambda: tf.constant(0.0))
    batch["weights"] = batch["weights"] + delay
    return batch


def parse(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("model_dir")
  parser.add_argument("train_steps", type=int)
  parser.add_argument("slow_after", type=int, nargs="?")
  parser.add_argument("--slow_seconds", type=float, default=0.2)
  parser.add_argument("--progress_file", default=None)
  parser.add_argument("--steps_per_loop", type=int, default=5)
  parser.add_argument("--units", type=int, default=8)
  parser.add_argument("--dropout", type=float, default=0.2)
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--deterministic", type=int, default=1)
  parser.add_argument("--dump_state", default=None)
  parser.add_argument("--binding", action="append", default=[])
  return parser.parse_args(argv)


def report_progress(trainer):
  """Prints `step <n>` after each loop and `saved <path>` after each save (for the parent)."""
  loop, save = trainer.runner.train, trainer.checkpoints.save

  def train_loop(num_steps):
    outputs = loop(num_steps)
    print(f"step {trainer.step}", flush=True)
    return outputs

  def save_and_report(step):
    path = save(step)
    print(f"saved {path}", flush=True)
    return path

  trainer.runner.train, trainer.checkpoints.save = train_loop, save_and_report


def main(argv):
  args = parse(argv)
  bindings = [f"Trainer.train_steps = {args.train_steps}",
              f"Trainer.steps_per_loop = {args.steps_per_loop}",
              f"Trainer.deterministic = {bool(args.deterministic)}"]
  if os.environ.get("TF_CONFIG"):
    bindings.append("distribution.strategy = 'multi_worker'")
  gin.parse_config(CONFIG + "\n".join(bindings + args.binding) + "\n")
  config = TrainerConfig()
  strategy = make_strategy()
  config.runtime.apply()
  with strategy.scope():
    kwargs = dict(units=args.units, dropout=args.dropout, batch_size=args.batch_size)
    task = (DelayTask(**kwargs) if args.slow_after is None
            else SlowDelayTask(args.slow_after, args.slow_seconds, args.progress_file, **kwargs))
    trainer = Trainer(task=task, model_dir=args.model_dir, strategy=strategy, config=config)
  report_progress(trainer)
  trainer.train()
  if args.dump_state:
    rows = task.global_batch_size // strategy.num_replicas_in_sync
    replica = strategy.cluster_resolver.task_id if os.environ.get("TF_CONFIG") else 0
    local = [np.asarray(strategy.experimental_local_results(t)[0]) for t in trainer.runner.state]
    np.savez(args.dump_state, h=local[0], c=local[1], row_start=replica * rows)


if __name__ == "__main__":
  main(sys.argv[1:])
