"""Keeps benchmarks/learning_speed.py and its PyTorch twin honest: a quick run, the verdicts, the
pydoc split, and the twin computing what our model computes on copied weights."""

import math
import pathlib
import sysconfig

import numpy as np
import pytest
import tensorflow as tf

import benchmark_scripts

bench = benchmark_scripts.load("learning_speed")
torch = pytest.importorskip("torch", reason="torch is the twin's reference")


def test_pydoc_is_split_nine_to_one_and_loses_nothing(tmp_path):
  paths = bench.corpus_paths("pydoc", str(tmp_path))
  source = pathlib.Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py"
  text = source.read_text(encoding="utf-8")
  train = pathlib.Path(paths["train_path"]).read_text(encoding="utf-8")
  valid = pathlib.Path(paths["valid_path"]).read_text(encoding="utf-8")
  assert train + valid == text and len(train) == int(0.9 * len(text))
  assert len(text.encode()) > 700_000
  assert bench.corpus_paths("embedded", str(tmp_path)) == {"train_path": "stdlib",
                                                           "valid_path": "stdlib"}


def test_verdict_is_ours_within_a_hundredth_of_torch():
  args = bench.parse_args(["--corpora", "embedded", "--seeds", "0,1"])
  runs = {("embedded", "torch"): [{"bits_per_char": 2.00, "tokens_per_sec": 100.0},
                                  {"bits_per_char": 2.02, "tokens_per_sec": 120.0}]}
  near = {("embedded", "ours"): [{"bits_per_char": 2.02, "tokens_per_sec": 110.0},
                                 {"bits_per_char": 2.02, "tokens_per_sec": 110.0}]}
  text, passed = bench.report({**runs, **near}, args, ["ours", "torch"])
  assert passed and "PASS: ours 2.020 <= torch 2.010 + 0.01 on embedded" in text
  assert "| ours | 2.020 (min 2.020, max 2.020) | +0.010 | 110 | 1.00 |" in text
  far = {("embedded", "ours"): [{"bits_per_char": 2.03, "tokens_per_sec": 110.0}] * 2}
  text, passed = bench.report({**runs, **far}, args, ["ours", "torch"])
  assert not passed and "FAIL: ours 2.030 <= torch 2.010 + 0.01" in text


def test_the_twin_evaluates_what_our_model_computes_on_copied_weights():
  from benchmarks.charlm_twin import TorchCharLM
  from tbptt.experiments.data.eval_layout import EvalLayout
  from tbptt.experiments.language_model import LanguageModel
  vocab, units = 30, 12
  ours = LanguageModel(vocab, units=units, num_layers=2, embedding_dim=8)
  twin = TorchCharLM(vocab, units=units, layers=2, embedding=8)
  ours(np.zeros([1, 1], np.int32), None)
  with torch.no_grad():
    twin.embedding.weight.copy_(torch.from_numpy(ours.embedding.embeddings.numpy()))
    for i, layer in enumerate(ours.rnn.layers_):
      cell = layer.cell  # Both order the gates i, f, c (g), o.
      getattr(twin.lstm, f"weight_ih_l{i}").copy_(torch.from_numpy(cell.kernel.numpy().T))
      getattr(twin.lstm, f"weight_hh_l{i}").copy_(torch.from_numpy(cell.recurrent_kernel.numpy().T))
      getattr(twin.lstm, f"bias_ih_l{i}").copy_(torch.from_numpy(cell.bias.numpy()))
      getattr(twin.lstm, f"bias_hh_l{i}").zero_()
    twin.head.weight.copy_(torch.from_numpy(ours.softmax.kernel.numpy().T))
    twin.head.bias.copy_(torch.from_numpy(ours.softmax.bias.numpy()))
  ids = np.random.default_rng(0).integers(0, vocab, 101)
  layout = EvalLayout(ids, batch_size=3, seq_len=9)
  total, count = twin.evaluate(layout.window(k, 0, 3) for k in range(layout.num_chunks))
  expected, state = 0.0, None
  for k in range(layout.num_chunks):
    chunk = layout.chunk(k)
    logits, state = ours(chunk["inputs"], state)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(chunk["targets"], logits)
    expected += float(tf.reduce_sum(losses * chunk["weights"]))
  assert count == 100 and total == pytest.approx(expected, rel=1e-5)
  assert math.isfinite(twin.train_step(ids[None, :10], ids[None, 1:11], reset=True))


@pytest.mark.slow
def test_quick_run_prints_every_candidate_and_a_verdict(capsys, tmp_path):
  code = bench.main(["--quick", "--candidates", "ours,torch,keras", "--corpora", "pydoc",
                     "--seeds", "0", "--workdir", str(tmp_path)])
  out = capsys.readouterr().out
  assert code in (0, 1) and "valid bits/char after 20 steps" in out
  for name in ("ours", "torch", "keras"):
    row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert 0 < float(cells[1]) < 10 and float(cells[3].replace(",", "")) > 0
  assert ("PASS: ours" in out) == (code == 0) and ("FAIL: ours" in out) == (code == 1)
