"""Keeps benchmarks/trainer.py runnable: a quick run of its main() and its target checks."""

import re

import pytest

import benchmark_scripts

bench = benchmark_scripts.load("trainer")
CANDIDATES = ("trainer", "trainer/tbptt", "bare", "bare/tbptt", "fit", "fit/spe")


@pytest.mark.slow
def test_quick_run_prints_a_table_with_every_candidate(capsys):
  assert bench.main(["--quick"]) == 0
  out = capsys.readouterr().out
  assert "median of 2 interleaved rounds of 20 steps" in out
  assert re.search(r"- CPU: .+", out)
  for name in CANDIDATES:
    row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1].replace(",", "")) > 0 and float(cells[2]) > 0
  assert len(re.findall(r"^- (PASS|FAIL) ", out, re.MULTILINE)) == 3


def test_targets_pass_and_fail_on_the_ratios():
  shape = bench.Shape(2, 5, 10, 4)
  fast = {"trainer": 1.0, "trainer/tbptt": 1.1, "bare": 0.98, "bare/tbptt": 1.09, "fit": 1.5,
          "fit/spe": 1.2}
  text, passed = bench.report(fast, shape, steps=100, rounds=3)
  assert passed and "FAIL" not in text and "trainer / fit = 1.50" in text
  assert "| fit | 667 | 66.7 | 1.50 |" in text  # 100 steps * 2 * 5 tokens in 1.5 s
  assert "- PASS trainer overhead over the bare loop, our LSTM = +0.9% < 3%" in text
  slow = dict(fast, bare=0.9, fit=0.95)
  text, passed = bench.report(slow, shape, steps=100, rounds=3)
  assert not passed
  assert "- FAIL trainer / fit = 0.95 >= 1.0" in text
  assert "- FAIL trainer overhead over the bare loop = +11.1% < 3%" in text


@pytest.mark.slow
def test_versus_torch_quick_run_prints_ours_loop_and_torch(capsys):
  assert bench.main(["--versus_torch", "--quick"]) == 0
  out = capsys.readouterr().out
  assert "Trainer against PyTorch, median of 2 interleaved rounds of 20 steps" in out
  assert "ours ran implementation 'fused'" in out
  names = ["ours", "ours/loop"] + (["torch"] if bench.torch is not None else [])
  for name in names:
    row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
    assert float(row.split("|")[2].replace(",", "")) > 0
  assert len(re.findall(r"^- (PASS|FAIL) ours / torch", out, re.MULTILINE)) == (
      bench.torch is not None)


def test_versus_torch_target_passes_and_fails_on_the_ratio():
  shape = bench.Shape(2, 5, 10, 4)
  text, passed = bench.versus_torch_report({"ours": 1.0, "ours/loop": 2.0, "torch": 1.1}, shape,
                                           steps=100, rounds=3, implementations="'fused'")
  assert passed and "- PASS ours / torch tokens/s = 1.10 >= 1.0" in text
  assert "| ours/loop | 500 | 2.00 |" in text  # 100 steps * 2 * 5 tokens in 2 s
  text, passed = bench.versus_torch_report({"ours": 1.0, "ours/loop": 2.0, "torch": 0.8}, shape,
                                           steps=100, rounds=3, implementations="'fused'")
  assert not passed and "- FAIL ours / torch tokens/s = 0.80 >= 1.0" in text
