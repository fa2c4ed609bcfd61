"""Compiles the package's C++ ops against the installed TensorFlow into a per-user cache.

The library is built from source on first use, never shipped as a binary. Its cache entry is keyed
by everything that makes a build differ: the TensorFlow version, the source bytes, the compiler (its
`--version`), the flags and the CPU features the code was compiled for (`-march=native`), so a home
folder shared by machines with different CPUs never loads code that would die of SIGILL. Two
processes building at once wait on one lock file and the library appears by an atomic rename.
Several translation units compile in parallel (one compiler per core), then link into the library.
"""

import fcntl
import glob
import hashlib
import importlib.metadata
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent import futures

import tensorflow as tf

_log = logging.getLogger(__name__)

# The CPU features that change the code -march=native emits; the cache key includes those present.
_CPU_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw",
                 "avx512vl", "avx512cd", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")


class BuildError(RuntimeError):
  """The compiler is missing or failed; the message names the cause in one line."""


def cache_root() -> str:
  """$TBPTT_KERNEL_CACHE, else $XDG_CACHE_HOME/tbptt/kernels, else ~/.cache/tbptt/kernels."""
  if os.environ.get("TBPTT_KERNEL_CACHE"):
    return os.environ["TBPTT_KERNEL_CACHE"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "tbptt", "kernels")


def cpu_features() -> tuple:
  """The features from `_CPU_FEATURES` that this CPU has (from /proc/cpuinfo; empty elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          present = set(line.split(":", 1)[1].split())
          return tuple(feature for feature in _CPU_FEATURES if feature in present)
  except OSError:
    pass
  return ()


def mkl() -> dict | None:
  """MKL from the `mkl-devel` package in this Python environment: {'include', 'libraries',
  'version'}, or None when it is not installed (the kernel then multiplies with Eigen).

  The libraries are MKL's LP64 interface, its sequential threading layer and its core.
  """
  if os.environ.get("TBPTT_KERNEL_NO_MKL"):
    return None
  include = os.path.join(sys.prefix, "include")
  libraries = []
  for name in ("mkl_intel_lp64", "mkl_sequential", "mkl_core"):
    found = sorted(glob.glob(os.path.join(sys.prefix, "lib", f"lib{name}.so*")))
    if not found:
      return None
    libraries.append(found[-1])
  if not os.path.exists(os.path.join(include, "mkl_cblas.h")):
    return None
  try:
    version = importlib.metadata.version("mkl")
  except importlib.metadata.PackageNotFoundError:
    version = "unknown"
  return {"include": include, "libraries": libraries, "version": version}


def compile_flags(with_mkl: bool = True) -> list:
  """Optimisation, architecture, MKL (if `with_mkl` and installed) and TensorFlow's own flags (ABI,
  C++ standard, Eigen alignment)."""
  flags = ["-shared", "-fPIC", "-O3", "-fopenmp-simd", "-DNDEBUG", "-w"]
  found = mkl() if with_mkl else None
  if found:
    flags += ["-DTBPTT_WITH_MKL", f"-I{found['include']}",
              f"-DTBPTT_MKL_VERSION={found['version']}"]
  features = cpu_features()
  if features:
    flags.append("-march=native")
    # The Eigen bundled with TensorFlow does not compile its float16 AVX-512 path with g++ 12.
    if "avx512_fp16" in features:
      flags.append("-mno-avx512fp16")
  return flags + tf.sysconfig.get_compile_flags()


def link_flags(with_mkl: bool = True) -> list:
  flags = list(tf.sysconfig.get_link_flags())
  found = mkl() if with_mkl else None
  if found:
    # -Bsymbolic binds our own symbols inside the library; the rpath finds MKL at load time.
    flags += found["libraries"] + [f"-Wl,-rpath,{os.path.dirname(found['libraries'][0])}",
                                   "-Wl,-Bsymbolic"]
  return flags


def _compiler() -> list:
  return shlex.split(os.environ.get("CXX") or "c++")


def _compiler_version(cxx: list) -> str:
  try:
    result = subprocess.run(cxx + ["--version"], capture_output=True, text=True, timeout=60)
  except (OSError, subprocess.SubprocessError) as e:
    raise BuildError(f"compiler {shlex.join(cxx)!r} cannot run: {e}") from None
  if result.returncode != 0:
    raise BuildError(f"compiler {shlex.join(cxx)!r} failed on --version "
                     f"(exit {result.returncode})")
  return result.stdout.strip()


def cache_key(sources: list, cxx: list, version: str, with_mkl: bool = True) -> str:
  digest = hashlib.sha256()
  for part in (tf.__version__, shlex.join(cxx), version, shlex.join(compile_flags(with_mkl)),
               shlex.join(link_flags(with_mkl)),
               ",".join(cpu_features()), sys.platform):
    digest.update(part.encode() + b"\0")
  for path in sources:
    with open(path, "rb") as f:
      digest.update(f.read() + b"\0")
  return digest.hexdigest()[:24]


def build(name: str, sources: list, cache_dir: str | None = None, *,
          with_mkl: bool = True) -> str:
  """Returns the path of the compiled library `name`, building it if the cache has none.

  Args:
    name: Library name (the file is `<name>-<key>.so`).
    sources: Paths of the C++ sources: the translation units (compiled in parallel, in this
      order, one per core) and the headers they include (part of the cache key).
    cache_dir: Where libraries are kept; `cache_root()` by default.
    with_mkl: Compile and link against MKL when it is installed (`mkl()`); False for a library
      that multiplies no matrices.

  Raises:
    BuildError: the compiler is missing or fails (the message is one line).
  """
  cache_dir = cache_dir or cache_root()
  units = [path for path in sources if not path.endswith((".h", ".hpp"))]
  cxx = _compiler()
  key = cache_key(sources, cxx, _compiler_version(cxx), with_mkl)
  target = os.path.join(cache_dir, f"{name}-{key}.so")
  if os.path.exists(target):
    return target
  os.makedirs(cache_dir, exist_ok=True)
  with open(os.path.join(cache_dir, f"{name}-{key}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits here, then finds the library
    if os.path.exists(target):
      return target
    fd, tmp = tempfile.mkstemp(prefix=f"{name}-{key}.", suffix=".tmp", dir=cache_dir)
    os.close(fd)
    objects = tempfile.mkdtemp(prefix=f"{name}-{key}.", suffix=".objects", dir=cache_dir)
    try:
      if len(units) == 1:
        _run(cxx, compile_flags(with_mkl) + units + ["-o", tmp] + link_flags(with_mkl))
      else:
        outputs = [os.path.join(objects, f"{i}.o") for i in range(len(units))]
        with futures.ThreadPoolExecutor(max_workers=min(len(units), _cores())) as pool:
          # list(): every compilation finishes (or fails) before the first error is raised.
          done = list(pool.map(lambda unit, out: _try_run(cxx, compile_flags(with_mkl)
                                                          + ["-c", unit, "-o", out]),
                               units, outputs))
        failed = [error for error in done if error is not None]
        if failed:
          raise failed[0]
        _run(cxx, ["-shared"] + outputs + ["-o", tmp] + link_flags(with_mkl))
      os.chmod(tmp, 0o755)
      os.replace(tmp, target)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
      shutil.rmtree(objects, ignore_errors=True)
  return target


class OpLibrary:
  """A custom-op library built from `sources` (see `build`), loaded once per process on first use.

  A failed build or load logs one warning line, "tbptt: <unavailable>: <cause>", and `load()` then
  returns None (callers fall back to plain TensorFlow).

  Args:
    name: The library's name (the cache file's prefix).
    sources: Translation units and headers (see `build`).
    unavailable: What a failure means for the user, e.g. "the fused LSTM kernel is unavailable, the
      layers run their graph loop".
    with_mkl: Compile and link against MKL where it is installed.
    on_load: Called once with the loaded library (e.g. to register gradients).
  """

  def __init__(self, name: str, sources, *, unavailable: str, with_mkl: bool = True,
               on_load=None):
    self._name, self._sources, self._with_mkl = name, list(sources), with_mkl
    self._unavailable, self._on_load = unavailable, on_load
    self._lock = threading.Lock()
    self._library, self._tried = None, False
    self.error = None  # Why the library is unavailable (one line), or None.

  def load(self):
    """The loaded library, or None if it could not be built (the cause is in `error`)."""
    with self._lock:
      if not self._tried:
        self._tried = True
        try:
          library = tf.load_op_library(build(self._name, self._sources, with_mkl=self._with_mkl))
          if self._on_load is not None:
            self._on_load(library)
          self._library = library
        except (BuildError, tf.errors.NotFoundError, OSError) as e:
          self.error = " ".join(str(e).split())
          _log.warning("tbptt: %s: %s", self._unavailable, self.error)
      return self._library


def _cores() -> int:
  """The cores this process may run on (its CPU affinity), at least 1."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not on Linux
    return max(1, os.cpu_count() or 1)


def _run(cxx: list, arguments: list) -> None:
  """Runs the compiler; BuildError names its first error line."""
  try:
    result = subprocess.run(cxx + arguments, capture_output=True, text=True)
  except OSError as e:
    raise BuildError(f"compiler {shlex.join(cxx)!r} cannot run: {e}") from None
  if result.returncode != 0:
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    detail = (errors or result.stderr.strip().splitlines() or ["no output"])[0]
    raise BuildError(f"{shlex.join(cxx)} exited {result.returncode}: {detail[:300]}")


def _try_run(cxx: list, arguments: list) -> BuildError | None:
  try:
    _run(cxx, arguments)
  except BuildError as e:
    return e
  return None
