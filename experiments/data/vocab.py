"""Token vocabularies: built from the training text, saved with the model, shared by eval and
sampling."""

import collections
import hashlib
import json
import os
from typing import Iterable, Sequence

import numpy as np

from tbptt.trainer.errors import ConfigError

UNK = "<unk>"
EOS = "<eos>"
LEVELS = ("char", "word")


def tokenize(text: str, level: str) -> list[str]:
  """Splits text into tokens.

  Args:
    text: Raw text.
    level: 'char' (every character is a token) or 'word' (whitespace-separated words, with `<eos>`
      at every line end, as in the Penn Treebank setup of Mikolov et al. and Zaremba et al.).

  Returns:
    The token list.
  """
  if level == "char":
    return list(text)
  if level == "word":
    return text.replace("\n", f" {EOS} ").split()
  raise ConfigError(f"TextCorpus.level must be one of {LEVELS}, got {level!r}")


class Vocabulary:
  """A fixed token <-> id mapping. Id 0 is `<unk>`, which unknown tokens map to.

  Args:
    tokens: The id-ordered token list (tokens[0] must be `<unk>`).
    level: 'char' or 'word'; decides how ids are joined back into text.
  """

  def __init__(self, tokens: Sequence[str], level: str):
    if level not in LEVELS:
      raise ConfigError(f"vocabulary level must be one of {LEVELS}, got {level!r}")
    if not tokens or tokens[0] != UNK:
      raise ValueError(f"the first token must be {UNK!r}, got {list(tokens[:1])}")
    if len(set(tokens)) != len(tokens):
      raise ValueError("vocabulary tokens must be unique")
    self.tokens = list(tokens)
    self.level = level
    self._ids = {t: i for i, t in enumerate(self.tokens)}

  @classmethod
  def build(cls, tokens: Iterable[str], level: str) -> "Vocabulary":
    """Builds a vocabulary ordered by descending count, ties broken by the token (deterministic)."""
    counts = collections.Counter(tokens)
    counts.pop(UNK, None)
    ordered = sorted(counts, key=lambda t: (-counts[t], t))
    return cls([UNK] + ordered, level)

  @property
  def size(self) -> int:
    return len(self.tokens)

  @property
  def unk_id(self) -> int:
    return 0

  def id(self, token: str) -> int:
    """The id of `token`; the `<unk>` id for a token not in the vocabulary."""
    return self._ids.get(token, 0)

  def digest(self) -> str:
    """A hash of the level and the id-ordered tokens (keys the token ids encoded with it)."""
    text = json.dumps({"level": self.level, "tokens": self.tokens}, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()

  def __eq__(self, other) -> bool:
    return (isinstance(other, Vocabulary) and self.level == other.level
            and self.tokens == other.tokens)

  def encode(self, tokens: Iterable[str]) -> np.ndarray:
    """Token ids, int32 [N]; tokens not in the vocabulary map to the `<unk>` id."""
    ids = self._ids
    return np.fromiter((ids.get(t, 0) for t in tokens), dtype=np.int32)

  def encode_text(self, text: str) -> np.ndarray:
    return self.encode(tokenize(text, self.level))

  def decode(self, ids: Iterable[int]) -> str:
    """Text for ids: characters joined as they are; words joined by spaces, `<eos>` as line end."""
    tokens = [self.tokens[int(i)] for i in ids]
    if self.level == "char":
      return "".join("\ufffd" if t == UNK else t for t in tokens)
    lines, words = [], []
    for t in tokens:
      if t == EOS:
        lines.append(" ".join(words))
        words = []
      else:
        words.append(t)
    return "\n".join(lines + [" ".join(words)])

  def save(self, path: str) -> None:
    """Writes JSON atomically (temporary file + rename): a crash never leaves half a vocabulary."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump({"level": self.level, "tokens": self.tokens}, f)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    try:
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
      return cls(data["tokens"], data["level"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ConfigError(f"cannot read the vocabulary {path}: {e}; delete it to rebuild it from "
                        "the training text, or use a new --model_dir") from e
