"""Loads a script of benchmarks/ as a module, so its tests can call main() and its helpers."""

import importlib.util
import pathlib

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
  """benchmarks/<name>.py as a fresh module named `<name>_benchmark`."""
  spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
