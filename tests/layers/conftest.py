"""Runs the sequence-layer tests on both implementations and checks which one actually ran.

A module opts in with `pytestmark = pytest.mark.usefixtures("implementation")`: each of its tests
then runs twice, once with every `LSTM` (also inside `StackedLSTM`) built with
implementation='loop' and once with 'fused', and fails if a layer it called ran anything else, so
a silent fall-back to the loop fails the test. A test that expects the loop whatever was asked
(XLA, mixed precision) is marked `@pytest.mark.expect_implementation("loop")`; its 'fused' run
asks for 'auto' and checks that 'auto' chose the loop.
"""

import pytest

from tbptt.layers import LSTM, StackedLSTM, kernels


@pytest.fixture(params=["loop", "fused"])
def implementation(request, monkeypatch):
  """The implementation this run asks for; patches the default of LSTM and StackedLSTM."""
  expected = request.param
  requested = request.param
  marker = request.node.get_closest_marker("expect_implementation")
  if marker is not None:
    expected = marker.args[0]
    requested = "auto" if request.param == "fused" else request.param
  if request.param == "fused":
    assert kernels.available(), f"the fused kernel did not build: {kernels.error()}"
  created = []
  for cls in (LSTM, StackedLSTM):
    original = cls.__init__

    def init(self, *args, implementation=requested, _original=original, **kwargs):
      _original(self, *args, implementation=implementation, **kwargs)
      if isinstance(self, LSTM):
        created.append(self)
    monkeypatch.setattr(cls, "__init__", init)
  yield requested
  ran = {layer.name: layer.resolved_implementation for layer in created
         if layer.resolved_implementation is not None}
  wrong = {name: ran_ for name, ran_ in ran.items() if ran_ != expected}
  assert not wrong, f"expected every layer to run {expected!r}, these ran otherwise: {wrong}"
