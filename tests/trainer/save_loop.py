"""Restores, then saves checkpoints of big variables as fast as it can (for the SIGKILL test).

  python tests/trainer/save_loop.py DIRECTORY

Four float32 variables of 4 M values each (64 MB): saving one takes long enough to be killed in
the middle. Every value of checkpoint `ckpt-<k>` is k. On start the newest checkpoint is restored
and checked (`restored <k>`, or exit 3 if any value disagrees with its step); then it saves k+1,
k+2, ... printing `saved <k>` after each.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tbptt.trainer.checkpointing import Checkpointer  # noqa: E402

SHAPE = (1024, 4096)


def make(directory):
  variables = {f"w{i}": tf.Variable(tf.zeros(SHAPE)) for i in range(4)}
  step = tf.Variable(0, dtype=tf.int64)
  return variables, step, Checkpointer(directory, max_to_keep=2, step=step, **variables)


def main(directory):
  variables, step, checkpointer = make(directory)
  if checkpointer.restore() is not None:
    k = int(step.numpy())
    if any(not np.all(v.numpy() == k) for v in variables.values()):
      print(f"inconsistent {k}", flush=True)
      sys.exit(3)
    print(f"restored {k}", flush=True)
  while True:
    k = int(step.numpy()) + 1
    step.assign(k)
    for v in variables.values():
      v.assign(tf.fill(SHAPE, float(k)))
    checkpointer.save(k)
    print(f"saved {k}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
