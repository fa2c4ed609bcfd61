"""The contract between an experiment and the trainer.

An experiment builds a `Task` inside `strategy.scope()`. The trainer only ever talks to the task
through this interface, so any model that maps `(inputs, state) -> (outputs, state)` trains the same
way. The data half of the contract is `inputs.InputSource` (see there for the batch format): a task
is one, and may serve its chunks from another object by overriding `inputs`.
"""

import abc
from typing import Any, Mapping

import keras
import tensorflow as tf

from tbptt.trainer.inputs import Batch, InputSource

State = Any  # A nest of float tensors, each [b, ...] (b rows owned by one replica).

__all__ = ["Batch", "State", "Task"]


class Task(InputSource, abc.ABC):
  """A model, its data, its loss and its eval metrics."""

  @property
  def inputs(self) -> InputSource:
    """Where the trainer reads batches from (default: the task itself)."""
    return self

  @property
  @abc.abstractmethod
  def model(self) -> keras.Model:
    """The model: `model(inputs, state, training=bool) -> (predictions, new_state)`."""

  @abc.abstractmethod
  def initial_state(self, batch_size) -> State:
    """Zero state for `batch_size` rows (float32, whatever the compute dtype)."""

  @abc.abstractmethod
  def loss(self, batch: Batch, predictions) -> tf.Tensor:
    """Per-position loss [b, T] float32, unweighted (the trainer applies `weights`)."""

  @property
  def steps_per_epoch(self) -> int | None:
    """Training steps per pass over the data (schedules decay per epoch); None if unknown."""
    return None

  @property
  def tokens_per_step(self) -> int | None:
    """Target positions in one global training batch (for tokens/s); None to count weights."""
    return None

  @property
  def train_metric_names(self) -> tuple[str, ...]:
    """The keys `train_metrics` returns (the compiled loop sets up one record per key)."""
    return ()

  def train_metrics(self, batch: Batch, predictions) -> dict[str, tf.Tensor]:
    """Extra training scalars, per position [b, T] float32 (e.g. regulariser terms).

    The trainer averages each over the global batch with the loss's weights and logs it as
    `train/<name>` next to the loss. The keys must be `train_metric_names`.
    """
    del batch, predictions
    return {}

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
