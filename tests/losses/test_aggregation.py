"""Tests for jaxrlhf.losses.aggregation: goldens, order statistics, permutation invariance, transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from jaxrlhf.losses import aggregation as agg

# Few distinct shapes (each compiles once): K = 1, even and odd.
_REWARDS = hnp.arrays(np.float32, st.tuples(st.just(3), st.sampled_from([1, 4, 5])),
                      elements=st.floats(-100, 100, width=32))
_AGGREGATE = jax.jit(agg.aggregate, static_argnames="method")


def test_goldens():
  r = jnp.array([[1.0, 2.0, 6.0], [3.0, 3.0, 3.0], [-1.0, 4.0, 0.0]])
  np.testing.assert_allclose(agg.aggregate(r, "mean"), [3.0, 3.0, 1.0])
  np.testing.assert_allclose(agg.aggregate(r, "median"), [2.0, 3.0, 0.0])
  np.testing.assert_allclose(agg.aggregate(r, "min"), [1.0, 3.0, -1.0])
  var = np.array([14 / 3, 0.0, 14 / 3])  # population variance (ddof=0)
  np.testing.assert_allclose(agg.aggregate(r, "mean_minus_var", lam=0.5), [3.0, 3.0, 1.0] - 0.5 * var, rtol=1e-6)
  np.testing.assert_allclose(agg.aggregate(r, "mean_minus_std", lam=2.0), [3.0, 3.0, 1.0] - 2.0 * np.sqrt(var),
                             rtol=1e-6)
  np.testing.assert_allclose(agg.median_reward(jnp.array([[4.0, 1.0, 2.0, 10.0]])), [3.0])  # even K


def test_numpy_reference_random():
  r = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
  np.testing.assert_allclose(agg.aggregate(r, "mean_minus_std", lam=0.7), r.mean(-1) - 0.7 * r.std(-1), rtol=1e-5)
  np.testing.assert_allclose(agg.aggregate(r, "mean_minus_var", lam=0.7), r.mean(-1) - 0.7 * r.var(-1), rtol=1e-5)
  np.testing.assert_allclose(agg.aggregate(r, "median"), np.median(r, -1), rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(_REWARDS, st.floats(0.0, 5.0), st.randoms(use_true_random=False))
def test_order_statistics_and_permutation_invariance(r, lam, rnd):
  mn, med, mean = (np.asarray(_AGGREGATE(r, m)) for m in ("min", "median", "mean"))
  mx = r.max(-1)
  tol = 1e-4 * (1 + np.abs(r).max())
  assert np.all(mn <= med + tol) and np.all(med <= mx + tol)
  assert np.all(mn <= mean + tol) and np.all(mean <= mx + tol)
  assert np.all(np.asarray(_AGGREGATE(r, "mean_minus_std", lam=lam)) <= mean + tol)
  assert np.all(np.asarray(_AGGREGATE(r, "mean_minus_var", lam=lam)) <= mean + tol)
  perm = list(range(r.shape[1]))
  rnd.shuffle(perm)
  for method in agg.AGGREGATION_METHODS:
    if method == "mean_minus_var_unbiased" and r.shape[1] < 2:
      continue  # undefined for one member (tested to raise)
    np.testing.assert_allclose(_AGGREGATE(r[:, perm], method, lam=lam), _AGGREGATE(r, method, lam=lam),
                               rtol=1e-5, atol=tol, err_msg=method)


def test_unknown_method_lists_valid_ones():
  with pytest.raises(ValueError, match="valid methods.*mean.*median.*min.*mean_minus_std.*mean_minus_var"):
    agg.aggregate(jnp.ones((2, 3)), "max")
  with pytest.raises(ValueError, match="rewards_BxK"):
    agg.aggregate(jnp.ones((2, 0)), "mean")


def test_jit_vmap_grad_bf16():
  r = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2, 4)), jnp.bfloat16)
  for method in agg.AGGREGATION_METHODS:
    fn = lambda x, method=method: agg.aggregate(x, method)  # noqa: E731
    out = jax.jit(jax.vmap(fn))(r)
    assert out.dtype == jnp.float32 and out.shape == (3, 2)
    np.testing.assert_allclose(out, fn(r.astype(jnp.float32)), rtol=1e-6)
    # Identical members: std has an infinite derivative at 0; the aggregation's gradient must stay finite.
    g = jax.grad(lambda x: fn(x).sum())(jnp.ones((2, 4)))
    assert bool(jnp.all(jnp.isfinite(g))), method
  g = jax.grad(lambda x: agg.mean_minus_var_reward(x, 1.0).sum())(jnp.array([[0.0, 2.0]]))
  np.testing.assert_allclose(g, [[0.5 + 1.0, 0.5 - 1.0]])  # d/dx (mean - var) = 1/K - 2 (x - mean) / K


def test_unbiased_uwo_equals_coste_ppo_reward():
  """Coste et al.'s PPO reward (tlc4418/llm_optimization, ppo_reward_functions.py): torch.mean - coeff * torch.var over
  the member axis, torch.var being unbiased; their best-of-n code uses np.var (population): our mean_minus_var."""
  import torch
  r = np.random.default_rng(3).normal(size=(6, 5)).astype(np.float32)
  members_first = torch.from_numpy(r.T.copy())  # their (K, B) layout, reduced over dim 0
  want = (torch.mean(members_first, dim=0) - 0.1 * torch.var(members_first, dim=0)).numpy()
  np.testing.assert_allclose(agg.aggregate(r, "mean_minus_var_unbiased", lam=0.1), want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(agg.aggregate(r, "mean_minus_var", lam=0.5), r.mean(-1) - 0.5 * np.var(r, -1),
                             rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match=">= 2 members"):
    agg.aggregate(jnp.ones((2, 1)), "mean_minus_var_unbiased")
