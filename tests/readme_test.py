"""The README's canonical layer patterns run exactly as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _canonical_snippets():
  text = README.read_text()
  section = text.split("### Three canonical patterns", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_has_the_three_patterns():
  assert len(_canonical_snippets()) == 3


@pytest.mark.parametrize("index", range(3))
def test_canonical_pattern_runs_as_written(index):
  namespace = {}
  setup = "import tensorflow as tf\nfrom tbptt.layers import LSTM\n"
  exec(compile(setup + _canonical_snippets()[index], f"README pattern {index}", "exec"), namespace)
  outputs = namespace["outputs"]
  final_state = namespace.get("final_state", namespace.get("state"))
  assert final_state.h.shape[-1] == 64 and final_state.c.shape[-1] == 64
  if index == 1:
    assert outputs.shape == (10, 1, 64)
