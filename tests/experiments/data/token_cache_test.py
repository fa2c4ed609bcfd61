"""Tests for experiments/data/token_cache.py: built once, reused, rebuilt on change, never half."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tbptt.experiments.data import token_cache, token_ids
from tbptt.experiments.data import vocab as vocab_lib
from tbptt.experiments.data.text_source import TextSource

TEXT = "for i in range(10):\n  print(i * i)  # ünïcode\n" * 200


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("TBPTT_CACHE_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache" / "corpora"


def _write(path, text):
  path.write_text(text, encoding="utf-8")
  return str(path)


def _entries(cache):
  return sorted(p for p in os.listdir(cache) if not p.endswith(".lock"))


@pytest.mark.parametrize("level", ["char", "word"])
def test_train_ids_are_built_once_then_read_from_the_map(cache, tmp_path, monkeypatch, level):
  path = _write(tmp_path / "train.txt", TEXT)
  vocab, ids = token_cache.train_ids(TextSource("train", path), level)
  expected = vocab_lib.Vocabulary.build(vocab_lib.tokenize(TEXT, level), level)
  assert vocab == expected and isinstance(ids, np.memmap) and ids.dtype == np.uint8
  np.testing.assert_array_equal(ids, expected.encode_text(TEXT))
  assert len(_entries(cache)) == 1

  def no_rebuild(*args, **kwargs):
    raise AssertionError("the cached ids were tokenized again")

  monkeypatch.setattr(token_ids, "count_vocabulary", no_rebuild)
  monkeypatch.setattr(token_ids, "vocabulary_and_provisional_ids", no_rebuild)
  copy = _write(tmp_path / "copy of train.txt", TEXT)  # Same contents, another path.
  again_vocab, again = token_cache.train_ids(TextSource("train", copy), level)
  assert again_vocab == vocab
  np.testing.assert_array_equal(again, ids)


def test_a_changed_file_is_tokenized_again(cache, tmp_path):
  path = tmp_path / "train.txt"
  _, first = token_cache.train_ids(TextSource("train", _write(path, TEXT)), "char")
  first = np.array(first)
  vocab, second = token_cache.train_ids(TextSource("train", _write(path, TEXT + "zebra\n")),
                                        "char")
  assert "z" in vocab.tokens and second.shape[0] == first.shape[0] + 6
  assert len(_entries(cache)) == 2


def test_eval_ids_depend_on_the_vocabulary(cache, tmp_path):
  valid = TextSource("valid", _write(tmp_path / "valid.txt", "print(zz)\n" * 10))
  small = token_ids.count_vocabulary(["print()\n"], "char")
  large = token_ids.count_vocabulary(["print()z\n"], "char")
  assert (token_cache.eval_ids(valid, small) == 0).sum() == 20
  assert (token_cache.eval_ids(valid, large) == 0).sum() == 0
  assert len(_entries(cache)) == 2


def test_debris_is_never_read(cache, tmp_path):
  path = _write(tmp_path / "train.txt", TEXT)
  _, ids = token_cache.train_ids(TextSource("train", path), "char")
  (entry,) = _entries(cache)
  expected = np.array(ids)
  del ids
  os.remove(cache / entry / "meta.json")  # As a copy cut short would leave it.
  (cache / f"{entry}.tmp-999999").mkdir()  # A crashed build's scratch folder.
  _, ids = token_cache.train_ids(TextSource("train", path), "char")
  np.testing.assert_array_equal(ids, expected)
  assert os.path.exists(cache / entry / "meta.json") and _entries(cache) == [entry]


def test_an_unwritable_cache_is_a_config_error(tmp_path, monkeypatch):
  blocker = tmp_path / "file"
  blocker.write_text("")
  monkeypatch.setenv("TBPTT_CACHE_DIR", str(blocker / "cache"))
  with pytest.raises(token_cache.ConfigError, match=r"cannot write the token cache .*; free some "
                     r"space or set TBPTT_CACHE_DIR"):
    token_cache.train_ids(TextSource("train", _write(tmp_path / "t.txt", TEXT)), "char")


_BUILD = """
import sys, numpy as np
from tbptt.experiments.data import token_cache
from tbptt.experiments.data.text_source import TextSource
vocab, ids = token_cache.train_ids(TextSource("train", sys.argv[1]), "word")
print(vocab.size, ids.shape[0], int(np.asarray(ids, np.int64).sum()))
"""


@pytest.mark.slow
def test_two_processes_building_at_once_share_one_entry(cache, tmp_path):
  words = " ".join(f"w{i % 5003}" + ("\n" if i % 17 == 0 else "") for i in range(600_000))
  path = _write(tmp_path / "big.txt", words)
  env = dict(os.environ)
  runs = [subprocess.Popen([sys.executable, "-c", _BUILD, path], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for _ in range(2)]
  results = [run.communicate(timeout=300) for run in runs]
  assert all(run.returncode == 0 for run in runs), [err for _, err in results]
  assert results[0][0] == results[1][0] and results[0][0].split()[0] == "5005"
  assert len(_entries(cache)) == 1 and not [p for p in os.listdir(cache) if ".tmp-" in p]
