"""Building the C++ ops: the per-user cache, rebuilds, concurrent builders, a missing compiler, and
a non-editable install.

The cache tests build a one-line op (seconds) instead of the LSTM kernel (most of a minute); the
build code is the same. A compiler wrapper counts the compilations.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from tbptt.layers.kernels import build

PROBE_OP = textwrap.dedent("""\
    #include "tensorflow/core/framework/op.h"
    REGISTER_OP("TbpttBuildProbe{n}").Output("y: int32");
    """)
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def counting_compiler(tmp_path, monkeypatch):
  """CXX is a wrapper that logs each compilation (not --version) to a file, then runs c++."""
  log = tmp_path / "compilations.log"
  wrapper = tmp_path / "cxx"
  wrapper.write_text(f'#!/bin/sh\n[ "$1" = --version ] || echo x >> {log}\nexec c++ "$@"\n')
  wrapper.chmod(0o755)
  monkeypatch.setenv("CXX", str(wrapper))

  def count():
    return len(log.read_text().splitlines()) if log.exists() else 0
  return count


def _probe(tmp_path, n=0):
  source = tmp_path / "probe.cc"
  source.write_text(PROBE_OP.format(n=n))
  return str(source)


@pytest.mark.slow
def test_second_build_is_a_cache_hit_and_a_source_change_rebuilds(tmp_path, counting_compiler):
  cache = str(tmp_path / "cache")
  source = _probe(tmp_path)
  first = build.build("probe", [source], cache)
  assert os.path.exists(first) and counting_compiler() == 1
  assert build.build("probe", [source], cache) == first and counting_compiler() == 1
  _probe(tmp_path, n=1)
  changed = build.build("probe", [source], cache)
  assert changed != first and os.path.exists(changed) and counting_compiler() == 2


@pytest.mark.slow
def test_several_units_compile_apart_and_link_into_one_library(tmp_path, counting_compiler):
  # Two units (each registers an op) and a header they include: two compilations and a link; a
  # change to the header alone rebuilds.
  header = tmp_path / "probe.h"
  header.write_text("#define TBPTT_PROBE_OUTPUT \"y: int32\"\n")
  units = []
  for n in (1, 2):
    unit = tmp_path / f"probe{n}.cc"
    unit.write_text('#include "probe.h"\n' + PROBE_OP.format(n=n).replace(
        '"y: int32"', "TBPTT_PROBE_OUTPUT"))
    units.append(str(unit))
  cache = str(tmp_path / "cache")
  library = build.build("probe", units + [str(header)], cache)
  assert counting_compiler() == 3
  assert sorted(os.listdir(cache)) == sorted([os.path.basename(library),
                                              os.path.basename(library)[:-3] + ".lock"])
  code = (f"import tensorflow as tf; lib = tf.load_op_library({library!r}); "
          "print(callable(lib.tbptt_build_probe1), callable(lib.tbptt_build_probe2))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
  assert result.stdout.split()[-2:] == ["True", "True"], result.stderr[-500:]
  header.write_text("#define TBPTT_PROBE_OUTPUT \"y: int64\"\n")
  assert build.build("probe", units + [str(header)], cache) != library
  assert counting_compiler() == 6


def test_a_failing_unit_names_its_error(tmp_path):
  good, bad = tmp_path / "good.cc", tmp_path / "bad.cc"
  good.write_text("int tbptt_probe_good() { return 1; }\n")
  bad.write_text("int tbptt_probe_bad() { return undeclared_name; }\n")
  with pytest.raises(build.BuildError, match="exited 1: .*undeclared_name"):
    build.build("probe", [str(good), str(bad)], str(tmp_path / "cache"))
  assert [f for f in os.listdir(tmp_path / "cache") if not f.endswith(".lock")] == []


def test_cache_key_names_tensorflow_source_compiler_and_cpu(tmp_path, monkeypatch):
  source = _probe(tmp_path)
  key = build.cache_key([source], ["c++"], "g++ 12")
  assert build.cache_key([source], ["c++"], "g++ 12") == key
  assert build.cache_key([source], ["clang++"], "g++ 12") != key
  assert build.cache_key([source], ["c++"], "g++ 13") != key
  monkeypatch.setattr(build.tf, "__version__", "0.0.0")
  assert build.cache_key([source], ["c++"], "g++ 12") != key
  monkeypatch.undo()
  monkeypatch.setattr(build, "cpu_features", lambda: ("sse4_2",))
  assert build.cache_key([source], ["c++"], "g++ 12") != key


def test_a_library_built_without_mkl_neither_compiles_nor_links_it(tmp_path, monkeypatch):
  monkeypatch.setattr(build, "mkl", lambda: {"include": "/mkl/include", "version": "1",
                                             "libraries": ["/mkl/lib/libmkl_core.so"]})
  assert "-DTBPTT_WITH_MKL" in build.compile_flags()
  assert "/mkl/lib/libmkl_core.so" in build.link_flags()
  assert not [f for f in build.compile_flags(with_mkl=False) + build.link_flags(with_mkl=False)
              if "mkl" in f.lower()]
  source = _probe(tmp_path)
  assert (build.cache_key([source], ["c++"], "g++ 12", with_mkl=False)
          != build.cache_key([source], ["c++"], "g++ 12"))


@pytest.mark.slow
def test_two_processes_building_at_once_compile_once(tmp_path, counting_compiler):
  cache = str(tmp_path / "cache")
  source = _probe(tmp_path, n=2)
  # build.py loaded by path: importing the package would also build the LSTM kernel with this CXX.
  code = ("import importlib.util as u; "
          f"s = u.spec_from_file_location('build', {build.__file__!r}); "
          "build = u.module_from_spec(s); s.loader.exec_module(build); "
          f"print(build.build('probe', [{source!r}], {cache!r}))")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                env=env) for _ in range(2)]
  paths = [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in processes]
  assert all(p.returncode == 0 for p in processes)
  assert paths[0] == paths[1] and os.path.exists(paths[0])
  assert counting_compiler() == 1
  assert [f for f in os.listdir(cache) if f.endswith(".tmp")] == []


@pytest.mark.slow
def test_failing_compiler_warns_in_one_line_and_the_layer_runs_the_loop(tmp_path):
  code = textwrap.dedent("""\
      import tensorflow as tf
      from tbptt.layers import LSTM
      lstm = LSTM(3)
      lstm(tf.zeros([1, 2, 2]))
      print("ran", lstm.resolved_implementation)
      try:
        LSTM(3, implementation="fused")(tf.zeros([1, 2, 2]))
      except RuntimeError as e:
        print("fused:", e)
      """)
  env = dict(os.environ, CXX="false", TBPTT_KERNEL_CACHE=str(tmp_path / "empty"),
             TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  assert "ran loop" in result.stdout
  assert "implementation='fused' but the kernel is not built: compiler 'false'" in result.stdout
  warnings = [line for line in result.stderr.splitlines() if "fused LSTM kernel" in line]
  assert len(warnings) == 1 and "compiler 'false'" in warnings[0], result.stderr


@pytest.mark.slow
def test_non_editable_install_ships_the_sources_and_runs_fused(tmp_path):
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                  "--target", str(target), str(REPO)], check=True, timeout=600,
                 capture_output=True)
  kernels_dir = target / "tbptt" / "layers" / "kernels"
  from tbptt.layers import kernels
  for source in kernels.SOURCES:  # every translation unit and header ships
    assert (kernels_dir / os.path.basename(source)).exists(), source
  code = textwrap.dedent("""\
      import tensorflow as tf
      from tbptt.layers import LSTM, kernels
      lstm = LSTM(3, implementation="fused")
      lstm(tf.zeros([1, 2, 2]))
      print(kernels.__file__)
      print("ran", lstm.resolved_implementation)
      """)
  # The installed source is byte-identical to the checkout's, so the user cache already has it.
  env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[0].startswith(str(kernels_dir))
  assert "ran fused" in result.stdout


@pytest.mark.slow
def test_loading_the_kernel_leaves_torch_its_threads():
  # MKL loaded by the kernel must not change process-wide settings of another library's MKL or
  # OpenMP (a run-time threading-layer switch once cut PyTorch to one thread).
  pytest.importorskip("torch")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  alone, after = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 env=env, timeout=300, check=True).stdout.split()[-1]
                  for code in ("import torch; print(torch.get_num_threads())",
                               "import tbptt.layers, torch; print(torch.get_num_threads())"))
  assert after == alone
