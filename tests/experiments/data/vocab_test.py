"""Tests for experiments/data/vocab.py."""

import json

import numpy as np
import pytest

from tbptt.experiments.data import vocab as vocab_lib
from tbptt.trainer.errors import ConfigError


def test_word_tokens_follow_ptb():
  text = " the cat <unk> sat \n a dog \n"
  assert vocab_lib.tokenize(text, "word") == [
      "the", "cat", "<unk>", "sat", "<eos>", "a", "dog", "<eos>"]


def test_char_tokens_are_characters():
  assert vocab_lib.tokenize("ab\n c", "char") == ["a", "b", "\n", " ", "c"]


def test_build_orders_by_count_then_token_with_unk_first():
  vocab = vocab_lib.Vocabulary.build(list("bcabcc") + ["<unk>"], "char")
  assert vocab.tokens == ["<unk>", "c", "b", "a"]
  assert vocab.unk_id == 0 and vocab.size == 4


def test_unknown_tokens_map_to_unk():
  vocab = vocab_lib.Vocabulary.build(["a", "b", "<eos>"], "word")
  np.testing.assert_array_equal(vocab.encode(["b", "zebra", "a"]),
                                [vocab.tokens.index("b"), 0, vocab.tokens.index("a")])


def test_save_load_round_trip(tmp_path):
  text = "def f(x):\n  return x  # é\n"
  vocab = vocab_lib.Vocabulary.build(vocab_lib.tokenize(text, "char"), "char")
  path = str(tmp_path / "vocab.json")
  vocab.save(path)
  loaded = vocab_lib.Vocabulary.load(path)
  assert loaded == vocab
  assert loaded.decode(loaded.encode_text(text)) == text
  assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temporary file left behind


def test_word_decode_turns_eos_into_line_ends():
  vocab = vocab_lib.Vocabulary.build(["a", "b", "<eos>"], "word")
  ids = vocab.encode(["a", "b", "<eos>", "<eos>", "b"])
  assert vocab.decode(ids) == "a b\n\nb"


def test_load_rejects_a_corrupt_file(tmp_path):
  path = tmp_path / "vocab.json"
  path.write_text(json.dumps({"tokens": ["x"]}))
  with pytest.raises(ConfigError, match="vocab.json"):
    vocab_lib.Vocabulary.load(str(path))


def test_unknown_level_is_a_config_error():
  with pytest.raises(ConfigError, match="'byte'"):
    vocab_lib.tokenize("abc", "byte")
