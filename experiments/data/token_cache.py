"""Token-id files, tokenized once per text and cached per user; read through a memory map.

    vocab, train_ids = train_ids(TextSource("train", path), "char")    # np.memmap [N], uint8/16/32
    valid_ids = eval_ids(TextSource("valid", other_path), vocab)

An entry is a folder `<cache>/corpora/<key>/` holding `ids.bin` (the raw ids), `meta.json` and, for
a training text, `vocab.json`. The key hashes the text's bytes and its level (and, for a text
encoded with another text's vocabulary, that vocabulary), so a second run reuses the entry from any
`model_dir`, and a changed file gets a new one. An entry is built in a scratch folder and renamed
into place, so no reader ever sees half of one; a lock per key makes a second process wait for the
first's build and reuse it instead of building it again.

The cache folder is `$TBPTT_CACHE_DIR`, else `$XDG_CACHE_HOME/tbptt`, else `~/.cache/tbptt`.
Entries are never deleted by the program: remove the folder to reclaim the space.
"""

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil

import numpy as np

from tbptt.experiments.data import token_ids
from tbptt.experiments.data.progress import Progress
from tbptt.experiments.data.text_source import TextSource
from tbptt.experiments.data.vocab import Vocabulary
from tbptt.trainer.errors import ConfigError

FORMAT = 1
# Files at least this large report progress while they are tokenized.
PROGRESS_BYTES = 32 << 20


def cache_root() -> str:
  """The per-user cache folder (see the module docstring)."""
  if os.environ.get("TBPTT_CACHE_DIR"):
    return os.environ["TBPTT_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "tbptt")


def _key(*parts) -> str:
  return hashlib.sha256(":".join(map(str, (FORMAT,) + parts)).encode()).hexdigest()[:32]


@contextlib.contextmanager
def _locked(path: str):
  with open(path, "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _load(entry: str, with_vocab: bool):
  with open(os.path.join(entry, "meta.json")) as f:
    meta = json.load(f)
  ids = np.memmap(os.path.join(entry, "ids.bin"), np.dtype(meta["dtype"]), mode="r",
                  shape=(meta["tokens"],))
  if not with_vocab:
    return ids
  return Vocabulary.load(os.path.join(entry, "vocab.json")), ids


def _entry(key: str, build, with_vocab: bool, source: TextSource):
  """Loads the entry `key`, building it first (under its lock) if it does not exist."""
  folder = os.path.join(cache_root(), "corpora")
  entry = os.path.join(folder, key)
  if os.path.exists(os.path.join(entry, "meta.json")):
    return _load(entry, with_vocab)
  try:
    os.makedirs(folder, exist_ok=True)
    with _locked(entry + ".lock"):
      if not os.path.exists(os.path.join(entry, "meta.json")):  # Not built while we waited.
        # Debris: an entry without its meta, builds that crashed (we hold the key's lock).
        for debris in [entry] + glob.glob(glob.escape(entry) + ".tmp-*"):
          shutil.rmtree(debris, ignore_errors=True)
        scratch = f"{entry}.tmp-{os.getpid()}"
        os.makedirs(scratch)
        try:
          build(scratch)
          os.rename(scratch, entry)
        finally:
          shutil.rmtree(scratch, ignore_errors=True)
  except OSError as e:
    raise ConfigError(f"cannot write the token cache {folder}: {e.strerror or e} (tokenizing "
                      f"{source.path}); free some space or set TBPTT_CACHE_DIR to another "
                      "folder") from None
  return _load(entry, with_vocab)


def _write_meta(scratch: str, source: TextSource, level: str, dtype, tokens: int) -> None:
  meta = {"format": FORMAT, "level": level, "dtype": np.dtype(dtype).name, "tokens": int(tokens),
          "source": os.path.abspath(source.path), "source_bytes": source.size}
  with open(os.path.join(scratch, "meta.json"), "w") as f:
    json.dump(meta, f)


def _progress(source: TextSource, what: str):
  if source.size < PROGRESS_BYTES:
    return None
  return Progress(f"{what} {os.path.basename(source.path)}", source.size)


def _blocks(source: TextSource, progress):
  return source.blocks(on_progress=progress)


def _write_all(path: str, arrays) -> tuple:
  """Writes arrays one after another to `path`; returns (count, dtype)."""
  count, dtype = 0, None
  with open(path, "wb") as f:
    for ids in arrays:
      f.write(ids.tobytes())
      count += ids.shape[0]
      dtype = ids.dtype
  return count, dtype


def train_ids(source: TextSource, level: str):
  """The vocabulary of a training text and its ids (cached; see the module docstring).

  Returns:
    (vocab, ids): the `Vocabulary` and a read-only np.memmap [N] in `id_dtype(vocab.size)`.

  Raises:
    ConfigError: the text is binary or empty (see `TextSource.blocks`); the cache cannot be written.
  """
  def build(scratch):
    progress = _progress(source, "tokenizing")
    ids_path = os.path.join(scratch, "ids.bin")
    if level == "char":
      vocab = token_ids.count_vocabulary(_blocks(source, progress), level)
      if progress:
        progress = _progress(source, "writing the ids of")
      count, _ = _write_all(ids_path, token_ids.encode(_blocks(source, progress), vocab))
    else:
      provisional = os.path.join(scratch, "provisional.bin")
      with open(provisional, "wb") as f:
        vocab, lut = token_ids.vocabulary_and_provisional_ids(
            _blocks(source, progress), level, lambda ids: f.write(ids.tobytes()))
      blocks = np.array_split(np.memmap(provisional, np.uint32, mode="r"),
                              max(1, os.path.getsize(provisional) // (64 << 20)))
      count, _ = _write_all(ids_path, token_ids.remap(blocks, lut, vocab.size))
      os.remove(provisional)
    vocab.save(os.path.join(scratch, "vocab.json"))
    _write_meta(scratch, source, level, token_ids.id_dtype(vocab.size), count)
    if progress:
      progress.finish(f"tokenized {source.path}: {count:,} tokens, {vocab.size:,} in the "
                      "vocabulary")

  return _entry(_key("train", source.digest(), level), build, True, source)


def eval_ids(source: TextSource, vocab: Vocabulary) -> np.ndarray:
  """The ids of a text under another text's vocabulary (cached); unknown tokens are `<unk>`.

  Returns:
    A read-only np.memmap [N] in `id_dtype(vocab.size)`.
  """
  def build(scratch):
    progress = _progress(source, "tokenizing")
    count, _ = _write_all(os.path.join(scratch, "ids.bin"),
                          token_ids.encode(_blocks(source, progress), vocab))
    _write_meta(scratch, source, vocab.level, token_ids.id_dtype(vocab.size), count)
    if progress:
      progress.finish(f"tokenized {source.path}: {count:,} tokens")

  return _entry(_key("encoded", source.digest(), vocab.level, vocab.digest()), build, False,
                source)
