"""Tests for jaxrlhf.losses.policy_gradient: goldens, TRL 1.16 GRPOTrainer parity, KL estimator properties."""

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_module
from hypothesis import given, settings, strategies as st

from jaxrlhf.losses import policy_gradient as pg


# ---------------------------------------------------------------- advantages

def test_group_advantages_golden():
  # Group [1, 2, 3]: mean 2, Bessel std 1. Group [4, 5, 7]: mean 16/3, std sqrt(7/3).
  r = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 7.0])
  adv = pg.group_advantages(r, 3, eps=0.0)
  s2 = np.sqrt(7.0 / 3.0)
  want = [-1.0, 0.0, 1.0, (4 - 16 / 3) / s2, (5 - 16 / 3) / s2, (7 - 16 / 3) / s2]
  np.testing.assert_allclose(adv, want, rtol=1e-6)
  np.testing.assert_allclose(pg.group_advantages(r, 3, scale_rewards="none"),
                             [-1, 0, 1, 4 - 16 / 3, 5 - 16 / 3, 7 - 16 / 3], rtol=1e-6)
  # "batch": group means, batch std (ddof=1).
  np.testing.assert_allclose(pg.group_advantages(r, 3, scale_rewards="batch", eps=0.0),
                             (r - jnp.array([2.0] * 3 + [16 / 3] * 3)) / np.std(np.asarray(r), ddof=1), rtol=1e-6)


def _trl_group_advantages(rewards: np.ndarray, num_generations: int, scale_rewards: str) -> np.ndarray:
  """TRL 1.16 GRPOTrainer._generate_and_score_completions (sum_then_normalize), transcribed; uses TRL's nanstd."""
  import torch
  from trl.trainer.utils import nanstd

  rewards = torch.tensor(rewards, dtype=torch.float32)
  mean_grouped = torch.nanmean(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations, dim=0)
  if scale_rewards in ["group", "none"]:
    if num_generations > 1:
      std = nanstd(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations, dim=0)
    else:
      std = torch.zeros_like(rewards)
  else:
    std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
  adv = rewards - mean_grouped
  if scale_rewards != "none":
    adv = adv / (std + 1e-4)
  return torch.nan_to_num(adv, nan=0.0).numpy()


@pytest.mark.parity
@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_group_advantages_match_trl(scale_rewards, group_size):
  require_module("trl")
  rng = np.random.default_rng(group_size)
  r = rng.normal(size=8).astype(np.float32) * 3
  r[5] = np.nan  # an unscorable completion
  r[0:2] = 0.5 if group_size == 2 else r[0:2]  # a zero-std group
  ours = pg.group_advantages(jnp.asarray(r), group_size, scale_rewards=scale_rewards)
  np.testing.assert_allclose(ours, _trl_group_advantages(r, group_size, scale_rewards), rtol=1e-5, atol=1e-5)


def test_rloo_golden_and_trl_formula():
  r = jnp.array([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
  # Leave-one-out: 1 - (2+6)/2 = -3, 2 - 3.5 = -1.5, 6 - 1.5 = 4.5; 0 - 1.5, 0 - 1.5, 3 - 0.
  np.testing.assert_allclose(pg.rloo_advantages(r, 3), [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
  # Equivalent form G/(G-1) * (r - mean).
  g = np.asarray(r).reshape(2, 3)
  np.testing.assert_allclose(pg.rloo_advantages(r, 3), (1.5 * (g - g.mean(1, keepdims=True))).ravel(), rtol=1e-6)
  # NaN excluded from the baseline (divisor = valid count - 1) and zeroed, as TRL's RLOOTrainer.
  rn = jnp.array([1.0, jnp.nan, 3.0, 5.0])
  np.testing.assert_allclose(pg.rloo_advantages(rn, 4), [1 - 4, 0.0, 3 - 3, 5 - 2])
  np.testing.assert_allclose(pg.rloo_advantages(r, 1), np.zeros(6))
  norm = pg.rloo_advantages(r, 3, normalize=True, eps=0.0)
  np.testing.assert_allclose(np.mean(norm), 0.0, atol=1e-6)
  np.testing.assert_allclose(np.std(norm, ddof=1), 1.0, rtol=1e-5)


def test_advantage_bad_arguments():
  with pytest.raises(ValueError, match="scale_rewards.*group.*batch.*none"):
    pg.group_advantages(jnp.ones(4), 2, scale_rewards="std")
  with pytest.raises(ValueError, match="group_size"):
    pg.group_advantages(jnp.ones(5), 2)
  with pytest.raises(ValueError, match="rewards_B"):
    pg.rloo_advantages(jnp.ones((2, 2)), 2)


# ---------------------------------------------------------------- clipped surrogate vs TRL

def _trl_grpo_loss(logps, old_logps, ref_logps, adv, mask, *, loss_type, beta, eps, eps_high, max_len):
  """Runs TRL 1.16 GRPOTrainer._compute_loss on a bare instance whose log-prob function returns `logps`."""
  import torch
  from trl import GRPOTrainer

  trainer = object.__new__(GRPOTrainer)
  logps_t = torch.tensor(logps, requires_grad=True)

  def fake_logps(*args, **kwargs):
    return logps_t, torch.zeros_like(logps_t), None

  trainer._get_per_token_logps_and_entropies = fake_logps
  trainer.aux_loss_enabled = False
  trainer.top_entropy_quantile = 1.0
  trainer.off_policy_mask_threshold = None
  trainer.importance_sampling_level = "token"
  trainer.beta = beta
  trainer.loss_type = loss_type
  trainer.epsilon_low, trainer.epsilon_high = eps, eps_high
  trainer.use_vllm = False
  trainer.max_completion_length = max_len
  trainer._entropy_bonus_enabled = False
  trainer.args = types.SimpleNamespace(use_bias_correction_kl=False, delta=None)
  trainer.model = types.SimpleNamespace(training=False)
  trainer.accelerator = types.SimpleNamespace(reduce=lambda x, reduction: x, gather=lambda x: x)
  trainer._metrics = {"eval": collections.defaultdict(list)}
  b, t = logps.shape
  inputs = {
      "prompt_ids": torch.zeros((b, 1), dtype=torch.long), "prompt_mask": torch.ones((b, 1)),
      "completion_ids": torch.zeros((b, t), dtype=torch.long), "completion_mask": torch.tensor(mask),
      "advantages": torch.tensor(adv), "old_per_token_logps": torch.tensor(old_logps),
      "ref_per_token_logps": torch.tensor(ref_logps),
  }
  loss = trainer._compute_loss(None, inputs)
  loss.backward()
  return loss.item(), logps_t.grad.numpy(), trainer._metrics["eval"]


@pytest.mark.parity
@pytest.mark.parametrize("loss_type,aggregation", [("grpo", "sequence_mean"), ("bnpo", "token_mean"),
                                                   ("dr_grpo", "dr_grpo")])
@pytest.mark.parametrize("beta,eps_high", [(0.0, 0.2), (0.04, 0.28)])
def test_clipped_policy_loss_matches_trl_grpo(loss_type, aggregation, beta, eps_high):
  require_module("trl")
  rng = np.random.default_rng(0)
  b, t, max_len = 4, 6, 8
  logps = rng.normal(-2.0, 1.0, (b, t)).astype(np.float32)
  old = (logps + rng.normal(0.0, 0.4, (b, t))).astype(np.float32)  # ratios well outside [0.8, 1.28]
  ref = (logps + rng.normal(0.0, 0.5, (b, t))).astype(np.float32)
  adv = rng.normal(size=b).astype(np.float32)
  mask = np.ones((b, t), np.float32)
  mask[1, 4:] = 0
  mask[3, 2:] = 0
  want, want_grad, trl_metrics = _trl_grpo_loss(logps, old, ref, adv, mask, loss_type=loss_type, beta=beta,
                                                eps=0.2, eps_high=eps_high, max_len=max_len)

  def f(lp):
    return pg.clipped_policy_loss(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), epsilon=0.2,
                                  epsilon_high=eps_high, loss_aggregation=aggregation, ref_logps_BxT=jnp.asarray(ref),
                                  kl_coeff=beta, max_length=max_len)

  (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logps))
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
  for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
    np.testing.assert_allclose(metrics[key], trl_metrics[key][0], rtol=1e-6, err_msg=key)
  if beta:
    np.testing.assert_allclose(metrics["kl"], trl_metrics["kl"][0], rtol=1e-5)


def test_clipped_surrogate_golden():
  # ratio 1.5 with A=+1 is clipped to 1.2 (loss -1.2); with epsilon_high 0.6 it is not (-1.5).
  # ratio 0.5 with A=-1 is clipped to 0.8 from below: -min(-0.5, -0.8) = 0.8.
  lp = jnp.log(jnp.array([[1.5, 0.5]]))
  old = jnp.zeros((1, 2))
  mask = jnp.ones((1, 2))
  loss, m = pg.clipped_surrogate(lp, old, jnp.array([[1.0, -1.0]]), mask, epsilon=0.2)
  np.testing.assert_allclose(loss, [[-1.2, 0.8]], rtol=1e-6)
  loss, m = pg.clipped_surrogate(lp, old, jnp.array([[1.0, -1.0]]), mask, epsilon=0.2, epsilon_high=0.6)
  np.testing.assert_allclose(loss, [[-1.5, 0.8]], rtol=1e-6)
  np.testing.assert_allclose([m["clip_ratio/low_mean"], m["clip_ratio/high_mean"]], [0.5, 0.0])
  # On-policy (old None): value -A, gradient -A * dlogp.
  g = jax.grad(lambda x: pg.clipped_surrogate(x, None, jnp.array([2.0]), jnp.ones((1, 2)))[0].sum())(lp)
  np.testing.assert_allclose(g, [[-2.0, -2.0]])


def test_aggregate_token_losses_golden():
  loss = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1], [1, 0, 0]])
  np.testing.assert_allclose(pg.aggregate_token_losses(loss, mask, "token_mean"), 10 / 4)
  np.testing.assert_allclose(pg.aggregate_token_losses(loss, mask, "sequence_mean"), (2.0 + 4.0) / 2)
  np.testing.assert_allclose(pg.aggregate_token_losses(loss, mask, "dr_grpo"), 10 / 6)
  np.testing.assert_allclose(pg.aggregate_token_losses(loss, mask, "dr_grpo", max_length=5), 10 / 10)
  with pytest.raises(ValueError, match="mode.*token_mean.*sequence_mean.*dr_grpo"):
    pg.aggregate_token_losses(loss, mask, "mean")
  with pytest.raises(ValueError, match="loss_aggregation"):
    pg.clipped_policy_loss(loss, None, jnp.ones(2), mask, loss_aggregation="sum")
  with pytest.raises(ValueError, match="advantages"):
    pg.clipped_surrogate(loss, None, jnp.ones(3), mask)
  with pytest.raises(ValueError, match="ref_logps_BxT"):
    pg.clipped_policy_loss(loss, None, jnp.ones(2), mask, kl_coeff=0.1)


# ---------------------------------------------------------------- KL estimators

def test_kl_estimator_goldens():
  lp = jnp.array([[-1.0, -2.0, -0.5]])
  ref = jnp.array([[-1.5, -1.0, -0.5]])
  mask = jnp.array([[1, 1, 0]])
  log_r = np.array([-0.5, 1.0, 0.0])
  np.testing.assert_allclose(pg.kl_divergence(lp, ref, mask, estimator="k1"), [[0.5, -1.0, 0.0]])
  np.testing.assert_allclose(pg.kl_divergence(lp, ref, mask, estimator="k2"), [[0.125, 0.5, 0.0]])
  want_k3 = np.exp(log_r) - log_r - 1
  want_k3[2] = 0.0
  np.testing.assert_allclose(pg.kl_divergence(lp, ref, mask, estimator="k3"), [want_k3], rtol=1e-6)
  with pytest.raises(ValueError, match="estimator.*k1.*k2.*k3"):
    pg.kl_divergence(lp, ref, mask, estimator="k4")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-30, 0), min_size=4, max_size=4), st.lists(st.floats(-30, 0), min_size=4, max_size=4))
def test_k3_and_k2_nonnegative(a, b):
  lp, ref = jnp.array([a]), jnp.array([b])
  for est in ("k2", "k3"):
    kl = pg.kl_divergence(lp, ref, jnp.ones((1, 4)), estimator=est)
    assert bool(jnp.all(kl >= 0)) and bool(jnp.all(jnp.isfinite(kl)))


def test_kl_estimators_unbiased_on_sampled_distribution():
  p = np.array([0.5, 0.3, 0.15, 0.05])   # policy (sampling distribution)
  q = np.array([0.25, 0.25, 0.25, 0.25])  # reference
  true_kl = float(np.sum(p * np.log(p / q)))
  y = jax.random.categorical(jax.random.PRNGKey(0), jnp.log(jnp.asarray(p)), shape=(400_000,))
  lp = jnp.log(jnp.asarray(p))[y][None]
  ref = jnp.log(jnp.asarray(q))[y][None]
  mask = jnp.ones_like(lp)
  for est in ("k1", "k3"):  # unbiased
    est_kl = float(jnp.mean(pg.kl_divergence(lp, ref, mask, estimator=est)))
    assert abs(est_kl - true_kl) < 0.01, (est, est_kl, true_kl)
  # k3 has lower variance than k1 here (Schulman 2020).
  assert float(jnp.var(pg.kl_divergence(lp, ref, mask, estimator="k3"))) < float(
      jnp.var(pg.kl_divergence(lp, ref, mask, estimator="k1")))


def test_kl_penalized_token_rewards_golden():
  kl = jnp.array([[0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]])
  out = pg.kl_penalized_token_rewards(jnp.array([5.0, -1.0]), kl, mask, beta=0.5)
  np.testing.assert_allclose(out, [[-0.05, -0.1, -0.15, 5.0 - 0.2], [-0.5, -1.0 - 0.5, 0.0, 0.0]], rtol=1e-6)


# ---------------------------------------------------------------- process rewards (Gao et al. 2024)

def test_clip_and_delta_goldens():
  r = jnp.array([[0.9, 0.4, 0.7, 5.0], [0.2, 0.8, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  np.testing.assert_allclose(pg.clip_process_rewards(r, mask, eta=0.5),
                             [[0.0, -0.1, 0.0, 0.0], [-0.3, 0.0, 0.0, 0.0]], atol=1e-6)
  delta = pg.delta_process_rewards(r, mask)
  np.testing.assert_allclose(delta, [[0.5, -0.3, 0.7, 0.0], [-0.6, 0.8, 0.0, 0.0]], atol=1e-6)
  # Return-to-go telescopes to the step's own reward.
  rtg = jnp.cumsum(delta[:, ::-1], axis=1)[:, ::-1]
  np.testing.assert_allclose(jnp.where(mask > 0, rtg, 0), jnp.where(mask > 0, r, 0), atol=1e-6)
  with pytest.raises(ValueError, match="mask_BxS"):
    pg.delta_process_rewards(r, mask[:, :3])


# ---------------------------------------------------------------- transformations, dtypes

def test_jit_vmap_grad_bf16():
  rng = np.random.default_rng(1)
  lp = jnp.asarray(rng.normal(-1, 0.3, (2, 4, 5)), jnp.bfloat16)
  old = jnp.asarray(rng.normal(-1, 0.3, (2, 4, 5)), jnp.bfloat16)
  adv = jnp.asarray(rng.normal(size=(2, 4)), jnp.bfloat16)
  mask = jnp.ones((2, 4, 5))

  def f(lp, old, adv, mask):
    return pg.clipped_policy_loss(lp, old, adv, mask, ref_logps_BxT=old, kl_coeff=0.1,
                                  loss_aggregation="sequence_mean")[0]

  batched = jax.jit(jax.vmap(f))
  out = batched(lp, old, adv, mask)
  assert out.dtype == jnp.float32 and out.shape == (2,)
  ref = batched(lp.astype(jnp.float32), old.astype(jnp.float32), adv.astype(jnp.float32), mask)
  np.testing.assert_allclose(out, ref, rtol=1e-6)
  g = jax.jit(jax.grad(lambda x: f(x, old[0], adv[0], mask[0])))(lp[0])
  assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))
  adv_g = jax.jit(pg.group_advantages, static_argnums=1)(jnp.arange(8.0, dtype=jnp.bfloat16), 4)
  assert adv_g.dtype == jnp.float32
  g = jax.jit(jax.grad(lambda r: pg.group_advantages(r, 4)[0] + pg.rloo_advantages(r, 4, normalize=True)[0]))
  assert bool(jnp.all(jnp.isfinite(g(jnp.ones(8)))))  # zero-variance groups keep finite gradients

