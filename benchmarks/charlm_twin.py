"""The PyTorch twin of the character language model, written as a PyTorch user would.

    twin = TorchCharLM(vocab_size=100)                 # Embedding 64 -> 2 x LSTM 256 -> Linear
    loss = twin.train_step(inputs, targets, reset)     # [B, T] int arrays; Adam, clip 5
    loss_sum, count = twin.evaluate(chunks)            # chunks: (inputs, targets, weights) arrays

The same layers, optimizer, global-norm clipping and TBPTT as `LanguageModel` trained by our
Trainer: the state is carried (detached) from chunk to chunk and zeroed where `reset` says a new
pass starts. PyTorch's default initialisation throughout. The layer benchmark's end-to-end row
(benchmarks/trainer.py --versus_torch) and the learning-speed benchmark both train this one twin.
torch stays optional: importing this module without it raises ImportError.
"""

import numpy as np
import torch

EMBEDDING = 64
LAYERS = 2
UNITS = 256
LEARNING_RATE = 0.002
CLIP_NORM = 5.0


class TorchCharLM:
  """Embedding -> stacked nn.LSTM -> Linear, trained with Adam and global-norm clipping.

  Args:
    vocab_size: V.
    units, layers, embedding: LSTM size, depth and embedding width.
    learning_rate, clip_norm: Adam's rate and the global gradient-norm clip.
    seed: `torch.manual_seed` before the weights are drawn.
  """

  def __init__(self, vocab_size: int, *, units: int = UNITS, layers: int = LAYERS,
               embedding: int = EMBEDDING, learning_rate: float = LEARNING_RATE,
               clip_norm: float = CLIP_NORM, seed: int = 0):
    torch.manual_seed(seed)
    self.vocab_size = vocab_size
    self.clip_norm = clip_norm
    self.embedding = torch.nn.Embedding(vocab_size, embedding)
    self.lstm = torch.nn.LSTM(embedding, units, layers, batch_first=True)
    self.head = torch.nn.Linear(units, vocab_size)
    self.modules = torch.nn.ModuleList([self.embedding, self.lstm, self.head])
    self.optimizer = torch.optim.Adam(self.modules.parameters(), lr=learning_rate)
    self._state = None

  def _logits(self, inputs, state):
    outputs, state = self.lstm(self.embedding(inputs), state)
    return self.head(outputs), state

  def train_step(self, inputs: np.ndarray, targets: np.ndarray, reset: bool) -> float:
    """One TBPTT step on a [B, T] chunk; `reset`: start from a zero state. Returns the loss."""
    inputs = torch.from_numpy(np.asarray(inputs, np.int64))
    targets = torch.from_numpy(np.asarray(targets, np.int64))
    logits, state = self._logits(inputs, None if reset else self._state)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, self.vocab_size),
                                             targets.reshape(-1))
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.modules.parameters(), self.clip_norm)
    self.optimizer.step()
    self._state = tuple(s.detach() for s in state)
    return float(loss.detach())

  @torch.no_grad()
  def evaluate(self, chunks) -> tuple[float, float]:
    """(sum of the weighted cross-entropy in nats, sum of the weights) over `chunks`, an iterable
    of (inputs, targets, weights) [B, T] arrays read in order from a zero state."""
    state, total, count = None, 0.0, 0.0
    for inputs, targets, weights in chunks:
      logits, state = self._logits(torch.from_numpy(np.asarray(inputs, np.int64)), state)
      losses = torch.nn.functional.cross_entropy(
          logits.reshape(-1, self.vocab_size),
          torch.from_numpy(np.asarray(targets, np.int64)).reshape(-1), reduction="none")
      weights = torch.from_numpy(np.asarray(weights, np.float32)).reshape(-1)
      total += float((losses * weights).double().sum())
      count += float(weights.double().sum())
    return total, count
