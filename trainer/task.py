"""The contract between an experiment and the trainer.

An experiment builds a `Task` inside `strategy.scope()`. The trainer only ever talks to the task
through this interface, so any model that maps `(inputs, state) -> (outputs, state)` trains the same
way.

Data is a pure function of the step: `train_batch(step, ...)` must return the same rows for the same
step in every run, so a resumed run re-derives its data position from the restored step (no iterator
state is saved). Every method that takes tensors is traced into the trainer's `tf.function`s.
"""

import abc
from typing import Any, Mapping

import keras
import tensorflow as tf

Batch = Mapping[str, tf.Tensor]
State = Any  # A nest of float tensors, each [b, ...] (b rows owned by one replica).


class Task(abc.ABC):
  """A model, its data, its loss and its eval metrics.

  Batches are dicts with at least:
    inputs:  [b, T, ...]  model inputs for one TBPTT chunk.
    targets: [b, T, ...]  what the model should predict.
    weights: [b, T] float32, 0 where a position is padding.
    reset:   [b] bool, True where the row starts a new sequence (its carried state is zeroed first).
  Row i of chunk k+1 continues row i of chunk k.
  """

  @property
  @abc.abstractmethod
  def model(self) -> keras.Model:
    """The model: `model(inputs, state, training=bool) -> (predictions, new_state)`."""

  @property
  @abc.abstractmethod
  def global_batch_size(self) -> int:
    """Rows B of one global training batch (split evenly across replicas)."""

  @abc.abstractmethod
  def initial_state(self, batch_size) -> State:
    """Zero state for `batch_size` rows (float32, whatever the compute dtype)."""

  @abc.abstractmethod
  def train_batch(self, step: tf.Tensor, row_start, num_rows) -> Batch:
    """The training chunk for global step `step`, rows [row_start, row_start + num_rows).

    Args:
      step: int64 scalar tensor, the global step about to be taken (0 for the first).
      row_start: First global row this replica owns (int or scalar int tensor).
      num_rows: Rows this replica owns (Python int).

    Returns:
      A batch dict whose tensors have `num_rows` leading rows.
    """

  @abc.abstractmethod
  def loss(self, batch: Batch, predictions) -> tf.Tensor:
    """Per-position loss [b, T] float32, unweighted (the trainer applies `weights`)."""

  @abc.abstractmethod
  def num_eval_batches(self, split: str) -> int:
    """How many eval chunks `split` ('valid' or 'test') has; 0 if the split does not exist."""

  @abc.abstractmethod
  def eval_batch(self, split: str, index: tf.Tensor, row_start, num_rows) -> Batch:
    """Eval chunk `index` of `split`: rows [row_start, row_start + num_rows); state carries over."""

  @property
  def steps_per_epoch(self) -> int | None:
    """Training steps per pass over the data (schedules decay per epoch); None if unknown."""
    return None

  @property
  def tokens_per_step(self) -> int | None:
    """Target positions in one global training batch (for tokens/s); None to count weights."""
    return None

  @property
  def eval_batch_size(self) -> int:
    """Rows of one global eval batch."""
    return self.global_batch_size

  def eval_sums(self, batch: Batch, predictions) -> dict[str, tf.Tensor]:
    """Extra per-chunk sums for metrics (scalars, summed over this replica's rows).

    The trainer always accumulates `loss` (sum of weighted loss) and `weight` (sum of weights); a
    task adds what its metrics need (e.g. absolute error sums).
    """
    del batch, predictions
    return {}

  def eval_metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
    """Turns accumulated sums into reported metrics. Default: mean loss."""
    return {"loss": sums["loss"] / max(sums["weight"], 1e-12)}

  def write_eval_summaries(self, step: int) -> None:
    """Optional: writes extra summaries (images, text) to the default writer after an eval."""
    del step
