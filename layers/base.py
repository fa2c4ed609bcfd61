"""What every tbptt layer shares: inputs cast in `call`, so that the state keeps its own dtype."""

import keras
import numpy as np
import tensorflow as tf


class StatefulCallLayer(keras.layers.Layer):
  """A Keras layer whose `call(inputs, state, ...)` gets the state untouched.

  Keras casts every floating argument of `__call__` to the compute dtype; under mixed precision that
  would round the carried state to float16. These layers cast their inputs themselves and keep the
  state in the variable dtype (float32).
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self._convert_input_args = False
    self._allow_non_tensor_positional_args = True

  def __call__(self, inputs, *args, **kwargs):
    if isinstance(inputs, (np.ndarray, list, tuple)):
      inputs = tf.convert_to_tensor(inputs)
    return super().__call__(inputs, *args, **kwargs)
