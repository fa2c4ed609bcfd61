"""The input interface: what the trainer reads a step's batch through.

A source of TBPTT chunks implements four members; an in-memory tensor (the tasks in experiments/),
a memory-mapped token file or a stream all can. The chunk is a pure function of its index:
`train_batch(step, ...)` returns the same rows for the same step in every run, so a resumed run
re-derives its data position from the restored step (no iterator state is saved). The methods are
traced into the trainer's `tf.function`s: they take and return tensors.

Batches are dicts with at least:
  inputs:  [b, T, ...]  model inputs for one chunk.
  targets: [b, T, ...]  what the model should predict.
  weights: [b, T] float32, 0 where a position is padding.
  reset:   [b] bool, True where the row starts a new sequence (its carried state is zeroed first).
Row i of chunk k+1 continues row i of chunk k. Optional keys (see `chunk_model`):
  mask:        [b, T] bool, False at padding steps (the model carries its state through them).
  carry_steps: int32 scalar l; with burn_in (a Python int k > 0) the state after step l is carried
               into the next chunk, whose first k steps repeat steps [l, l + k) as context.
"""

import abc
from typing import Mapping

import tensorflow as tf

Batch = Mapping[str, tf.Tensor]


class InputSource(abc.ABC):
  """Training chunks by global step, eval chunks by index; every row range a replica asks for."""

  @property
  @abc.abstractmethod
  def global_batch_size(self) -> int:
    """Rows B of one global training batch (split evenly across replicas)."""

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
  def num_eval_batches(self, split: str) -> int:
    """How many eval chunks `split` ('valid' or 'test') has; 0 if the split does not exist."""

  @abc.abstractmethod
  def eval_batch(self, split: str, index: tf.Tensor, row_start, num_rows) -> Batch:
    """Eval chunk `index` of `split`: rows [row_start, row_start + num_rows); state carries over."""

  def learning_rate_scale(self, step: tf.Tensor) -> tf.Tensor | None:
    """A factor on the learning rate of global step `step` (float32 scalar), or None (1).

    For chunks of varying length: a step over a shorter chunk takes a proportionally smaller
    step (Merity et al. 2017 §4.1). A pure function of the step, like the chunk.
    """
    del step
    return None

  @property
  def eval_batch_size(self) -> int:
    """Rows of one global eval batch."""
    return self.global_batch_size
