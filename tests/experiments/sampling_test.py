"""Tests for experiments/sampling.py."""

import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments.data.corpus import TextCorpus
from tbptt.experiments.language_model import LanguageModel, LanguageModelTask
from tbptt.experiments.sampling import Sampler, generate, sample_text
from tbptt.trainer.errors import ConfigError
from events import read_tags


@pytest.fixture(scope="module")
def task(tmp_path_factory):
  root = tmp_path_factory.mktemp("text")
  for split in ("train", "valid"):
    (root / f"{split}.txt").write_text("one two three four\nfive six\n" * 20)
  return LanguageModelTask(
      corpus_fn=lambda model_dir: TextCorpus(model_dir, train_path=str(root / "train.txt"),
                                             valid_path=str(root / "valid.txt"), level="word",
                                             batch_size=2, seq_len=4),
      model_fn=lambda vocab_size: LanguageModel(vocab_size, units=8, num_layers=2))


def test_greedy_matches_a_step_by_step_loop(task):
  model = task.model
  ids = generate(model, [1, 2, 3], 12, temperature=0.0).numpy()
  logits, state = model(tf.constant([[1, 2, 3]]), None)
  expected = []
  for _ in range(12):
    token = int(tf.argmax(logits[0, -1]))
    expected.append(token)
    logits, state = model(tf.constant([[token]]), state)
  assert ids.tolist() == expected


def test_seed_fixes_the_sample(task):
  a = generate(task.model, [1], 40, temperature=1.0, seed=5).numpy()
  b = generate(task.model, [1], 40, temperature=1.0, seed=5).numpy()
  c = generate(task.model, [1], 40, temperature=1.0, seed=6).numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.min() >= 0 and a.max() < task.vocab.size


def test_sample_text_continues_the_prompt(task):
  text = sample_text(task, prompt="one two", length=6, seed=1)
  assert text.startswith("one two ")
  words = text.replace("\n", " ").split()
  assert len(words) >= 6 and set(words) <= set(task.vocab.tokens)


@pytest.mark.parametrize("kwargs, message", [
    ({"length": 0}, "sample_text.length must be a positive integer, got 0"),
    ({"temperature": -1.0}, "sample_text.temperature must be >= 0"),
])
def test_bad_settings_are_config_errors(task, kwargs, message):
  with pytest.raises(ConfigError, match=message):
    sample_text(task, **kwargs)


def test_needs_a_language_model_task():
  with pytest.raises(ConfigError, match="needs a language-model task, got object"):
    sample_text(object())


def test_a_sampler_traces_its_loop_once(task):
  sampler = Sampler(task.model)
  a = sampler.generate([1, 2], 5, temperature=0.0).numpy()
  sampler.generate([3], 9, temperature=1.5, seed=4)
  assert sampler._loop.experimental_get_tracing_count() == 1
  np.testing.assert_array_equal(a, generate(task.model, [1, 2], 5, temperature=0.0))


def test_eval_summary_sample_is_text(task, tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    task.write_eval_summaries(step=3)
  writer.flush()
  assert read_tags(str(tmp_path)) == {"sample"}
