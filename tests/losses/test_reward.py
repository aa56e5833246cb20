"""Tests for jaxrlhf.losses.reward: TRL 1.16 RewardTrainer parity, goldens, properties, transformations."""

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_module
from hypothesis import given, settings, strategies as st

from jaxrlhf.losses import reward


def _trl_reward_loss(chosen, rejected, margin, center_coeff):
  """TRL 1.16 RewardTrainer.compute_loss on a bare instance with a fake model that returns the rewards as logits."""
  import torch
  from trl import RewardTrainer

  trainer = object.__new__(RewardTrainer)
  model = types.SimpleNamespace(training=False)
  trainer.model = model
  trainer.args = types.SimpleNamespace(center_rewards_coefficient=center_coeff)
  trainer.accelerator = types.SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x)
  trainer._total_train_tokens = 0
  trainer._metrics = {"eval": collections.defaultdict(list)}
  logits = torch.tensor(np.concatenate([chosen, rejected])[:, None])

  def fake_model(**inputs):
    return types.SimpleNamespace(logits=logits)

  inputs = {"input_ids": torch.zeros((2 * len(chosen), 3), dtype=torch.long),
            "attention_mask": torch.ones((2 * len(chosen), 3))}
  if margin is not None:
    inputs["margin"] = torch.tensor(margin)
  loss = trainer.compute_loss(fake_model, inputs)
  return loss.item(), trainer._metrics["eval"]


@pytest.mark.parity
@pytest.mark.parametrize("use_margin", [False, True])
@pytest.mark.parametrize("center_coeff", [None, 0.01])
@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_bradley_terry_matches_trl_reward_trainer(use_margin, center_coeff, scale):
  require_module("trl")
  rng = np.random.default_rng(int(scale) + use_margin)
  chosen = (rng.normal(size=16) * scale).astype(np.float32)
  rejected = (rng.normal(size=16) * scale).astype(np.float32)
  rejected[:3] = chosen[:3]  # tied pairs: TRL's accuracy counts them as wrong (chosen > rejected strictly)
  margin = rng.uniform(0, 2, size=16).astype(np.float32) if use_margin else None
  want, trl_metrics = _trl_reward_loss(chosen, rejected, margin, center_coeff)
  losses, metrics = reward.bradley_terry_loss(jnp.asarray(chosen), jnp.asarray(rejected), margin=margin,
                                              center_coeff=center_coeff or 0.0)
  assert losses.shape == (16,)
  np.testing.assert_allclose(jnp.mean(losses), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(metrics["rewards/accuracy"], trl_metrics["accuracy"][0], rtol=1e-6)
  np.testing.assert_allclose(metrics["rewards/margin"], trl_metrics["margin"][0], rtol=1e-5, atol=1e-5)


def test_bradley_terry_goldens():
  c, r = jnp.array([2.0, 0.0]), jnp.array([1.0, 1.0])
  softplus = lambda x: np.log1p(np.exp(x))  # -log sigmoid(d) = softplus(-d)
  losses, _ = reward.bradley_terry_loss(c, r)
  np.testing.assert_allclose(losses, [softplus(-1.0), softplus(1.0)], rtol=1e-6)
  losses, _ = reward.bradley_terry_loss(c, r, margin=jnp.array([0.5, jnp.nan]))  # NaN margin = absent = 0
  np.testing.assert_allclose(losses, [softplus(-0.5), softplus(1.0)], rtol=1e-6)
  losses, _ = reward.bradley_terry_loss(c, r, label_smoothing=0.1, center_coeff=0.5)
  want = [0.9 * softplus(-1.0) + 0.1 * softplus(1.0) + 0.5 * 9.0, 0.9 * softplus(1.0) + 0.1 * softplus(-1.0) + 0.5]
  np.testing.assert_allclose(losses, want, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=3, max_size=3), st.lists(st.floats(-20, 20), min_size=3, max_size=3),
       st.floats(0.0, 0.49))
def test_swap_symmetry_and_gradient_signs(c, r, eps):
  c, r = jnp.array(c), jnp.array(r)
  fwd, _ = reward.bradley_terry_loss(c, r, label_smoothing=eps)
  bwd, _ = reward.bradley_terry_loss(r, c, label_smoothing=eps)
  # Swapping the pair is smoothing eps -> 1 - eps, so the two sum to the eps-free symmetric total.
  total = -jax.nn.log_sigmoid(c - r) - jax.nn.log_sigmoid(r - c)
  np.testing.assert_allclose(fwd + bwd, total, rtol=1e-5, atol=1e-5)
  gc, gr = jax.grad(lambda a, b: reward.bradley_terry_loss(a, b, label_smoothing=eps)[0].sum(), (0, 1))(c, r)
  # The loss pushes chosen up and rejected down where the smoothed optimum d* = log((1-eps)/eps) is not reached.
  d = np.asarray(c - r)
  below = d < np.log((1 - eps) / max(eps, 1e-12)) - 1e-3
  assert np.all(np.asarray(gc)[below] < 0) and np.all(np.asarray(gr)[below] > 0)
  np.testing.assert_allclose(gc, -gr, rtol=1e-6, atol=1e-7)


def test_bradley_terry_bad_arguments():
  with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\)"):
    reward.bradley_terry_loss(jnp.ones(2), jnp.ones(2), label_smoothing=0.5)
  with pytest.raises(ValueError, match="label_smoothing"):
    reward.bradley_terry_loss(jnp.ones(2), jnp.ones(2), label_smoothing=-0.1)
  with pytest.raises(ValueError, match="rejected_rewards_B"):
    reward.bradley_terry_loss(jnp.ones(2), jnp.ones(3))
  with pytest.raises(ValueError, match="margin"):
    reward.bradley_terry_loss(jnp.ones(2), jnp.ones(2), margin=jnp.ones(3))


def test_no_nan_for_large_rewards():
  c = jnp.array([1e4, -1e4], jnp.float32)
  r = -c
  losses, _ = reward.bradley_terry_loss(c, r, label_smoothing=0.2)
  g = jax.grad(lambda x: reward.bradley_terry_loss(x, r, label_smoothing=0.2)[0].sum())(c)
  assert bool(jnp.all(jnp.isfinite(losses))) and bool(jnp.all(jnp.isfinite(g)))
  np.testing.assert_allclose(losses, [0.2 * 2e4, 0.8 * 2e4], rtol=1e-6)


def test_preference_strength_and_adaptive_margin():
  chosen = jnp.array([[3.0, 2.0, 4.0], [0.0, 1.0, 0.0]])
  rejected = jnp.array([[1.0, 1.0, 1.0], [1.0, 0.0, 2.0]])
  mean, std = reward.preference_strength(chosen, rejected)
  d = np.array([[2.0, 1.0, 3.0], [-1.0, 1.0, -2.0]])
  np.testing.assert_allclose(mean, d.mean(1), rtol=1e-6)
  np.testing.assert_allclose(std, d.std(1), rtol=1e-6)  # population std
  margin = reward.adaptive_margin(mean, 0.5)
  np.testing.assert_allclose(margin, 0.5 * d.mean(1), rtol=1e-6)
  np.testing.assert_allclose(reward.adaptive_margin(mean, 0.5, clip_min=0.0), [1.0, 0.0], rtol=1e-6)
  # The margin is a constant for the trained model.
  assert float(jax.grad(lambda m: reward.adaptive_margin(m).sum())(mean).sum()) == 0.0
  with pytest.raises(ValueError, match="rejected_rewards_BxM"):
    reward.preference_strength(chosen, rejected[:, :2])


def test_attribute_regression_and_scalarization():
  pred = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
  target = jnp.array([[2.0, 2.0, jnp.nan], [1.0, 3.0, 0.0], [jnp.nan, jnp.nan, jnp.nan]])
  mask = jnp.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
  losses, metrics = reward.attribute_regression_loss(pred, target, mask)
  np.testing.assert_allclose(losses, [0.5, 10.0 / 3.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(metrics["attributes/mse"], 11.0 / 5.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["attributes/mse_k"], [1.0, 4.5, 0.0], rtol=1e-6)
  g = jax.grad(lambda p: reward.attribute_regression_loss(p, target, mask)[0].sum())(pred)
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g[2]).sum()) == 0.0  # NaN targets never leak
  np.testing.assert_allclose(reward.attribute_regression_loss(pred[:2], jnp.nan_to_num(target[:2]))[0],
                             [(1 + 0 + 9) / 3, 10 / 3], rtol=1e-6)
  np.testing.assert_allclose(reward.scalarize_attributes(pred, jnp.array([0.5, -1.0, 2.0])), [4.5, 0.0, 1.5])
  with pytest.raises(ValueError, match="weights_K"):
    reward.scalarize_attributes(pred, jnp.ones(2))
  with pytest.raises(ValueError, match="mask_BxK"):
    reward.attribute_regression_loss(pred, target, mask[:, :2])


def test_jit_vmap_grad_bf16():
  rng = np.random.default_rng(0)
  c = jnp.asarray(rng.normal(size=(2, 5)), jnp.bfloat16)
  r = jnp.asarray(rng.normal(size=(2, 5)), jnp.bfloat16)
  f = lambda a, b: reward.bradley_terry_loss(a, b, margin=0.1, label_smoothing=0.1, center_coeff=0.01)
  losses, metrics = jax.jit(jax.vmap(f))(c, r)
  assert losses.dtype == jnp.float32 and losses.shape == (2, 5) and metrics["rewards/accuracy"].shape == (2,)
  np.testing.assert_allclose(losses, jax.vmap(f)(c.astype(jnp.float32), r.astype(jnp.float32))[0], rtol=1e-6)
  g = jax.grad(lambda a: f(a, r[0])[0].mean())(c[0])
  assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))
