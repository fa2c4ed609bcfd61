"""Keeps benchmarks/lstm_layers.py runnable: a quick run of its main() and its target checks."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

import benchmark_scripts

bench = benchmark_scripts.load("lstm_layers")


def test_quick_run_prints_a_table_with_every_candidate(capsys):
  assert bench.main(["--quick"]) == 0
  out = capsys.readouterr().out
  assert "median of 2 interleaved rounds" in out
  assert re.search(r"- CPU: .+", out) and "- threads: TF intra-op" in out
  rows = [line for line in out.splitlines() if line.startswith(f"| {bench.QUICK_SHAPE} |")]
  assert len(rows) == 1
  cells = [c.strip() for c in rows[0].strip("|").split("|")]
  header = next(line for line in out.splitlines() if line.startswith("| shape |"))
  assert len(cells) == header.count("|") - 1
  assert all(float(c) > 0 for c in cells[1:])
  # Five per shape; with torch also fused/torch and the geometric mean over the shapes.
  checks = 7 if bench.torch is not None else 5
  assert len(re.findall(r"^- (PASS|FAIL) ", out, re.MULTILINE)) == checks


def test_targets_pass_and_fail_on_the_ratios():
  shape = bench.Shape(2, 3, 4, 5)
  fused = {"fused": 5.0, "fused_peephole": 5.2, "fused_layer_norm": 5.5, "torch": 5.0}
  good = {shape: {"ours": 10.0, "keras": 10.4, "peephole": 12.9, "layer_norm": 11.0, **fused}}
  text, passed = bench.report(good, rounds=3, noise=0.05)
  assert passed and "FAIL" not in text and "loop/keras = 0.96" in text
  assert "geometric mean of fused/torch = 1.00" in text
  slow = {shape: {"ours": 10.0, "keras": 9.0, "peephole": 13.5, "layer_norm": 11.0,
                  **fused, "fused_peephole": 5.5, "torch": 4.0}}
  text, passed = bench.report(slow, rounds=3, noise=0.05)
  assert not passed
  assert re.search(r"FAIL .*loop/keras = 1\.11", text)
  assert re.search(r"FAIL .*loop peephole/loop = 1\.35", text)
  assert re.search(r"PASS .*loop layer norm/loop = 1\.10", text)
  assert re.search(r"FAIL .*fused peephole/fused = 1\.10", text)
  assert re.search(r"PASS .*fused layer norm/fused = 1\.10", text)
  assert re.search(r"FAIL .*fused/torch = 1\.25", text)
  assert re.search(r"FAIL geometric mean of fused/torch = 1\.25", text)


def test_strict_flag_and_shape_sets():
  assert bench.parse_args(["--strict"]).strict
  assert bench.QUICK_SHAPE in bench.SHAPES["small"]
  assert set(bench.SHAPES["small"]) < set(bench.SHAPES["all"])
  assert bench.Shape(20, 35, 650, 650) in bench.SHAPES["all"]


def test_threads_flag_is_checked():
  assert bench.parse_args([]).threads == 0
  assert bench.parse_args(["--threads", "1"]).threads == 1
  with pytest.raises(SystemExit):
    bench.parse_args(["--threads", "-1"])


def test_threads_flag_after_tensorflow_started_exits_with_the_reason():
  bench.tf.add(1, 1)  # TensorFlow has run an op: its pools are sized for good.
  with pytest.raises(SystemExit, match="--threads 2: .*only when starting the script"):
    bench.set_threads(2)


@pytest.mark.slow
def test_threads_flag_sets_every_pool():
  # In a fresh process: TensorFlow's pools can only be sized before its first op.
  script = pathlib.Path(bench.__file__)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, str(script), "--quick", "--threads", "1"], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
  assert "- threads: TF intra-op 1, inter-op 1" in result.stdout
  assert ("torch 1" in result.stdout) == (bench.torch is not None)
