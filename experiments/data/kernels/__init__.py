"""The token-window op: rows of token ids read straight from a memory-mapped id file.

    source = id_file(ids)                            # ids: a 1-D np.memmap of a token-id file
    window = token_window(source, starts, length)    # int32 [rows, length]: ids[starts[r] + j]

The layouts (`tbptt.StreamLayout`, `eval_layout.EvalLayout`) read each step's window of a
memory-mapped corpus with it: one C++ op (token_window.cc) that maps the file once per process,
read-only and file-backed (its pages are the page cache's; the process's anonymous memory does not
grow with the file), and copies the window without calling back into Python. `load()` builds it
from its source with the fused LSTM kernel's machinery (`tbptt.layers.kernels.build`: a per-user
cache keyed by the TensorFlow version, the source, the compiler and the CPU) the first time a
layout over a memory-mapped file is made (eagerly, before any step is traced), or up front with
`python -m tbptt.experiments.data.kernels` (`make install`). A failed build logs one warning line
naming the cause, and the layouts then read the map through `tf.numpy_function`.
"""

import dataclasses
import mmap
import os

import numpy as np
import tensorflow as tf

from tbptt.layers.kernels import build

SOURCES = (os.path.join(os.path.dirname(__file__), "token_window.cc"),)
# The id types token_cache.py writes (`token_ids.id_dtype`), and int32.
DTYPES = ("uint8", "uint16", "uint32", "int32")

_library = build.OpLibrary(
    "token_window", SOURCES, with_mkl=False,
    unavailable="the token-window op is unavailable, memory-mapped corpora are read through "
                "tf.numpy_function")


def load():
  """The loaded op library, or None if it could not be built (the cause is in `error()`)."""
  return _library.load()


def available() -> bool:
  """True if the op is loaded (this call builds and loads it if not tried yet)."""
  return load() is not None


def error() -> str | None:
  """Why the op is unavailable (one line), or None."""
  return _library.error


@dataclasses.dataclass(frozen=True)
class IdFile:
  """Where a sequence of ids lies in a file: `num_tokens` ids of `dtype` from byte `offset`."""
  path: str
  dtype: str
  offset: int
  num_tokens: int


def id_file(ids: np.ndarray) -> IdFile | None:
  """The file region a 1-D np.memmap reads, or None if the op cannot read it (not a memmap, not
  1-D and contiguous, or ids of a type outside `DTYPES` or of foreign byte order)."""
  mapped = getattr(ids, "_mmap", None)  # np.memmap's mapping, shared by its slices
  readable = (isinstance(ids, np.memmap) and mapped is not None and ids.filename
              and ids.ndim == 1 and ids.flags.c_contiguous and ids.dtype.isnative
              and ids.dtype.name in DTYPES)
  if not readable:
    return None
  # The mapping starts at the memmap's offset rounded down to the allocation granularity; a slice
  # keeps its parent's offset and mapping, so its own place is its address within the mapping.
  mapping_start = ids.offset - ids.offset % mmap.ALLOCATIONGRANULARITY
  within = ids.ctypes.data - np.frombuffer(mapped, np.uint8).ctypes.data
  return IdFile(path=os.path.abspath(os.fspath(ids.filename)), dtype=ids.dtype.name,
                offset=mapping_start + within, num_tokens=int(ids.shape[0]))


def token_window(source: IdFile, starts, length: int, pad_past_end: bool = False) -> tf.Tensor:
  """Rows of ids read from `source`'s file: window[r, j] = ids[starts[r] + j].

  Args:
    source: The id file (`id_file`).
    starts: int [rows]: the position of each row's first id.
    length: Ids per row (a Python int: the window's static width).
    pad_past_end: Positions at or past `source.num_tokens` read as 0 (else they are an error).

  Returns:
    int32 [rows, length].

  Raises:
    tf.errors.InvalidArgumentError (when the op runs): the file is missing or holds fewer than
      `source.num_tokens` ids, or a row starts below 0 or (without `pad_past_end`) ends past the
      last id. The message names the file.
    RuntimeError: the op is not built (see `error()`).
  """
  library = load()
  if library is None:
    raise RuntimeError(f"the token-window op is unavailable: {error()}")
  return library.tbptt_token_window(
      tf.cast(starts, tf.int64), tf.constant(length, tf.int64), path=source.path,
      dtype=tf.as_dtype(source.dtype), offset=source.offset, num_tokens=source.num_tokens,
      pad_past_end=pad_past_end)
