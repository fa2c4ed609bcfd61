"""Keeps benchmarks/soak.py runnable; a short soak must retrace nothing after its warm-up."""

import re

import pytest
import tensorflow as tf

import benchmark_scripts

soak = benchmark_scripts.load("soak")


@pytest.mark.slow
def test_quick_soak_retraces_nothing_after_the_warm_up(capsys):
  assert soak.main(["--quick"]) == 0
  out = capsys.readouterr().out
  assert "## Soak: 300 steps in one process (warm-up: 100 steps)" in out
  assert re.search(r"^- CPU: .+", out, re.MULTILINE)
  traces = re.search(r"^\| tf.function traces \| (\d+) \| (\d+) \| \+(\d+) \|$", out, re.MULTILINE)
  assert traces, out
  # The train loop, the valid eval loop, the state gather, the histogram gradients, the sampler.
  assert int(traces[1]) >= 5 and traces[1] == traces[2] and traces[3] == "0"
  assert "- PASS retraces after the warm-up: 0" in out
  names = re.search(r"^- compiled functions: (.+)$", out, re.MULTILINE)[1].split(", ")
  assert len(names) >= 5 and any("train_loop" in name for name in names), names
  rss = r"^\| peak RSS \(MiB\) \| [\d.]+ \| [\d.]+ \| [+-][\d.]+% \|$"
  assert re.search(rss, out, re.MULTILINE), out


def test_report_fails_on_a_retrace_and_on_memory_growth():
  warm = {"step": 100, "seconds": 1.0, "peak_rss": 500.0, "rss": 490.0,
          "traces": {"trainer._train_loop._loop": 1}}
  retraced = {"trainer._train_loop._loop": 1, "trainer._eval_loop._loops.valid": 2}
  end = dict(warm, step=300, seconds=3.0, traces=retraced)
  text, passed = soak.report(warm, end, {"eval_interval": 50})
  assert not passed
  assert "- FAIL retraces after the warm-up: trainer._eval_loop._loops.valid +2" in text
  assert "- PASS peak RSS growth after the warm-up +0.00% < 5%" in text
  text, passed = soak.report(warm, dict(warm, step=300, peak_rss=530.0), {})
  assert not passed and "- FAIL peak RSS growth after the warm-up +6.00% < 5%" in text
  text, passed = soak.report(warm, dict(warm, step=300, peak_rss=510.0), {})
  assert passed and "FAIL" not in text


def test_compiled_functions_are_found_in_nested_project_objects():
  holder_type = type("Holder", (), {"__module__": "tbptt.trainer.fake"})
  outer, inner = holder_type(), holder_type()
  loop = tf.function(lambda x: x + 1)
  inner.loops = {"valid": loop, "other": [tf.function(lambda x: x * 2)]}
  outer.inner = inner
  outer.cycle = outer
  outer.foreign = type("Foreign", (), {})()  # Not walked: not this project's.
  outer.foreign.fn = tf.function(lambda x: x)
  found = soak.compiled_functions(outer, "t")
  assert set(found) == {"t.inner.loops.valid", "t.inner.loops.other.0"}
  loop(tf.constant(1))
  loop(tf.constant(2))  # Same signature: no new trace.
  assert soak.traces(outer) == {"trainer.inner.loops.valid": 1, "trainer.inner.loops.other.0": 0}
  loop(tf.constant(1.5))
  assert soak.traces(outer)["trainer.inner.loops.valid"] == 2
