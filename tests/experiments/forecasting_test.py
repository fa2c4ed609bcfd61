"""Tests for experiments/forecasting.py: the seq2seq model, batches, metrics, images."""

import functools
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments import forecasting
from tbptt.experiments.data import series as series_lib
from tbptt.layers import LSTMState
from tbptt.trainer.errors import ConfigError
from events import read_tags

C, H, F, UNITS = 16, 8, 1, 8


def small_series(length=400, **kwargs):
  kwargs = {"periods": (8.0, 40.0), "amplitudes": (1.0, 0.3), "noise": 0.05, **kwargs}
  return functools.partial(series_lib.synthetic_series, length, **kwargs)


def make_task(model_dir=None, **kwargs):
  args = {"series_fn": small_series(), "context_length": C, "horizon": H, "batch_size": 4,
          "season_length": 8, "split_fractions": (0.6, 0.2, 0.2), **kwargs}
  return forecasting.ForecastTask(model_dir, **args)


@pytest.fixture(scope="module")
def task():
  tf.keras.utils.set_random_seed(1)
  return make_task(teacher_forcing=0.5)


# -- model -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("features", [1, 3])
def test_model_shapes(features):
  model = forecasting.Seq2SeqForecaster(H, features, units=UNITS)
  context = tf.random.normal([2, C, features])
  predictions, state = model(context, model.initial_state(2))
  assert predictions.shape == (2, H, features) and predictions.dtype == tf.float32
  assert isinstance(state, LSTMState)
  assert state.h.shape == (2, UNITS) and state.c.shape == (2, UNITS)
  same, _ = model({"context": context}, None)  # A dict and a None (zero) state are accepted.
  np.testing.assert_allclose(same, predictions, rtol=1e-6)


def test_state_is_the_encoder_initial_state():
  model = forecasting.Seq2SeqForecaster(H, F, units=UNITS)
  context = tf.random.normal([2, C, F])
  zero, _ = model(context, model.initial_state(2))
  other, _ = model(context, LSTMState(tf.ones([2, UNITS]), tf.ones([2, UNITS])))
  assert not np.allclose(zero, other)


def test_teacher_forcing_applies_in_training_only():
  tf.keras.utils.set_random_seed(2)
  model = forecasting.Seq2SeqForecaster(H, F, units=UNITS)
  context = tf.random.normal([3, C, F])
  truth = tf.random.normal([3, H, F])
  forced = {"context": context, "horizon": truth, "teacher_mask": tf.ones([3, H], tf.bool)}
  free = {"context": context, "horizon": truth, "teacher_mask": tf.zeros([3, H], tf.bool)}
  inference, _ = model(context, None, training=False)
  np.testing.assert_allclose(model(forced, None, training=False)[0], inference, rtol=1e-6)
  np.testing.assert_allclose(model(free, None, training=True)[0], inference, rtol=1e-6)
  teacher, _ = model(forced, None, training=True)
  np.testing.assert_allclose(teacher[:, 0], inference[:, 0], rtol=1e-6)  # Step 0 reads the context.
  assert not np.allclose(teacher[:, 1:], inference[:, 1:], atol=1e-4)

  def with_truth(horizon):
    return model(dict(forced, horizon=horizon), None, training=True)[0]

  # Step t + 1 reads truth[:, t]: changing truth's first step changes steps 1.., never step 0; the
  # last true step is never read.
  bumped = with_truth(truth + tf.one_hot(0, H)[None, :, None])
  np.testing.assert_allclose(bumped[:, 0], teacher[:, 0], rtol=1e-6)
  assert not np.allclose(bumped[:, 1], teacher[:, 1], atol=1e-5)
  last = with_truth(truth + tf.one_hot(H - 1, H)[None, :, None])
  np.testing.assert_allclose(last, teacher, rtol=1e-6)


@pytest.mark.parametrize("center", [True, False])
def test_centered_windows_forecast_shape_not_level(center):
  model = forecasting.Seq2SeqForecaster(H, F, units=UNITS, center_windows=center)
  context = tf.random.normal([2, C, F])
  base, _ = model(context, None)
  shifted, _ = model(context + 7.0, None)
  if center:  # Adding a constant to the context adds it to the forecast.
    np.testing.assert_allclose(shifted, base + 7.0, atol=1e-4)
  else:
    assert not np.allclose(shifted, base + 7.0, atol=1e-2)


def test_model_compiles_with_xla_and_matches_eager():
  model = forecasting.Seq2SeqForecaster(H, F, units=UNITS)
  context = tf.random.normal([2, C, F])
  eager, _ = model(context, None)
  compiled, _ = tf.function(lambda x: model(x, model.initial_state(2)), jit_compile=True)(context)
  np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-6)


def test_gradients_flow_through_the_decoder_loop():
  model = forecasting.Seq2SeqForecaster(H, F, units=UNITS)
  context = tf.random.normal([2, C, F])
  with tf.GradientTape() as tape:
    predictions, _ = model(context, None, training=True)
    loss = tf.reduce_sum(predictions[:, -1])
  grads = tape.gradient(loss, model.trainable_variables)
  names = [v.path for v, g in zip(model.trainable_variables, grads)
           if g is None or not np.any(g.numpy())]
  assert not names, f"no gradient reaches {names}"


# -- batches ---------------------------------------------------------------------------------------


def test_train_batch_is_a_pure_function_of_the_step(task):
  a = task.train_batch(tf.constant(5, tf.int64), 0, 4)
  b = task.train_batch(tf.constant(5, tf.int64), 0, 4)
  c = task.train_batch(tf.constant(6, tf.int64), 0, 4)
  tf.nest.map_structure(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a["targets"], c["targets"])
  assert a["inputs"]["context"].shape == (4, C, F) and a["targets"].shape == (4, H, F)
  np.testing.assert_array_equal(a["inputs"]["horizon"], a["targets"])
  teacher_mask = a["inputs"]["teacher_mask"]
  assert teacher_mask.dtype == tf.bool and teacher_mask.shape == (4, H)
  np.testing.assert_array_equal(a["weights"], np.ones([4, H]))
  np.testing.assert_array_equal(a["reset"], [True] * 4)


def test_replica_rows_concatenate_to_the_global_batch(task):
  step = tf.constant(3, tf.int64)
  whole = task.train_batch(step, 0, 4)
  halves = [task.train_batch(step, start, 2) for start in (0, 2)]
  tf.nest.map_structure(lambda w, *h: np.testing.assert_array_equal(w, np.concatenate(h)), whole,
                        *halves)


def test_an_epoch_reads_distinct_windows_and_epochs_reshuffle(task):
  steps = task.steps_per_epoch
  assert steps == task.num_windows["train"] // 4

  def epoch_starts(epoch):
    steps_of_epoch = range(epoch * steps, (epoch + 1) * steps)
    contexts = [task.train_batch(tf.constant(s, tf.int64), 0, 4)["inputs"]["context"]
                for s in steps_of_epoch]
    return np.concatenate(contexts)[:, :, 0]

  first, second = epoch_starts(0), epoch_starts(1)
  assert len(np.unique(first, axis=0)) == steps * 4  # No window twice in one epoch.
  assert not np.array_equal(first, second)
  values = np.asarray(task._values)[:, 0]
  train_contexts = {tuple(values[s:s + C]) for s in task._starts["train"].numpy()}
  assert {tuple(row) for row in first} <= train_contexts


def test_train_batch_without_teacher_forcing_has_only_context():
  batch = make_task(teacher_forcing=0.0).train_batch(tf.constant(0, tf.int64), 0, 2)
  assert set(batch["inputs"]) == {"context"}


def test_eval_reads_every_window_in_order_with_padding_weighted_zero(task):
  n = task.num_windows["valid"]
  batches = task.num_eval_batches("valid")
  assert batches == -(-n // task.eval_batch_size) and n % task.eval_batch_size != 0
  got = [task.eval_batch("valid", tf.constant(i), 0, 4) for i in range(batches)]
  weights = np.concatenate([b["weights"] for b in got])
  np.testing.assert_array_equal(weights[:n], 1.0)
  np.testing.assert_array_equal(weights[n:], 0.0)
  targets = np.concatenate([b["targets"] for b in got])[:n, :, 0]
  starts = task._starts["valid"].numpy()
  rows = starts[:, None] + C + np.arange(H)
  np.testing.assert_array_equal(targets, np.asarray(task._values)[rows, 0])
  # eval_stride defaults to H: consecutive horizons tile the valid part.
  assert np.all(np.diff(starts)[:-1] == H)
  assert all(set(b["inputs"]) == {"context"} for b in got)
  assert task.num_eval_batches("test") > 0


def test_missing_splits_have_no_batches():
  task = make_task(split_fractions=(0.8, 0.2, 0.0))
  assert task.num_eval_batches("test") == 0 and task.num_eval_batches("valid") > 0


# -- data errors and normalisation -----------------------------------------------------------------


def test_too_few_rows_is_a_config_error():
  with pytest.raises(ConfigError, match=r"train part has 12 of 20 rows, too few for one window "
                                        r"\(needs 24"):
    make_task(series_fn=small_series(20))
  with pytest.raises(ConfigError, match="valid part has 5"):
    make_task(series_fn=small_series(100), split_fractions=(0.9, 0.05, 0.05))


def test_bad_arguments_are_config_errors():
  with pytest.raises(ConfigError, match="season_length"):
    make_task(season_length=C + 1)
  with pytest.raises(ConfigError, match="teacher_forcing"):
    make_task(teacher_forcing=1.5)
  with pytest.raises(ConfigError, match="horizon must be a positive integer, got 0"):
    make_task(horizon=0)


def test_statistics_come_from_the_training_part_only(tmp_path):
  base = series_lib.synthetic_series(400, periods=(8.0,), amplitudes=(1.0,))

  def with_tail(scale):
    values = base.values.copy()
    values[240:] *= scale  # Rows of valid and test only.
    return series_lib.Series(values, base.columns, "test")

  one = make_task(series_fn=lambda: with_tail(1.0))
  other = make_task(series_fn=lambda: with_tail(100.0))
  np.testing.assert_array_equal(one.stats.mean, other.stats.mean)
  np.testing.assert_array_equal(one.stats.std, other.stats.std)
  np.testing.assert_allclose(one.stats.mean, base.values[:240].mean(axis=0))


def test_statistics_round_trip_through_model_dir(tmp_path):
  first = make_task(str(tmp_path))
  assert not os.listdir(tmp_path)  # Nothing is written until training starts.
  first.write_assets()
  assert first.asset_paths == [str(tmp_path / series_lib.STATS_FILENAME)]
  with open(first.asset_paths[0]) as f:
    assert json.load(f)["mean"] == first.stats.mean.tolist()
  # A resumed run on shifted data keeps the saved normalisation (the weights were trained on it).
  resumed = make_task(str(tmp_path), series_fn=small_series(level=50.0))
  np.testing.assert_array_equal(resumed.stats.mean, first.stats.mean)
  np.testing.assert_array_equal(resumed.stats.std, first.stats.std)
  fresh = make_task(str(tmp_path / "other"), series_fn=small_series(level=50.0))
  assert not np.allclose(fresh.stats.mean, first.stats.mean)


# -- metrics ---------------------------------------------------------------------------------------


def test_seasonal_naive_repeats_the_last_season():
  context = tf.constant([[0.0, 1, 2, 3, 4, 5]])[:, :, None]
  np.testing.assert_array_equal(forecasting.seasonal_naive(context, 5, 3)[0, :, 0], [3, 4, 5, 3, 4])
  np.testing.assert_array_equal(forecasting.seasonal_naive(context, 2, 1)[0, :, 0], [5, 5])


def test_metrics_by_hand():
  # C = 4, m = 2: naive = [3, 4, 3]; the third position is padding (weight 0).
  context = tf.constant([[1.0, 2, 3, 4]])[:, :, None]
  targets = tf.constant([[3.5, 4.0, 100.0]])[:, :, None]
  predictions = tf.constant([[3.0, 4.5, -100.0]])[:, :, None]
  weights = tf.constant([[1.0, 1.0, 0.0]])
  sums = forecasting.forecast_sums(context, targets, predictions, weights, tf.constant([2.0]), 2)
  sums = {k: float(v) for k, v in sums.items()}
  # Errors in original units (x std 2): model [-1, 1], naive [-1, 0].
  assert sums == {"abs_error": 2.0, "squared_error": 2.0, "naive_abs_error": 1.0, "count": 2.0}
  metrics = forecasting.forecast_metrics(sums)
  assert metrics == {"mae": 1.0, "rmse": 1.0, "naive_mae": 0.5, "mase": 2.0}


def test_mase_is_left_out_when_the_naive_forecast_is_perfect():
  # A noiseless series whose only season is m: the seasonal-naive forecast is exact.
  perfect = make_task(
      series_fn=small_series(periods=(8.0,), amplitudes=(1.0,), noise=0.0, trend=0.0))
  totals = {}
  for i in range(perfect.num_eval_batches("valid")):
    batch = perfect.eval_batch("valid", tf.constant(i), 0, 4)
    predictions = batch["targets"] + 0.1
    for key, value in perfect.eval_sums(batch, predictions).items():
      totals[key] = totals.get(key, 0.0) + float(value)
  totals.update(loss=1.0, weight=1.0)
  metrics = perfect.eval_metrics(totals)
  assert metrics["naive_mae"] < 1e-5
  assert "mase" not in metrics
  np.testing.assert_allclose(metrics["mae"], 0.1 * perfect.stats.std[0], rtol=1e-4)
  assert {"loss", "mae", "rmse"} <= set(metrics)


# -- images ----------------------------------------------------------------------------------------


def test_forecast_images_are_written_to_the_eval_writer(task, tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path / "eval"))
  with writer.as_default():
    task.write_eval_summaries(7)
  writer.close()
  events = glob.glob(str(tmp_path / "eval" / "events.out.tfevents.*"))
  assert len(events) == 1
  images = []
  for event in tf.compat.v1.train.summary_iterator(events[0]):
    for value in event.summary.value:
      if value.tag == "forecast":
        assert event.step == 7
        # Image summaries store [width, height, png, png, ...].
        pngs = tf.make_ndarray(value.tensor)[2:]
        images = [tf.io.decode_png(png).numpy() for png in pngs]
  assert len(images) == task.num_plots
  for image in images:
    assert image.shape == (96, 192, 3)
    colors = {tuple(c) for c in image.reshape(-1, 3)}
    assert {(70, 70, 70), (0, 150, 0), (220, 30, 30)} <= colors


# -- training with the Trainer ---------------------------------------------------------------------


def _eval_by_hand(task, split):
  """Eval metrics computed eagerly, batch by batch, without the Trainer."""
  totals = {}
  for i in range(task.num_eval_batches(split)):
    batch = task.eval_batch(split, tf.constant(i), 0, task.eval_batch_size)
    predictions, _ = task.model(batch["inputs"], task.initial_state(task.eval_batch_size))
    sums = task.eval_sums(batch, predictions)
    sums["loss"] = tf.reduce_sum(task.loss(batch, predictions) * batch["weights"])
    sums["weight"] = tf.reduce_sum(batch["weights"])
    for key, value in sums.items():
      totals[key] = totals.get(key, 0.0) + float(value)
  return task.eval_metrics(totals)


def test_trainer_eval_across_two_replicas_matches_eager_metrics(tmp_path):
  from tbptt.trainer import Trainer

  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    task = make_task(str(tmp_path), eval_batch_size=4)
    trainer = Trainer(task=task, model_dir=str(tmp_path), strategy=strategy, train_steps=1)
  assert task.num_windows["valid"] % 4 != 0  # The last batch is padded (weight 0) on some replica.
  got = trainer.runner.evaluate("valid")
  want = _eval_by_hand(task, "valid")
  assert set(got) == set(want) >= {"loss", "mae", "rmse", "mase", "naive_mae"}
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)


@pytest.mark.slow
def test_training_beats_the_seasonal_naive_forecast(tmp_path):
  from tbptt.trainer import Trainer

  tf.keras.utils.set_random_seed(0)
  task = make_task(str(tmp_path), series_fn=small_series(800), batch_size=16, teacher_forcing=0.25)
  trainer = Trainer(task=task, model_dir=str(tmp_path), strategy=tf.distribute.get_strategy(),
                    train_steps=300, steps_per_loop=100, eval_interval=None, learning_rate=0.005,
                    clip_norm=1.0, histogram_interval=None, checkpoint_interval=300)
  task.write_assets()
  before = trainer.runner.evaluate("valid")
  result = trainer.train()
  after = result["valid"]
  assert result["step"] == 300
  print(f"valid before: {before}\nvalid after:  {after}")
  assert after["mae"] < after["naive_mae"], after
  assert after["mae"] < 0.5 * before["mae"], (before, after)
  assert after["mase"] < 1.0
  # The eval at the end drew forecast images next to the eval scalars.
  assert {"forecast", "mae", "mase"} <= read_tags(os.path.join(tmp_path, "eval"))
  # A later run on the same model_dir reads the statistics saved before training.
  assert os.path.exists(os.path.join(tmp_path, series_lib.STATS_FILENAME))


@pytest.mark.slow
def test_a_resumed_run_repeats_an_uninterrupted_one(tmp_path):
  from tbptt.trainer import Trainer

  def run(model_dir, steps):
    tf.keras.utils.set_random_seed(3)
    task = make_task(model_dir, teacher_forcing=0.5)  # Teacher-forcing draws depend on the step.
    trainer = Trainer(task=task, model_dir=model_dir, strategy=tf.distribute.get_strategy(),
                      train_steps=steps, steps_per_loop=10, eval_interval=None, seed=3,
                      histogram_interval=None, checkpoint_interval=10)
    trainer.train()
    return [v.numpy() for v in task.model.weights]

  straight = run(str(tmp_path / "straight"), 40)
  run(str(tmp_path / "resumed"), 20)
  resumed = run(str(tmp_path / "resumed"), 40)  # Restores step 20, trains 20 more.
  for a, b in zip(straight, resumed):
    np.testing.assert_array_equal(a, b)


# -- the packaged configs, end to end --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("config", ["forecast.gin", "forecast_csv.gin"])
def test_config_trains_then_evaluates_its_checkpoint(config, tmp_path):
  import gin

  from tbptt.experiments import experiment, gin_files

  model_dir = str(tmp_path / "run")
  bindings = ["Trainer.train_steps = 20", "Trainer.steps_per_loop = 10",
              "Trainer.eval_interval = 20", "Seq2SeqForecaster.units = 8"]
  gin_files.parse([config], bindings)
  trained = experiment.run_experiment(model_dir, "train")
  assert trained["step"] == 20
  assert {"loss", "mae", "rmse", "mase"} <= set(trained["valid"])
  with open(os.path.join(model_dir, series_lib.STATS_FILENAME)) as f:
    saved = json.load(f)
  assert saved["columns"] == (["load"] if config == "forecast_csv.gin" else ["y0"])
  with open(os.path.join(model_dir, "operative_config.gin")) as f:
    assert "run_experiment.task_fn = @ForecastTask" in f.read()
  # A fresh process-like rebuild evaluates the restored checkpoint with the saved statistics.
  gin.clear_config()
  gin_files.parse([config], bindings)
  evaluated = experiment.run_experiment(model_dir, "eval")
  assert set(evaluated) == {"valid", "test"}
  np.testing.assert_allclose(evaluated["valid"]["mae"], trained["valid"]["mae"], rtol=1e-5)
