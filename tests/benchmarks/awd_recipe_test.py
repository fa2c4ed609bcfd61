"""Keeps benchmarks/awd_recipe.py honest: the recipes' bindings and a quick run end to end."""

import pytest

import benchmark_scripts

bench = benchmark_scripts.load("awd_recipe")


def test_both_recipes_share_the_model_and_differ_in_the_recipe(tmp_path):
  jobs = {recipe: dict(corpus="pydoc", recipe=recipe, seed=0, round_steps=20, epoch_steps=50,
                       workdir=str(tmp_path), quick=False) for recipe in bench.RECIPES}
  plain, awd = (bench.bindings_of(jobs[r]) for r in ("plain", "awd"))
  for shared in ("LanguageModel.units = [256, 256, 128]", "TextCorpus.seq_len = 35",
                 "Trainer.eval_interval = 50", "TextCorpus.level = 'word'"):
    assert shared in plain and shared in awd
  assert "Trainer.learning_rate = 1.0" in plain and "TextCorpus.max_seq_len = 50" in awd
  assert bench.CONFIG == {"plain": "ptb_small.gin", "awd": "awd_lstm_ptb.gin"}


@pytest.mark.slow
def test_quick_run_prints_both_recipes(tmp_path, capsys):
  assert bench.main(["--quick", "--corpora", "pydoc", "--workdir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "| pydoc (V " in out and "| plain |" in out and "| awd |" in out
