"""Token ids as one 1-D tensor: a constant for ids in memory, a memory map for an id file.

    ids = id_tensor(np.memmap("ids.bin", np.uint16, mode="r"))   # tf.Tensor [N] uint16, on disk
    window = tf.gather(ids, positions)                           # reads only those pages

A memory-mapped id file becomes a tensor through TensorFlow's `ImmutableConst` op, which maps the
file into the tensor's buffer: nothing is copied and nothing is read until a step gathers its
window, so memory does not grow with the corpus, and the compiled training loop reads its ids
with plain TensorFlow ops (no Python callback, which would hold the interpreter lock and
synchronise every step).
"""

import mmap
import os

import numpy as np
import tensorflow as tf


def _mappable(ids) -> bool:
  """True for a whole 1-D np.memmap of a file from its first byte (not a slice of one: a slice
  keeps its parent's `offset` and `filename`, so only a map that owns its mmap qualifies)."""
  if not isinstance(ids, np.memmap) or not isinstance(ids.base, mmap.mmap):
    return False
  if ids.ndim != 1 or ids.offset != 0 or not ids.filename or not ids.flags["C_CONTIGUOUS"]:
    return False
  return os.path.getsize(ids.filename) >= ids.nbytes


def id_tensor(ids: np.ndarray) -> tf.Tensor:
  """Token ids [N] as a tensor of their own dtype: memory-mapped for a memmap of a whole id file,
  else a constant (a copy)."""
  if _mappable(ids):
    # ImmutableConst does not check the file's size: `_mappable` did.
    return tf.raw_ops.ImmutableConst(dtype=tf.as_dtype(ids.dtype), shape=list(ids.shape),
                                     memory_region_name=os.fspath(ids.filename))
  return tf.constant(np.asarray(ids))
