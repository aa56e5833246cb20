"""Tests for jaxrlhf.losses.ppo: hand goldens and parity with TRL's PPOTrainer code.

TRL 1.16 (installed) no longer ships PPO. The references below are TRL's torch expressions transcribed line for line
from TRL v1.9.0 (the same code is in trl main at 1.10.0.dev0), file trl/experimental/ppo/ppo_trainer.py:
masked_mean / masked_var / masked_whiten (lines 237-270, less masked_var's empty-mask error), rollout rewards, GAE and
whitening (lines 763-798), and the minibatch policy / value losses (lines 824-854); the adaptive KL controller from
TRL v0.13.0, trl/trainer/utils.py lines 66-80 (removed from TRL in #2480).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.losses import ppo

INVALID_LOGPROB = 1.0  # ppo_trainer.py line 69


# ---------------------------------------------------------------- TRL v1.9.0 references (transcribed)

def _trl_masked_mean(values, mask, axis=None):
  if axis is not None:
    return (values * mask).sum(axis=axis) / mask.sum(axis=axis)
  else:
    return (values * mask).sum() / mask.sum()


def _trl_masked_var(values, mask, unbiased=True):
  mean = _trl_masked_mean(values, mask)
  centered_values = values - mean
  variance = _trl_masked_mean(centered_values**2, mask)
  if unbiased:
    mask_sum = mask.sum()
    bessel_correction = mask_sum / (mask_sum - 1)
    variance = variance * bessel_correction
  return variance


def _trl_masked_whiten(values, mask, shift_mean=True):
  import torch

  mean, var = _trl_masked_mean(values, mask), _trl_masked_var(values, mask)
  whitened = (values - mean) * torch.rsqrt(var + 1e-8)
  if not shift_mean:
    whitened += mean
  return whitened


def _trl_rollout(logprobs, ref_logprobs, values, scores, sequence_lengths, *, kl_coef, gamma, lam, kl_estimator,
                 whiten_rewards):
  """ppo_trainer.py lines 763-798: masks, per-token rewards, (reward whitening), GAE, advantage whitening."""
  import torch

  logprobs, ref_logprobs, values = (torch.tensor(x) for x in (logprobs, ref_logprobs, values))
  scores, sequence_lengths = torch.tensor(scores), torch.tensor(sequence_lengths)
  responses = logprobs
  response_idxs = torch.arange(responses.shape[1], device=responses.device).repeat(responses.shape[0], 1)
  padding_mask = response_idxs > sequence_lengths.unsqueeze(1)
  logprobs = torch.masked_fill(logprobs, padding_mask, INVALID_LOGPROB)
  ref_logprobs = torch.masked_fill(ref_logprobs, padding_mask, INVALID_LOGPROB)
  sequence_lengths_p1 = sequence_lengths + 1
  padding_mask_p1 = response_idxs > (sequence_lengths_p1.unsqueeze(1))
  values = torch.masked_fill(values, padding_mask_p1, 0)

  logr = ref_logprobs - logprobs
  kl = -logr if kl_estimator == "k1" else (logr.exp() - 1) - logr  # Else statement is k3
  non_score_reward = -kl_coef * kl
  rewards = non_score_reward.clone()
  actual_start = torch.arange(rewards.size(0), device=rewards.device)
  actual_end = torch.where(sequence_lengths_p1 < rewards.size(1), sequence_lengths_p1, sequence_lengths)
  rewards[actual_start, actual_end] += scores

  if whiten_rewards:
    rewards = _trl_masked_whiten(rewards, mask=~padding_mask_p1, shift_mean=False)
    rewards = torch.masked_fill(rewards, padding_mask_p1, 0)

  lastgaelam = 0
  advantages_reversed = []
  gen_length = responses.shape[1]
  for t in reversed(range(gen_length)):
    nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
    delta = rewards[:, t] + gamma * nextvalues - values[:, t]
    lastgaelam = delta + gamma * lam * lastgaelam
    advantages_reversed.append(lastgaelam)
  advantages = torch.stack(advantages_reversed[::-1], axis=1)
  returns = advantages + values
  advantages = _trl_masked_whiten(advantages, ~padding_mask)
  advantages = torch.masked_fill(advantages, padding_mask, 0)
  return dict(advantages=advantages.numpy(), returns=returns.numpy(), values=values.numpy(),
              logprobs=logprobs.numpy(), padding_mask=padding_mask.numpy(), padding_mask_p1=padding_mask_p1.numpy(),
              mean_kl=kl.sum(1).mean().item(), mean_non_score_reward=non_score_reward.sum(1).mean().item())


def _trl_minibatch_loss(new_logprobs, vpred_temp, mb_logprobs, mb_values, mb_return, mb_advantage, padding_mask,
                        padding_mask_p1, *, cliprange, cliprange_value, vf_coef):
  """ppo_trainer.py lines 824-854 on one micro-batch; returns the loss, its gradients and the clip fractions."""
  import torch

  new_logprobs = torch.tensor(new_logprobs, requires_grad=True)
  vpred_temp = torch.tensor(vpred_temp, requires_grad=True)
  mb_logprobs, mb_values, mb_return, mb_advantage = (torch.tensor(x) for x in (mb_logprobs, mb_values, mb_return,
                                                                               mb_advantage))
  padding_mask, padding_mask_p1 = torch.tensor(padding_mask), torch.tensor(padding_mask_p1)
  logprobs_in = torch.masked_fill(new_logprobs, padding_mask, INVALID_LOGPROB)
  vpred = torch.masked_fill(vpred_temp, padding_mask_p1, 0)
  vpredclipped = torch.clamp(
      vpred,
      mb_values - cliprange_value,
      mb_values + cliprange_value,
  )
  vf_losses1 = torch.square(vpred - mb_return)
  vf_losses2 = torch.square(vpredclipped - mb_return)
  vf_loss_max = torch.max(vf_losses1, vf_losses2)
  vf_loss = 0.5 * _trl_masked_mean(vf_loss_max, ~padding_mask_p1)
  vf_clipfrac = _trl_masked_mean((vf_losses2 > vf_losses1).float(), ~padding_mask_p1)
  logprobs_diff = logprobs_in - mb_logprobs
  ratio = torch.exp(logprobs_diff)
  pg_losses = -mb_advantage * ratio
  pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
  pg_loss_max = torch.max(pg_losses, pg_losses2)
  pg_loss = _trl_masked_mean(pg_loss_max, ~padding_mask)
  loss = pg_loss + vf_coef * vf_loss
  loss.backward()
  pg_clipfrac = _trl_masked_mean((pg_losses2 > pg_losses).float(), ~padding_mask)
  return dict(loss=loss.item(), pg_loss=pg_loss.item(), vf_loss=vf_loss.item(), vf_clipfrac=vf_clipfrac.item(),
              pg_clipfrac=pg_clipfrac.item(), grad_logprobs=new_logprobs.grad.numpy(),
              grad_values=vpred_temp.grad.numpy())


class _TRLAdaptiveKLController:
  """TRL v0.13.0 trl/trainer/utils.py lines 66-80 (numpy)."""

  def __init__(self, init_kl_coef, target, horizon):
    self.value = init_kl_coef
    self.target = target
    self.horizon = horizon

  def update(self, current, n_steps):
    target = self.target
    proportional_error = np.clip(current / target - 1, -0.2, 0.2)
    mult = 1 + proportional_error * n_steps / self.horizon
    self.value *= mult


def _random_rollout(seed, b=6, t=7):
  rng = np.random.default_rng(seed)
  logprobs = rng.normal(-2.0, 1.0, (b, t)).astype(np.float32)
  ref = (logprobs + rng.normal(0.0, 0.5, (b, t))).astype(np.float32)
  values = rng.normal(0.0, 1.0, (b, t)).astype(np.float32)
  scores = rng.normal(0.0, 2.0, b).astype(np.float32)
  # Index of the last real token: full length (t - 1), one short of full (its p1 token is the last one), short,
  # and a single-token response.
  seq_lens = np.array([t - 1, t - 2, 2, 0, 4, 3][:b], np.int64)
  return logprobs, ref, values, scores, seq_lens


# ---------------------------------------------------------------- whitening, GAE

@pytest.mark.parity
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_trl(shift_mean):
  import torch

  rng = np.random.default_rng(3)
  x = rng.normal(2.0, 3.0, (4, 6)).astype(np.float32)
  mask = rng.random((4, 6)) > 0.4
  want = _trl_masked_whiten(torch.tensor(x), torch.tensor(mask), shift_mean=shift_mean).numpy()
  got = ppo.masked_whiten(jnp.asarray(x), jnp.asarray(mask), shift_mean=shift_mean)
  np.testing.assert_allclose(got, np.where(mask, want, 0.0), rtol=1e-5, atol=1e-5)
  if shift_mean:
    np.testing.assert_allclose(np.mean(np.asarray(got)[mask]), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.std(np.asarray(got)[mask], ddof=1), 1.0, rtol=1e-5)
  # One valid entry: variance 0 -> a finite 0 (TRL would divide by zero).
  one = ppo.masked_whiten(jnp.asarray(x), jnp.zeros((4, 6)).at[1, 2].set(1))
  assert bool(jnp.all(jnp.isfinite(one))) and float(jnp.abs(one).max()) == 0.0


def test_gae_golden():
  # Row 0: r = [1, 0, 2], V = [0.5, 1, 1.5], gamma 0.9, lam 0.8 (gamma * lam = 0.72):
  #   delta = [1 + 0.9 - 0.5, 0 + 1.35 - 1, 2 + 0 - 1.5] = [1.4, 0.35, 0.5]
  #   A = [1.4 + 0.72 * 0.71, 0.35 + 0.72 * 0.5, 0.5] = [1.9112, 0.71, 0.5],  R = A + V.
  # Row 1: padding (huge values) is ignored; V after the last real token is 0.
  rewards = jnp.array([[1.0, 0.0, 2.0], [1.0, 2.0, 99.0]])
  values = jnp.array([[0.5, 1.0, 1.5], [0.5, 1.0, 77.0]])
  mask = jnp.array([[1, 1, 1], [1, 1, 0]])
  adv, ret = ppo.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
  np.testing.assert_allclose(adv, [[1.9112, 0.71, 0.5], [2.12, 1.0, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(ret, [[2.4112, 1.71, 2.0], [2.62, 2.0, 0.0]], rtol=1e-6)


def test_gae_limits():
  rng = np.random.default_rng(0)
  r = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  mask = jnp.array([[1] * 5, [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
  rm = jnp.where(mask > 0, r, 0.0)
  # lam = gamma = 1: returns are Monte-Carlo returns-to-go, A = G - V.
  adv, ret = ppo.gae_advantages(r, v, mask, gamma=1.0, lam=1.0)
  mc = jnp.cumsum(rm[:, ::-1], axis=1)[:, ::-1]
  np.testing.assert_allclose(ret, jnp.where(mask > 0, mc, 0.0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(adv, jnp.where(mask > 0, mc - v, 0.0), rtol=1e-5, atol=1e-6)
  # lam = 0: one-step TD errors.
  adv, _ = ppo.gae_advantages(r, v, mask, gamma=0.5, lam=0.0)
  vm = jnp.where(mask > 0, v, 0.0)
  next_v = jnp.concatenate([vm[:, 1:], jnp.zeros((3, 1))], axis=1)
  np.testing.assert_allclose(adv, jnp.where(mask > 0, rm + 0.5 * next_v - vm, 0.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parity
@pytest.mark.parametrize("kl_estimator,whiten_rewards,gamma,lam", [("k1", False, 1.0, 0.95), ("k3", False, 0.9, 0.8),
                                                                   ("k1", True, 0.99, 0.95)])
def test_ppo_advantages_match_trl(kl_estimator, whiten_rewards, gamma, lam):
  logprobs, ref, values, scores, seq_lens = _random_rollout(0)
  want = _trl_rollout(logprobs, ref, values, scores, seq_lens, kl_coef=0.05, gamma=gamma, lam=lam,
                      kl_estimator=kl_estimator, whiten_rewards=whiten_rewards)
  mask, value_mask = ~want["padding_mask"], ~want["padding_mask_p1"]
  adv, ret, metrics = ppo.ppo_advantages(jnp.asarray(scores), jnp.asarray(logprobs), jnp.asarray(ref),
                                         jnp.asarray(values), jnp.asarray(mask), kl_coef=0.05, gamma=gamma, lam=lam,
                                         kl_estimator=kl_estimator, whiten_rewards=whiten_rewards,
                                         value_mask_BxT=jnp.asarray(value_mask))
  np.testing.assert_allclose(adv, want["advantages"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, want["returns"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(metrics["objective/kl"], want["mean_kl"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["objective/non_score_reward"], want["mean_non_score_reward"], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(metrics["objective/rlhf_reward"], want["mean_non_score_reward"] + scores.mean(),
                             rtol=1e-5)


def test_ppo_advantages_one_mask_puts_score_on_last_token():
  # With a single mask the score lands on the last real token and advantages are whitened over the same tokens.
  scores = jnp.array([3.0, -1.0])
  lp = jnp.full((2, 4), -1.0)
  mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])
  adv, ret, _ = ppo.ppo_advantages(scores, lp, lp, jnp.zeros((2, 4)), mask, kl_coef=0.1, gamma=1.0, lam=1.0)
  # KL 0 and V 0: returns are the score on every real token.
  np.testing.assert_allclose(ret, [[3.0, 3.0, 3.0, 0.0], [-1.0] * 4], rtol=1e-6)
  assert float(adv[0, 0]) > 0 > float(adv[1, 0]) and float(adv[0, 3]) == 0.0


# ---------------------------------------------------------------- losses

def test_clipped_value_loss_golden():
  # V_old = 1, c = 0.2, R = 2. V = 1.5: clipped to 1.2, max((1.5-2)^2, (1.2-2)^2) = 0.64 -> 0.32 (clipped term).
  # V = 1.1: inside the range, 0.5 * 0.81 = 0.405. V = 0.5 (R = 0): clip 0.8, max(0.25, 0.64) -> 0.32.
  v = jnp.array([[1.5, 1.1, 0.5, 9.0]])
  old = jnp.ones((1, 4))
  ret = jnp.array([[2.0, 2.0, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 0]])
  loss, m = ppo.clipped_value_loss(v, old, ret, mask, clip_range_value=0.2)
  np.testing.assert_allclose(loss, [[0.32, 0.405, 0.32, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(m["value/clipfrac"], 2 / 3, rtol=1e-6)
  loss, m = ppo.clipped_value_loss(v, old, ret, mask, clip_range_value=None)
  np.testing.assert_allclose(loss, [[0.125, 0.405, 0.125, 0.0]], rtol=1e-6)
  assert float(m["value/clipfrac"]) == 0.0
  # The gradient pulls V towards R where unclipped (V = 1.1 < R: negative gradient) and vanishes where the clipped
  # term is the max and constant in V (V = 1.5 is beyond V_old + c).
  g = jax.grad(lambda x: ppo.clipped_value_loss(x, old, ret, mask)[0].sum())(v)
  np.testing.assert_allclose(g, [[0.0, -0.9, 0.0, 0.0]], atol=1e-6)


@pytest.mark.parity
@pytest.mark.parametrize("cliprange_value", [0.2, 10.0])
def test_ppo_loss_matches_trl(cliprange_value):
  logprobs, ref, values, scores, seq_lens = _random_rollout(1)
  roll = _trl_rollout(logprobs, ref, values, scores, seq_lens, kl_coef=0.05, gamma=1.0, lam=0.95,
                      kl_estimator="k1", whiten_rewards=False)
  rng = np.random.default_rng(2)
  new_logprobs = (logprobs + rng.normal(0.0, 0.3, logprobs.shape)).astype(np.float32)  # ratios beyond 1 +- 0.2
  vpred = (roll["values"] + rng.normal(0.0, 0.5, values.shape)).astype(np.float32)
  want = _trl_minibatch_loss(new_logprobs, vpred, roll["logprobs"], roll["values"], roll["returns"],
                             roll["advantages"], roll["padding_mask"], roll["padding_mask_p1"], cliprange=0.2,
                             cliprange_value=cliprange_value, vf_coef=0.1)
  mask, value_mask = jnp.asarray(~roll["padding_mask"]), jnp.asarray(~roll["padding_mask_p1"])

  def f(lp, v):
    return ppo.ppo_loss(lp, jnp.asarray(logprobs), jnp.asarray(roll["advantages"]), v, jnp.asarray(roll["values"]),
                        jnp.asarray(roll["returns"]), mask, value_mask_BxT=value_mask, clip_range=0.2,
                        clip_range_value=cliprange_value, vf_coef=0.1)

  (loss, metrics), (g_lp, g_v) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(jnp.asarray(new_logprobs),
                                                                                       jnp.asarray(vpred))
  np.testing.assert_allclose(loss, want["loss"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["loss/policy"], want["pg_loss"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["loss/value"], want["vf_loss"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_lp, want["grad_logprobs"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_v, want["grad_values"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["policy/clipfrac"], want["pg_clipfrac"], rtol=1e-6)
  np.testing.assert_allclose(metrics["value/clipfrac"], want["vf_clipfrac"], rtol=1e-6)
  assert 0.0 < want["pg_clipfrac"] < 1.0 and (cliprange_value > 1 or 0.0 < want["vf_clipfrac"] < 1.0)


# ---------------------------------------------------------------- KL controllers

def test_adaptive_kl_matches_trl_and_golden():
  # Ziegler et al.: KL 9 vs target 6 -> error clipped to 0.2; n_steps 512, horizon 10000 -> beta * 1.01024.
  np.testing.assert_allclose(ppo.adaptive_kl_coef(0.2, 9.0, 512, target=6.0, horizon=10000),
                             0.2 * (1 + 0.2 * 512 / 10000), rtol=1e-6)
  np.testing.assert_allclose(ppo.adaptive_kl_coef(0.2, 5.4, 100, target=6.0, horizon=1000),
                             0.2 * (1 - 0.1 * 0.1), rtol=1e-6)
  trl = _TRLAdaptiveKLController(0.05, target=4.0, horizon=2000)
  step = jax.jit(lambda beta, kl: ppo.update_kl_coef("adaptive", beta, kl, 64, target=4.0, horizon=2000))
  beta = jnp.float32(0.05)
  for kl in np.random.default_rng(0).uniform(0.0, 10.0, 50):
    trl.update(kl, 64)
    beta = step(beta, jnp.float32(kl))
    np.testing.assert_allclose(beta, trl.value, rtol=1e-5)
  assert float(ppo.update_kl_coef("fixed", 0.05, 100.0, 64)) == np.float32(0.05)
  with pytest.raises(ValueError, match="kl controller.*fixed.*adaptive"):
    ppo.update_kl_coef("pid", 0.1, 1.0, 1)
  with pytest.raises(ValueError, match="target and horizon"):
    ppo.adaptive_kl_coef(0.1, 1.0, 1, target=0.0)


# ---------------------------------------------------------------- transformations, errors

def test_jit_vmap_grad_and_signs():
  rng = np.random.default_rng(4)
  r = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32)
  mask = jnp.ones((2, 3, 5)).at[:, 1, 3:].set(0)
  batched = jax.jit(jax.vmap(lambda r, v, m: ppo.gae_advantages(r, v, m, gamma=0.9, lam=0.9)))
  adv, ret = batched(r, v, mask)
  for i in range(2):
    a1, r1 = ppo.gae_advantages(r[i], v[i], mask[i], gamma=0.9, lam=0.9)
    np.testing.assert_allclose(adv[i], a1, rtol=1e-6)
    np.testing.assert_allclose(ret[i], r1, rtol=1e-6)
  # A positive advantage asks to raise the token's log-prob (negative loss gradient), a negative one to lower it;
  # the value gradient points from the prediction to the return.
  lp = jnp.zeros((1, 2))
  g_lp, g_v = jax.jit(jax.grad(
      lambda lp, v: ppo.ppo_loss(lp, jnp.zeros((1, 2)), jnp.array([[1.0, -1.0]]), v, jnp.zeros((1, 2)),
                                 jnp.array([[0.1, -0.1]]), jnp.ones((1, 2)))[0], argnums=(0, 1)))(lp, jnp.zeros((1, 2)))
  assert float(g_lp[0, 0]) < 0 < float(g_lp[0, 1])
  assert float(g_v[0, 0]) < 0 < float(g_v[0, 1])
  g = jax.grad(lambda s: ppo.ppo_advantages(s, lp, lp, jnp.zeros((1, 2)), jnp.ones((1, 2)), kl_coef=0.1)[1].sum())
  assert bool(jnp.all(jnp.isfinite(g(jnp.array([1.0])))))


def test_bad_arguments():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="values_BxT"):
    ppo.gae_advantages(x, jnp.zeros((2, 4)), x)
  with pytest.raises(ValueError, match="mask_BxT"):
    ppo.masked_whiten(x, jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="clip_range_value"):
    ppo.clipped_value_loss(x, x, x, jnp.ones((2, 3)), clip_range_value=-1.0)
  with pytest.raises(ValueError, match="value_mask_BxT"):
    ppo.ppo_advantages(jnp.zeros(2), x, x, x, jnp.ones((2, 3)), kl_coef=0.1, value_mask_BxT=jnp.ones((2, 4)))

