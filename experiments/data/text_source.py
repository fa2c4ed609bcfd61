"""A text file read in bounded blocks: checked, decoded and hashed without ever holding it whole.

    source = TextSource("train", "/data/enwik8.txt")     # stat checks: missing, directory, pipe ...
    source.digest()                                      # content hash (one pass over the bytes)
    for text in source.blocks():                         # decoded str blocks of about BLOCK_BYTES
      ...

A few bytes that are not UTF-8 become U+FFFD, as `bytes.decode(errors="replace")` does; a file with
a NUL byte or with more undecodable sequences than MAX_UNDECODABLE of its bytes is binary and
rejected, as are empty and whitespace-only files. Every rejection is a one-line `ConfigError`
naming the binding.
"""

import codecs
import hashlib
import os
import stat
import threading

from tbptt.trainer.errors import ConfigError

BLOCK_BYTES = 8 << 20
# A text with more undecodable bytes than this (as a fraction) is not a text file.
MAX_UNDECODABLE = 0.01
_HASH = "sha256"


class TextSource:
  """One split's text file.

  Args:
    split: 'train', 'valid' or 'test' (for the binding named in errors: `TextCorpus.<split>_path`).
    path: The file.

  Raises:
    ConfigError: the path is not a string; the file is missing, a directory, not a regular file or
      unreadable.
  """

  def __init__(self, split: str, path):
    self.binding = f"TextCorpus.{split}_path"
    self.split = split
    if not isinstance(path, (str, os.PathLike)) or "\0" in os.fspath(path):
      raise ConfigError(f"{self.binding} must be a file path or 'stdlib', got {path!r}; pass "
                        f"--gin_bindings=\"{self.binding}='/path/to/{split}.txt'\"")
    self.path = os.fspath(path)
    try:
      info = os.stat(self.path)
    except FileNotFoundError:
      raise ConfigError(f"{self.binding}={path!r}: no such file; pass "
                        f"--gin_bindings=\"{self.binding}='/path/to/{split}.txt'\"") from None
    except OSError as e:
      raise self._unreadable(e) from None
    if stat.S_ISDIR(info.st_mode):
      raise ConfigError(
          f"{self.binding}={path!r} is a directory; point it at a text file in it, e.g. "
          f"--gin_bindings=\"{self.binding}='{os.path.join(self.path, split)}.txt'\"")
    if not stat.S_ISREG(info.st_mode):  # A pipe would block, /dev/zero would never end.
      raise ConfigError(f"{self.binding}={path!r} is not a regular file; point it at a text file")
    self.size = info.st_size
    self.undecodable = 0  # Undecodable sequences replaced by U+FFFD so far.

  def _unreadable(self, error: OSError) -> ConfigError:
    return ConfigError(f"{self.binding}={self.path!r} cannot be read: {error.strerror or error}; "
                       "check the file and its permissions")

  def _raw_blocks(self, block_bytes: int = BLOCK_BYTES):
    try:
      with open(self.path, "rb") as f:
        while True:
          data = f.read(block_bytes)
          if not data:
            return
          yield data
    except OSError as e:
      raise self._unreadable(e) from None

  def digest(self) -> str:
    """The hex hash of the file's bytes (the key of its cached token ids)."""
    hasher = hashlib.new(_HASH)
    for data in self._raw_blocks():
      hasher.update(data)
    return hasher.hexdigest()

  def blocks(self, block_bytes: int = BLOCK_BYTES, on_progress=None):
    """Yields the decoded text in blocks of about `block_bytes` bytes, checking it on the way.

    Args:
      block_bytes: Bytes read at a time (a block's text may be a little shorter: a character cut by
        the block's end is decoded with the next block).
      on_progress: Called with the bytes read so far after each block.

    Raises:
      ConfigError: the file is binary (a NUL byte, or more undecodable sequences than
        MAX_UNDECODABLE of its bytes), empty or whitespace only (raised when that is known: at
        the first bad block, or at the end).
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors=_COUNTING_REPLACE)
    done, blank = 0, True
    for data in self._raw_blocks(block_bytes):
      if b"\0" in data:
        raise self._binary()
      done += len(data)
      _undecodable.count = 0
      text = decoder.decode(data, final=done >= self.size)
      self.undecodable += _undecodable.count
      if self.undecodable > MAX_UNDECODABLE * self.size:
        raise self._binary()
      blank = blank and (not text or text.isspace())
      if on_progress is not None:
        on_progress(done)
      yield text
    tail = decoder.decode(b"", final=True)
    if tail:
      blank = blank and tail.isspace()  # A cut character at the very end.
      yield tail
    if blank:
      raise ConfigError(f"{self.binding}={self.path!r} is empty; point it at a text file")

  def _binary(self) -> ConfigError:
    return ConfigError(f"{self.binding}={self.path!r} is not UTF-8 text (a binary file?); point "
                       "it at a text file, or convert it with e.g. iconv -t UTF-8")


# One module-wide error handler that replaces as "replace" does and counts its replacements
# (per thread), so that decoding a block once tells both the text and how much of it was not UTF-8.
_undecodable = threading.local()
_COUNTING_REPLACE = "tbptt-counting-replace"


def _counting_replace(error: UnicodeDecodeError):
  _undecodable.count = getattr(_undecodable, "count", 0) + 1
  return "\ufffd", error.end


codecs.register_error(_COUNTING_REPLACE, _counting_replace)
