"""Text generation from a trained language model, carrying the LSTM state token by token."""

import gin
import tensorflow as tf

from tbptt.experiments.data import vocab as vocab_lib
from tbptt.trainer.errors import ConfigError


class Sampler:
  """Generates token ids from a language model, carrying the LSTM state token by token.

  The prompt runs as one sequence; sampling runs in a `tf.function` (traced once per sampler) whose
  loop feeds each sampled token back with the carried state. Draws use stateless random ops seeded
  by (seed, position), so a given seed always produces the same text.

  Args:
    model: `model(inputs [1, T] int, state) -> (logits [1, T, V], state)` with `initial_state(1)`.
  """

  def __init__(self, model):
    self.model = model
    self._loop = tf.function(self._sample_loop)

  def _sample_loop(self, last_logits, state, length, temperature, seed):
    tokens = tf.TensorArray(tf.int32, size=length)
    for i in tf.range(length):
      greedy = tf.argmax(last_logits, axis=-1, output_type=tf.int32)
      drawn = tf.random.stateless_categorical(
          last_logits / tf.maximum(temperature, 1e-6), 1, seed=tf.stack([seed, i]), dtype=tf.int32)
      token = tf.where(temperature > 0, drawn[:, 0], greedy)
      tokens = tokens.write(i, token[0])
      step_logits, state = self.model(token[:, None], state, training=False)
      last_logits = step_logits[:, -1]
    return tokens.stack()

  def generate(self, prompt_ids, length: int, temperature: float = 1.0, seed: int = 0) -> tf.Tensor:
    """Feeds `prompt_ids` (int [P], P >= 1), then samples `length` tokens.

    Args:
      prompt_ids: int [P] ids.
      length: Tokens to sample.
      temperature: Softmax temperature; 0 takes the most likely token (greedy).
      seed: Sampling seed.

    Returns:
      int32 [length] sampled ids (the prompt excluded).
    """
    prompt = tf.convert_to_tensor(prompt_ids, tf.int32)[None, :]
    logits, state = self.model(prompt, self.model.initial_state(1), training=False)
    return self._loop(logits[:, -1], state, tf.constant(length, tf.int32),
                      tf.constant(temperature, tf.float32), tf.constant(seed, tf.int32))


def generate(model, prompt_ids, length: int, temperature: float = 1.0, seed: int = 0) -> tf.Tensor:
  """One-off `Sampler(model).generate(...)`: int32 [length] ids sampled after the prompt."""
  return Sampler(model).generate(prompt_ids, length, temperature, seed)


@gin.configurable
def sample_text(task, *, prompt: str = "", length: int = 300, temperature: float = 1.0,
                seed: int = 0) -> str:
  """Samples a continuation of `prompt` from a language-model task's model and vocabulary.

  Args:
    task: A `LanguageModelTask` (has `.model` and `.vocab`, optionally a reusable `.sampler`).
    prompt: Text to continue; empty starts as if after a line end. Tokens missing from the
      vocabulary are read as `<unk>`.
    length: Tokens to generate (characters or words).
    temperature: Softmax temperature (> 0), or 0 for greedy decoding.
    seed: Sampling seed.

  Returns:
    The prompt followed by the sampled text.

  Raises:
    ConfigError: the task has no vocabulary, or a bad length/temperature.
  """
  vocab = getattr(task, "vocab", None)
  if vocab is None:
    raise ConfigError(f"--mode=sample needs a language-model task, got {type(task).__name__}")
  if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
    raise ConfigError(f"sample_text.length must be a positive integer, got {length!r}")
  if not isinstance(temperature, (int, float)) or temperature < 0:
    raise ConfigError(f"sample_text.temperature must be >= 0 (0: greedy), got {temperature!r}")
  start = prompt or ("\n" if vocab.level == "char" else vocab_lib.EOS)
  sampler = getattr(task, "sampler", None) or Sampler(task.model)
  ids = sampler.generate(vocab.encode_text(start), length, float(temperature), seed)
  text = vocab.decode(ids.numpy())
  if vocab.level == "word" and prompt and not prompt.endswith(("\n", " ")):
    text = " " + text
  return prompt + text
