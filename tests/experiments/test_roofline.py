"""experiments.roofline: the machine's matmul rates (plumbing at a tiny size; the numbers are a benchmark)."""

import math

import pytest

from experiments import roofline


def test_measure_reports_positive_rates_for_both_libraries_and_dtypes():
  result = roofline.measure(32, 16, 8, threads=1, repeats=1)
  assert result["shape"] == [32, 16, 8]
  for lib in ("jax", "torch"):
    for dtype in ("float32", "bfloat16"):
      rate = result[lib][dtype]
      assert rate is not None and math.isfinite(rate) and rate > 0, (lib, dtype)


def test_measure_rejects_empty_shapes():
  with pytest.raises(ValueError, match=r"matmul shape: expected positive sizes, got \(0, 4, 4\)"):
    roofline.measure(0, 4, 4)
