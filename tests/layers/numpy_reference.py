"""An independent NumPy reference of the LSTM step and sequence, with every variant.

Written from the equations, in float64 and without TensorFlow, to check the layers against:

  z = x K + h(t-1) R + b                      (layer norm: z = LN_in(x K) + LN_rec(h(t-1) R) + b)
  i = sigmoid(z_i + p_i c(t-1))   f = sigmoid(z_f + p_f c(t-1))
  c(t) = clip(f c(t-1) + i tanh(z_c), +-cell_clip)
  o = sigmoid(z_o + p_o c(t))
  h(t) = o tanh(c(t))                         (layer norm: o tanh(LN_cell(c(t))))
  h(t) = clip(h(t) P, +-proj_clip)            (projection)
  zoneout at inference: c(t) = p_c c(t-1) + (1 - p_c) c(t),  h(t) = p_h h(t-1) + (1 - p_h) h(t)

Weights are a dict keyed by the layer's attribute names (Keras layout, gate order i, f, c, o). A
variant is on when its weights are present: `peephole_i|f|o` (peepholes), `projection`,
`input_norm_gamma|beta`, `recurrent_norm_gamma|beta`, `cell_norm_gamma|beta` (layer norm).
"""

import numpy as np

BASE_WEIGHTS = ("kernel", "recurrent_kernel", "bias")
PEEPHOLE_WEIGHTS = ("peephole_i", "peephole_f", "peephole_o")
PROJECTION_WEIGHTS = ("projection",)
LAYER_NORM_WEIGHTS = ("input_norm_gamma", "input_norm_beta", "recurrent_norm_gamma",
                      "recurrent_norm_beta", "cell_norm_gamma", "cell_norm_beta")
ALL_WEIGHTS = BASE_WEIGHTS + PEEPHOLE_WEIGHTS + PROJECTION_WEIGHTS + LAYER_NORM_WEIGHTS


def sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def layer_norm(v, gamma, beta, epsilon):
  """Normalises v over its last axis: (v - mean) / sqrt(var + epsilon) * gamma + beta."""
  mean = v.mean(axis=-1, keepdims=True)
  var = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
  return (v - mean) / np.sqrt(var + epsilon) * gamma + beta


def lstm_step(x, h_prev, c_prev, w, *, cell_clip=None, proj_clip=None, layer_norm_epsilon=1e-3,
              zoneout_cell=0.0, zoneout_hidden=0.0, input_mask=None, recurrent_mask=None):
  """One LSTM step at inference (zoneout as its expectation).

  Args:
    x: [B, F] inputs.
    h_prev: [B, out] previous hidden state.
    c_prev: [B, u] previous cell state.
    w: Weights dict (see the module docstring).
    cell_clip, proj_clip: Optional clip values.
    layer_norm_epsilon: Epsilon of the three layer norms.
    zoneout_cell, zoneout_hidden: Zoneout rates (the inference blend).
    input_mask: Optional [B, F] multiplier on x (a variational dropout mask, already scaled).
    recurrent_mask: Optional [B, out] multiplier on h_prev.

  Returns:
    (h [B, out], c [B, u]) as float64.
  """
  x = np.asarray(x, np.float64)
  h_prev = np.asarray(h_prev, np.float64)
  c_prev = np.asarray(c_prev, np.float64)
  w = {k: np.asarray(v, np.float64) for k, v in w.items()}
  x_in = x if input_mask is None else x * input_mask
  h_in = h_prev if recurrent_mask is None else h_prev * recurrent_mask
  xk = x_in @ w["kernel"]
  hr = h_in @ w["recurrent_kernel"]
  layer_normed = "input_norm_gamma" in w
  if layer_normed:
    xk = layer_norm(xk, w["input_norm_gamma"], w["input_norm_beta"], layer_norm_epsilon)
    hr = layer_norm(hr, w["recurrent_norm_gamma"], w["recurrent_norm_beta"], layer_norm_epsilon)
  z = xk + hr + w["bias"]
  z_i, z_f, z_c, z_o = np.split(z, 4, axis=-1)
  peepholes = "peephole_i" in w
  if peepholes:
    z_i = z_i + w["peephole_i"] * c_prev
    z_f = z_f + w["peephole_f"] * c_prev
  c = sigmoid(z_f) * c_prev + sigmoid(z_i) * np.tanh(z_c)
  if cell_clip is not None:
    c = np.clip(c, -cell_clip, cell_clip)
  if peepholes:
    z_o = z_o + w["peephole_o"] * c
  c_out = c
  if layer_normed:
    c_out = layer_norm(c, w["cell_norm_gamma"], w["cell_norm_beta"], layer_norm_epsilon)
  h = sigmoid(z_o) * np.tanh(c_out)
  if "projection" in w:
    h = h @ w["projection"]
    if proj_clip is not None:
      h = np.clip(h, -proj_clip, proj_clip)
  c = zoneout_cell * c_prev + (1.0 - zoneout_cell) * c
  h = zoneout_hidden * h_prev + (1.0 - zoneout_hidden) * h
  return h, c


def lstm_sequence(x, w, h0=None, c0=None, mask=None, **step_kwargs):
  """Runs `lstm_step` over a batch-major sequence.

  Args:
    x: [B, T, F] inputs.
    w: Weights dict.
    h0, c0: Optional initial state [B, out], [B, u]; zeros by default.
    mask: Optional [B, T] bool; a masked step carries the state unchanged and outputs zeros.
    **step_kwargs: Passed to `lstm_step` (clips, epsilon, zoneout rates, dropout masks).

  Returns:
    (outputs [B, T, out], h [B, out], c [B, u]) as float64.
  """
  x = np.asarray(x, np.float64)
  batch, steps, _ = x.shape
  units = np.shape(w["recurrent_kernel"])[1] // 4
  out_size = np.shape(w["recurrent_kernel"])[0]
  h = np.zeros([batch, out_size]) if h0 is None else np.asarray(h0, np.float64)
  c = np.zeros([batch, units]) if c0 is None else np.asarray(c0, np.float64)
  outputs = np.zeros([batch, steps, out_size])
  for t in range(steps):
    h_new, c_new = lstm_step(x[:, t], h, c, w, **step_kwargs)
    if mask is not None:
      keep = np.asarray(mask)[:, t:t + 1]
      h_new = np.where(keep, h_new, h)
      c_new = np.where(keep, c_new, c)
      outputs[:, t] = np.where(keep, h_new, 0.0)
    else:
      outputs[:, t] = h_new
    h, c = h_new, c_new
  return outputs, h, c
