"""Text blocks -> token ids in bounded memory: the vocabulary of a training text and the ids of any.

Both levels tokenize as `vocab.tokenize` does on the whole text (a test checks it on cut blocks):
'char' makes every character a token; 'word' splits on whitespace and writes `<eos>` at every
line end. The work is vectorised where it can be: characters become code points through one
`str.encode` and are counted and mapped with NumPy; words are mapped to ids by a dict whose lookups
stay in C (`map(dict.__getitem__, words)`).

    vocab = count_vocabulary(blocks(), "char")           # one pass
    for ids in encode(blocks(), vocab): ...              # one more pass; ids in id_dtype(vocab)

A word-level training text takes one pass instead (`vocabulary_and_provisional_ids`), writing ids in
first-seen order to a scratch file that `remap` turns into the vocabulary's ids.
"""

import collections
import itertools
from typing import Iterable, Iterator

import numpy as np

from tbptt.experiments.data.vocab import EOS, UNK, Vocabulary

_MAX_CODE_POINT = 0x110000
_WHITESPACE_CUTS = (" ", "\n", "\t")


def id_dtype(vocab_size: int) -> np.dtype:
  """The smallest unsigned integer dtype that holds ids [0, vocab_size)."""
  for dtype in (np.uint8, np.uint16, np.uint32):
    if vocab_size - 1 <= np.iinfo(dtype).max:
      return np.dtype(dtype)
  raise ValueError(f"a vocabulary of {vocab_size} tokens does not fit 32-bit ids")


def code_points(text: str) -> np.ndarray:
  """The characters of `text` as code points [N], in the narrowest of uint8, uint16, uint32 that
  holds them (each is one `str.encode`: a copy of CPython's own 1-, 2- or 4-byte storage)."""
  if text.isascii():
    return np.frombuffer(text.encode("ascii"), np.uint8)
  try:
    return np.frombuffer(text.encode("latin-1"), np.uint8)
  except UnicodeEncodeError:
    pass
  units = np.frombuffer(text.encode("utf-16-le", errors="surrogatepass"), np.uint16)
  if not np.any((units & 0xF800) == 0xD800):  # No surrogate pairs: each unit is a character.
    return units
  return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), np.uint32)


class WordSplitter:
  """Splits a text fed in blocks into the words (and `<eos>`s) of the whole text.

  A block's last, possibly cut, word is held back until the next block (or `final`).
  """

  def __init__(self):
    self._carry = ""

  def __call__(self, text: str, final: bool = False) -> list:
    text = self._carry + text
    cut = len(text) if final else max(text.rfind(c) for c in _WHITESPACE_CUTS) + 1
    self._carry = text[cut:]
    return text[:cut].replace("\n", f" {EOS} ").split()


def _words(blocks: Iterable[str]) -> Iterator[list]:
  split = WordSplitter()
  for text in blocks:
    yield split(text)
  yield split("", final=True)


def _ordered_vocabulary(tokens: list, counts: np.ndarray, level: str) -> Vocabulary:
  """Tokens by descending count, ties by the token, `<unk>` first: as `Vocabulary.build`."""
  order = sorted((i for i in range(len(tokens)) if counts[i] and tokens[i] != UNK),
                 key=lambda i: (-counts[i], tokens[i]))
  return Vocabulary([UNK] + [tokens[i] for i in order], level)


def count_vocabulary(blocks: Iterable[str], level: str) -> Vocabulary:
  """The vocabulary of a character-level text (one pass; memory bounded by a block)."""
  if level != "char":
    raise ValueError(f"count_vocabulary is for 'char' level; use "
                     f"vocabulary_and_provisional_ids for {level!r}")
  counts = np.zeros(_MAX_CODE_POINT, np.int64)
  for text in blocks:
    found = np.bincount(code_points(text))
    counts[:found.shape[0]] += found
  present = np.flatnonzero(counts)
  return _ordered_vocabulary([chr(c) for c in present], counts[present], level)


def vocabulary_and_provisional_ids(blocks: Iterable[str], level: str, write) -> tuple:
  """One pass over a word-level text: its vocabulary, and its ids in first-seen order.

  Args:
    blocks: The text in blocks.
    level: 'word'.
    write: Called with each block's provisional ids, uint32 [n].

  Returns:
    (vocab, lut): the vocabulary and the uint32 array that maps a provisional id to its id.
  """
  if level != "word":
    raise ValueError(f"vocabulary_and_provisional_ids is for 'word' level, got {level!r}")
  first_seen = collections.defaultdict(itertools.count().__next__)
  counts = np.zeros(0, np.int64)
  for words in _words(blocks):
    ids = np.fromiter(map(first_seen.__getitem__, words), np.uint32, count=len(words))
    found = np.bincount(ids, minlength=len(first_seen))
    counts = np.concatenate([counts, np.zeros(found.shape[0] - counts.shape[0], np.int64)])
    counts += found
    write(ids)
  tokens = list(first_seen)  # In first-seen order: provisional id i is tokens[i].
  vocab = _ordered_vocabulary(tokens, counts, level)
  lut = np.fromiter((vocab.id(t) for t in tokens), np.uint32, count=len(tokens))
  return vocab, lut


class _UnknownIsZero(dict):
  def __missing__(self, key):
    return 0


def encode(blocks: Iterable[str], vocab: Vocabulary) -> Iterator[np.ndarray]:
  """Yields the ids of each block of a text, in `id_dtype(vocab.size)`; unknown tokens -> 0."""
  dtype = id_dtype(vocab.size)
  if vocab.level == "char":
    lut = np.zeros(_MAX_CODE_POINT, dtype)
    lut[[ord(t) for t in vocab.tokens[1:]]] = np.arange(1, vocab.size)
    for text in blocks:
      yield lut[code_points(text)]
    return
  ids = _UnknownIsZero((t, i) for i, t in enumerate(vocab.tokens))
  ids[UNK] = 0
  for words in _words(blocks):
    yield np.fromiter(map(ids.__getitem__, words), dtype, count=len(words))


def remap(provisional_blocks: Iterable[np.ndarray], lut: np.ndarray,
          vocab_size: int) -> Iterator[np.ndarray]:
  """Provisional ids -> ids in `id_dtype(vocab_size)`, block by block."""
  lut = lut.astype(id_dtype(vocab_size))
  for ids in provisional_blocks:
    yield lut[ids]
