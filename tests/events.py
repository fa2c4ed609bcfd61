"""Reading TensorBoard event files back (test helpers): scalars by step, every tag."""

import glob
import os

import numpy as np
import tensorflow as tf


def read_scalars(directory: str, tag: str) -> dict[int, float]:
  """Reads one scalar tag back from the event files in `directory`: {step: value}.

  When a step was written more than once (a resumed run repeats the steps after its checkpoint), the
  value written last (by wall time) wins.
  """
  latest = {}
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        newer = event.step not in latest or event.wall_time >= latest[event.step][0]
        if value.tag == tag and newer:
          scalar = float(np.asarray(tf.make_ndarray(value.tensor)).reshape(()))
          latest[event.step] = (event.wall_time, scalar)
  return {step: value for step, (_, value) in sorted(latest.items())}


def read_tags(directory: str) -> set[str]:
  """Every tag in the event files of `directory`."""
  tags = set()
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  return tags
