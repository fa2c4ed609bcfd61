"""Language modelling with TBPTT: embedding -> stacked LSTM -> softmax, on one long stream."""

import math

import gin
import keras
import tensorflow as tf

from tbptt.experiments import initializers, sampling
from tbptt.experiments.data.corpus import TextCorpus
from tbptt.layers import StackedLSTM
from tbptt.layers.noise import sequence_dropout
from tbptt.trainer.task import Task


def _uniform(scale: float | None):
  # A config, not an instance: every weight gets its own initializer and so its own seed.
  if scale is None:
    return None
  return {"class_name": "RandomUniform", "config": {"minval": -scale, "maxval": scale}}


@gin.configurable
class LanguageModel(keras.Model):
  """Token ids -> next-token logits, with the LSTM state passed in and out.

    logits, state = model(inputs [B, T] int, state, training=False)  # logits [B, T, V] float32

  state is a tuple of `LSTMState(h, c)`, one per layer (None: zeros). Dropout follows Zaremba et al.
  (2014): applied to the non-recurrent connections only (embeddings, between layers, before the
  softmax); `recurrent_dropout`, `weight_drop` and zoneout act on the recurrent connections inside
  the cells. The AWD-LSTM regularisers (Merity et al. 2017) are options: embedding dropout, locked
  dropout, weight drop, and activation regularisation (AR, TAR).

  With AR or TAR on, a training call returns a dict instead of the logits:
    {"logits": [B, T, V], "ar": [B, T], "tar": [B, T]}
  where, per position, ar = alpha * mean_f(y(t)^2) of the dropped top-layer output y and tar =
  beta * mean_f((h(t) - h(t-1))^2) of the undropped one (h(-1): the carried state, so the penalty
  runs across chunk boundaries). The task adds both to the loss, weighted like it, and logs them.

  Args:
    vocab_size: V, set by the task from its vocabulary.
    units: Cell size of every layer (an int), or one per layer (a list of num_layers ints; e.g.
      AWD-LSTM's [1150, 1150, 400], whose top layer matches the tied embedding).
    num_layers: Stacked LSTM layers.
    embedding_dim: Embedding size; defaults to the top layer's output size (num_proj or units).
    dropout: Rate on the non-recurrent connections, in [0, 1).
    dropout_input, dropout_between, dropout_output: Rates on the embedded inputs, between layers
      and before the softmax (AWD-LSTM's dropouti, dropouth, dropout); None: `dropout`.
    locked_dropout: Those three draw one mask per row for the whole chunk instead of one per step
      (Gal & Ghahramani 2016; Merity et al. 2017 §4.2).
    embedding_dropout: Rate at which whole rows of the embedding matrix (whole words) are dropped,
      one mask per call (Gal & Ghahramani 2016; Merity et al. 2017 §4.3); kept rows are scaled by
      1 / (1 - rate). With tied weights the softmax still reads every row.
    weight_drop: DropConnect rate on every layer's recurrent kernel, one mask per chunk (Merity et
      al. 2017 §2; see `layers.LSTMCell`).
    activation_regularization: alpha of AR (Merity et al. 2017 §4.6); 0: off.
    temporal_activation_regularization: beta of TAR; 0: off.
    tie_weights: Share the embedding matrix with the softmax (Press & Wolf 2017; Inan et al. 2017);
      needs embedding_dim equal to the top layer's output size.
    embedding_initializer, kernel_initializer, recurrent_initializer, bias_initializer,
      softmax_initializer: How the embedding, the LSTM input and recurrent kernels and biases,
      and the softmax kernel start: a Keras initializer name or config, or a name from
      `tbptt.experiments.initializers` ('unit_normal', 'lstm_uniform', 'fan_in_uniform').
      The embedding starts N(0, 1) (PyTorch's `nn.Embedding`), not Keras's U(-0.05, 0.05):
      inputs of unit scale drive the LSTM's gates from the first step, and a character LM
      reaches a valid loss 0.07 bits/char lower at equal steps (README, "Learning speed"). The
      LSTM keeps Keras's initializers (Glorot, orthogonal, forget bias 1), which learn as fast
      as PyTorch's there.
    init_scale: If set, every weight but the biases starts uniform in [-init_scale, init_scale]
      (Zaremba et al.), overriding the initializers above.
    residual: Residual connections between layers of equal size.
    use_peepholes, num_proj, proj_clip, cell_clip, layer_norm, unit_forget_bias, recurrent_dropout,
    zoneout_cell, zoneout_hidden: `layers.LSTMCell` options, applied to every layer.
    seed: Seed of the dropout and zoneout noise.
    implementation: 'auto', 'fused' or 'loop', for every LSTM layer (see `layers.LSTM`);
      `implementations` lists what each layer ran in its last call.
  """

  def __init__(self, vocab_size: int, *, units: int | list[int] = 256, num_layers: int = 2,
               embedding_dim: int | None = None, dropout: float = 0.0,
               dropout_input: float | None = None, dropout_between: float | None = None,
               dropout_output: float | None = None, locked_dropout: bool = False,
               embedding_dropout: float = 0.0, weight_drop: float = 0.0,
               activation_regularization: float = 0.0,
               temporal_activation_regularization: float = 0.0, tie_weights: bool = False,
               embedding_initializer="unit_normal", kernel_initializer="glorot_uniform",
               recurrent_initializer="orthogonal", bias_initializer="zeros",
               softmax_initializer="glorot_uniform",
               init_scale: float | None = None, residual: bool = False, use_peepholes: bool = False,
               num_proj: int | None = None, proj_clip: float | None = None,
               cell_clip: float | None = None, layer_norm: bool = False,
               unit_forget_bias: bool = True, recurrent_dropout: float = 0.0,
               zoneout_cell: float = 0.0, zoneout_hidden: float = 0.0, seed: int | None = None,
               implementation: str = "auto", name: str = "language_model"):
    super().__init__(name=name)
    # The state keeps float32 under mixed precision: Keras must not cast call arguments.
    self._convert_input_args = False
    self.supports_masking = True  # `mask` marks padding steps; the logits carry no mask on.
    self._allow_non_tensor_positional_args = True
    units = list(units) if isinstance(units, (list, tuple)) else units
    output_size = num_proj or (units[-1] if isinstance(units, list) else units)
    self.vocab_size = vocab_size
    self.embedding_dim = embedding_dim or output_size
    self.tie_weights = bool(tie_weights)
    rates = {name: dropout if value is None else value for name, value in (
        ("dropout_input", dropout_input), ("dropout_between", dropout_between),
        ("dropout_output", dropout_output))}
    for name, value in dict(rates, dropout=dropout, embedding_dropout=embedding_dropout).items():
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"LanguageModel.{name} must be a rate in [0, 1), got {value!r}")
    for name, value in (("activation_regularization", activation_regularization),
                        ("temporal_activation_regularization", temporal_activation_regularization)):
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"LanguageModel.{name} must be a number >= 0, got {value!r}")
    self.embedding_dropout = float(embedding_dropout)
    self.activation_regularization = float(activation_regularization)
    self.temporal_activation_regularization = float(temporal_activation_regularization)
    self.locked_dropout = bool(locked_dropout)
    # Its own seed stream: the embedding-dropout mask is checkpointed with the model.
    self.noise_seed = keras.random.SeedGenerator(None if seed is None else seed + 2)
    if self.tie_weights and self.embedding_dim != output_size:
      raise ValueError(f"tie_weights needs embedding_dim == the top layer's output size "
                       f"(num_proj or units = {output_size}), got embedding_dim={embedding_dim}")
    self.embedding = keras.layers.Embedding(
        vocab_size, self.embedding_dim, name="embedding",
        embeddings_initializer=_uniform(init_scale) or initializers.resolve(embedding_initializer))
    self.rnn = StackedLSTM(
        units, num_layers, dropout_between=rates["dropout_between"],
        locked_dropout=self.locked_dropout, weight_drop=weight_drop, residual=residual,
        name="stacked_lstm",
        use_peepholes=use_peepholes, num_proj=num_proj, proj_clip=proj_clip, cell_clip=cell_clip,
        layer_norm=layer_norm, unit_forget_bias=unit_forget_bias,
        recurrent_dropout=recurrent_dropout, zoneout_cell=zoneout_cell,
        zoneout_hidden=zoneout_hidden, seed=seed, implementation=implementation,
        bias_initializer=initializers.resolve(bias_initializer),
        **({k: _uniform(init_scale) for k in ("kernel_initializer", "recurrent_initializer",
                                              "projection_initializer", "peephole_initializer")}
           if init_scale is not None else
           {"kernel_initializer": initializers.resolve(kernel_initializer),
            "recurrent_initializer": initializers.resolve(recurrent_initializer)}))
    self.input_dropout = sequence_dropout(rates["dropout_input"], locked=self.locked_dropout,
                                          seed=seed, name="input_dropout")
    self.output_dropout = sequence_dropout(
        rates["dropout_output"], locked=self.locked_dropout,
        seed=None if seed is None else seed + 1, name="output_dropout")
    if not self.tie_weights:
      self.softmax = keras.layers.Dense(
          vocab_size, name="softmax",
          kernel_initializer=_uniform(init_scale) or initializers.resolve(softmax_initializer))

  def build(self, input_shape=None):
    if self.tie_weights:
      self.softmax_bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros",
                                          name="softmax_bias")
    self.built = True

  @property
  def implementations(self) -> tuple:
    """What each LSTM layer ran in its last call ('fused', 'loop', 'cudnn'; None before one)."""
    return self.rnn.implementations

  def initial_state(self, batch_size) -> tuple:
    """Zero state: a tuple of LSTMState, one per layer, float32."""
    return self.rnn.get_initial_state(batch_size)

  def compute_mask(self, inputs, mask=None):
    return None

  @property
  def regularizes_activations(self) -> bool:
    """A training call returns the dict with AR and TAR (see the class docstring)."""
    return self.activation_regularization > 0 or self.temporal_activation_regularization > 0

  def call(self, inputs, state=None, training=False, mask=None):
    """Next-token logits.

    Args:
      inputs: [B, T] int token ids.
      state: Tuple of LSTMState per layer, or None for zeros.
      training: Apply dropout.
      mask: Optional [B, T] bool: a False step carries every layer's state unchanged (padding).

    Returns:
      (logits [B, T, V] float32, new state); in training with AR or TAR on, the dict of the class
      docstring instead of the logits.
    """
    if state is None:
      state = self.initial_state(tf.shape(inputs)[0])
    state = tuple(state)
    x = self.embedding(inputs)
    if training and self.embedding_dropout > 0:
      # One keep or drop per vocabulary row: every occurrence of a word in the batch shares it.
      rate = self.embedding_dropout
      keep = keras.random.uniform((self.vocab_size, 1), seed=self.noise_seed) >= rate
      x *= tf.gather(tf.cast(keep, x.dtype) / (1.0 - rate), inputs)
    x = self.input_dropout(x, training=training)
    x, new_state = self.rnn(x, initial_state=state, mask=mask, training=training)
    top = x
    x = self.output_dropout(x, training=training)
    if self.tie_weights:
      embeddings = tf.cast(self.embedding.embeddings, x.dtype)
      logits = tf.einsum("btd,vd->btv", x, embeddings) + tf.cast(self.softmax_bias, x.dtype)
    else:
      logits = self.softmax(x)
    logits = tf.cast(logits, tf.float32)
    if not (training and self.regularizes_activations):
      return logits, new_state
    top = tf.cast(top, tf.float32)
    previous = tf.concat([tf.cast(state[-1].h, tf.float32)[:, None], top[:, :-1]], axis=1)
    ar = tf.reduce_mean(tf.square(tf.cast(x, tf.float32)), axis=-1)
    tar = tf.reduce_mean(tf.square(top - previous), axis=-1)
    return {"logits": logits, "ar": self.activation_regularization * ar,
            "tar": self.temporal_activation_regularization * tar}, new_state


@gin.configurable
class LanguageModelTask(Task):
  """Next-token prediction on a `TextCorpus` with a `LanguageModel`.

  Loss: sparse softmax cross-entropy per position (nats). Eval metrics: `loss`, and `bits_per_char`
  (loss / ln 2) at char level or `perplexity` (exp(loss)) at word level.

  After each validation, a text sample (`sample_text` settings, `summary_sample_length` tokens) is
  written to TensorBoard as `sample`, so the text can be read improving next to the loss curve.

  Args:
    model_dir: Where the vocabulary is saved (see `TextCorpus`).
    corpus_fn: Builds the corpus: `corpus_fn(model_dir=...)`.
    model_fn: Builds the model: `model_fn(vocab_size=...)`.
    summary_sample_length: Tokens of the TensorBoard sample; 0: none.
  """

  def __init__(self, model_dir: str | None = None, *, corpus_fn=TextCorpus, model_fn=LanguageModel,
               summary_sample_length: int = 300):
    self.summary_sample_length = summary_sample_length
    self._sampler = None
    self.corpus = corpus_fn(model_dir=model_dir)
    self.vocab = self.corpus.vocab
    self._model = model_fn(vocab_size=self.vocab.size)
    # Create every variable now, inside the caller's strategy scope.
    self._model(tf.zeros([1, 1], tf.int32), self._model.initial_state(1))

  @property
  def model(self) -> keras.Model:
    return self._model

  @property
  def global_batch_size(self) -> int:
    return self.corpus.batch_size

  @property
  def eval_batch_size(self) -> int:
    return self.corpus.eval_batch_size

  @property
  def steps_per_epoch(self) -> int:
    return self.corpus.train_chunks.num_chunks

  @property
  def tokens_per_step(self) -> int | None:
    if self.corpus.train_chunks is not self.corpus.train:
      return None  # Lengths vary (or burn-in adds context): count the weighted targets.
    return self.corpus.batch_size * self.corpus.seq_len

  def initial_state(self, batch_size):
    return self._model.initial_state(batch_size)

  def train_batch(self, step, row_start, num_rows):
    return self.corpus.train_chunks.chunk_for_step(step, row_start, num_rows)

  def learning_rate_scale(self, step):
    scale = getattr(self.corpus.train_chunks, "learning_rate_scale", None)
    return None if scale is None else scale(step)

  def loss(self, batch, predictions):
    """Cross-entropy per position (nats), plus AR and TAR when the model returns them."""
    logits = predictions["logits"] if isinstance(predictions, dict) else predictions
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=batch["targets"], logits=logits)
    if isinstance(predictions, dict):
      loss += predictions["ar"] + predictions["tar"]
    return loss

  @property
  def train_metric_names(self):
    return ("ar", "tar") if self._model.regularizes_activations else ()

  def train_metrics(self, batch, predictions):
    """AR and TAR per position (logged as `train/ar`, `train/tar`), when the model returns them."""
    del batch
    if not isinstance(predictions, dict):
      return {}
    return {"ar": predictions["ar"], "tar": predictions["tar"]}

  def num_eval_batches(self, split: str) -> int:
    layout = self.corpus.evals.get(split)
    return 0 if layout is None else layout.num_chunks

  def eval_batch(self, split, index, row_start, num_rows):
    return self.corpus.evals[split].chunk(index, row_start, num_rows)

  def eval_metrics(self, sums):
    loss = sums["loss"] / max(sums["weight"], 1e-12)
    if self.vocab.level == "char":
      return {"loss": loss, "bits_per_char": loss / math.log(2)}
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}

  @property
  def sampler(self) -> sampling.Sampler:
    """The task's sampler (its sampling loop is traced once and reused)."""
    if self._sampler is None:
      self._sampler = sampling.Sampler(self._model)
    return self._sampler

  def write_eval_summaries(self, step: int) -> None:
    """Writes a text sample of the current model (indented: TensorBoard shows it as code)."""
    if self.summary_sample_length > 0:
      text = sampling.sample_text(self, length=self.summary_sample_length)
      tf.summary.text("sample", "\n".join("    " + line for line in text.splitlines()), step=step)

  @property
  def asset_paths(self) -> list[str]:
    """Files an exported model needs besides its weights: the vocabulary."""
    return [self.corpus.vocab_path] if self.corpus.vocab_path else []

  def write_assets(self) -> None:
    """Saves what a restored model needs besides its weights (the vocabulary) into model_dir."""
    self.corpus.save_vocab()
