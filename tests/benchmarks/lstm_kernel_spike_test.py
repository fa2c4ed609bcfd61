"""Keeps benchmarks/lstm_kernel_spike.py runnable: its product table from a short run."""

import re

import pytest

import benchmark_scripts

spike = benchmark_scripts.load("lstm_kernel_spike")


@pytest.mark.slow
def test_product_table_has_eigen_and_every_installed_library():
  table = spike.gemm_table(reps=3)
  rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
  assert {"eigen_matrix_1thread", "eigen_tensor_pool2"} <= set(rows)
  assert ("mkl_cblas_sgemm_1thread" in rows) == (spike.build.mkl() is not None)
  assert ("onednn_dnnl_sgemm" in rows) == (spike.onednn_library() is not None)
  for line in rows.values():
    figures = [float(v) for v in re.findall(r"\| ([0-9.]+)", line)]
    assert len(figures) == 3 and all(f > 0 for f in figures)
