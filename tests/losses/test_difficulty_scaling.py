"""DR-IRL's GRPO-S coefficients (Cheng et al. 2025, arXiv 2503.18991) against cases computed by hand from the
paper's equations: W = mean_k max_l cos, alpha^D = sigmoid(delta) / sigmoid(mean delta), alpha^M =
sigmoid(filtered mean gap) / sigmoid(mean gap), A = alpha^D alpha^M (r - mean_g) / (std_g + eps)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.losses import difficulty_scaling as ds
from jaxrlhf.losses import policy_gradient as pg


def sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def test_clause_similarity_hand_computed_with_padding():
  # Response clauses (1,0), (0,1) and a padded clause; demonstration clauses (1,0), (1,1) and a padded (0,1),
  # which would match the second clause exactly if the mask were ignored.
  a = jnp.array([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
  b = jnp.array([[[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]]])
  w = ds.clause_similarity(a, jnp.array([[1, 1, 0]]), b, jnp.array([[1, 1, 0]]))
  # s_max = [max(1, 1/sqrt2), max(0, 1/sqrt2)] -> W = (1 + 1/sqrt2) / 2
  np.testing.assert_allclose(w, [(1 + 1 / math.sqrt(2)) / 2], rtol=1e-6)
  # Not symmetric: W averages over the response's clauses (K), maximizing over the demonstration's (L).
  w_rev = ds.clause_similarity(b, jnp.array([[1, 1, 0]]), a, jnp.array([[1, 1, 0]]))
  np.testing.assert_allclose(w_rev, [(1 + 1 / math.sqrt(2)) / 2], rtol=1e-6)
  w_one = ds.clause_similarity(a[:, :1], jnp.array([[1]]), b, jnp.array([[1, 1, 0]]))
  np.testing.assert_allclose(w_one, [1.0], rtol=1e-6)
  # No demonstration clause: 0.
  np.testing.assert_allclose(ds.clause_similarity(a, jnp.array([[1, 1, 0]]), b, jnp.zeros((1, 3))), [0.0])


def test_data_hardness_hand_computed():
  delta = [0.2, 0.6, 1.0]
  alpha = ds.data_hardness(jnp.array(delta))
  expected = [sigmoid(d) / sigmoid(0.6) for d in delta]
  np.testing.assert_allclose(alpha, expected, rtol=1e-6)
  np.testing.assert_allclose(alpha, [0.851594, 1.0, 1.132280], rtol=1e-5)  # literal values
  assert float(alpha[2]) > 1.0 > float(alpha[0])  # the less similar (harder) sample is scaled up


def test_model_responsiveness_hand_computed():
  gaps = jnp.array([[-1.0, -1.2, -0.8, -3.0]])
  # mean -1.5; squared deviations 0.25, 0.09, 0.49, 2.25: tau 0.5 drops -3.0 -> filtered mean -1.0
  alpha = ds.model_responsiveness(gaps, tau=0.5)
  np.testing.assert_allclose(alpha, [sigmoid(-1.0) / sigmoid(-1.5)], rtol=1e-6)
  np.testing.assert_allclose(alpha, [1.474258], rtol=1e-5)
  # No outlier -> 1; every gap an outlier -> the plain mean -> 1.
  np.testing.assert_allclose(ds.model_responsiveness(gaps, tau=10.0), [1.0], rtol=1e-6)
  np.testing.assert_allclose(ds.model_responsiveness(jnp.array([[-1.0, 1.0]]), tau=0.5), [1.0], rtol=1e-6)


def test_model_responsiveness_keeps_a_gap_exactly_at_tau():
  # M keeps (gap - mean)^2 <= tau (module docstring): gaps [0, 1, 1, 2, 6] have mean 2 and squared deviations
  # [4, 1, 1, 0, 16] (all exact in float32); tau = 4 keeps the 0 (filtered mean 1) and drops only the 6. A strict
  # "< tau" would drop the 0 too (filtered mean 4/3).
  alpha = ds.model_responsiveness(jnp.array([[0.0, 1.0, 1.0, 2.0, 6.0]]), tau=4.0)
  np.testing.assert_allclose(alpha, [sigmoid(1.0) / sigmoid(2.0)], rtol=1e-6)


def test_grpo_s_advantages_small_group_hand_computed():
  rewards = jnp.array([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 1.0, 1.0])
  alpha_data = jnp.array([1.2] * 4 + [0.8] * 4)
  gaps = jnp.array([-1.0, -1.2, -0.8, -3.0, 0.1, 0.1, 0.3, 0.3])
  adv, parts = ds.grpo_s_advantages(rewards, 4, alpha_data, gaps, tau=0.5)
  std1 = math.sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3)  # Bessel std of 1..4
  std2 = math.sqrt(4 * 0.25 / 3)
  am1 = sigmoid(-1.0) / sigmoid(-1.5)  # group 1: -3.0 is an outlier
  am2 = 1.0  # group 2: gaps 0.1, 0.1, 0.3, 0.3 all within tau of the mean 0.2
  expected = [1.2 * am1 * (r - 2.5) / (std1 + 1e-4) for r in (1, 2, 3, 4)]
  expected += [0.8 * am2 * (r - 0.5) / (std2 + 1e-4) for r in (0, 0, 1, 1)]
  np.testing.assert_allclose(adv, expected, rtol=1e-5)
  np.testing.assert_allclose(parts["alpha_model"], [am1] * 4 + [am2] * 4, rtol=1e-6)
  # pool "batch": one alpha^M from all 8 gaps: mean -0.65; squared deviations 0.1225, 0.3025, 0.0225, 5.5225,
  # 0.5625, 0.5625, 0.9025, 0.9025 -> tau 0.5 keeps -1.0, -1.2, -0.8 (mean -1.0)
  adv_b, parts_b = ds.grpo_s_advantages(rewards, 4, alpha_data, gaps, tau=0.5, pool="batch")
  am_b = sigmoid(-1.0) / sigmoid(-0.65)
  np.testing.assert_allclose(parts_b["alpha_model"], [am_b] * 8, rtol=1e-5)
  np.testing.assert_allclose(adv_b, np.asarray(pg.group_advantages(rewards, 4)) * np.asarray(alpha_data) * am_b,
                             rtol=1e-5)


def test_unit_coefficients_give_grpo_exactly_and_jit_works():
  rewards = jax.random.normal(jax.random.PRNGKey(0), (12,))
  gaps = jnp.zeros(12)  # no outliers -> alpha^M = 1
  fn = jax.jit(lambda r: ds.grpo_s_advantages(r, 4, jnp.ones(12), gaps, tau=1.0)[0])
  np.testing.assert_array_equal(fn(rewards), pg.group_advantages(rewards, 4))


def test_bad_input_names_the_argument():
  with pytest.raises(ValueError, match="pool"):
    ds.grpo_s_advantages(jnp.zeros(4), 2, jnp.ones(4), jnp.zeros(4), tau=1.0, pool="category")
  with pytest.raises(ValueError, match="alpha_data_B"):
    ds.grpo_s_advantages(jnp.zeros(4), 2, jnp.ones(2), jnp.zeros(4), tau=1.0)
  with pytest.raises(ValueError, match="tau"):
    ds.model_responsiveness(jnp.zeros((1, 2)), tau=-1.0)
