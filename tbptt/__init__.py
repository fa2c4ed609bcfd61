"""tbptt: custom LSTM layers and a readable, resumable TBPTT trainer for TensorFlow 2 (Keras 3).

Installed, every module lives under this one name, mapped from the repository's folders:

  from tbptt.layers import LSTM, LSTMCell, StackedLSTM, LSTMState
  from tbptt.trainer import Trainer
  python -m tbptt --model_dir=runs/charlm --gin_file=charlm.gin   # or the console script `tbptt`

Importing this package imports no TensorFlow; the subpackages do.
"""

__version__ = "0.2.0"
