"""Tests for experiments/data/token_ids.py: block-wise tokenization equals the whole-text one."""

import numpy as np
import pytest

from tbptt.experiments.data import token_ids
from tbptt.experiments.data import vocab as vocab_lib

TEXTS = {
    "ascii": "def f(x):\n  return x * 2  # twice\n\n" * 30,
    "unicode": "naïve café — 日本語 🙂\r\n<unk> tokens\tand\x0bodd\x0cwhitespace\u2028here\n" * 25,
    "no final newline": "the cat sat on the mat\nthe dog " * 20 + "end",
}


def _cut(text: str, size: int) -> list:
  return [text[i:i + size] for i in range(0, len(text), size)] or [""]


@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize("size", [1, 2, 7, 100, 10**6])
def test_char_level_matches_the_whole_text(name, size):
  text = TEXTS[name]
  expected = vocab_lib.Vocabulary.build(vocab_lib.tokenize(text, "char"), "char")
  vocab = token_ids.count_vocabulary(_cut(text, size), "char")
  assert vocab == expected
  ids = np.concatenate(list(token_ids.encode(_cut(text, size), vocab)))
  assert ids.dtype == np.uint8
  np.testing.assert_array_equal(ids, expected.encode_text(text))


@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize("size", [1, 2, 7, 100, 10**6])
def test_word_level_matches_the_whole_text(name, size):
  text = TEXTS[name]
  tokens = vocab_lib.tokenize(text, "word")
  expected = vocab_lib.Vocabulary.build(tokens, "word")
  provisional = []
  vocab, lut = token_ids.vocabulary_and_provisional_ids(_cut(text, size), "word",
                                                        provisional.append)
  assert vocab == expected
  ids = np.concatenate(list(token_ids.remap(provisional, lut, vocab.size)))
  np.testing.assert_array_equal(ids, expected.encode(tokens))
  encoded = np.concatenate(list(token_ids.encode(_cut(text, size), vocab)))
  np.testing.assert_array_equal(encoded, ids)


def test_unknown_tokens_encode_as_unk():
  vocab = token_ids.count_vocabulary(["abc"], "char")
  np.testing.assert_array_equal(np.concatenate(list(token_ids.encode(["abxc"], vocab))),
                                [vocab.id("a"), vocab.id("b"), 0, vocab.id("c")])
  words = vocab_lib.Vocabulary.build(["the", "cat"], "word")
  np.testing.assert_array_equal(np.concatenate(list(token_ids.encode(["the dog cat"], words))),
                                [words.id("the"), 0, words.id("cat")])


@pytest.mark.parametrize("size, dtype", [(1, np.uint8), (256, np.uint8), (257, np.uint16),
                                         (65536, np.uint16), (65537, np.uint32)])
def test_ids_take_the_smallest_dtype(size, dtype):
  assert token_ids.id_dtype(size) == dtype


@pytest.mark.parametrize("text, dtype", [("plain ascii", np.uint8), ("café naïve", np.uint8),
                                         ("日本語 and ascii", np.uint16),
                                         ("emoji 🙂 beyond the BMP", np.uint32)])
def test_code_points_take_the_narrowest_dtype(text, dtype):
  points = token_ids.code_points(text)
  assert points.dtype == dtype
  np.testing.assert_array_equal(points, [ord(c) for c in text])
