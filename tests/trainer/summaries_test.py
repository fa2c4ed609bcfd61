"""Summaries: compiled writes leave the same events as eager `tf.summary` calls."""

import glob
import os

import numpy as np
import tensorflow as tf

from tbptt.trainer.summaries import Summaries


def events(directory):
  """[(step, tag, plugin, value)] of every summary value in `directory`, in file order."""
  found = []
  for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        found.append((event.step, value.tag, value.metadata.plugin_data.plugin_name,
                      tf.make_ndarray(value.tensor).tolist()))
  return found


def eager(directory, step, scalars, histograms):
  writer = tf.summary.create_file_writer(directory)
  with writer.as_default(step=step):
    for tag, value in scalars.items():
      tf.summary.scalar(tag, value)
    for tag, value in histograms.items():
      tf.summary.histogram(tag, value)
  writer.close()


def test_scalars_and_histograms_match_eager_writes_and_trace_once(tmp_path):
  rng = np.random.default_rng(0)
  summaries = Summaries(str(tmp_path / "compiled"))
  for step in (100, 200):
    scalars = {"loss": float(rng.normal()), "nonfinite_steps": step // 100, "state": {"h": 0.25}}
    weights = {"w": tf.constant(rng.normal(size=(4, 3)), tf.float32)}
    summaries.scalars("train", step, scalars)
    summaries.histograms("train", step, {"weights": weights})
    eager(str(tmp_path / "eager" / "train"), step,
          {"loss": scalars["loss"], "nonfinite_steps": step // 100, "state/h": 0.25},
          {"weights/w": weights["w"]})
  assert [write.experimental_get_tracing_count() for write in summaries._writes.values()] == [1, 1]
  summaries.close()
  want = events(str(tmp_path / "eager" / "train"))
  assert [e[:3] for e in want] == [
      (100, "loss", "scalars"), (100, "nonfinite_steps", "scalars"), (100, "state/h", "scalars"),
      (100, "weights/w", "histograms"), (200, "loss", "scalars"),
      (200, "nonfinite_steps", "scalars"), (200, "state/h", "scalars"),
      (200, "weights/w", "histograms")]
  got = events(str(tmp_path / "compiled" / "train"))
  assert [e[:3] for e in got] == [e[:3] for e in want]
  for g, w in zip(got, want):
    np.testing.assert_allclose(g[3], w[3], rtol=1e-6)


def test_a_disabled_writer_writes_nothing(tmp_path):
  summaries = Summaries(str(tmp_path), enabled=False)
  summaries.scalars("train", 1, {"loss": 1.0})
  summaries.histograms("train", 1, {"w": tf.ones([2])})
  summaries.close()
  assert not glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True)
