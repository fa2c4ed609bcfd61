"""Tests for experiments/data/kernels: the token-window op reads what NumPy slicing of the memory
map reads, for every id type the token cache writes, names the file when it cannot, keeps the
file's pages out of anonymous memory, and ships as package data."""

import os
import pathlib
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments.data import kernels

REPO = pathlib.Path(__file__).resolve().parents[4]
pytestmark = pytest.mark.skipif(not kernels.available(),
                                reason=f"the token-window op is not built: {kernels.error()}")


def _id_file(tmp_path, dtype, n=5000, seed=0, name="ids.bin"):
  """A file of n random ids of `dtype` (over the type's whole range, capped at int32's) and its
  memmap."""
  high = min(np.iinfo(dtype).max, np.iinfo(np.int32).max)
  ids = np.random.default_rng(seed).integers(0, high, n, endpoint=True).astype(dtype)
  path = tmp_path / name
  ids.tofile(path)
  return np.memmap(path, dtype, mode="r")


def _numpy_window(ids, starts, length):
  rows = [np.asarray(ids[s:s + length], np.int32) for s in starts]
  return np.stack(rows) if rows else np.zeros([0, length], np.int32)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32])
@pytest.mark.parametrize("starts, length", [([0], 1), ([0, 7, 4000], 101), ([4999], 1),
                                            ([3, 3, 3], 17), (list(range(0, 4900, 97)), 100),
                                            ([12], 0), ([], 5)])
@pytest.mark.parametrize("compiled", [False, True])
def test_the_window_is_numpy_slicing_of_the_memmap(tmp_path, dtype, starts, length, compiled):
  ids = _id_file(tmp_path, dtype)
  source = kernels.id_file(ids)
  assert source.dtype == np.dtype(dtype).name and source.offset == 0 and source.num_tokens == 5000

  def read(s):
    return kernels.token_window(source, s, length)
  read = tf.function(read) if compiled else read
  window = read(tf.constant(starts, tf.int64))
  assert window.dtype == tf.int32 and window.shape == (len(starts), length)
  np.testing.assert_array_equal(window, _numpy_window(ids, starts, length))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32])
def test_a_slice_or_an_offset_memmap_reads_from_its_own_first_id(tmp_path, dtype):
  whole = _id_file(tmp_path, dtype, n=20000)
  item = np.dtype(dtype).itemsize
  # A memmap opened at a byte offset past the allocation granularity (its mapping starts before
  # its first id), a slice of it, and a slice of the whole file.
  offset_map = np.memmap(whole.filename, dtype, mode="r", offset=5000 * item)
  for ids, first in ((offset_map, 5000), (offset_map[123:9000], 5123), (whole[77:], 77)):
    source = kernels.id_file(ids)
    assert source.offset == first * item and source.num_tokens == ids.shape[0]
    starts = [0, 50, ids.shape[0] - 40]
    np.testing.assert_array_equal(kernels.token_window(source, starts, 40),
                                  _numpy_window(ids, starts, 40))


def test_what_the_op_cannot_read_is_left_to_numpy(tmp_path):
  ids = _id_file(tmp_path, np.uint16)
  assert kernels.id_file(np.asarray(ids)) is None  # in memory: not a file
  assert kernels.id_file(ids[::2]) is None  # strided
  assert kernels.id_file(ids.reshape(50, 100)) is None  # 2-D
  (tmp_path / "wide.bin").write_bytes(np.arange(10, dtype=np.int64).tobytes())
  assert kernels.id_file(np.memmap(tmp_path / "wide.bin", np.int64, mode="r")) is None
  assert kernels.id_file(np.memmap(tmp_path / "wide.bin", ">u2", mode="r")) is None


def test_past_the_end_is_an_error_naming_the_file_or_zeros_when_padding(tmp_path):
  ids = _id_file(tmp_path, np.uint16, n=100)
  source = kernels.id_file(ids)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"row 1 of the window reads ids \[95, 105\) of .*ids\.bin "
                           r"\(100 ids from byte 0\)"):
    kernels.token_window(source, [0, 95], 10)
  padded = kernels.token_window(source, [95, 100, 1000], 10, pad_past_end=True).numpy()
  np.testing.assert_array_equal(padded[0], np.concatenate([ids[95:], np.zeros(5)]))
  assert not padded[1:].any()
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"starts at id -1 of .*ids\.bin"):
    kernels.token_window(source, [-1], 3, pad_past_end=True)


def test_a_missing_or_short_file_is_an_error_naming_it(tmp_path):
  missing = kernels.IdFile(str(tmp_path / "gone.bin"), "uint8", 0, 10)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"cannot read the token-id file .*gone\.bin: No such file"):
    kernels.token_window(missing, [0], 2)
  ids = _id_file(tmp_path, np.uint16, n=100)
  longer = kernels.IdFile(str(ids.filename), "uint16", 0, 101)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"the token-id file .*ids\.bin holds 200 bytes, fewer than the 202 "
                           r"that 101 uint16 ids from byte 0 need"):
    kernels.token_window(longer, [0], 2)
  # Inside a compiled function the error is the same, when the step runs.
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"gone\.bin"):
    tf.function(lambda s: kernels.token_window(missing, s, 2))(tf.constant([0], tf.int64))


def test_a_file_replaced_under_its_path_is_mapped_again(tmp_path):
  ids = _id_file(tmp_path, np.uint8, n=1000, seed=1)
  source = kernels.id_file(ids)
  first = kernels.token_window(source, [0, 500], 20).numpy()
  np.testing.assert_array_equal(first, _numpy_window(ids, [0, 500], 20))
  # As the token cache does: a new file renamed into place (a new inode).
  replacement = np.arange(1000, dtype=np.uint8)[::-1].copy()
  replacement.tofile(tmp_path / "new.bin")
  os.replace(tmp_path / "new.bin", ids.filename)
  np.testing.assert_array_equal(kernels.token_window(source, [0, 500], 20),
                                _numpy_window(replacement, [0, 500], 20))


def test_concurrent_readers_of_several_files_read_their_own_ids(tmp_path):
  files = [_id_file(tmp_path, dtype, n=30000, seed=i, name=f"ids{i}.bin")
           for i, dtype in enumerate((np.uint8, np.uint16, np.uint32))]
  read = tf.function(lambda source, s: kernels.token_window(source, s, 64))
  failures = []

  def reader(seed):
    rng = np.random.default_rng(seed)
    for _ in range(30):
      ids = files[rng.integers(len(files))]
      starts = rng.integers(0, 30000 - 64, 16)
      got = read(kernels.id_file(ids), tf.constant(starts, tf.int64)).numpy()
      if not np.array_equal(got, _numpy_window(ids, starts, 64)):
        failures.append(seed)
  threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(6)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not failures


def _anonymous_and_file_rss_mb():
  fields = {}
  with open("/proc/self/status") as f:
    for line in f:
      name, _, value = line.partition(":")
      if name in ("RssAnon", "RssFile"):
        fields[name] = int(value.split()[0]) / 1024
  return fields["RssAnon"], fields["RssFile"]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_reading_every_page_of_a_file_leaves_anonymous_memory_alone(tmp_path):
  size = 96 << 20
  path = tmp_path / "big.bin"
  with open(path, "wb") as f:
    f.truncate(size)  # zeros, sparse: the test writes no 96 MB
  source = kernels.IdFile(str(path), "uint8", 0, size)
  starts = tf.range(0, size, 4096, dtype=tf.int64)  # one id from every page of the file
  read = tf.function(lambda s: tf.reduce_sum(kernels.token_window(source, s, 1)))
  read(starts[:2])  # traced and mapped before the measurement
  anonymous, file_backed = _anonymous_and_file_rss_mb()
  assert int(read(starts)) == 0
  anonymous_growth, file_growth = np.subtract(_anonymous_and_file_rss_mb(),
                                              (anonymous, file_backed))
  # Each page read is the page cache's (RssFile, dropped when memory is short), not a copy: the
  # window itself is 100 KB. Allow the allocator some slack, far below the file's 96 MB.
  assert anonymous_growth < 16, (anonymous_growth, file_growth)
  assert file_growth > 48, "the pages were not read"


@pytest.mark.slow
def test_non_editable_install_ships_the_source_and_runs_the_op(tmp_path):
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                  "--target", str(target), str(REPO)], check=True, timeout=600,
                 capture_output=True)
  installed = target / "tbptt" / "experiments" / "data" / "kernels"
  for source in kernels.SOURCES:
    assert (installed / os.path.basename(source)).exists(), source
  np.arange(50, dtype=np.uint16).tofile(tmp_path / "ids.bin")
  code = textwrap.dedent(f"""\
      import numpy as np
      from tbptt.experiments.data import kernels
      ids = np.memmap({str(tmp_path / "ids.bin")!r}, np.uint16, mode="r")
      print(kernels.__file__)
      print("read", kernels.token_window(kernels.id_file(ids), [3], 4).numpy().tolist())
      """)
  # The installed source is byte-identical to the checkout's, so the user cache already has it.
  env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[0].startswith(str(installed))
  assert "read [[3, 4, 5, 6]]" in result.stdout


@pytest.mark.slow
def test_a_failing_compiler_warns_in_one_line_and_the_layout_reads_through_numpy(tmp_path):
  np.arange(400, dtype=np.uint16).tofile(tmp_path / "ids.bin")
  code = textwrap.dedent(f"""\
      import numpy as np
      from tbptt.experiments.data import kernels
      from tbptt.experiments.data.tbptt import StreamLayout
      layout = StreamLayout(np.memmap({str(tmp_path / "ids.bin")!r}, np.uint16, mode="r"), 4, 9)
      print("read", layout.chunk(1)["inputs"].numpy()[:, 0].tolist(), kernels.available())
      """)
  env = dict(os.environ, CXX="false", TBPTT_KERNEL_CACHE=str(tmp_path / "empty"),
             TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  assert "read [9, 109, 209, 309] False" in result.stdout
  warnings = [line for line in result.stderr.splitlines() if "token-window op" in line]
  assert len(warnings) == 1 and "compiler 'false'" in warnings[0], result.stderr
