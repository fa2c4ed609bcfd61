"""Trains the toy task in its own process (for the kill-and-resume test).

  python tests/trainer/toy_run.py MODEL_DIR TRAIN_STEPS [SLOW_AFTER]

Deterministic, with dropout, checkpoints every 10 steps, every step's loss in model_dir/train. With
SLOW_AFTER, each step from that step on also sleeps 0.2 s (a slow input pipeline), which leaves time
to kill the process between checkpoints.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import gin  # noqa: E402
import tensorflow as tf  # noqa: E402

from toy_task import DelayTask  # noqa: E402
from trainer import Trainer  # noqa: E402
from trainer.distribute import make_strategy  # noqa: E402

CONFIG = """
Trainer.steps_per_loop = 5
Trainer.checkpoint_interval = 10
Trainer.summary_interval = 1
Trainer.eval_interval = None
Trainer.histogram_interval = None
Trainer.seed = 3
Trainer.deterministic = True
Trainer.learning_rate = 0.01
Trainer.clip_norm = 1.0
"""


class SlowDelayTask(DelayTask):
  """DelayTask whose chunks from step `slow_after` on take 0.2 s longer to produce."""

  def __init__(self, slow_after, **kwargs):
    super().__init__(**kwargs)
    self._slow_after = slow_after

  def train_batch(self, step, row_start, num_rows):
    batch = dict(super().train_batch(step, row_start, num_rows))

    def wait():
      tf.py_function(lambda: __import__("time").sleep(0.2), [], [])
      return tf.constant(0.0)

    delay = tf.cond(step >= self._slow_after, wait, lambda: tf.constant(0.0))
    batch["weights"] = batch["weights"] + delay
    return batch


def main(model_dir, train_steps, slow_after=None):
  gin.parse_config(CONFIG + f"Trainer.train_steps = {train_steps}\n")
  strategy = make_strategy()
  with strategy.scope():
    kwargs = dict(units=8, dropout=0.2)
    task = DelayTask(**kwargs) if slow_after is None else SlowDelayTask(slow_after, **kwargs)
    trainer = Trainer(task=task, model_dir=model_dir, strategy=strategy)
  trainer.train()


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
