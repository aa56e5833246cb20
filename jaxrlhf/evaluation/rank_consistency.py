"""Ranking consistency between two reward functions on the same samples: Kendall's tau-b and CREAM's consistency
rate (Wang et al. 2024, "CREAM: Consistency Regularized Self-Rewarding Language Models", arXiv:2410.12735).

CREAM ranks the N samples of a prompt with the current iteration's reward and with the previous iteration's, and
measures their agreement with Kendall's tau (Kendall 1938), rescaled from [-1, 1] to a rate C = (tau + 1) / 2 in
[0, 1] (official code: github.com/Raibows/CREAM cal_consistency.py). C enters the loss per prompt ("dynamic") or as
its mean over the prompts ("average"), `jaxrlhf.losses.consistency_regularized_dpo_loss`.

Ties follow tau-b (scipy.stats.kendalltau's default): a pair tied in either ranking counts neither concordant nor
discordant, and the denominator is sqrt((n0 - n1)(n0 - n2)) with n0 = N(N-1)/2 pairs and n1, n2 the pairs tied in
x and in y. A row with no untied pair in x or in y has no tau (NaN, as scipy).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def kendall_tau_b(x_BxN, y_BxN):
  """Kendall's tau-b between x and y along the last axis, per row: float (B,) in [-1, 1] (NaN where undefined).

  tau_b = sum_{i<j} sgn(x_i - x_j) sgn(y_i - y_j) / sqrt(sum_{i<j} sgn(x_i - x_j)^2 * sum_{i<j} sgn(y_i - y_j)^2).
  O(N^2) pairs per row (N is the handful of samples per prompt). Jittable; also takes a single (N,) pair of rows.
  """
  x, y = jnp.asarray(x_BxN, jnp.float32), jnp.asarray(y_BxN, jnp.float32)
  if x.shape != y.shape:
    raise ValueError(f"kendall_tau_b: x and y must have the same shape, got {x.shape} and {y.shape}")
  return _tau_b(x, y)


@jax.jit
def _tau_b(x, y):
  n = x.shape[-1]
  upper_NxN = jnp.triu(jnp.ones((n, n), bool), k=1)  # Each unordered pair i < j once.
  sx = jnp.sign(x[..., :, None] - x[..., None, :]) * upper_NxN
  sy = jnp.sign(y[..., :, None] - y[..., None, :]) * upper_NxN
  num = jnp.sum(sx * sy, axis=(-2, -1))
  den = jnp.sqrt(jnp.sum(sx * sx, axis=(-2, -1)) * jnp.sum(sy * sy, axis=(-2, -1)))
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def consistency_rate(x_BxN, y_BxN):
  """CREAM's consistency rate C = (tau_b(x, y) + 1) / 2 per row, float (B,) in [0, 1] (NaN where tau is)."""
  return (kendall_tau_b(x_BxN, y_BxN) + 1.0) / 2.0
