"""jaxrlhf.evaluation.probing: probes against closed-form / independent references (numpy lstsq, the logistic
objective's stationarity condition and scipy's minimizer, planted directions, hand-computed cases)."""

import math

import numpy as np
import pytest
import scipy.optimize

from jaxrlhf.evaluation import probing


def _data(n=400, d=6, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) * np.linspace(0.5, 3.0, d) + np.linspace(-1, 1, d)
  return rng, x


def test_ridge_zero_l2_is_least_squares_with_intercept():
  rng, x = _data()
  y = x @ rng.normal(size=6) + 0.7 + 0.1 * rng.normal(size=400)
  w, b = probing.ridge_fit(x, y, l2=0.0)
  ref = np.linalg.lstsq(np.concatenate([x, np.ones((400, 1))], axis=1), y, rcond=None)[0]
  np.testing.assert_allclose(w, ref[:6], rtol=1e-9, atol=1e-10)
  assert b == pytest.approx(ref[6], abs=1e-9)


def test_ridge_matches_augmented_least_squares():
  # min |Xc w - yc|^2 + l2 |w|^2 is least squares on [Xc; sqrt(l2) I] against [yc; 0].
  rng, x = _data(seed=1)
  y = x @ rng.normal(size=6) + rng.normal(size=400)
  l2 = 37.0
  w, b = probing.ridge_fit(x, y, l2)
  xc, yc = x - x.mean(0), y - y.mean()
  ref = np.linalg.lstsq(np.concatenate([xc, math.sqrt(l2) * np.eye(6)]), np.concatenate([yc, np.zeros(6)]),
                        rcond=None)[0]
  np.testing.assert_allclose(w, ref, rtol=1e-9, atol=1e-12)
  assert b == pytest.approx(y.mean() - x.mean(0) @ ref, abs=1e-9)
  w0, b0 = probing.ridge_fit(x, y, l2, fit_intercept=False)
  np.testing.assert_allclose(w0, np.linalg.solve(x.T @ x + l2 * np.eye(6), x.T @ y), rtol=1e-9)
  assert b0 == 0.0


def test_logistic_fit_is_the_penalized_minimizer():
  rng, x = _data(seed=2)
  y = (x @ rng.normal(size=6) + 0.3 + rng.logistic(size=400) > 0).astype(float)
  l2 = 2.5
  w, b = probing.logistic_fit(x, y, l2)
  # Stationarity: X^T (p - y) + l2 w = 0 and sum(p - y) = 0 (the unpenalized intercept).
  p = 1 / (1 + np.exp(-(x @ w + b)))
  np.testing.assert_allclose(x.T @ (p - y) + l2 * w, 0.0, atol=1e-7)
  assert abs(np.sum(p - y)) < 1e-6
  # An independent minimizer of the same objective (the intercept's 1e-9 curvature is negligible).
  ref = scipy.optimize.minimize(lambda t: probing.logistic_objective(x, y, t[:6], t[6], l2), np.zeros(7),
                                method="BFGS", options=dict(gtol=1e-9)).x
  np.testing.assert_allclose(np.append(w, b), ref, atol=1e-4)
  assert probing.logistic_objective(x, y, w, b, l2) <= probing.logistic_objective(x, y, ref[:6], ref[6], l2) + 1e-9


def test_logistic_hand_case_one_feature():
  # x = +-1, labels = sign: no intercept; objective 2 * log(1 + e^-w) + l2 / 2 * w^2 -> stationary where
  # -2 / (1 + e^w) + l2 * w = 0; with l2 = 1: w e^w + w = 2, w = 0.7388... (solved below by bisection).
  x, y = np.array([[1.0], [-1.0]]), np.array([1.0, 0.0])
  w, b = probing.logistic_fit(x, y, l2=1.0, fit_intercept=False)
  root = scipy.optimize.brentq(lambda v: v * math.exp(v) + v - 2, 0, 2)
  assert b == 0.0 and w[0] == pytest.approx(root, abs=1e-9)


def test_level_probe_recovers_a_planted_direction_and_is_deterministic():
  rng, h = _data(n=2000, d=8, seed=3)
  direction = np.zeros(8)
  direction[[2, 5]] = [1.0, -2.0]
  value = h @ direction
  labels = probing.median_levels(value[:1000], value)
  probe = probing.fit_level_probe(h[:1000], labels[:1000], l2=1e-3)
  assert probing.accuracy(probe(h[1000:]), labels[1000:]) > 0.97
  w_raw = probe.w / probe.scale  # back in the unstandardized coordinates
  cos = w_raw @ direction / np.linalg.norm(w_raw) / np.linalg.norm(direction)
  assert cos > 0.98
  again = probing.fit_level_probe(h[:1000], labels[:1000], l2=1e-3)
  np.testing.assert_array_equal(again.w, probe.w)
  # No signal: a probe of a label independent of h sits at chance.
  noise = rng.integers(0, 2, size=2000)
  null = probing.fit_level_probe(h[:1000], noise[:1000], l2=1.0)
  assert abs(probing.accuracy(null(h[1000:]), noise[1000:]) - 0.5) < 0.06


def test_pairwise_probe_is_antisymmetric_and_recovers_direction():
  rng, h_a = _data(n=1500, d=5, seed=4)
  h_b = rng.normal(size=h_a.shape) * 2
  direction = np.array([0.0, 1.0, 0.0, 0.0, 0.5])
  first_higher = (h_a @ direction > h_b @ direction)
  probe = probing.fit_pairwise_probe((h_a - h_b)[:1000], first_higher[:1000], l2=1e-3)
  d_test = (h_a - h_b)[1000:]
  np.testing.assert_allclose(probe(-d_test), -probe(d_test), atol=1e-12)
  assert probing.accuracy(probe(d_test), first_higher[1000:]) > 0.97
  assert probe.b == 0.0 and not probe.mean.any()


def test_median_levels_balances_ties():
  fit = np.array([-2.0, -0.5, 0.0, 0.0, 0.0, 0.0])  # median 0 = the maximum: "> 0" would be empty
  np.testing.assert_array_equal(probing.median_levels(fit, fit), [0, 0, 1, 1, 1, 1])
  cont = np.array([1.0, 2.0, 3.0, 4.0])
  np.testing.assert_array_equal(probing.median_levels(cont, [2.4, 2.5, 2.6]), [0, 0, 1])


def test_accuracy_confidence_and_quantiles_by_hand():
  assert probing.accuracy([1.0, -2.0, 0.0, 3.0], [1, 1, 0, 1]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
  assert math.isnan(probing.accuracy([], []))
  logits = np.array([[2.0, 0.0], [-1.0, 2.0]])
  conf = probing.probe_confidence(logits, [True, False])
  sig = lambda z: 1 / (1 + math.exp(-z))
  np.testing.assert_allclose(conf, [(sig(2) + 0.5) / 2, (sig(1) + sig(-2)) / 2])  # 2nd: RM prefers the second
  # Sorted by confidence 0.1, 0.2, 0.3, 0.4, 0.9: bins of 3 and 2.
  acc = probing.quantile_accuracy([0.9, 0.1, 0.4, 0.2, 0.3], [1, 0, 1, 1, 0], num_bins=2)
  np.testing.assert_allclose(acc, [1 / 3, 1.0])


def test_bad_inputs_name_the_function():
  with pytest.raises(ValueError, match="logistic_fit: l2"):
    probing.logistic_fit(np.ones((3, 2)), [0, 1, 0], l2=0.0)
  with pytest.raises(ValueError, match="logistic_fit: y"):
    probing.logistic_fit(np.ones((3, 2)), [0, 2, 0], l2=1.0)
  with pytest.raises(ValueError, match="ridge_fit: x must be"):
    probing.ridge_fit(np.ones((3, 2)), [0, 1], l2=1.0)


def test_within_group_permutation_p():
  # Perfectly aligned within 3 groups of 4: the observed Spearman is 1 and only permutations that leave every
  # group's order intact reach it: p = (1 + hits) / (1 + n) with hits ~ n / 24^3.
  x = np.arange(12.0)
  y = np.arange(12.0)
  groups = np.repeat([0, 1, 2], 4)
  rho, p = probing.within_group_permutation_p(x, y, groups, num_permutations=2000)
  assert rho == pytest.approx(1.0) and p < 0.01
  # y unrelated to x within groups but shifted by group: the pooled rho is large, yet the within-group null
  # reproduces it (the group shift is kept), so p is not small.
  rng = np.random.default_rng(0)
  y2 = np.repeat([0.0, 10.0, 20.0], 4) + rng.normal(size=12)
  rho2, p2 = probing.within_group_permutation_p(x, y2, groups, num_permutations=2000)
  assert rho2 > 0.7 and p2 > 0.05
  # A constant x: no correlation is defined, so neither is p (not the smallest p, 1 / 2001).
  rho3, p3 = probing.within_group_permutation_p(np.ones(12), y, groups, num_permutations=50)
  assert np.isnan(rho3) and np.isnan(p3)
