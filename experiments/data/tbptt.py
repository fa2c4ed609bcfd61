"""The TBPTT layout of one long token stream: B contiguous rows cut into T-long chunks.

    ids:      t0 t1 t2 ... t(N-1)
    streams:  [B, L], L = N // B; row b holds ids[b*L : (b+1)*L] (a tail that does not fit is cut)
    chunk k:  inputs  = streams[:, k*T     : (k+1)*T]
              targets = streams[:, k*T + 1 : (k+1)*T + 1]

so row b of chunk k+1 continues row b of chunk k and the state carried between chunks is exact.
There are (L - 1) // T chunks per pass. The chunk is selected by a tensor index (a pure function of
the step), so a resumed run finds its place from the restored step alone.
"""

import numpy as np
import tensorflow as tf

from tbptt.experiments.data import kernels
from tbptt.trainer.errors import ConfigError


class StreamLayout:
  """B contiguous streams of one token sequence, read in T-long chunks.

  Args:
    ids: int [N] token ids of the whole split: an array (held as one constant tensor) or an
      np.memmap (left on disk, so memory does not grow with the corpus; each chunk's window is
      read from the file by the token-window op, `kernels.token_window`, or by
      `tf.numpy_function` if the op is not built).
    batch_size: Rows B.
    seq_len: Chunk length T (tokens).
    name: What the ids are (for error messages), e.g. "the training text".

  Raises:
    ConfigError: if the stream is shorter than one chunk, B * (T + 1) tokens.
  """

  def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, name: str = "the text"):
    # A memory-mapped id file stays on disk: a step reads its B x (T + 1) window from the map.
    self.memory_mapped = isinstance(ids, np.memmap)
    ids = ids if self.memory_mapped else np.asarray(ids, np.int32)
    needed = batch_size * (seq_len + 1)
    if ids.shape[0] < needed:
      raise ConfigError(
          f"{name} has {ids.shape[0]} tokens, fewer than one batch needs: batch_size "
          f"{batch_size} x (seq_len {seq_len} + 1) = {needed}; use a longer text or smaller "
          "batch_size/seq_len")
    self.batch_size = batch_size
    self.seq_len = seq_len
    length = ids.shape[0] // batch_size
    self.streams = ids[:batch_size * length].reshape(batch_size, length)  # [B, L]
    self.num_chunks = (length - 1) // seq_len
    # Built eagerly once, so the tf.functions that read it capture it instead of embedding a copy.
    self._streams = None if self.memory_mapped else tf.constant(self.streams)
    # Where the op reads the map's ids (None: through tf.numpy_function). Building the op (the first
    # time only) happens here, eagerly, never while a step is traced.
    self._id_file = (kernels.id_file(ids) if self.memory_mapped and kernels.available()
                     else None)

  @property
  def tokens_per_pass(self) -> int:
    """Target positions read in one pass (all chunks, all rows)."""
    return self.num_chunks * self.batch_size * self.seq_len

  def chunk(self, index, row_start=0, num_rows: int | None = None) -> dict[str, tf.Tensor]:
    """Chunk `index` of rows [row_start, row_start + num_rows).

    Args:
      index: Chunk index in [0, num_chunks) (int or scalar int tensor).
      row_start: First row (int or scalar int tensor).
      num_rows: Rows to read (Python int); defaults to all B.

    Returns:
      inputs [b, T] int32, targets [b, T] int32, weights [b, T] float32 (ones), reset [b] bool (True
      at chunk 0: a new pass over the text starts with a fresh state).
    """
    num_rows = self.batch_size if num_rows is None else num_rows
    index = tf.cast(index, tf.int32)
    row_start = tf.cast(row_start, tf.int32)
    if self._id_file is not None:
      rows = tf.cast(row_start, tf.int64) + tf.range(num_rows, dtype=tf.int64)
      starts = rows * self.streams.shape[1] + tf.cast(index, tf.int64) * self.seq_len
      window = kernels.token_window(self._id_file, starts, self.seq_len + 1)
    elif self.memory_mapped:
      window = tf.numpy_function(self._read_window, [index, row_start, tf.constant(num_rows)],
                                 tf.int32, name="read_token_window")
      window.set_shape([num_rows, self.seq_len + 1])
    else:
      window = tf.slice(self._streams, tf.stack([row_start, index * self.seq_len]),
                        [num_rows, self.seq_len + 1])
    return {
        "inputs": window[:, :-1],
        "targets": window[:, 1:],
        "weights": tf.ones([num_rows, self.seq_len], tf.float32),
        "reset": tf.fill([num_rows], tf.equal(index, 0)),
    }

  def _read_window(self, index, row_start, num_rows) -> np.ndarray:
    """int32 [num_rows, T + 1]: the ids chunk `index` reads, copied out of the memory map."""
    begin = int(index) * self.seq_len
    rows = self.streams[int(row_start):int(row_start) + int(num_rows)]
    return np.asarray(rows[:, begin:begin + self.seq_len + 1], np.int32)

  def window(self, begin, width: int, row_start, num_rows: int) -> tf.Tensor:
    """int32 [num_rows, width]: streams[row_start : row_start + num_rows, begin : begin + width].

    Args:
      begin: First column (scalar int tensor); may be negative: columns before 0 read as 0.
      width: Columns (Python int, at most the row length L); begin + width must not exceed L.
      row_start: First row (int or scalar int tensor).
      num_rows: Rows (Python int).
    """
    begin = tf.cast(begin, tf.int32)
    row_start = tf.cast(row_start, tf.int32)
    lead = tf.maximum(0, -begin)  # Columns before the stream's start.
    start = begin + lead  # Read `width` columns from here (static shape), then shift by `lead`.
    if self._id_file is not None:
      rows = tf.cast(row_start, tf.int64) + tf.range(num_rows, dtype=tf.int64)
      read = kernels.token_window(self._id_file, rows * self.streams.shape[1]
                                  + tf.cast(start, tf.int64), width)
    elif self.memory_mapped:
      read = tf.numpy_function(self._read_columns, [row_start, tf.constant(num_rows), start,
                                                    tf.constant(width)], tf.int32,
                               name="read_token_columns")
      read.set_shape([num_rows, width])
    else:
      read = tf.slice(self._streams, tf.stack([row_start, start]), [num_rows, width])
    source = tf.range(width) - lead
    shifted = tf.gather(read, tf.maximum(source, 0), axis=1)
    return tf.where((source >= 0)[None], shifted, tf.zeros_like(shifted))

  def _read_columns(self, row_start, num_rows, begin, width) -> np.ndarray:
    """int32 [num_rows, width] copied out of the memory map."""
    rows = self.streams[int(row_start):int(row_start) + int(num_rows)]
    return np.asarray(rows[:, int(begin):int(begin) + int(width)], np.int32)

  def chunk_for_step(self, step, row_start=0, num_rows: int | None = None) -> dict[str, tf.Tensor]:
    """The training chunk of a global step: chunk `step mod num_chunks` (passes repeat forever)."""
    index = tf.math.floormod(tf.cast(step, tf.int64), self.num_chunks)
    return self.chunk(index, row_start, num_rows)
