"""Parity with `torch.nn.LSTM` (also gate order i, f, g, o), including its projection (`proj_size`).

torch is an optional reference: the tests skip when it is not installed.
"""

import numpy as np
import pytest
import tensorflow as tf

from layer_utils import built_lstm
from tbptt.layers import LSTM, LSTMState

# Every test runs on both implementations (tests/layers/conftest.py).
pytestmark = pytest.mark.usefixtures("implementation")

torch = pytest.importorskip("torch")

B, T, F, U = 3, 6, 4, 5
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning")
@pytest.mark.parametrize("num_proj", [None, 3], ids=["plain", "projection"])
def test_matches_torch_lstm_outputs_states_and_input_gradients(num_proj):
  lstm = built_lstm(LSTM, U, F, seed=8, num_proj=num_proj)
  cell = lstm.cell
  out = cell.output_size
  twin = torch.nn.LSTM(F, U, batch_first=True, proj_size=num_proj or 0)
  with torch.no_grad():
    twin.weight_ih_l0.copy_(torch.from_numpy(cell.kernel.numpy().T))
    twin.weight_hh_l0.copy_(torch.from_numpy(cell.recurrent_kernel.numpy().T))
    twin.bias_ih_l0.copy_(torch.from_numpy(cell.bias.numpy()))
    twin.bias_hh_l0.zero_()
    if num_proj:
      twin.weight_hr_l0.copy_(torch.from_numpy(cell.projection.numpy().T))

  rng = np.random.default_rng(9)
  x, h0, c0 = (rng.normal(size=s).astype(np.float32) for s in ([B, T, F], [B, out], [B, U]))
  probe = rng.normal(size=[B, T, out]).astype(np.float32)

  x_tf = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(x_tf)
    outputs, final = lstm(x_tf, initial_state=LSTMState(tf.constant(h0), tf.constant(c0)))
    loss = tf.reduce_sum(outputs * probe) + tf.reduce_sum(final.c)
  grad = tape.gradient(loss, x_tf)

  x_torch = torch.from_numpy(x).requires_grad_()
  torch_state = (torch.from_numpy(h0)[None], torch.from_numpy(c0)[None])   # [layers, B, ...]
  torch_outputs, (h_n, c_n) = twin(x_torch, torch_state)
  (torch_outputs * torch.from_numpy(probe)).sum().add(c_n.sum()).backward()

  np.testing.assert_allclose(outputs, torch_outputs.detach().numpy(), **TOL)
  np.testing.assert_allclose(final.h, h_n[0].detach().numpy(), **TOL)
  np.testing.assert_allclose(final.c, c_n[0].detach().numpy(), **TOL)
  np.testing.assert_allclose(grad, x_torch.grad.numpy(), **TOL)
