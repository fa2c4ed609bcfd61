"""Tests for experiments/initializers.py and the LanguageModel's initializer arguments."""

import math

import keras
import numpy as np
import pytest

from tbptt.experiments import initializers
from tbptt.experiments.language_model import LanguageModel
from tbptt.layers import LSTMCell


def _draw(name, shape):
  return np.asarray(keras.initializers.get(initializers.resolve(name))(shape))


def test_named_schemes_draw_pytorchs_distributions():
  lstm = _draw("lstm_uniform", (64, 4 * 100))
  assert np.abs(lstm).max() <= 0.1 and np.abs(lstm).max() > 0.099  # 1 / sqrt(100)
  assert lstm.std() == pytest.approx(0.1 / math.sqrt(3), rel=0.03)
  fan_in = _draw("fan_in_uniform", (400, 300))
  assert np.abs(fan_in).max() <= 0.05
  assert fan_in.std() == pytest.approx(0.05 / math.sqrt(3), rel=0.03)
  normal = _draw("unit_normal", (300, 300))
  assert normal.std() == pytest.approx(1.0, rel=0.02) and abs(normal.mean()) < 0.02
  with pytest.raises(ValueError, match=r"'lstm_uniform' needs a last axis of 4 x units"):
    _draw("lstm_uniform", (3, 10))


def test_each_weight_draws_its_own_values_and_keras_names_pass_through():
  assert not np.allclose(_draw("unit_normal", (8, 8)), _draw("unit_normal", (8, 8)))
  assert initializers.resolve("orthogonal") == "orthogonal"
  assert initializers.resolve({"class_name": "Zeros", "config": {}})["class_name"] == "Zeros"


def test_a_cell_with_a_named_initializer_round_trips_through_its_config():
  cell = LSTMCell(5, kernel_initializer=initializers.resolve("lstm_uniform"))
  again = LSTMCell.from_config(cell.get_config())
  assert isinstance(again.kernel_initializer, initializers.LSTMUniform)


def test_language_model_initializer_arguments_reach_their_weights():
  model = LanguageModel(50, units=16, num_layers=2, embedding_dim=32,
                        embedding_initializer="unit_normal", kernel_initializer="lstm_uniform",
                        recurrent_initializer="lstm_uniform", bias_initializer="lstm_uniform",
                        unit_forget_bias=False, softmax_initializer="fan_in_uniform")
  model(np.zeros([1, 1], np.int32), None)
  weights = {w.path: w.numpy() for w in model.weights}
  assert weights["language_model/embedding/embeddings"].std() == pytest.approx(1.0, rel=0.15)
  lstm = [v for k, v in weights.items() if "stacked_lstm" in k]
  assert len(lstm) == 6 and all(np.abs(v).max() <= 0.25 for v in lstm)  # 1 / sqrt(16)
  biases = [v for k, v in weights.items() if "stacked_lstm" in k and k.endswith("bias")]
  assert all(np.abs(b).max() > 0 for b in biases)  # Drawn, not zeros plus a forget bias of 1.
  assert np.abs(weights["language_model/softmax/kernel"]).max() <= 0.25
  scaled = LanguageModel(50, units=16, embedding_initializer="unit_normal", init_scale=0.01)
  scaled(np.zeros([1, 1], np.int32), None)
  assert np.abs(scaled.embedding.embeddings.numpy()).max() <= 0.01  # init_scale overrides.
