"""Unusable model_dirs and corpus files: exit 2 with one line, nothing changed, resumable after.

Read-only and full file systems are real tmpfs mounts where the sandbox allows mounting (root with
CAP_SYS_ADMIN); elsewhere those tests skip, and the injected-error tests still cover the mapping.
"""

import contextlib
import errno
import os
import re
import shutil
import subprocess

import pytest
import tensorflow as tf

from tbptt.experiments import storage
from tbptt.trainer.checkpointing import Checkpointer
from tbptt.trainer.errors import ConfigError

import launcher_testing as lt


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return lt.write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
  model_dir = tmp_path_factory.mktemp("trained")
  assert lt.launch(lt.argv(model_dir, *corpus))[0] == 0
  return model_dir


@contextlib.contextmanager
def tmpfs(path, size="2m"):
  """A fresh tmpfs of `size` mounted at `path` (skips the test if mounting is not allowed)."""
  os.makedirs(path)
  if not shutil.which("mount"):
    pytest.skip("no mount command")
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tbptt_test", str(path)],
                        capture_output=True, text=True)
  if done.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=True)


def remount(path, option):
  subprocess.run(["mount", "-o", f"remount,{option}", str(path)], check=True)


def fill(path, leave_bytes=0):
  """Fills the file system of `path` with one file, leaving about `leave_bytes` free."""
  stats = os.statvfs(path)
  filler = os.path.join(path, "filler")
  with open(filler, "wb") as f:
    f.write(b"\0" * max(stats.f_bavail * stats.f_frsize - leave_bytes, 0))
  return filler


def latest_step(model_dir):
  path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  return int(path.rsplit("-", 1)[1])


# -- model_dir checked up front -------------------------------------------------------------------

def test_model_dir_that_is_a_file(corpus, tmp_path):
  path = tmp_path / "run"
  path.write_text("notes")
  line = lt.error_line(*lt.launch(lt.argv(path, *corpus)))
  assert line == (f"tbptt: error: --model_dir={path} is a file, not a directory; choose another "
                  "--model_dir")
  assert path.read_text() == "notes"


def test_model_dir_under_a_file(corpus, tmp_path):
  parent = tmp_path / "notes.txt"
  parent.write_text("notes")
  for mode in ("train", "eval"):
    line = lt.error_line(*lt.launch(lt.argv(parent / "run", *corpus, mode=mode)))
    assert line == (f"tbptt: error: --model_dir={parent}/run cannot be created: {parent} is a "
                    "file; choose another --model_dir")
  assert os.listdir(tmp_path) == ["notes.txt"]


def test_model_dir_that_cannot_be_created(corpus):
  # Root ignores permission bits, but nothing can create a directory in /proc.
  line = lt.error_line(*lt.launch(lt.argv("/proc/tbptt_run", *corpus)))
  assert line.startswith("tbptt: error: --model_dir=/proc/tbptt_run cannot be created: ")
  assert line.endswith("; choose another --model_dir")
  assert not os.path.exists("/proc/tbptt_run")


def test_read_only_file_system(corpus, trained, tmp_path):
  with tmpfs(tmp_path / "fs") as fs:
    shutil.copytree(trained, fs / "run")
    remount(fs, "ro")
    before = lt.snapshot(fs)
    for mode in ("train", "eval", "export"):
      line = lt.error_line(*lt.launch(lt.argv(fs / "run", *corpus, mode=mode)))
      assert line == (f"tbptt: error: --model_dir={fs}/run cannot be written: {fs}/run: Read-only "
                      "file system; choose a --model_dir on a writable file system"), mode
    line = lt.error_line(*lt.launch(lt.argv(fs / "new", *corpus)))
    assert "cannot be written" in line and "Read-only file system" in line
    # Sampling only reads: a read-only model_dir is fine.
    assert lt.launch(lt.argv(fs / "run", *corpus, mode="sample"))[0] == 0
    assert lt.snapshot(fs) == before


def test_full_disk_up_front(corpus, tmp_path):
  with tmpfs(tmp_path / "fs") as fs:
    fill(fs)
    line = lt.error_line(*lt.launch(lt.argv(fs / "run", *corpus)))
    assert line == (f"tbptt: error: --model_dir={fs}/run cannot be written: {fs}: No space left on "
                    "device; free some space or choose another --model_dir")
    assert os.listdir(fs) == ["filler"]


def test_disk_fills_up_during_training_then_the_run_resumes(corpus, tmp_path):
  with tmpfs(tmp_path / "fs") as fs:
    model_dir = fs / "run"
    assert lt.launch(lt.argv(model_dir, *corpus))[0] == 0
    filler = fill(fs, leave_bytes=8192)  # Passes the up-front check; a checkpoint does not fit.
    line = lt.error_line(*lt.launch(lt.argv(model_dir, *corpus, "Trainer.train_steps = 6")))
    assert re.fullmatch(rf"tbptt: error: cannot write {model_dir}/\S+: No space left on device; "
                        r"free some space or choose another --model_dir; rerunning the command "
                        r"then resumes from the last complete checkpoint", line), line
    assert latest_step(model_dir) == 3  # The cut-short save did not replace the checkpoint.
    os.remove(filler)
    code, err = lt.launch(lt.argv(model_dir, *corpus, "Trainer.train_steps = 6"))
    assert code == 0, err
    assert latest_step(model_dir) == 6


# -- write failures injected at the first checkpoint write ----------------------------------------

@pytest.mark.parametrize("code, fix", ids=["ENOSPC", "EROFS", "EACCES"], argvalues=[
    (errno.ENOSPC, "free some space or choose another --model_dir; rerunning the command then "
                   "resumes from the last complete checkpoint"),
    (errno.EROFS, "choose a --model_dir on a writable file system"),
    (errno.EACCES, "fix its permissions or choose another --model_dir"),
])
def test_failed_checkpoint_write_is_one_line_and_the_last_checkpoint_restores(
        code, fix, corpus, tmp_path, monkeypatch):
  model_dir = tmp_path / "run"
  assert lt.launch(lt.argv(model_dir, *corpus))[0] == 0
  target = str(model_dir / "checkpoints" / "ckpt-6_temp")

  def no_space(self, step):
    raise OSError(code, os.strerror(code), target)

  with monkeypatch.context() as patch:
    patch.setattr(Checkpointer, "save", no_space)
    line = lt.error_line(*lt.launch(lt.argv(model_dir, *corpus, "Trainer.train_steps = 6")))
  assert line == f"tbptt: error: cannot write {target}: {os.strerror(code)}; {fix}"
  assert latest_step(model_dir) == 3
  code, err = lt.launch(lt.argv(model_dir, *corpus, "Trainer.train_steps = 6"))
  assert code == 0 and latest_step(model_dir) == 6, err


def test_failed_first_write_in_a_fresh_model_dir_leaves_nothing(corpus, tmp_path, monkeypatch):
  from tbptt.experiments.data import vocab

  def no_space(self, path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

  monkeypatch.setattr(vocab.Vocabulary, "save", no_space)
  line = lt.error_line(*lt.launch(lt.argv(tmp_path / "run", *corpus)))
  assert f"cannot write {tmp_path}/run/vocab.json: No space left on device" in line
  assert os.listdir(tmp_path) == []


def test_storage_error_mapping():
  enospc = OSError(errno.ENOSPC, "No space left on device", "/d/x")
  assert str(storage.storage_error(enospc, "/d")).startswith("cannot write /d/x: No space left")
  assert storage.storage_error(OSError(errno.EIO, "Input/output error"), "/d") is None
  assert storage.storage_error(ValueError("No space left on device"), "/d") is None
  tf_error = tf.errors.ResourceExhaustedError(
      None, None, "{{function_node __wrapped__SaveV2_device_/job:localhost/replica:0/task:0/device:"
      "CPU:0}} /d/checkpoints/ckpt-6_temp/part-0.data; No space left "
      "on device [Op:SaveV2]")
  assert str(storage.storage_error(tf_error, "/d")).startswith(
      "cannot write /d/checkpoints/ckpt-6_temp/part-0.data: No space left on device; ")
  read_only = tf.errors.FailedPreconditionError(None, None, "Read-only file system")
  assert str(storage.storage_error(read_only, "/d")).startswith(
      "cannot write /d: Read-only file system; ")
  end = tf.errors.OutOfRangeError(None, None, "End of sequence")
  assert storage.storage_error(end, "/d") is None
  with pytest.raises(ConfigError, match="cannot write /d/x"):
    with storage.write_errors("/d"):
      raise enospc
  with pytest.raises(KeyError):
    with storage.write_errors("/d"):
      raise KeyError("not a storage problem")


# -- corpus files ----------------------------------------------------------------------------------

def test_corpus_in_a_read_only_folder_trains_and_nothing_is_written_beside_it(tmp_path):
  with tmpfs(tmp_path / "fs") as fs:
    train, valid = lt.write_corpus(fs)
    remount(fs, "ro")
    before = lt.snapshot(fs)
    assert lt.launch(lt.argv(tmp_path / "run", train, valid))[0] == 0
    assert lt.snapshot(fs) == before
  assert (tmp_path / "run" / "vocab.json").exists()


BAD_CORPORA = {
    "a directory": (lambda d: str(d), r"is a directory; point it at a text file in it, e.g. "
                    r"--gin_bindings=\"TextCorpus.valid_path='.*/valid.txt'\""),
    "unreadable": (lambda d: "/proc/self/mem",
                   r"'/proc/self/mem' cannot be read: Input/output error; check the file"),
    "not a regular file": (lambda d: "/dev/zero", r"'/dev/zero' is not a regular file"),
    "binary": (lambda d: _write(d / "model.bin", bytes(range(256)) * 8),
               r"model.bin' is not UTF-8 text \(a binary file\?\)"),
    "UTF-16": (lambda d: _write(d / "utf16.txt", ("some text\n" * 40).encode("utf-16")),
               r"utf16.txt' is not UTF-8 text"),
    "whitespace only": (lambda d: _write(d / "blank.txt", b" \n\t\n" * 100),
                        r"blank.txt' is empty"),
    "not a path": (lambda d: 42, r"TextCorpus.valid_path must be a file path or 'stdlib', got 42"),
}


def _write(path, data: bytes) -> str:
  path.write_bytes(data)
  return str(path)


@pytest.mark.parametrize("case", sorted(BAD_CORPORA))
def test_unusable_corpus_is_one_line_and_changes_nothing(case, corpus, trained, tmp_path):
  make, message = BAD_CORPORA[case]
  value = make(tmp_path)
  binding = (f"TextCorpus.valid_path = {value!r}" if not isinstance(value, str)
             else f"TextCorpus.valid_path = '{value}'")
  before = lt.snapshot(trained)
  line = lt.error_line(*lt.launch(lt.argv(trained, *corpus, binding)))
  assert re.search(message, line), line
  assert lt.snapshot(trained) == before


def test_a_few_stray_bytes_are_tolerated(corpus, tmp_path):
  text = lt.TEXT.encode() + b"caf\xe9\n"  # One Latin-1 byte in a UTF-8 text.
  valid = _write(tmp_path / "valid.txt", text)
  assert lt.launch(lt.argv(tmp_path / "run", corpus[0], valid))[0] == 0


def test_relative_model_dir_whose_parents_do_not_exist_yet(tmp_path, monkeypatch):
  # `make demo` passes runs/demo from a fresh clone, where runs/ does not exist.
  monkeypatch.chdir(tmp_path)
  storage.check_model_dir(os.path.join("runs", "demo"), writes=True)
  assert not os.path.exists(tmp_path / "runs")  # Checking changes nothing on disk.
  (tmp_path / "runs").write_text("")
  with pytest.raises(ConfigError, match="is a file"):
    storage.check_model_dir(os.path.join("runs", "demo"), writes=True)
