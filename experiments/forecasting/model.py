"""The seq2seq forecaster: an LSTM encoder over the context, an LSTM cell decoding the horizon."""

from typing import Mapping

import gin
import keras
import tensorflow as tf

from tbptt.layers import LSTM, LSTMCell, LSTMState, zero_state
from tbptt.trainer.errors import ConfigError


@gin.configurable
class Seq2SeqForecaster(keras.Model):
  """Encoder-decoder LSTM: `predictions, state = model(inputs, state, training=False)`.

  The encoder `LSTM` reads the context; its final state starts the decoder `LSTMCell`, whose
  first input is the last context row. Each decoder step emits h(t) -> Dense -> the next value,
  which is fed back as the next input. In training, where `inputs['teacher_mask']` is True, the
  true previous value is fed instead (teacher forcing); at inference the decoder always runs on
  its own predictions.

  With `center_windows` the model subtracts each window's context mean (per feature) from all it
  reads and adds it back to its predictions: the forecast then depends on the shape of the
  context, not on its level, so a trend that carries valid/test beyond the training range does
  not push the LSTM into values it never saw.

  Inputs are a [B, C, F] context tensor, or a dict:
    context:      [B, C, F] observed values (normalised).
    horizon:      [B, H, F] optional true future values (teacher forcing only).
    teacher_mask: [B, H] bool, optional; step t+1 reads horizon[:, t] where True (training only).

  Args:
    horizon: Steps H to forecast.
    num_features: F, the features read and predicted.
    units: LSTM size of the encoder and the decoder.
    cell_kwargs: Extra `LSTMCell` arguments for both (dropout, layer_norm, zoneout_*, ...).
    center_windows: Forecast relative to the context mean (see above).
  """

  def __init__(self, horizon: int, num_features: int, *, units: int = 32,
               cell_kwargs: Mapping | None = None, center_windows: bool = True,
               name: str = "forecaster", **kwargs):
    super().__init__(name=name, **kwargs)
    # The state is passed untouched (Keras would cast it to the compute dtype in mixed precision).
    self._convert_input_args = False
    self._allow_non_tensor_positional_args = True
    if int(horizon) < 1 or int(num_features) < 1 or int(units) < 1:
      raise ConfigError(f"Seq2SeqForecaster: horizon, num_features and units must be positive, got "
                        f"horizon={horizon}, num_features={num_features}, units={units}")
    self.horizon = int(horizon)
    self.num_features = int(num_features)
    self.units = int(units)
    self.center_windows = bool(center_windows)
    cell_kwargs = dict(cell_kwargs or {})
    self.encoder = LSTM(self.units, return_sequences=False, return_state=True, name="encoder",
                        **cell_kwargs)
    self.decoder = LSTMCell(self.units, name="decoder", **cell_kwargs)
    self.head = keras.layers.Dense(self.num_features, name="head")

  def initial_state(self, batch_size) -> LSTMState:
    """Zero encoder state: LSTMState(h [B, out], c [B, units]) float32."""
    return zero_state(batch_size, self.units, self.encoder.output_size)

  def call(self, inputs, state=None, training=False):
    """Forecasts the horizon.

    Args:
      inputs: Context [B, C, F] or the dict described in the class docstring.
      state: Encoder initial LSTMState, or None for zeros.
      training: Dropout and teacher forcing on.

    Returns:
      (predictions [B, H, F] float32, the encoder's final LSTMState).
    """
    if isinstance(inputs, Mapping):
      context = inputs["context"]
      truth, teacher_mask = inputs.get("horizon"), inputs.get("teacher_mask")
    else:
      context, truth, teacher_mask = inputs, None, None
    context = tf.convert_to_tensor(context, tf.float32)
    offset = (tf.reduce_mean(context, axis=1, keepdims=True) if self.center_windows
              else tf.zeros_like(context[:, :1]))  # [B, 1, F]
    context -= offset
    _, encoder_state = self.encoder(context, initial_state=state, training=training)
    teacher = None
    if training and truth is not None and teacher_mask is not None:
      teacher = (tf.convert_to_tensor(truth, tf.float32) - offset,
                 tf.convert_to_tensor(teacher_mask, tf.bool))
    predictions = self.decode(context[:, -1, :], encoder_state, teacher, training)
    return predictions + offset, encoder_state

  def decode(self, first_input, state: LSTMState, teacher=None, training=False):
    """Runs the decoder for H steps in a `tf.while_loop`, feeding back each prediction.

    Args:
      first_input: [B, F], the last observed row.
      state: Decoder initial LSTMState (the encoder's final state).
      teacher: None, or (horizon [B, H, F], mask [B, H] bool): where mask[:, t] is True, step t+1
        reads horizon[:, t] instead of the prediction.
      training: Dropout on (one mask per sequence, shared by all decoder steps).

    Returns:
      [B, H, F] float32.
    """
    if not self.decoder.built:
      self.decoder.build((None, self.num_features))
    if not self.head.built:
      self.head.build((None, self.decoder.output_size))
    batch_size = tf.shape(first_input)[0]
    dropout_masks = self.decoder.get_dropout_masks(batch_size, training)
    if teacher is not None:
      truth = tf.transpose(teacher[0], [1, 0, 2])  # [H, B, F]: the loop reads one step at a time.
      mask = tf.transpose(teacher[1])[:, :, None]  # [H, B, 1]
    outputs = tf.TensorArray(tf.float32, size=self.horizon,
                             element_shape=[first_input.shape[0], self.num_features])

    def body(t, x, state, outputs):
      out, state = self.decoder(x, state, training=training, dropout_masks=dropout_masks)
      y = tf.cast(self.head(out), tf.float32)
      x = y if teacher is None else tf.where(mask[t], truth[t], y)
      return t + 1, x, state, outputs.write(t, y)

    _, _, _, outputs = tf.while_loop(lambda t, *_: t < self.horizon, body,
                                     (tf.constant(0), first_input, state, outputs),
                                     maximum_iterations=self.horizon)
    return tf.transpose(outputs.stack(), [1, 0, 2])
