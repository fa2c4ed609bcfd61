"""NT-ASGD (trainer/averaging.py): the trigger, the running mean, evaluation with the averages,
the checkpointed state and a bitwise resume."""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from toy_task import DelayTask
from tbptt.trainer import Trainer, TrainerConfig, runtime
from tbptt.trainer.averaging import NTAveraging, WeightAverages, should_start_averaging
from tbptt.trainer.distribute import make_strategy
from tbptt.trainer.errors import ConfigError
from tbptt.trainer.optimizers import SGD
from events import read_scalars, read_tags

QUIET = dict(histogram_interval=None, log_interval=10**6)


class RisingValidTask(DelayTask):
  """DelayTask whose 'valid' targets are the token 1 step back, where training teaches the one
  `delay` (3) steps back: the better the model learns, the worse its validation loss, so the
  non-monotonic trigger fires at the third evaluation (nonmono 1).

  `write_eval_summaries` records the weights the model holds when it is called (the TensorBoard
  sample of a language model is drawn there) and the averages at that moment.
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    valid = self._streams["valid"]
    tokens = valid["inputs"].numpy()
    targets = np.zeros_like(tokens)
    targets[:, 1:] = tokens[:, :-1]
    self._streams["valid"] = dict(valid, targets=tf.constant(targets))
    self.averages = None
    self.summary_weights = {}  # step -> (the model's weights, the averages) at the summary

  def write_eval_summaries(self, step):
    averages = [a.numpy() for a in self.averages.averages] if self.averages else None
    self.summary_weights[step] = ([v.numpy() for v in self.model.trainable_variables], averages)


def values(variables):
  return [np.array(v) for v in variables]


def state_of(averages: WeightAverages) -> dict:
  return {"averages": values(averages.averages), "count": averages.count,
          "start_step": averages.start_step, "history": averages.history}


def averaging_trainer(model_dir, task=None, strategy=None, **kwargs):
  settings = dict(train_steps=12, steps_per_loop=4, eval_interval=2, checkpoint_interval=4,
                  summary_interval=1, optimizer=SGD, learning_rate=0.5, clip_norm=1.0,
                  weight_averaging=NTAveraging(nonmono=1), **QUIET)
  settings.update(kwargs)
  strategy = strategy or tf.distribute.get_strategy()
  with strategy.scope():
    task = task or RisingValidTask(units=8)
    trainer = Trainer(task=task, model_dir=str(model_dir), strategy=strategy, **settings)
  if isinstance(task, RisingValidTask):
    task.averages = trainer.runner.averages
  return task, trainer


# -- the rule --------------------------------------------------------------------------------------


def awd_first_trigger(losses, nonmono):
  """AWD-LSTM's main.py, literally: the index of the evaluation that switches to ASGD, or None."""
  best_val_loss = []
  for i, val_loss in enumerate(losses):
    if len(best_val_loss) > nonmono and val_loss > min(best_val_loss[:-nonmono]):
      return i
    best_val_loss.append(val_loss)
  return None


@pytest.mark.parametrize("history, loss, nonmono, expected", [
    ([], 9.0, 1, False),                      # nothing to compare with
    ([3.0], 9.0, 1, False),                   # len(history) == nonmono: still nothing
    ([3.0, 2.0], 3.5, 1, True),               # worse than 3.0, the best before the last one
    ([3.0, 2.0], 3.0, 1, False),              # equal is not worse
    ([3.0, 2.0], 2.5, 1, False),              # worse than the last (2.0), which is left out
    ([5.0, 4.0, 1.0, 0.5], 2.0, 2, False),    # best before the last 2 is 4.0
    ([5.0, 4.0, 1.0, 0.5], 4.5, 2, True),
    ([5.0, 4.0, 3.0, 2.0, 1.0, 0.9], 4.1, 5, False),  # nonmono 5: only 5.0 counts
    ([5.0, 4.0, 3.0, 2.0, 1.0, 0.9], 5.1, 5, True),
])
def test_rule_is_awds(history, loss, nonmono, expected):
  assert should_start_averaging(history, loss, nonmono) is expected
  assert (awd_first_trigger(history + [loss], nonmono) == len(history)) is expected


def test_record_starts_at_the_evaluation_awds_loop_switches_at():
  strategy = tf.distribute.get_strategy()
  rng = np.random.default_rng(0)
  sequences = [list(4.0 - 0.1 * np.arange(12)) + [3.5, 3.6]] + [
      list(np.round(rng.normal(3.0, 0.2, 15), 2)) for _ in range(20)]
  for nonmono in (1, 2, 5):
    for losses in sequences:
      model = keras.Sequential([keras.Input([2]), keras.layers.Dense(1)])
      averages = WeightAverages(NTAveraging(nonmono=nonmono), model, strategy)
      started = [i for i, loss in enumerate(losses) if averages.record(10 * i, loss)]
      expected = awd_first_trigger(losses, nonmono)
      assert started == ([] if expected is None else [expected])
      assert averages.start_step == (None if expected is None else 10 * expected)
      assert averages.history == losses


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "5"])
def test_nonmono_must_be_a_positive_integer(value):
  with pytest.raises(ConfigError, match="NTAveraging.nonmono must be a positive integer"):
    NTAveraging(nonmono=value)


def test_weight_averaging_setting_is_validated():
  assert TrainerConfig().weight_averaging is None  # Off by default.
  assert TrainerConfig(weight_averaging=NTAveraging).weight_averaging == NTAveraging()
  with pytest.raises(ConfigError, match=r"Trainer.weight_averaging must be None or "
                                        r"@NTAveraging\(\), got 5"):
    TrainerConfig(weight_averaging=5)


# -- the running mean ------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy_name", ["default", "mirrored"])
def test_averages_are_the_mean_of_the_iterates_since_the_trigger(tmp_path, strategy_name):
  strategy = make_strategy(strategy_name, cpu_devices=2 if strategy_name == "mirrored" else 0)
  runtime.seed_everything(2)
  _, trainer = averaging_trainer(tmp_path, task=DelayTask(units=8, nan_steps=(6,)),
                                 strategy=strategy)
  runner, averages = trainer.runner, trainer.runner.averages
  runner.train(3)
  assert averages.count == 0 and not averages.started
  averages.start(3)
  iterates = []
  for _ in range(6):  # Steps 3..8; step 6 is non-finite and skipped: no new iterate.
    skipped = int(runner.counters.total.numpy())
    runner.train(1)
    if int(runner.counters.total.numpy()) == skipped:
      iterates.append(values(runner.task.model.trainable_variables))
  assert runner.step == 9 and len(iterates) == 5 and averages.count == 5
  expected = [np.mean(np.stack(ws).astype(np.float64), axis=0) for ws in zip(*iterates)]
  for avg, mean, raw in zip(averages.averages, expected, iterates[-1]):
    np.testing.assert_allclose(avg.numpy(), mean, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(avg.numpy(), raw)  # The model keeps its raw iterate.
    copies = strategy.experimental_local_results(avg)
    assert len(copies) == strategy.num_replicas_in_sync
    for copy in copies[1:]:
      np.testing.assert_array_equal(copy.numpy(), copies[0].numpy())
  # Evaluation swaps the averages in on every replica and the raw iterate back, bit for bit.
  weights = runner.task.model.trainable_variables
  with runner.evaluation_weights():
    for w, avg in zip(weights, averages.averages):
      for copy in strategy.experimental_local_results(w.value):
        np.testing.assert_array_equal(copy.numpy(), avg.numpy())
  runner.evaluate("valid")
  for w, raw in zip(weights, iterates[-1]):
    for copy in strategy.experimental_local_results(w.value):
      np.testing.assert_array_equal(copy.numpy(), raw)
  # The same recurrence in NumPy float32 gives the same bits.
  recurrence = [np.zeros_like(w) for w in iterates[0]]
  for n, ws in enumerate(iterates):
    recurrence = [w if n == 0 else a + (w - a) / np.float32(n + 1)
                  for a, w in zip(recurrence, ws)]
  for avg, ref in zip(averages.averages, recurrence):
    np.testing.assert_array_equal(avg.numpy(), ref)


# -- training with the trigger ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def triggered(tmp_path_factory):
  """A 12-step run whose trigger fires at its third evaluation (step 6), with its log."""
  model_dir = tmp_path_factory.mktemp("triggered")
  runtime.seed_everything(3)
  task, trainer = averaging_trainer(model_dir)
  logger = logging.getLogger("tbptt.trainer")
  records = []
  handler = logging.Handler(logging.INFO)
  handler.emit = records.append
  logger.addHandler(handler)
  level = logger.level
  logger.setLevel(logging.INFO)
  try:
    result = trainer.train()
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  return task, trainer, result, str(model_dir), [r.getMessage() for r in records]


def test_trigger_fires_during_training_and_says_so_once(triggered):
  _, trainer, _, _, log = triggered
  averages = trainer.runner.averages
  assert averages.history[:3] == sorted(averages.history[:3])  # The valid loss rises.
  assert averages.start_step == 6 and averages.count == 12 - 6
  assert len(averages.history) == 6  # Evaluations at 2, 4, ..., 12.
  lines = [line for line in log if "averaging the weights" in line]
  assert len(lines) == 1 and lines[0].startswith("Step 6: validation loss")


def test_eval_after_the_trigger_reports_the_averaged_models_loss(triggered, tmp_path):
  task, trainer, result, model_dir, _ = triggered
  averages = trainer.runner.averages
  raw = values(task.model.trainable_variables)
  # The same model without averaging, given either set of weights.
  probe_task, probe = averaging_trainer(tmp_path, weight_averaging=None)
  for variable, value in zip(probe_task.model.trainable_variables, raw):
    variable.assign(value)
  raw_loss = probe.runner.evaluate("valid")["loss"]
  for variable, value in zip(probe_task.model.trainable_variables, averages.averages):
    variable.assign(value)
  averaged_loss = probe.runner.evaluate("valid")["loss"]
  assert result["valid"]["loss"] == averaged_loss != raw_loss
  assert read_scalars(os.path.join(model_dir, "eval"), "loss")[12] == pytest.approx(
      averaged_loss, rel=1e-6)
  # Evaluating put the raw weights back, bit for bit.
  for variable, value in zip(task.model.trainable_variables, raw):
    np.testing.assert_array_equal(variable.numpy(), value)
  # --mode=eval's path: a new Trainer restores the checkpoint and reports the same loss.
  _, again = averaging_trainer(model_dir)
  assert again.evaluate(splits=("valid",))["valid"]["loss"] == result["valid"]["loss"]
  with again.evaluation_weights():
    for variable, avg in zip(again.task.model.trainable_variables, averages.averages):
      np.testing.assert_array_equal(variable.numpy(), avg.numpy())


def test_eval_summaries_are_written_with_the_averages(triggered):
  task, _, _, _, _ = triggered
  for step, (weights, averages) in task.summary_weights.items():
    if step <= 6:  # Before the trigger, and at it (nothing averaged yet): the raw weights.
      continue
    for w, a in zip(weights, averages):
      np.testing.assert_array_equal(w, a)
  assert sorted(task.summary_weights) == [2, 4, 6, 8, 10, 12]


def test_checkpoint_holds_raw_weights_and_the_averaging_state(triggered, tmp_path):
  task, trainer, _, model_dir, _ = triggered
  path = os.path.join(model_dir, "checkpoints", "ckpt-12")
  averages = trainer.runner.averages
  for i, avg in enumerate(averages.averages):
    np.testing.assert_array_equal(
        tf.train.load_variable(path, f"averaged_weights/{i}/.ATTRIBUTES/VARIABLE_VALUE"), avg)
  for key, value in [("averaging_count", 6), ("averaging_start_step", 6)]:
    assert trainer.checkpoints.read(path, key) == value
  np.testing.assert_array_equal(trainer.checkpoints.read(path, "averaging_history"),
                                averages.history)
  # A restore gives the model the raw iterates (training continues from them) and the averages
  # beside them.
  restored_task, restored = averaging_trainer(model_dir)
  assert restored.restore(read_only=True) == 12
  assert state_of(restored.runner.averages)["history"] == averages.history
  pairs = zip(task.model.trainable_variables, restored_task.model.trainable_variables,
              averages.averages, restored.runner.averages.averages)
  for raw, restored_raw, avg, restored_avg in pairs:
    np.testing.assert_array_equal(restored_raw.numpy(), raw.numpy())
    np.testing.assert_array_equal(restored_avg.numpy(), avg.numpy())
  assert not all(np.array_equal(a.numpy(), b.numpy())
                 for a, b in zip(task.model.trainable_variables, averages.averages))


def test_averaging_scalars(triggered):
  _, _, _, model_dir, _ = triggered
  train = os.path.join(model_dir, "train")
  assert read_scalars(train, "averaging/active") == {s: float(s > 6) for s in range(1, 13)}
  assert read_scalars(train, "averaging/iterates") == {s: float(max(s - 6, 0))
                                                       for s in range(1, 13)}
  assert read_scalars(train, "averaging/start_step") == {s: 6.0 for s in range(7, 13)}


def test_off_by_default_nothing_changes(tmp_path):
  runtime.seed_everything(3)
  task, trainer = averaging_trainer(tmp_path, weight_averaging=None, train_steps=4)
  trainer.train()
  assert trainer.runner.averages is None
  names = [n for n, _ in tf.train.list_variables(trainer.checkpoints.latest)]
  assert not [n for n in names if "averag" in n]
  assert not [t for t in read_tags(str(tmp_path / "train")) if t.startswith("averaging")]


def test_loss_scaled_float16_training_averages_its_updates(tmp_path):
  runtime.set_mixed_precision("mixed_float16")
  try:
    _, trainer = averaging_trainer(tmp_path, task=DelayTask(units=8), learning_rate=0.05,
                                   mixed_precision="mixed_float16", train_steps=6,
                                   eval_interval=None)
  finally:
    runtime.set_mixed_precision(None)
  assert isinstance(trainer.runner.optimizer, keras.optimizers.LossScaleOptimizer)
  trainer.runner.averages.start(0)
  trainer.train()
  assert trainer.runner.averages.count == 6 - trainer.runner.counters.total.numpy() > 0


# -- resume ----------------------------------------------------------------------------------------


def deterministic_run(model_dir, train_steps, steps_per_loop):
  runtime.seed_everything(11, deterministic=True)
  task, trainer = averaging_trainer(
      model_dir, task=RisingValidTask(units=8, dropout=0.2), train_steps=train_steps,
      steps_per_loop=steps_per_loop, checkpoint_interval=5, seed=11, deterministic=True)
  trainer.train()
  return task, trainer


def test_stop_and_resume_is_bitwise_the_uninterrupted_run(tmp_path):
  whole_dir, split_dir = str(tmp_path / "whole"), str(tmp_path / "split")
  whole_task, whole = deterministic_run(whole_dir, 20, steps_per_loop=4)
  _, first_half = deterministic_run(split_dir, 10, steps_per_loop=4)
  assert first_half.runner.averages.start_step is not None
  assert first_half.runner.averages.start_step < 10 and first_half.runner.averages.count > 0
  # Resumed with other loop boundaries: they may not change the numbers.
  split_task, split = deterministic_run(split_dir, 20, steps_per_loop=3)
  assert split.step == whole.step == 20
  assert state_of(split.runner.averages)["history"] == state_of(whole.runner.averages)["history"]
  for key in ("count", "start_step"):
    assert state_of(split.runner.averages)[key] == state_of(whole.runner.averages)[key]
  for a, b in zip(state_of(split.runner.averages)["averages"],
                  state_of(whole.runner.averages)["averages"]):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(values(whole_task.model.weights), values(split_task.model.weights)):
    np.testing.assert_array_equal(a, b)
  for writer, tag in [("train", "loss"), ("eval", "loss"), ("train", "averaging/iterates"),
                      ("train", "averaging/active")]:
    whole_values = read_scalars(os.path.join(whole_dir, writer), tag)
    assert read_scalars(os.path.join(split_dir, writer), tag) == whole_values
