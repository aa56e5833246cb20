"""VAS value targets (Han et al. 2024, arXiv:2405.06639): TD(lambda) returns against hand-computed goldens and
against the official code's recipe (PPO's GAE with the reward on the last token, returns = advantages + values),
and the 0.5 * masked-mean squared-error loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.losses import gae_advantages, state_mask, td_lambda_returns, value_regression_loss

VALUES = np.array([[0.1, 0.2, 0.3, 0.4, 9.0]], np.float32)  # slot 4 is padding (n = 3)


def test_golden_gamma_one():
  g = np.asarray(td_lambda_returns(VALUES, jnp.array([1.0]), jnp.array([3]), gamma=1.0, lam=0.5))
  # G_3 = r; G_2 = .5 r + .5 G_3 (V'_3 = r); G_1 = .5 V_2 + .5 G_2; G_0 = .5 V_1 + .5 G_1; padding 0.
  np.testing.assert_allclose(g, [[0.425, 0.65, 1.0, 1.0, 0.0]], rtol=1e-6)


def test_golden_discounted():
  g = np.asarray(td_lambda_returns(VALUES, jnp.array([1.0]), jnp.array([3]), gamma=0.9, lam=0.5))
  np.testing.assert_allclose(g, [[0.333, 0.54, 0.9, 1.0, 0.0]], rtol=1e-6)


def test_lambda_limits():
  r, n = jnp.array([2.0, -1.0]), jnp.array([3, 1])
  values = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
  mc = np.asarray(td_lambda_returns(values, r, n, lam=1.0))
  np.testing.assert_allclose(mc, [[2, 2, 2, 2, 0], [-1, -1, 0, 0, 0]], rtol=1e-6)  # Monte Carlo: r everywhere
  td0 = np.asarray(td_lambda_returns(values, r, n, lam=0.0))
  np.testing.assert_allclose(td0[0, :2], values[0, 1:3], rtol=1e-6)  # one-step TD: the next state's value
  np.testing.assert_allclose(td0[0, 2:4], [2.0, 2.0], rtol=1e-6)


def test_matches_official_gae_recipe():
  """For t < n the targets are the official VASTrainer's: GAE (gamma 1, lam .95) on V_0..V_{n-1} with r on token
  n - 1, returns = advantages + values."""
  rng = np.random.default_rng(1)
  B, T = 4, 6
  lengths = np.array([6, 3, 1, 4])
  values = rng.normal(size=(B, T + 1)).astype(np.float32)
  reward = rng.normal(size=(B,)).astype(np.float32)
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
  token_rewards = np.zeros((B, T), np.float32)
  token_rewards[np.arange(B), lengths - 1] = reward
  _, returns = gae_advantages(token_rewards, values[:, :T] * mask, mask, gamma=1.0, lam=0.95)
  ours = np.asarray(td_lambda_returns(values, reward, lengths, gamma=1.0, lam=0.95))
  np.testing.assert_allclose(ours[:, :T] * mask, np.asarray(returns), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours[np.arange(B), lengths], reward, rtol=1e-6)  # the finished state: V(s_n) -> r


def test_state_mask_and_loss():
  mask = np.asarray(state_mask(jnp.array([1, 3]), 4))
  np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 1, 1, 1]])
  pred = jnp.array([[1.0, 2.0, 5.0, 5.0], [0.0, 0.0, 0.0, 1.0]])
  target = jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
  loss, metrics = value_regression_loss(pred, target, mask)
  np.testing.assert_allclose(float(loss), 0.5 * (1 + 4 + 1 + 1 + 1 + 0) / 6, rtol=1e-6)
  grad_pred, grad_target = jax.grad(lambda p, t: value_regression_loss(p, t, mask)[0], argnums=(0, 1))(pred, target)
  np.testing.assert_allclose(np.asarray(grad_pred), (np.asarray(pred) - np.asarray(target)) * mask / 6, rtol=1e-6)
  assert not np.asarray(grad_target).any()  # targets are constants (bootstrapped values carry no gradient)
  assert float(metrics["value/mse"]) == float(loss) * 2


def test_discounted_targets_are_the_official_recipe_only_with_the_reward_discounted_once():
  """With gamma < 1 the targets are not the official GAE recipe's (r on token n - 1): the reward is the finished
  state's value, one step later, so they equal that recipe with gamma * r on token n - 1 instead."""
  rng = np.random.default_rng(2)
  B, T, gamma = 3, 5, 0.9
  lengths = np.array([5, 2, 3])
  values = rng.normal(size=(B, T + 1)).astype(np.float32)
  reward = rng.normal(size=(B,)).astype(np.float32) + 2.0
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
  ours = np.asarray(td_lambda_returns(values, reward, lengths, gamma=gamma, lam=0.95))[:, :T] * mask

  def official(r):
    token_rewards = np.zeros((B, T), np.float32)
    token_rewards[np.arange(B), lengths - 1] = r
    return np.asarray(gae_advantages(token_rewards, values[:, :T] * mask, mask, gamma=gamma, lam=0.95)[1])

  np.testing.assert_allclose(ours, official(gamma * reward), rtol=1e-5, atol=1e-6)
  assert not np.allclose(ours, official(reward), rtol=1e-3)
  np.testing.assert_allclose(ours[np.arange(B), lengths - 1], gamma * reward, rtol=1e-6)  # official: r


def test_lengths_must_leave_a_slot_for_the_finished_state():
  values = np.zeros((2, 4), np.float32)
  r = jnp.array([1.0, 2.0])
  g = np.asarray(td_lambda_returns(values, r, jnp.array([3, 0])))  # n = S - 1: the last slot is the finished state
  np.testing.assert_allclose(g[:, [3, 0]].diagonal(), [1.0, 2.0])
  for bad in ([4, 1], [1, 7], [-1, 1]):
    with pytest.raises(ValueError, match=r"lengths_B must lie in \[0, S - 1\] = \[0, 3\].*never be placed"):
      td_lambda_returns(values, r, jnp.array(bad))
  jax.jit(td_lambda_returns)(values, r, jnp.array([3, 0]))  # traced lengths are not checked (and need not be)


def test_value_loss_checks_shapes():
  ok = jnp.zeros((2, 3))
  cases = ((ok, jnp.zeros((2, 4)), ok), (ok, ok, jnp.zeros((3, 3))), (jnp.zeros(3), jnp.zeros(3), jnp.ones(3)))
  for pred, target, mask in cases:
    with pytest.raises(ValueError, match=r"predictions_BxS, targets_BxS and mask_BxS must be \(B, S\)"):
      value_regression_loss(pred, target, mask)
  loss, metrics = value_regression_loss(jnp.ones((2, 3), jnp.bfloat16), ok, jnp.ones((2, 3)))
  assert loss.dtype == jnp.float32 and float(loss) == 0.5 and float(metrics["value/mean"]) == 1.0
