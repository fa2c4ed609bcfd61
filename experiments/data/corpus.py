"""Text corpora for language models: files (e.g. Penn Treebank) or the embedded Python corpus.

The embedded corpus needs no download: it is the Python standard library's own top-level *.py
files, read from the running interpreter (`sysconfig.get_paths()["stdlib"]`). The files are sorted
by name and taken in order up to `stdlib_bytes`; file i of that list goes to valid if i % 10 == 9,
to test if i % 10 == 4, otherwise to train. It depends on the interpreter's version, so compare
numbers across runs of one interpreter. Select a split of it with the path value 'stdlib'.

A text file is tokenized once, in streaming passes, into a token-id file in a per-user cache (see
`token_cache`), and read through a memory map: memory does not grow with the corpus. The embedded
corpus is small and is tokenized in memory.
"""

import os
import pathlib
import sysconfig

import gin
import numpy as np

from tbptt.experiments.data import token_cache, token_ids
from tbptt.experiments.data import vocab as vocab_lib
from tbptt.experiments.data.chunk_schedule import ChunkSchedule
from tbptt.experiments.data.eval_layout import EvalLayout
from tbptt.experiments.data.scheduled_chunks import ScheduledChunks, fixed_schedule
from tbptt.experiments.data.tbptt import StreamLayout
from tbptt.experiments.data.text_source import TextSource
from tbptt.trainer.errors import ConfigError

STDLIB = "stdlib"
VOCAB_FILE = "vocab.json"
SPLITS = ("train", "valid", "test")


def stdlib_files(split: str, max_bytes: int) -> list[pathlib.Path]:
  """The files of one split of the embedded corpus (see the module docstring)."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  chosen, total = [], 0
  for path in sorted(root.glob("*.py")):
    if total >= max_bytes:
      break
    chosen.append(path)
    total += path.stat().st_size
  pick = {"train": lambda i: i % 10 not in (4, 9), "valid": lambda i: i % 10 == 9,
          "test": lambda i: i % 10 == 4}[split]
  return [p for i, p in enumerate(chosen) if pick(i)]


def read_stdlib(split: str, max_bytes: int) -> str:
  """The text of one split of the embedded corpus: its files joined by a blank line."""
  return "\n\n".join(p.read_text(encoding="utf-8", errors="replace")
                     for p in stdlib_files(split, max_bytes))


def _in_memory_ids(text: str, level: str, vocab=None):
  """(vocab, ids int32 [N]) of a text held in memory (the embedded corpus: a few MB). The
  vocabulary is built from the text unless `vocab` is given."""
  if vocab is None:
    if level == "char":
      vocab = token_ids.count_vocabulary([text], level)
    else:
      provisional = []
      vocab, lut = token_ids.vocabulary_and_provisional_ids([text], level, provisional.append)
      return vocab, np.concatenate(list(token_ids.remap(provisional, lut, vocab.size)))
  return vocab, np.concatenate(list(token_ids.encode([text], vocab)))


def _training_ids(path, level: str, stdlib_bytes: int):
  """(vocab, ids) of the training split: cached and memory-mapped for a file."""
  if path == STDLIB:
    return _in_memory_ids(read_stdlib("train", stdlib_bytes), level)
  return token_cache.train_ids(TextSource("train", path), level)


def _eval_ids(split: str, path, vocab, stdlib_bytes: int):
  """The ids of an evaluation split under the training vocabulary."""
  if path == STDLIB:
    return _in_memory_ids(read_stdlib(split, stdlib_bytes), vocab.level, vocab)[1]
  return token_cache.eval_ids(TextSource(split, path), vocab)


@gin.configurable
class TextCorpus:
  """Train/valid/test text as TBPTT streams over one vocabulary.

  The vocabulary is built from the training text and saved as `model_dir/vocab.json`; when that
  file already exists it is loaded and must equal the one built from the training text (otherwise
  the ids of a trained model would silently change). Eval tokens missing from it map to `<unk>`.

  Args:
    model_dir: Where the vocabulary lives (None: keep it in memory only).
    train_path: Training text file, or 'stdlib' for the embedded corpus. Required.
    valid_path: Validation text file, or 'stdlib'. Required.
    test_path: Optional test text file, or 'stdlib'.
    level: 'char' or 'word' (see `vocab.tokenize`).
    batch_size: Training rows B (contiguous streams).
    seq_len: TBPTT chunk length T (tokens).
    eval_batch_size: Eval rows, independent of batch_size. Default 1, as published perplexities
      are measured (Zaremba et al. 2014 evaluate with batch 1): every row starts from a zero
      state, so more rows evaluate faster but see less context at each row's start. Every token
      of a split but the first is counted whatever the rows (see `EvalLayout`).
    stdlib_bytes: Size of the embedded corpus (bytes of source read, before the split).
    variable_seq_len: Training chunks of varying length (Merity et al. 2017 §4.1): each step's
      length is drawn from N(seq_len, seq_len_std) with probability full_seq_len_probability,
      else from N(seq_len / 2, seq_len_std), rounded and clipped to [min_seq_len, max_seq_len];
      the step's learning rate is scaled by length / seq_len. Chunks are padded to max_seq_len
      (default seq_len + 3 seq_len_std) and the padding is masked. See `chunk_schedule`.
    seq_len_std, full_seq_len_probability, min_seq_len, max_seq_len, seq_len_seed: Its settings.
    burn_in: Tokens of context in front of every training chunk, back-propagated through but
      carrying no loss (TBPTT(k1, k2)); 0: none. See `scheduled_chunks`.

  Raises:
    ConfigError: a path is unset, missing or empty; a split is shorter than one batch; the saved
      vocabulary does not match the training text.
  """

  def __init__(self, model_dir: str | None = None, *, train_path: str | None = None,
               valid_path: str | None = None, test_path: str | None = None, level: str = "char",
               batch_size: int = 32, seq_len: int = 100, eval_batch_size: int = 1,
               stdlib_bytes: int = 2_000_000, variable_seq_len: bool = False,
               seq_len_std: float = 5.0, full_seq_len_probability: float = 0.95,
               min_seq_len: int = 5, max_seq_len: int | None = None, seq_len_seed: int = 0,
               burn_in: int = 0):
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len),
                        ("eval_batch_size", eval_batch_size), ("stdlib_bytes", stdlib_bytes)):
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"TextCorpus.{name} must be a positive integer, got {value!r}")
    if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
      raise ConfigError(f"TextCorpus.burn_in must be an integer >= 0, got {burn_in!r}")
    if level not in vocab_lib.LEVELS:
      raise ConfigError(f"TextCorpus.level must be one of {vocab_lib.LEVELS}, got {level!r}")
    for split, path in (("train", train_path), ("valid", valid_path)):
      if path is None:
        raise ConfigError(f"TextCorpus.{split}_path is not set; pass "
                          f"--gin_bindings=\"TextCorpus.{split}_path='/data/ptb.{split}.txt'\" "
                          f"(or '{STDLIB}' for the embedded corpus)")
    self.level = level
    self.batch_size = batch_size
    self.seq_len = seq_len
    self.eval_batch_size = eval_batch_size
    self.paths = {"train": train_path, "valid": valid_path, "test": test_path}
    for split, path in self.paths.items():  # Every path is checked before any is tokenized.
      if path is not None and path != STDLIB:
        TextSource(split, path)
    self.vocab, train_ids = _training_ids(train_path, level, stdlib_bytes)
    self.vocab_path = None if model_dir is None else os.path.join(model_dir, VOCAB_FILE)
    self._vocab_saved = False
    if self.vocab_path is not None and os.path.exists(self.vocab_path):
      saved = vocab_lib.Vocabulary.load(self.vocab_path)
      if saved != self.vocab:
        raise ConfigError(
            f"{self.vocab_path} ({saved.level} level, {saved.size} tokens) was built from another "
            f"training text than TextCorpus.train_path={train_path!r} ({level} level, "
            f"{self.vocab.size} tokens); use the original text or a new --model_dir")
      self.vocab, self._vocab_saved = saved, True

    self.train = StreamLayout(train_ids, batch_size, seq_len,
                              f"the training text (TextCorpus.train_path={train_path!r})")
    self.evals = {
        split: EvalLayout(_eval_ids(split, self.paths[split], self.vocab, stdlib_bytes),
                          self.eval_batch_size, seq_len,
                          f"the {split} text (TextCorpus.{split}_path={self.paths[split]!r})")
        for split in ("valid", "test") if self.paths[split] is not None}
    # What training reads: the fixed chunks of `train`, or a schedule over the same streams.
    self.train_chunks = self.train
    self.variable_seq_len = bool(variable_seq_len)
    if self.variable_seq_len or burn_in:
      rows = self.train.streams.shape[1]
      schedule = (ChunkSchedule(rows, seq_len, std=seq_len_std,
                                full_probability=full_seq_len_probability,
                                min_length=min_seq_len, max_length=max_seq_len,
                                seed=seq_len_seed)
                  if self.variable_seq_len else fixed_schedule(self.train))
      self.train_chunks = ScheduledChunks(self.train, schedule, burn_in=burn_in,
                                          scale_learning_rate=self.variable_seq_len)

  def save_vocab(self) -> None:
    """Writes the vocabulary to model_dir (once; an existing file is never rewritten)."""
    if self.vocab_path is None or self._vocab_saved:
      return
    os.makedirs(os.path.dirname(self.vocab_path) or ".", exist_ok=True)
    self.vocab.save(self.vocab_path)
    self._vocab_saved = True
