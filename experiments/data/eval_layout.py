"""The evaluation layout of one token stream: every token but the first is predicted exactly once.

    ids:      t0 t1 ... t(N-1)          predictions: t1 ... t(N-1), P = N - 1 of them
    rows:     B rows of L = ceil(P / B) predictions; row b predicts t(b*L + 1) ... t(b*L + L)
              from inputs t(b*L) ... t(b*L + L - 1) (rows overlap by one token, so none is lost)
    chunk k:  positions [k*T, (k+1)*T) of every row; there are ceil(L / T) chunks

Positions past the end of the text (the tail of the last rows and chunk) are padded with id 0 and
weight 0: they cost a little compute and count nowhere. So the evaluated token count is P for any
B and T, and perplexities compare with published ones (which count every token of the split). The
training layout (`tbptt.StreamLayout`) cuts its ragged tail instead; it need not see every token.
"""

import numpy as np
import tensorflow as tf

from tbptt.experiments.data import kernels
from tbptt.trainer.errors import ConfigError


class EvalLayout:
  """B rows over a whole split, read in T-long chunks with zero-weight padding.

  Args:
    ids: int [N] token ids of the split: an array (held as one constant tensor) or an np.memmap
      (left on disk, so memory does not grow with the split; each chunk's window is read from the
      file by the token-window op, `kernels.token_window`, or by `tf.numpy_function` if the op is
      not built).
    batch_size: Rows B.
    seq_len: Chunk length T (tokens).
    name: What the ids are (for error messages), e.g. "the valid text".

  Raises:
    ConfigError: if the split predicts fewer tokens than there are rows (N - 1 < B).
  """

  def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, name: str = "the text"):
    self.memory_mapped = isinstance(ids, np.memmap)
    self.ids = ids if self.memory_mapped else np.asarray(ids, np.int32)
    self.num_targets = max(int(self.ids.shape[0]) - 1, 0)
    if self.num_targets < batch_size:
      raise ConfigError(
          f"{name} has {self.ids.shape[0]} tokens, fewer than one batch needs: eval_batch_size "
          f"{batch_size} rows + 1 = {batch_size + 1}; use a longer text or a smaller "
          "eval_batch_size")
    self.batch_size = batch_size
    self.seq_len = seq_len
    self.row_length = -(-self.num_targets // batch_size)
    self.num_chunks = -(-self.row_length // seq_len)
    # Built eagerly once, so the tf.functions that read it capture it instead of embedding a copy.
    self._ids = None if self.memory_mapped else tf.constant(self.ids)  # [N]
    # Where the op reads the map's ids (None: through tf.numpy_function); built here, eagerly.
    self._id_file = (kernels.id_file(self.ids) if self.memory_mapped and kernels.available()
                     else None)

  @property
  def tokens_per_pass(self) -> int:
    """Predictions one pass evaluates: every token of the split but the first."""
    return self.num_targets

  def window(self, index, row_start, num_rows, num_chunks=1):
    """NumPy (inputs, targets int32, weights float32), each [num_rows, num_chunks * T], of chunks
    `index` ... `index + num_chunks - 1` of rows [row_start, row_start + num_rows)."""
    rows = np.arange(int(row_start), int(row_start) + int(num_rows))[:, None]
    steps = np.arange(int(index) * self.seq_len, (int(index) + num_chunks) * self.seq_len)[None]
    positions = rows * self.row_length + steps  # Of the input token; the target is the next one.
    valid = (steps < self.row_length) & (positions < self.num_targets)
    last = self.num_targets  # The last id's index.
    inputs = np.where(valid, np.asarray(self.ids[np.minimum(positions, last)]), 0)
    targets = np.where(valid, np.asarray(self.ids[np.minimum(positions + 1, last)]), 0)
    return inputs.astype(np.int32), targets.astype(np.int32), valid.astype(np.float32)

  def chunk(self, index, row_start=0, num_rows: int | None = None) -> dict[str, tf.Tensor]:
    """Chunk `index` of rows [row_start, row_start + num_rows).

    Args:
      index: Chunk index in [0, num_chunks) (int or scalar int tensor).
      row_start: First row (int or scalar int tensor).
      num_rows: Rows to read (Python int); defaults to all B.

    Returns:
      inputs [b, T] int32, targets [b, T] int32, weights [b, T] float32 (0 on padding), reset [b]
      bool (True at chunk 0).
    """
    num_rows = self.batch_size if num_rows is None else num_rows
    if self._id_file is not None:
      return self._chunk_from_file(index, row_start, num_rows)
    if self.memory_mapped:
      inputs, targets, weights = tf.numpy_function(
          lambda k, r: self.window(k, r, num_rows), [index, row_start],
          [tf.int32, tf.int32, tf.float32], name="read_eval_window")
      for tensor in (inputs, targets, weights):
        tensor.set_shape([num_rows, self.seq_len])
      return {"inputs": inputs, "targets": targets, "weights": weights,
              "reset": tf.fill([num_rows], tf.equal(tf.cast(index, tf.int64), 0))}
    index = tf.cast(index, tf.int64)
    rows = tf.cast(row_start, tf.int64) + tf.range(num_rows, dtype=tf.int64)
    steps = index * self.seq_len + tf.range(self.seq_len, dtype=tf.int64)
    positions = rows[:, None] * self.row_length + steps[None]  # [b, T], of the input token
    valid = (steps[None] < self.row_length) & (positions < self.num_targets)

    def ids_at(p):
      ids = tf.cast(tf.gather(self._ids, tf.minimum(p, self.num_targets)), tf.int32)
      return tf.where(valid, ids, 0)

    return {"inputs": ids_at(positions), "targets": ids_at(positions + 1),
            "weights": tf.cast(valid, tf.float32),
            "reset": tf.fill([num_rows], tf.equal(index, 0))}

  def _chunk_from_file(self, index, row_start, num_rows: int) -> dict[str, tf.Tensor]:
    """`chunk` of a memory-mapped split: each row's T + 1 ids (inputs and the targets one to their
    right) read from the file by the token-window op; past the last id it reads 0, masked anyway."""
    index = tf.cast(index, tf.int64)
    rows = tf.cast(row_start, tf.int64) + tf.range(num_rows, dtype=tf.int64)
    steps = index * self.seq_len + tf.range(self.seq_len, dtype=tf.int64)
    positions = rows[:, None] * self.row_length + steps[None]  # [b, T], of the input token
    valid = (steps[None] < self.row_length) & (positions < self.num_targets)
    window = kernels.token_window(self._id_file, positions[:, 0], self.seq_len + 1,
                                  pad_past_end=True)  # [b, T + 1]
    return {"inputs": tf.where(valid, window[:, :-1], 0),
            "targets": tf.where(valid, window[:, 1:], 0),
            "weights": tf.cast(valid, tf.float32),
            "reset": tf.fill([num_rows], tf.equal(index, 0))}
