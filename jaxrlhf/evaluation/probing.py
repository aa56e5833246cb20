"""Linear probes of reward-model representations, per preference dimension, and inference-time probing as a
confidence measure (pure numpy, float64, deterministic).

After Wang et al. 2025, "Probing Preference Representations: A Multi-Dimensional Evaluation and Analysis Method
for Reward Models" (MRMBench, arXiv:2511.12464, AAAI 2026). MRMBench freezes a reward model, reads its
representation h[x, y] (the final hidden state at the last token, where the reward head reads) and trains one
LINEAR classification layer per preference dimension (harmlessness, helpfulness, correctness, coherence,
complexity, verbosity; a bias-free `nn.Linear(d, 1)` with BCE for two levels, `nn.Linear(d, 3)` with cross-entropy
for three, in the official code github.com/wangclnlp/MRMBench); the probe's held-out accuracy per dimension is the
benchmark score, and the average over dimensions correlates with the alignment of policies trained against the
reward model. "Inference-time probing" applies the dimension probes while the reward model scores a pair to
judge how far its prediction rests on the preference dimensions, as a confidence of the reward prediction.

Here the probes are fit in closed form (ridge) or by Newton's method (L2-regularized logistic regression) instead of
by SGD, so a probe is a deterministic function of its data:

  level probe     one response's representation -> is its component above the fit set's median (MRMBench's
                  two-level probing task, on single responses);
  pairwise probe  the representation difference h(chosen) - h(rejected) -> which response has the higher
                  component (bias-free, fit on both orientations of every pair, so it is antisymmetric);
  confidence      of a reward model's preference on a pair: the mean over dimensions of the pairwise probes'
                  probability that the response the reward model prefers is the higher one on that dimension
                  (our reading of inference-time probing; every component of the world's gold reward is
                  higher-is-better, so agreement of the dimension probes supports the preference).

Shapes: N examples, D representation width, K dimensions (probes).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from jaxrlhf.evaluation import stats


class Probe(NamedTuple):
  """A linear probe on standardized inputs: logit (or prediction) = ((x - mean) / scale) @ w + b."""
  w: np.ndarray     # (D,)
  b: float
  mean: np.ndarray  # (D,)
  scale: np.ndarray  # (D,)

  def __call__(self, x_NxD: Any) -> np.ndarray:
    """float64 (N,) logits (logistic probes) or predictions (ridge probes)."""
    x = (np.asarray(x_NxD, np.float64) - self.mean) / self.scale
    return x @ self.w + self.b


def standardizer(x_NxD: Any, center: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(mean_D, scale_D) of the columns of x: mean 0 when not `center`; scale = the root mean square about that
  mean, 1 where a column is constant (so a constant feature stays 0 instead of dividing by zero)."""
  x = np.asarray(x_NxD, np.float64)
  mean = x.mean(axis=0) if center else np.zeros(x.shape[1])
  scale = np.sqrt(np.mean((x - mean) ** 2, axis=0))
  return mean, np.where(scale > 0, scale, 1.0)


def _check(x_NxD: Any, y_N: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x_NxD, np.float64), np.asarray(y_N, np.float64).reshape(-1)
  if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
    raise ValueError(f"{name}: x must be (N, D) and y (N,) with N > 0, got {x.shape} and {y.shape}")
  if not (np.isfinite(x).all() and np.isfinite(y).all()):
    raise ValueError(f"{name}: x and y must be finite")
  return x, y


def ridge_fit(x_NxD: Any, y_N: Any, l2: float, fit_intercept: bool = True) -> tuple[np.ndarray, float]:
  """(w_D, b) minimizing sum_i (x_i . w + b - y_i)^2 + l2 * |w|^2 (the intercept b unpenalized; b = 0 without
  `fit_intercept`), in closed form: w = (Xc^T Xc + l2 I)^-1 Xc^T yc on centered X and y (l2 = 0: least squares,
  the minimum-norm solution through lstsq)."""
  x, y = _check(x_NxD, y_N, "ridge_fit")
  if l2 < 0:
    raise ValueError(f"ridge_fit: l2 must be >= 0, got {l2}")
  x_mean, y_mean = (x.mean(axis=0), y.mean()) if fit_intercept else (np.zeros(x.shape[1]), 0.0)
  xc, yc = x - x_mean, y - y_mean
  if l2 == 0:
    w = np.linalg.lstsq(xc, yc, rcond=None)[0]
  else:
    w = np.linalg.solve(xc.T @ xc + l2 * np.eye(x.shape[1]), xc.T @ yc)
  return w, float(y_mean - x_mean @ w)


def _log1pexp(z: np.ndarray) -> np.ndarray:
  return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
  return np.exp(-_log1pexp(-z))


def logistic_objective(x_NxD: Any, y_N: Any, w_D: Any, b: float, l2: float) -> float:
  """sum_i log(1 + exp(-s_i (x_i . w + b))) + l2 / 2 * |w|^2 with s_i = 2 y_i - 1 (y in {0, 1})."""
  x, y = _check(x_NxD, y_N, "logistic_objective")
  z = x @ np.asarray(w_D, np.float64) + b
  return float(np.sum(_log1pexp(-(2 * y - 1) * z)) + 0.5 * l2 * np.sum(np.square(w_D)))


def logistic_fit(x_NxD: Any, y_N: Any, l2: float, fit_intercept: bool = True, max_iter: int = 100,
                 tol: float = 1e-10) -> tuple[np.ndarray, float]:
  """(w_D, b) minimizing `logistic_objective` (the intercept unpenalized; b = 0 without `fit_intercept`) by
  Newton's method with step halving: deterministic, converged when the gradient's max norm is <= tol * N.

  l2 > 0 makes the objective strictly convex in w, so the minimizer is unique even on separable data (with an
  intercept, a tiny 1e-9 curvature keeps b finite when one class is absent).
  """
  x, y = _check(x_NxD, y_N, "logistic_fit")
  if l2 <= 0:
    raise ValueError(f"logistic_fit: l2 must be > 0 (a unique, finite probe), got {l2}")
  if not np.isin(y, (0.0, 1.0)).all():
    raise ValueError("logistic_fit: y must hold 0 / 1 labels")
  n, d = x.shape
  xa = np.concatenate([x, np.ones((n, 1))], axis=1) if fit_intercept else x
  reg = np.full(xa.shape[1], float(l2))
  if fit_intercept:
    reg[-1] = 1e-9
  theta = np.zeros(xa.shape[1])

  def objective(t):
    return float(np.sum(_log1pexp(xa @ t) - y * (xa @ t)) + 0.5 * np.sum(reg * t * t))

  value = objective(theta)
  for _ in range(max_iter):
    p = _sigmoid(xa @ theta)
    grad = xa.T @ (p - y) + reg * theta
    if np.max(np.abs(grad)) <= tol * n:
      break
    hess = (xa * (p * (1 - p))[:, None]).T @ xa + np.diag(reg)
    step = np.linalg.solve(hess, grad)
    t = 1.0
    while t > 1e-8:
      candidate = theta - t * step
      new_value = objective(candidate)
      if new_value <= value:
        break
      t *= 0.5
    else:
      break  # No descent along the Newton direction: at the minimum up to rounding.
    theta, value = candidate, new_value
  return (theta[:d], float(theta[d])) if fit_intercept else (theta, 0.0)


def fit_level_probe(h_NxD: Any, level_N: Any, l2: float) -> Probe:
  """A logistic probe of a binary level (0 / 1) from representations, on standardized features (fit set's mean
  and scale), with an intercept."""
  mean, scale = standardizer(h_NxD)
  w, b = logistic_fit((np.asarray(h_NxD, np.float64) - mean) / scale, level_N, l2)
  return Probe(w, b, mean, scale)


def fit_pairwise_probe(diff_NxD: Any, first_higher_N: Any, l2: float) -> Probe:
  """A bias-free logistic probe of "the first response has the higher component" from representation differences
  h(first) - h(second), fit on both orientations of every pair (d -> label, -d -> 1 - label), on features divided by
  the differences' root mean square: probe(-d) = -probe(d)."""
  d = np.asarray(diff_NxD, np.float64)
  y = np.asarray(first_higher_N, np.float64).reshape(-1)
  _, scale = standardizer(d, center=False)
  both = np.concatenate([d, -d]) / scale
  w, _ = logistic_fit(both, np.concatenate([y, 1 - y]), l2, fit_intercept=False)
  return Probe(w, 0.0, np.zeros(d.shape[1]), scale)


def median_levels(values_fit_N: Any, values_N: Any) -> np.ndarray:
  """int (N,) two levels split at the median m of `values_fit_N` (the fit set's): 1 where value > m, or, when that
  split is the less balanced one on the fit set (ties at the median: discrete components), where value >= m."""
  fit, v = np.asarray(values_fit_N, np.float64), np.asarray(values_N, np.float64)
  m = np.median(fit)
  strict = abs(np.mean(fit > m) - 0.5) <= abs(np.mean(fit >= m) - 0.5)
  return (v > m if strict else v >= m).astype(np.int64)


def accuracy(logits_N: Any, labels_N: Any) -> float:
  """Fraction of examples with (logit > 0) == label; a logit of exactly 0 counts 1/2. NaN for no examples."""
  z, y = np.asarray(logits_N, np.float64).reshape(-1), np.asarray(labels_N).reshape(-1).astype(bool)
  if z.shape != y.shape:
    raise ValueError(f"accuracy: {z.size} logits for {y.size} labels")
  if z.size == 0:
    return math.nan
  return float(np.mean(np.where(z == 0, 0.5, (z > 0) == y)))


def probe_confidence(pair_logits_NxK: Any, prefers_first_N: Any) -> np.ndarray:
  """float64 (N,) in (0, 1): for each pair, the mean over the K dimension probes of the probability that the
  response the reward model prefers (the first where `prefers_first_N`) is the higher one on that dimension,
  sigmoid(+-logit) averaged over dimensions. 1/2 = the probes are undecided or split."""
  z = np.asarray(pair_logits_NxK, np.float64)
  if z.ndim != 2:
    raise ValueError(f"probe_confidence: logits must be (N, K), got {z.shape}")
  s = np.where(np.asarray(prefers_first_N).reshape(-1, 1).astype(bool), 1.0, -1.0)
  return _sigmoid(s * z).mean(axis=1)


def quantile_accuracy(confidence_N: Any, correct_N: Any, num_bins: int) -> np.ndarray:
  """float64 (num_bins,): the mean of `correct_N` within each confidence quantile bin, lowest confidence first
  (examples sorted by confidence, stably, and split into num_bins near-equal consecutive groups; NaN for an empty
  group)."""
  c = np.asarray(confidence_N, np.float64).reshape(-1)
  ok = np.asarray(correct_N, np.float64).reshape(-1)
  if c.shape != ok.shape or num_bins < 1:
    raise ValueError(f"quantile_accuracy: {c.size} confidences, {ok.size} labels, {num_bins} bins")
  groups = np.array_split(ok[np.argsort(c, kind="stable")], num_bins)
  return np.asarray([g.mean() if g.size else math.nan for g in groups])


def within_group_permutation_p(x_N: Any, y_N: Any, groups_N: Any, num_permutations: int = 10000, seed: int = 0
                               ) -> tuple[float, float]:
  """(Spearman correlation of x and y pooled over all N points, one-sided p-value of a correlation at least that
  large when y is permuted WITHIN each group): the null keeps every group's values (e.g. one seed's reward
  models share a policy pool) and breaks only the pairing of x with y. p = (1 + #{perm >= observed}) /
  (1 + num_permutations); NaN when the observed correlation is undefined (a constant x or y: every comparison with
  NaN fails, which would otherwise give the smallest p)."""
  x, y = np.asarray(x_N, np.float64).reshape(-1), np.asarray(y_N, np.float64).reshape(-1)
  groups = np.asarray(groups_N).reshape(-1)
  if not x.shape == y.shape == groups.shape:
    raise ValueError(f"within_group_permutation_p: x {x.shape}, y {y.shape}, groups {groups.shape} differ")
  observed = stats.spearman(x, y)
  if not math.isfinite(observed):
    return observed, math.nan
  rng = np.random.default_rng(seed)
  members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
  hits = 0
  y_perm = y.copy()
  for _ in range(num_permutations):
    for idx in members:
      y_perm[idx] = y[rng.permutation(idx)]
    hits += stats.spearman(x, y_perm) >= observed - 1e-12
  return observed, (1 + hits) / (1 + num_permutations)
