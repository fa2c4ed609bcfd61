"""NT-ASGD: weight averaging started by a non-monotonic trigger (Merity, Keskar & Socher 2017).

  Trainer.weight_averaging = @NTAveraging()   # gin; None (the default): no averaging
  NTAveraging.nonmono = 5                     # evaluations (AWD-LSTM's default)

Training runs the configured optimizer (AWD-LSTM: plain SGD) until a validation evaluation is worse
than the best of all earlier ones except the last `nonmono` (`should_start_averaging`). From then
on, after every applied update (a skipped non-finite step adds nothing), the weights are folded
into their running mean:

    n = 0:  avg = w          n > 0:  avg = avg + (w - avg) / (n + 1);   n = n + 1

so `avg` is the arithmetic mean of the iterates after each update since the trigger. Training
itself continues from the raw iterates; evaluation, the TensorBoard sample, `--mode=eval`,
`--mode=sample` and `--mode=export` use the averages (`WeightAverages.applied`) once there is at
least one. Checkpoints hold the raw weights (under `model`) and the averaging state beside them,
so a resumed run continues bitwise.
"""

import contextlib
import dataclasses

import gin
import keras
import tensorflow as tf

from tbptt.trainer.errors import invalid

__all__ = ["NTAveraging", "WeightAverages", "should_start_averaging"]


def should_start_averaging(history, loss: float, nonmono: int) -> bool:
  """AWD-LSTM's non-monotonic trigger.

  Args:
    history: The validation losses of the earlier evaluations, oldest first (not `loss`).
    loss: The validation loss of this evaluation.
    nonmono: How many of the latest evaluations the comparison leaves out (>= 1).

  Returns:
    `len(history) > nonmono and loss > min(history[:-nonmono])`: this evaluation is worse than the
    best one before the last `nonmono`.
  """
  history = list(history)
  return len(history) > nonmono and loss > min(history[:-nonmono])


@gin.configurable("NTAveraging")
@dataclasses.dataclass(frozen=True)
class NTAveraging:
  """The settings of NT-ASGD's weight averaging (`Trainer.weight_averaging = @NTAveraging()`).

  Attributes:
    nonmono: Evaluations left out of the trigger's comparison (see `should_start_averaging`);
      a positive integer. AWD-LSTM uses 5 (with one evaluation per epoch).
  """

  nonmono: int = 5

  def __post_init__(self):
    value = self.nonmono
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise invalid("NTAveraging.nonmono", "a positive integer", value)


def _state_variable(initial, dtype, name, shape=None) -> tf.Variable:
  """A non-trainable variable every replica reads the same value of (create it in the scope)."""
  return tf.Variable(initial, dtype=dtype, shape=shape, trainable=False, name=name,
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class WeightAverages:
  """The running means of a model's trainable weights and the state of their trigger.

  Create it inside the strategy's scope, then `attach` it to the optimizer. Its variables (see
  `trackables`) are float32 (each weight's own dtype), mirrored like the weights:
    averaged_weights      one per trainable weight, the mean of the iterates since the trigger
    averaging_count       int64: iterates averaged so far (n)
    averaging_start_step  int64: the step of the evaluation that started averaging; -1: not yet
    averaging_history     float64 [evaluations]: every training evaluation's validation loss

  Args:
    settings: The `NTAveraging` settings.
    model: The model whose `trainable_variables` are averaged.
    strategy: The strategy the model was built under.
  """

  def __init__(self, settings: NTAveraging, model: keras.Model,
               strategy: tf.distribute.Strategy):
    self.settings = settings
    self._strategy = strategy
    # The tf.Variables behind Keras's variables (mirrored ones under a strategy).
    self._weights = [getattr(v, "value", v) for v in model.trainable_variables]
    self._averages = [_state_variable(tf.zeros(w.shape, w.dtype), w.dtype, f"averaged_weight_{i}")
                      for i, w in enumerate(self._weights)]
    self._count = _state_variable(0, tf.int64, "averaging_count")
    self._start_step = _state_variable(-1, tf.int64, "averaging_start_step")
    self._history = _state_variable(tf.zeros([0], tf.float64), tf.float64, "averaging_history",
                                    shape=tf.TensorShape([None]))

  # -- what the trainer reads ----------------------------------------------------------------------

  @property
  def started(self) -> bool:
    """Whether the trigger has fired (updates are averaged from then on)."""
    return self.start_step is not None

  @property
  def start_step(self) -> int | None:
    """The step of the evaluation that started averaging; None before."""
    step = int(self._start_step.numpy())
    return step if step >= 0 else None

  @property
  def count(self) -> int:
    """Iterates averaged so far."""
    return int(self._count.numpy())

  @property
  def history(self) -> list[float]:
    """Every training evaluation's validation loss, oldest first."""
    return [float(x) for x in self._history.numpy()]

  @property
  def averages(self) -> list[tf.Variable]:
    """The averaged weights, aligned with the model's `trainable_variables`."""
    return list(self._averages)

  def trackables(self) -> dict:
    """The checkpoint keys of the averaging state (the raw weights stay under `model`)."""
    return {"averaged_weights": list(self._averages), "averaging_count": self._count,
            "averaging_start_step": self._start_step, "averaging_history": self._history}

  # -- the trigger ---------------------------------------------------------------------------------

  def record(self, step: int, loss: float) -> bool:
    """Appends a training evaluation's validation loss; starts averaging if the rule says so.

    Returns:
      True if averaging started at this evaluation.
    """
    history = self.history
    start = not self.started and should_start_averaging(history, loss, self.settings.nonmono)
    self._history.assign(tf.constant(history + [float(loss)], tf.float64))
    if start:
      self.start(step)
    return start

  def start(self, step: int) -> None:
    """Starts averaging at `step`: the updates after it are averaged."""
    self._count.assign(0)
    self._start_step.assign(step)

  # -- the update, inside the train step -----------------------------------------------------------

  def attach(self, optimizer: keras.optimizers.Optimizer) -> None:
    """Makes every `apply_gradients` of `optimizer` (the inner optimizer of a
    LossScaleOptimizer) fold the updated weights into the averages once averaging has started.

    The train step applies an update only when the step is finite, through `apply_gradients` in
    replica context; the averages are updated right after it, in the same compiled step.
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
      optimizer = optimizer.inner_optimizer
    apply_gradients = optimizer.apply_gradients

    def apply_gradients_and_average(grads_and_vars):
      result = apply_gradients(grads_and_vars)
      self._update()
      return result

    optimizer.apply_gradients = apply_gradients_and_average

  def _update(self):
    """In replica context, after an update: avg += (w - avg) / (n + 1), n += 1 (if started)."""
    def average(avg, weight, count):
      n = tf.cast(count, avg.dtype)
      weight = tf.cast(weight, avg.dtype)
      return avg.assign(tf.where(n > 0, avg + (weight - avg) / (n + 1), weight))

    def merged(strategy):
      def fold():
        for avg, weight in zip(self._averages, self._weights):
          strategy.extended.update(avg, average, args=(weight, self._count), group=False)
        # After every average has read n (tf.function keeps stateful ops in program order).
        strategy.extended.update(self._count, lambda count: count.assign_add(1), group=False)
        return tf.constant(True)

      return tf.cond(self._start_step >= 0, fold, lambda: tf.constant(False))

    tf.__internal__.distribute.interim.maybe_merge_call(merged, self._strategy)

  # -- evaluating with the averages ----------------------------------------------------------------

  @contextlib.contextmanager
  def applied(self):
    """Inside: the model's weights are the averages (if any iterate was averaged yet); on exit
    the raw weights are put back exactly."""
    if self.count == 0:
      yield
      return
    with self._strategy.scope():
      raw = [w.read_value() for w in self._weights]
      for weight, avg in zip(self._weights, self._averages):
        weight.assign(avg)
    try:
      yield
    finally:
      with self._strategy.scope():
        for weight, value in zip(self._weights, raw):
          weight.assign(value)
