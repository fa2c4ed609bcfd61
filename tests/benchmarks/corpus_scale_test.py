"""Keeps benchmarks/corpus_scale.py honest: its synthetic text, its rate and its target checks."""

import benchmark_scripts

bench = benchmark_scripts.load("corpus_scale")


def test_synthetic_text_is_sized_seeded_prose(tmp_path):
  a, b = tmp_path / "a.txt", tmp_path / "b.txt"
  bench.synthetic_text(a, 200_000, seed=1)
  bench.synthetic_text(b, 200_000, seed=1)
  text = a.read_text(encoding="utf-8")
  assert a.read_bytes() == b.read_bytes() and 199_000 <= a.stat().st_size <= 200_100
  assert text.count("\n") > 1000 and any(c in text for c in "àéîöüñç")
  assert 60 <= len(set(text)) <= 110


def test_tokenize_rate_measures_a_first_build(tmp_path):
  path = tmp_path / "t.txt"
  bench.synthetic_text(path, 300_000)
  assert bench.tokenize_rate(path, "char", tmp_path / "cache") > 0
  assert (tmp_path / "cache" / "corpora").is_dir()


def _runs(small_rss, large_rss, hit_seconds):
  run = {"to_training": 20.0}
  return {"small": dict(run, peak_rss_mb=small_rss), "small-hit": dict(run, peak_rss_mb=800),
          "large": dict(run, peak_rss_mb=large_rss),
          "large-hit": dict(run, peak_rss_mb=800, to_training=hit_seconds)}


def test_targets():
  speeds = {"file": [10.0, 10.2, 9.9], "embedded": [10.0, 9.8, 10.1], "file vocabulary": 90,
            "embedded vocabulary": 102}
  text, passed = bench.report({"char": 80, "word": 20}, _runs(800, 840, 6.0), speeds, 10**8, 10**9)
  assert passed and "FAIL" not in text and text.count("- PASS") == 6
  assert "| steps/s, 100 MB file (90 characters) | 10.00 |" in text
  text, passed = bench.report({"char": 40, "word": 10}, _runs(800, 2100, 12.0),
                              dict(speeds, file=[9.0]), 10**8, 10**9)
  assert not passed and text.count("- FAIL") == 6
  assert "- FAIL peak RSS on 1000 MB = 2,100 MB < 2,000 MB" in text
