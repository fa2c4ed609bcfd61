"""A tiny Task for trainer tests: predict the token seen `delay` steps earlier, in B streams.

Each row is one long random integer stream cut into chunks of T tokens; chunk k of a pass is the
slice [k*T, (k+1)*T) (k = step mod num_chunks) and every row resets at chunk 0. The target at
position t is the input at t - delay, so with delay > 0 the first `delay` positions of every chunk
can only be predicted from the state carried over from the previous chunk.
"""

import keras
import numpy as np
import tensorflow as tf

from tbptt.layers import LSTM, LSTMState
from tbptt.trainer.task import Task


class ToyLM(keras.Model):
  """Embedding -> LSTM -> Dense: `model(tokens [B, T], state) -> (logits [B, T, V], state)`."""

  def __init__(self, vocab: int, units: int, embedding_dim: int, dropout: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.embedding = keras.layers.Embedding(vocab, embedding_dim)
    self.lstm = LSTM(units, dropout=dropout, recurrent_dropout=dropout)
    self.logits = keras.layers.Dense(vocab)

  def call(self, inputs, state, training=False):
    outputs, state = self.lstm(self.embedding(inputs), initial_state=state, training=training)
    return self.logits(outputs), state


class DelayTask(Task):
  """The delayed-copy task (see the module docstring).

  Args:
    batch_size: Rows B (global).
    seq_len: Chunk length T.
    vocab: Token count V.
    delay: Steps back the target is taken from.
    stream_len: Tokens per row per pass (a multiple of seq_len).
    eval_len: Tokens per row of the 'valid' and 'test' streams (0: no eval splits).
    units, embedding_dim, dropout: Model size.
    carry: False resets every row at every chunk (the state is dropped between chunks).
    nan_steps: Steps whose batch has NaN weights (a non-finite loss).
    seed: Data seed.
  """

  def __init__(self, *, batch_size=4, seq_len=8, vocab=8, delay=3, stream_len=256, eval_len=64,
               units=16, embedding_dim=8, dropout=0.0, carry=True, nan_steps=(), seed=0):
    rng = np.random.default_rng(seed)
    self.batch_size, self.seq_len, self.delay, self.carry = batch_size, seq_len, delay, carry
    self._streams = {"train": self._stream(rng, batch_size, stream_len, vocab),
                     "valid": self._stream(rng, batch_size, eval_len, vocab),
                     "test": self._stream(rng, batch_size, eval_len, vocab)}
    self._nan_steps = tf.constant(list(nan_steps) or [-1], tf.int64)
    self._model = ToyLM(vocab, units, embedding_dim, dropout)

  def _stream(self, rng, rows, length, vocab):
    tokens = rng.integers(0, vocab, size=(rows, length)).astype(np.int32)
    targets = np.zeros_like(tokens)
    targets[:, self.delay:] = tokens[:, :length - self.delay]
    weights = np.zeros(tokens.shape, np.float32)
    weights[:, self.delay:] = 1.0
    return {"inputs": tf.constant(tokens), "targets": tf.constant(targets),
            "weights": tf.constant(weights)}

  @property
  def model(self):
    return self._model

  @property
  def global_batch_size(self):
    return self.batch_size

  @property
  def steps_per_epoch(self):
    return int(self._streams["train"]["inputs"].shape[1]) // self.seq_len

  def initial_state(self, batch_size):
    zeros = tf.zeros([batch_size, self._model.units])
    return LSTMState(h=zeros, c=zeros)

  def _chunk(self, split, index, row_start, num_rows):
    stream = self._streams[split]
    chunks = int(stream["inputs"].shape[1]) // self.seq_len
    k = tf.cast(index % chunks, tf.int32)
    begin = [tf.cast(row_start, tf.int32), k * self.seq_len]
    batch = {name: tf.slice(t, begin, [num_rows, self.seq_len]) for name, t in stream.items()}
    first = tf.equal(k, 0) if self.carry else tf.constant(True)
    batch["reset"] = tf.fill([num_rows], first)
    return batch

  def train_batch(self, step, row_start, num_rows):
    batch = self._chunk("train", step, row_start, num_rows)
    poisoned = tf.reduce_any(tf.equal(tf.cast(step, tf.int64), self._nan_steps))
    batch["weights"] = batch["weights"] * tf.where(poisoned, np.float32(np.nan), np.float32(1.0))
    return batch

  def loss(self, batch, predictions):
    return keras.losses.sparse_categorical_crossentropy(
        batch["targets"], tf.cast(predictions, tf.float32), from_logits=True)

  def num_eval_batches(self, split):
    stream = self._streams.get(split)
    return 0 if stream is None else int(stream["inputs"].shape[1]) // self.seq_len

  def eval_batch(self, split, index, row_start, num_rows):
    return self._chunk(split, index, row_start, num_rows)

  def eval_sums(self, batch, predictions):
    correct = tf.cast(tf.equal(tf.argmax(predictions, -1, output_type=tf.int32), batch["targets"]),
                      tf.float32)
    return {"correct": tf.reduce_sum(correct * batch["weights"])}

  def eval_metrics(self, sums):
    weight = max(sums["weight"], 1e-12)
    loss = sums["loss"] / weight
    return {"loss": loss, "perplexity": float(np.exp(loss)), "accuracy": sums["correct"] / weight}
