"""Kendall's tau-b against scipy.stats.kendalltau (ties included) and CREAM's consistency rate (tau + 1) / 2
(Wang et al. 2024, arXiv:2410.12735) on hand-computed rankings."""

import jax
import numpy as np
import pytest
import scipy.stats

from jaxrlhf.evaluation.rank_consistency import consistency_rate, kendall_tau_b


def test_matches_scipy_with_and_without_ties():
  rng = np.random.default_rng(0)
  for n, levels in ((4, 100), (4, 3), (6, 2), (8, 5), (16, 1000)):
    x = rng.integers(0, levels, (40, n)).astype(np.float64)
    y = rng.integers(0, levels, (40, n)).astype(np.float64)
    got = np.asarray(kendall_tau_b(x, y))
    want = np.asarray([scipy.stats.kendalltau(a, b).statistic for a, b in zip(x, y)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # NaN where both are undefined
    assert np.array_equal(np.isnan(got), np.isnan(want))


def test_golden_rankings_and_rate():
  # (1, 2, 3) vs (1, 3, 2): pairs (0,1) and (0,2) concordant, (1,2) discordant -> tau = 1/3, C = 2/3.
  np.testing.assert_allclose(kendall_tau_b([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]), 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(consistency_rate([[1.0, 2.0, 3.0]], [[1.0, 3.0, 2.0]]), [2 / 3], rtol=1e-6)
  np.testing.assert_allclose(consistency_rate([[0.1, 0.5, 0.9, 2.0]], [[-3.0, 1.0, 2.0, 9.0]]), [1.0])  # same order
  np.testing.assert_allclose(consistency_rate([[0.1, 0.5, 0.9, 2.0]], [[9.0, 2.0, 1.0, -3.0]]), [0.0])  # reversed
  # Ties: x = (1, 1, 2), y = (1, 2, 3): one tied pair in x; tau_b = 2 / sqrt(2 * 3).
  np.testing.assert_allclose(kendall_tau_b([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]), 2 / np.sqrt(6), rtol=1e-6)
  assert np.isnan(consistency_rate([[1.0, 1.0, 1.0]], [[1.0, 2.0, 3.0]])[0])  # no untied pair: undefined


def test_jits_and_checks_shapes():
  x = np.random.default_rng(1).normal(size=(3, 5))
  np.testing.assert_allclose(jax.jit(kendall_tau_b)(x, -x), -np.ones(3), rtol=1e-6)
  with pytest.raises(ValueError, match="same shape"):
    kendall_tau_b(np.zeros((2, 3)), np.zeros((2, 4)))
