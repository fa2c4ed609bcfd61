"""Tests for experiments/data/corpus.py: reading splits, the saved vocabulary, the embedded
corpus."""

import os

import numpy as np
import pytest

from tbptt.experiments.data import corpus as corpus_lib
from tbptt.experiments.data import vocab as vocab_lib
from tbptt.experiments.data.corpus import TextCorpus
from tbptt.trainer.errors import ConfigError

WORDS = "the cat sat on the mat\nthe dog sat on the log\n" * 20


@pytest.fixture
def ptb_like(tmp_path):
  paths = {}
  for split, text in (("train", WORDS), ("valid", "the cat ate the dog\n" * 10),
                      ("test", "a bird sat on the cat\n" * 10)):
    paths[split] = str(tmp_path / f"{split}.txt")
    with open(paths[split], "w") as f:
      f.write(text)
  return paths


def _corpus(paths, model_dir=None, **kwargs):
  kwargs = {"level": "word", "batch_size": 2, "seq_len": 5, **kwargs}
  return TextCorpus(model_dir, train_path=paths["train"], valid_path=paths["valid"],
                    test_path=paths.get("test"), **kwargs)


def test_word_corpus_layout_and_unknown_eval_words(ptb_like):
  corpus = _corpus(ptb_like)
  assert corpus.vocab.tokens[0] == "<unk>" and "<eos>" in corpus.vocab.tokens
  assert corpus.train.streams.shape == (2, 140)  # 40 lines of 6 words and <eos>
  # "a" and "bird" never occur in the training text: 2 unknown words on each of 10 lines.
  assert corpus.evals["test"].ids.size == 70 and (corpus.evals["test"].ids == 0).sum() == 20
  assert corpus.vocab.decode(corpus.train.streams[0, :8]) == "the cat sat on the mat\nthe"


def test_missing_path_names_the_binding(ptb_like):
  with pytest.raises(ConfigError, match=r"TextCorpus.valid_path is not set; pass --gin_bindings="):
    TextCorpus(train_path=ptb_like["train"])
  with pytest.raises(ConfigError, match=r"TextCorpus.train_path='/nope/train.txt': no such file"):
    TextCorpus(train_path="/nope/train.txt", valid_path=ptb_like["valid"])


def test_empty_and_too_short_texts(ptb_like, tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("  \n")
  with pytest.raises(ConfigError, match=r"TextCorpus.valid_path=.*empty.txt' is empty"):
    _corpus({**ptb_like, "valid": str(empty)})
  with pytest.raises(ConfigError, match=r"the valid text .* has 60 tokens, fewer than one batch "
                                        r"needs: eval_batch_size 100 rows \+ 1 = 101"):
    _corpus(ptb_like, eval_batch_size=100)
  with pytest.raises(ConfigError, match="TextCorpus.seq_len must be a positive integer, got 0"):
    _corpus(ptb_like, seq_len=0)


def test_vocab_is_saved_once_and_reloaded(ptb_like, tmp_path):
  model_dir = str(tmp_path / "run")
  corpus = _corpus(ptb_like, model_dir)
  assert not os.path.exists(model_dir)  # nothing is written until asked
  corpus.save_vocab()
  path = os.path.join(model_dir, "vocab.json")
  mtime = os.stat(path).st_mtime_ns
  again = _corpus(ptb_like, model_dir)
  again.save_vocab()
  assert again.vocab == corpus.vocab and os.stat(path).st_mtime_ns == mtime
  np.testing.assert_array_equal(again.train.streams, corpus.train.streams)


def test_saved_vocab_from_another_text_is_a_config_error(ptb_like, tmp_path):
  model_dir = str(tmp_path / "run")
  _corpus(ptb_like, model_dir).save_vocab()
  other = tmp_path / "other.txt"
  other.write_text("completely different words here\n" * 30)
  with pytest.raises(ConfigError, match="vocab.json .* was built from another training text"):
    _corpus({**ptb_like, "train": str(other)}, model_dir)
  with pytest.raises(ConfigError, match="built from another training text"):
    _corpus(ptb_like, model_dir, level="char")


def test_stdlib_splits_are_disjoint_and_fixed():
  files = {s: corpus_lib.stdlib_files(s, 1_000_000) for s in corpus_lib.SPLITS}
  assert all(files.values())
  names = [set(p.name for p in f) for f in files.values()]
  assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
  assert files["train"] == corpus_lib.stdlib_files("train", 1_000_000)
  assert all(p.suffix == ".py" for p in files["train"])


def test_stdlib_char_corpus():
  corpus = TextCorpus(train_path="stdlib", valid_path="stdlib", level="char", batch_size=4,
                      seq_len=20, stdlib_bytes=300_000)
  assert set("def return import") <= set(corpus.vocab.tokens)
  assert corpus.train.num_chunks > 100 and corpus.evals["valid"].num_chunks > 10
  assert "test" not in corpus.evals


@pytest.mark.parametrize("level", ["char", "word"])
def test_file_splits_are_memory_mapped_and_tokenized_as_the_whole_text(ptb_like, level):
  corpus = _corpus(ptb_like, level=level)
  with open(ptb_like["train"]) as f:
    train_text = f.read()
  expected = vocab_lib.Vocabulary.build(vocab_lib.tokenize(train_text, level), level)
  assert corpus.vocab == expected
  assert corpus.train.memory_mapped and corpus.evals["valid"].memory_mapped
  ids = expected.encode_text(train_text)
  length = ids.shape[0] // 2
  np.testing.assert_array_equal(corpus.train.streams, ids[:2 * length].reshape(2, length))
  assert corpus.train.streams.dtype == np.uint8


def test_the_embedded_corpus_stays_in_memory():
  corpus = TextCorpus(train_path="stdlib", valid_path="stdlib", batch_size=4, seq_len=20,
                      stdlib_bytes=200_000)
  assert not corpus.train.memory_mapped and not corpus.evals["valid"].memory_mapped
  text = corpus_lib.read_stdlib("train", 200_000)
  assert corpus.vocab == vocab_lib.Vocabulary.build(vocab_lib.tokenize(text, "char"), "char")
