"""Keras 3 LSTM layers with the recurrent state passed in and out explicitly.

  cell = LSTMCell(units, ...);            output, new_state = cell(x_t, state)
  lstm = LSTM(units, ...);                outputs, final_state = lstm(x, initial_state)
  stacked = StackedLSTM(units, n, ...);   outputs, states = stacked(x, initial_states)

Importing the package builds the fused LSTM kernel (or loads it from the per-user cache): at import,
never inside a `tf.function` trace, where a minute of compiling would stall a distributed job.
"""

from tbptt.layers import kernels
from tbptt.layers.lstm import LSTM
from tbptt.layers.lstm_cell import LSTMCell, lstm_gates
from tbptt.layers.stacked import StackedLSTM
from tbptt.layers.state import LSTMState, reset_rows, zero_state

kernels.load()

__all__ = ["LSTM", "LSTMCell", "LSTMState", "StackedLSTM", "lstm_gates", "reset_rows", "zero_state"]
