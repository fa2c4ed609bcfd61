"""Tests for experiments/data/text_source.py: checks, block decoding, hashing."""

import os

import pytest

from tbptt.experiments.data.text_source import MAX_UNDECODABLE, TextSource
from tbptt.trainer.errors import ConfigError

TEXT = "déjà vu — naïve café: 日本語 and 🙂 emoji\r\nsecond line\twith tab\n" * 40


def _file(tmp_path, data: bytes, name="text.txt"):
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


@pytest.mark.parametrize("block_bytes", [1, 2, 3, 5, 64, 1 << 20])
def test_blocks_decode_as_the_whole_file_does(tmp_path, block_bytes):
  data = TEXT.encode() + b"\xff stray \xc3 bytes\n" + TEXT.encode()[:-3]  # Ends inside a char.
  source = TextSource("train", _file(tmp_path, data))
  blocks = list(source.blocks(block_bytes))
  assert "".join(blocks) == data.decode("utf-8", errors="replace")
  replaced = data.decode("utf-8", "replace").count("\ufffd") - TEXT.count("\ufffd")
  assert source.undecodable == replaced


def test_progress_is_called_with_the_bytes_read(tmp_path):
  data = TEXT.encode()
  seen = []
  list(TextSource("train", _file(tmp_path, data)).blocks(1000, on_progress=seen.append))
  assert seen == sorted(seen) and seen[-1] == len(data) and len(seen) == -(-len(data) // 1000)


def test_digest_follows_the_contents(tmp_path):
  path = _file(tmp_path, b"abc\n")
  first = TextSource("train", path).digest()
  assert TextSource("train", _file(tmp_path, b"abc\n", "copy.txt")).digest() == first
  _file(tmp_path, b"abd\n")
  assert TextSource("train", path).digest() != first


def _error(tmp_path, source_path, split="valid", block_bytes=1 << 20):
  with pytest.raises(ConfigError) as info:
    list(TextSource(split, source_path).blocks(block_bytes))
  return str(info.value)


def test_bad_files_are_one_line_errors_naming_the_binding(tmp_path):
  assert _error(tmp_path, str(tmp_path / "nope.txt")).startswith(
      f"TextCorpus.valid_path='{tmp_path / 'nope.txt'}': no such file; pass --gin_bindings=")
  assert "is a directory; point it at a text file in it" in _error(tmp_path, str(tmp_path))
  fifo = str(tmp_path / "fifo")
  os.mkfifo(fifo)
  assert "is not a regular file" in _error(tmp_path, fifo)
  binary = "is not UTF-8 text (a binary file?)"
  assert binary in _error(tmp_path, _file(tmp_path, b"text\0more text" * 10))
  # A NUL byte deep in a file is found in a later block, after earlier blocks were yielded.
  assert binary in _error(tmp_path, _file(tmp_path, b"a" * 5000 + b"\0"), block_bytes=1000)
  assert binary in _error(tmp_path, _file(tmp_path, bytes(range(128, 256)) * 20))
  assert "is empty" in _error(tmp_path, _file(tmp_path, b""))
  assert "is empty" in _error(tmp_path, _file(tmp_path, b"  \n\t\n" * 1000), block_bytes=7)
  assert "must be a file path or 'stdlib'" in _error(tmp_path, 3)
  for message in (_error(tmp_path, str(tmp_path / "nope.txt")), _error(tmp_path, str(tmp_path))):
    assert "\n" not in message and message.startswith("TextCorpus.valid_path=")


def test_a_few_stray_bytes_are_tolerated(tmp_path):
  data = b"x" * 1000 + b"\xff" * int(MAX_UNDECODABLE * 1000)
  assert "".join(TextSource("train", _file(tmp_path, data)).blocks()).count("\ufffd") == 10
  with pytest.raises(ConfigError, match="not UTF-8"):
    list(TextSource("train", _file(tmp_path, data + b"\xff" * 2)).blocks())
