"""Tests for experiments/data/id_tensor.py: an id file becomes a tensor without a copy."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments.data import id_tensor as id_tensor_lib


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_a_memory_mapped_id_file_is_mapped_with_its_dtype(tmp_path, dtype):
  ids = (np.arange(1000) * 7 % 251).astype(dtype)
  path = tmp_path / "ids.bin"
  ids.tofile(path)
  mapped = np.memmap(path, dtype, mode="r")
  assert id_tensor_lib._mappable(mapped)
  tensor = id_tensor_lib.id_tensor(mapped)
  assert tensor.dtype == tf.as_dtype(dtype) and tensor.shape == (1000,)
  np.testing.assert_array_equal(tf.gather(tensor, [0, 3, 999]), ids[[0, 3, 999]])


def test_slices_short_files_and_arrays_are_copied_not_mapped(tmp_path):
  ids = np.arange(100, dtype=np.uint16)
  path = tmp_path / "ids.bin"
  ids.tofile(path)
  whole = np.memmap(path, np.uint16, mode="r")
  # A slice keeps its parent's filename and offset 0: mapping the file would read from its start.
  tail = whole[10:]
  assert tail.offset == 0 and not id_tensor_lib._mappable(tail)
  np.testing.assert_array_equal(id_tensor_lib.id_tensor(tail), ids[10:])
  long_view = np.memmap(path, np.uint16, mode="r", shape=(100,))
  os.truncate(path, 100)  # The file no longer holds the view's 200 bytes.
  assert not id_tensor_lib._mappable(long_view)
  assert not id_tensor_lib._mappable(ids)
  np.testing.assert_array_equal(id_tensor_lib.id_tensor(ids), ids)
