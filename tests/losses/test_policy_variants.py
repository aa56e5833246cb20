"""Tests for jaxrlhf.losses.policy_variants: the papers' equations on hand-computed cases, and parity with TRL 1.16's
own `GRPOTrainer._compute_loss` (run on a bare trainer) for loss_type grpo / bnpo / dr_grpo / dapo / cispo and
importance_sampling_level "sequence" (GSPO), and with `trl.rewards.get_soft_overlong_punishment`.
"""

import collections
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.losses import policy_gradient as pg
from jaxrlhf.losses import policy_variants as pv


def _trl_compute_loss(logps, old_logps, ref_logps, adv, mask, *, loss_type, importance_sampling_level="token",
                      beta=0.0, eps=0.2, eps_high=0.2, max_len=None, num_items_in_batch=None):
  """TRL 1.16 GRPOTrainer._compute_loss (eval mode, one process) with `logps` as the model's log-probs."""
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
  trainer.importance_sampling_level = importance_sampling_level
  trainer.beta = beta
  trainer.loss_type = loss_type
  trainer.epsilon_low, trainer.epsilon_high = eps, eps_high
  trainer.use_vllm = False
  trainer.max_completion_length = max_len if max_len is not None else logps.shape[1]
  trainer._entropy_bonus_enabled = False
  trainer.args = types.SimpleNamespace(use_bias_correction_kl=False, delta=None)
  trainer.model = types.SimpleNamespace(training=False)
  trainer.accelerator = types.SimpleNamespace(reduce=lambda x, reduction: x, gather=lambda x: x, num_processes=1)
  trainer._metrics = {"eval": collections.defaultdict(list)}
  b, t = logps.shape
  inputs = {
      "prompt_ids": torch.zeros((b, 1), dtype=torch.long), "prompt_mask": torch.ones((b, 1)),
      "completion_ids": torch.zeros((b, t), dtype=torch.long), "completion_mask": torch.tensor(mask),
      "advantages": torch.tensor(adv), "old_per_token_logps": torch.tensor(old_logps),
      "ref_per_token_logps": torch.tensor(ref_logps),
      "num_items_in_batch": torch.tensor(float(mask.sum() if num_items_in_batch is None else num_items_in_batch)),
  }
  loss = trainer._compute_loss(None, inputs)
  loss.backward()
  return loss.item(), logps_t.grad.numpy(), trainer._metrics["eval"]


def _random_batch(seed, b=6, t=7, noise=0.4):
  rng = np.random.default_rng(seed)
  logps = rng.normal(-2.0, 1.0, (b, t)).astype(np.float32)
  old = (logps + rng.normal(0.0, noise, (b, t))).astype(np.float32)
  ref = (logps + rng.normal(0.0, 0.5, (b, t))).astype(np.float32)
  adv = rng.normal(size=b).astype(np.float32)
  mask = np.ones((b, t), np.float32)
  mask[1, 4:] = 0
  mask[3, 2:] = 0
  mask[4, 1:] = 0
  return logps, old, ref, adv, mask


# (our variant, TRL loss_type, TRL importance level, our (epsilon, epsilon_high) -> TRL's, TRL num_items_in_batch)
PARITY_CASES = [
    ("grpo", "grpo", "token", (0.2, 0.2), None),
    ("dr_grpo", "dr_grpo", "token", (0.2, 0.2), None),
    ("dapo", "bnpo", "token", (0.2, 0.28), None),
    ("dapo", "dapo", "token", (0.2, 0.28), 61),  # this batch is a slice of a 61-token generation batch
    ("gspo", "grpo", "sequence", (0.2, 0.28), None),  # clip ranges wide enough to leave some sequences unclipped
    ("gspo", "grpo", "sequence", (3e-4, 4e-4), None),  # the paper's
    ("cispo", "cispo", "token", (None, 0.3), 61),  # TRL's epsilon_high is the bound 1 + 0.3
    ("cispo", "cispo", "token", (None, 4.0), None),
]


@pytest.mark.parity
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("variant,loss_type,level,eps,num_items", PARITY_CASES)
def test_policy_variant_loss_matches_trl(variant, loss_type, level, eps, num_items, beta):
  logps, old, ref, adv, mask = _random_batch(0)
  eps_low, eps_high = eps
  trl_eps_high = 1.0 + eps_high if variant == "cispo" else eps_high
  want, want_grad, trl_metrics = _trl_compute_loss(
      logps, old, ref, adv, mask, loss_type=loss_type, importance_sampling_level=level, beta=beta,
      eps=0.2 if eps_low is None else eps_low, eps_high=trl_eps_high, max_len=9, num_items_in_batch=num_items)

  def f(lp):
    return pv.policy_variant_loss(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), variant=variant,
                                  epsilon=eps_low, epsilon_high=eps_high, ref_logps_BxT=jnp.asarray(ref),
                                  kl_coeff=beta, max_length=9, num_tokens=num_items)

  (loss, metrics), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(logps))
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
  assert np.any(want_grad != 0)
  if variant == "cispo":
    np.testing.assert_allclose(metrics["clip_ratio/high_mean"], trl_metrics["cispo_clip_ratio"][0], rtol=1e-6)
  else:
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
      np.testing.assert_allclose(metrics[key], trl_metrics[key][0], rtol=1e-6, err_msg=key)
  if beta:
    np.testing.assert_allclose(metrics["kl"], trl_metrics["kl"][0], rtol=1e-5)


def test_token_variants_equal_clipped_policy_loss():
  logps, old, ref, adv, mask = (jnp.asarray(x) for x in _random_batch(5))
  for variant, agg in (("grpo", "sequence_mean"), ("dr_grpo", "dr_grpo"), ("dapo", "token_mean")):
    spec = pv.VARIANTS[variant]
    want = pg.clipped_policy_loss(logps, old, adv, mask, epsilon=spec.epsilon, epsilon_high=spec.epsilon_high,
                                  loss_aggregation=agg, ref_logps_BxT=ref, kl_coeff=0.1)
    got = pv.policy_variant_loss(logps, old, adv, mask, variant=variant, ref_logps_BxT=ref, kl_coeff=0.1)
    assert float(got[0]) == float(want[0]) and got[1].keys() == want[1].keys()


# ---------------------------------------------------------------- the papers' equations, by hand

def test_gspo_golden():
  # Sequence 0: log-ratios [0.3, -0.1, 0.1] -> s = e^0.1 = 1.10517 inside [0.8, 1.2], A = +1: l = -s.
  # Sequence 1: log-ratios [0.9, 0.3] (one pad) -> s = e^0.6 = 1.822 clipped at 1.2, A = +1: l = -1.2, no gradient.
  # Sequence 2: s = e^-0.7 = 0.4966, A = -1: -min(-0.4966, -0.8) = 0.8 (clipped from below, no gradient).
  lp = jnp.array([[-1.0, -2.0, -0.5], [-1.0, -1.0, 5.0], [-1.0, -1.0, -1.0]])
  old = lp - jnp.array([[0.3, -0.1, 0.1], [0.9, 0.3, 7.0], [-0.7, -0.7, -0.7]])
  adv = jnp.array([1.0, 1.0, -1.0])
  mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
  s0 = math.exp(0.1)
  loss, m = pv.gspo_surrogate(lp, old, adv, mask, epsilon=0.2)
  np.testing.assert_allclose(loss, [[-s0] * 3, [-1.2, -1.2, 0.0], [0.8] * 3], rtol=1e-6)
  np.testing.assert_allclose([m["clip_ratio/low_mean"], m["clip_ratio/high_mean"]], [1 / 3, 1 / 3])

  def objective(x, token_level):
    per, _ = pv.gspo_surrogate(x, old, adv, mask, epsilon=0.2, token_level=token_level)
    return pg.aggregate_token_losses(per, mask, "sequence_mean")

  # (1/G) sum_i l_i; d l_0 / d logp_t = -A s / |y_0| on each of its tokens, then / G.
  np.testing.assert_allclose(objective(lp, False), (-s0 - 1.2 + 0.8) / 3, rtol=1e-6)
  g = jax.grad(objective)(lp, False)
  np.testing.assert_allclose(g, [[-s0 / 9] * 3, [0.0] * 3, [0.0] * 3], rtol=1e-6, atol=1e-7)
  # GSPO-token (eq. 14) has the same value and gradient when the advantage is per sequence.
  np.testing.assert_allclose(objective(lp, True), objective(lp, False), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(objective)(lp, True), g, rtol=1e-6, atol=1e-7)
  # ...and accepts per-token advantages (GSPO proper does not).
  adv_t = jnp.array([[1.0, -1.0, 2.0], [1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
  per, _ = pv.gspo_surrogate(lp, old, adv_t, mask, epsilon=0.2, token_level=True)
  np.testing.assert_allclose(per[0], [-s0, s0, -2 * s0], rtol=1e-6)
  with pytest.raises(ValueError, match="advantages"):
    pv.gspo_surrogate(lp, old, adv_t, mask)


@pytest.mark.parametrize("surrogate", pv.SURROGATES)
@pytest.mark.parametrize("pad", [-math.inf, math.nan])
def test_non_finite_pad_log_probs_change_nothing(surrogate, pad):
  """Padding is masked before any arithmetic: a non-finite log-prob on a pad slot (a -inf from a masked logit, a
  NaN) leaves every surrogate's losses and gradients exactly those with a finite pad value (GSPO-token's
  exp(sg(log s) + log pi - sg(log pi)) gave NaN gradients before its masking was moved ahead of the exp)."""
  lp = jnp.array([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
  mask = jnp.array([[1, 1, 1], [1, 1, 0]])
  old = lp - jnp.array([[0.3, -0.1, 0.1], [0.05, 0.02, 0.0]])
  adv = jnp.array([1.0, -1.0])
  eps = {"epsilon": None if surrogate == "cispo" else 0.2, "epsilon_high": 0.3}
  for old_logps in (old, None):
    def objective(x):
      per, _ = pv.variant_surrogate(surrogate, x, old_logps, adv, mask, **eps)
      return jnp.sum(per), per

    (want, want_per), want_grad = jax.value_and_grad(objective, has_aux=True)(lp)
    (got, got_per), got_grad = jax.value_and_grad(objective, has_aux=True)(lp.at[1, 2].set(pad))
    np.testing.assert_array_equal(got_per, want_per)
    np.testing.assert_array_equal(got_grad, want_grad)
    assert np.isfinite(float(got)) and float(got) == float(want)


def test_cispo_golden_keeps_gradient_of_clipped_tokens():
  # r = [1.5, 0.5], A = [+1, -1], logp = [-1, -2], eps_high = 0.2, no lower bound: r^ = [1.2, 0.5].
  # l_t = -r^ A logp = [-1.2 * -1, -0.5 * -1 * -2] = [1.2, -1.0]; d l / d logp = -r^ A = [-1.2, 0.5].
  lp = jnp.array([[-1.0, -2.0]])
  old = lp - jnp.log(jnp.array([[1.5, 0.5]]))
  adv = jnp.array([[1.0, -1.0]])
  mask = jnp.ones((1, 2))
  loss, m = pv.cispo_surrogate(lp, old, adv, mask, epsilon_high=0.2)
  np.testing.assert_allclose(loss, [[1.2, -1.0]], rtol=1e-6)
  np.testing.assert_allclose([m["clip_ratio/high_mean"], m["clip_ratio/low_mean"]], [0.5, 0.0])
  g = jax.grad(lambda x: pg.aggregate_token_losses(pv.cispo_surrogate(x, old, adv, mask, epsilon_high=0.2)[0],
                                                   mask))(lp)
  np.testing.assert_allclose(g, [[-0.6, 0.25]], rtol=1e-6)
  # PPO's clip zeroes the first token's gradient (ratio above 1 + eps with A > 0); CISPO keeps it.
  g_ppo = jax.grad(lambda x: pg.clipped_surrogate(x, old, adv, mask, epsilon=0.2)[0].sum())(lp)
  assert float(g_ppo[0, 0]) == 0.0 and float(g[0, 0]) < 0.0
  # A lower bound 1 - 0.2 lifts r = 0.5 to 0.8: l = -0.8 * -1 * -2 = -1.6.
  loss, m = pv.cispo_surrogate(lp, old, adv, mask, epsilon=0.2, epsilon_high=0.2)
  np.testing.assert_allclose(loss, [[1.2, -1.6]], rtol=1e-6)
  assert float(m["clip_ratio/low_mean"]) == 0.5
  # On-policy it is REINFORCE: gradient -A.
  g = jax.grad(lambda x: pv.cispo_surrogate(x, None, adv, mask)[0].sum())(lp)
  np.testing.assert_allclose(g, -adv)


def test_dr_grpo_has_no_length_or_std_normalization():
  # One group of two: rewards [1, 0] -> A = [0.5, -0.5] (no std); "grpo" scaling would give [0.707, -0.707].
  spec = pv.VARIANTS["dr_grpo"]
  adv = pg.group_advantages(jnp.array([1.0, 0.0]), 2, scale_rewards=spec.scale_rewards)
  np.testing.assert_allclose(adv, [0.5, -0.5])
  lp = jnp.zeros((2, 4))
  mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]])

  def grad(variant):
    return jax.grad(lambda x: pv.policy_variant_loss(x, None, adv, mask, variant=variant, max_length=4)[0])(lp)

  # Dr. GRPO (eq. 3, TRL's constant G * L_max): every token's gradient is -A / (G * L_max), whatever its length.
  np.testing.assert_allclose(grad("dr_grpo"), -adv[:, None] * mask / 8, rtol=1e-6)
  # GRPO's 1/|o_i| gives short sequences larger per-token steps: -A / (G |o_i|).
  np.testing.assert_allclose(grad("grpo"), -adv[:, None] * mask / (2 * jnp.array([[2.0], [4.0]])), rtol=1e-6)
  # DAPO (eq. 8): -A / sum_i |o_i|.
  np.testing.assert_allclose(grad("dapo"), -adv[:, None] * mask / 6, rtol=1e-6)


def test_dapo_token_mean_over_generation_batch():
  loss = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1], [1, 0, 0]])
  # sum / sum_i |o_i| of the whole generation batch (here 20 tokens, of which this slice holds 4).
  np.testing.assert_allclose(pg.aggregate_token_losses(loss, mask, "token_mean", num_tokens=20), 10 / 20)
  np.testing.assert_allclose(pg.aggregate_token_losses(loss, mask, "token_mean", num_tokens=jnp.int32(20)), 0.5)
  with pytest.raises(ValueError, match="num_tokens.*token_mean"):
    pg.aggregate_token_losses(loss, mask, "dr_grpo", num_tokens=20)


def test_dynamic_sampling_mask():
  nan = float("nan")
  r = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, nan, nan, nan, 2.0, nan, 2.0, 0.5, 0.5, 0.50001])
  keep = pv.dynamic_sampling_mask(r, 3)
  np.testing.assert_array_equal(keep, [False] * 3 + [True] * 3 + [False] * 6 + [True] * 3)
  np.testing.assert_array_equal(pv.dynamic_sampling_mask(r, 3, atol=1e-3)[12:], [False] * 3)
  # Exactly the groups whose GRPO advantages are not all zero.
  adv = pg.group_advantages(r, 3).reshape(5, 3)
  np.testing.assert_array_equal(keep.reshape(5, 3)[:, 0], jnp.any(adv != 0, axis=1))
  assert jax.jit(pv.dynamic_sampling_mask, static_argnums=1)(r, 3).dtype == jnp.bool_
  with pytest.raises(ValueError, match="group_size"):
    pv.dynamic_sampling_mask(r, 4)


def test_dynamic_sampling_keeps_a_varying_group_with_an_unscored_completion():
  # An unscorable completion (NaN) is left out of the spread, as out of GRPO's statistics: [1, NaN, 0] still varies
  # (spread 1 over its valid rewards) and has non-zero advantages, so DAPO keeps it; a plain max - min would be NaN
  # and drop it. [3, NaN, 3] is constant over its valid rewards: dropped.
  nan = float("nan")
  r = jnp.array([1.0, nan, 0.0, 3.0, nan, 3.0, nan, 2.0, 2.5])
  keep = pv.dynamic_sampling_mask(r, 3)
  np.testing.assert_array_equal(keep, [True] * 3 + [False] * 3 + [True] * 3)
  adv = pg.group_advantages(r, 3).reshape(3, 3)
  np.testing.assert_array_equal(keep.reshape(3, 3)[:, 0], jnp.any(adv != 0, axis=1))


@pytest.mark.parity
@pytest.mark.parametrize("max_length,cache_length", [(20, 8), (20, 0), (16, 16)])
def test_soft_overlong_penalty_matches_trl(max_length, cache_length):
  from trl.rewards import get_soft_overlong_punishment

  lengths = np.arange(0, max_length + 6)
  want = get_soft_overlong_punishment(max_length, cache_length)([[1] * n for n in lengths])
  got = pv.soft_overlong_penalty(jnp.asarray(lengths), max_length=max_length, cache_length=cache_length)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_soft_overlong_penalty_golden():
  # L_max 20, L_cache 8: free up to 12, then a linear ramp to -1 at 20, -1 beyond.
  got = pv.soft_overlong_penalty(jnp.array([12, 13, 16, 20, 21]), max_length=20, cache_length=8)
  np.testing.assert_allclose(got, [0.0, -1 / 8, -0.5, -1.0, -1.0], rtol=1e-6)
  with pytest.raises(ValueError, match="cache_length"):
    pv.soft_overlong_penalty(jnp.array([1]), max_length=4, cache_length=5)


# ---------------------------------------------------------------- table, transformations, errors

def test_variants_table():
  assert set(pv.VARIANTS) == {"grpo", "dr_grpo", "dapo", "gspo", "gspo_token", "cispo"}
  for name, spec in pv.VARIANTS.items():
    assert spec.surrogate in pv.SURROGATES, name
    assert spec.loss_aggregation in pg.LOSS_AGGREGATIONS, name
    assert spec.scale_rewards in pg.SCALE_REWARDS, name
  assert pv.VARIANTS["dapo"][3:] == (0.2, 0.28) and pv.VARIANTS["gspo"][3:] == (3e-4, 4e-4)
  assert pv.VARIANTS["dr_grpo"].scale_rewards == "none"


@pytest.mark.parametrize("variant", sorted(pv.VARIANTS))
def test_jit_vmap_grad_bf16(variant):
  rng = np.random.default_rng(1)
  lp = jnp.asarray(rng.normal(-1, 0.3, (2, 4, 5)), jnp.bfloat16)
  old = jnp.asarray(rng.normal(-1, 0.3, (2, 4, 5)), jnp.bfloat16)
  adv = jnp.asarray(rng.normal(size=(2, 4)), jnp.bfloat16)
  mask = jnp.ones((2, 4, 5)).at[:, 1, 2:].set(0)

  def f(lp, old, adv, mask):
    return pv.policy_variant_loss(lp, old, adv, mask, variant=variant, ref_logps_BxT=old, kl_coeff=0.1)[0]

  batched = jax.jit(jax.vmap(f))
  out = batched(lp, old, adv, mask)
  assert out.dtype == jnp.float32 and out.shape == (2,)
  ref = batched(lp.astype(jnp.float32), old.astype(jnp.float32), adv.astype(jnp.float32), mask)
  np.testing.assert_allclose(out, ref, rtol=1e-6)
  g = jax.jit(jax.grad(lambda x: f(x, old[0], adv[0], mask[0])))(lp[0])
  assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))
  # On-policy, every variant's gradient is -A grad log pi up to its positive normalizer: signs follow -A.
  a = jnp.array([1.0, -1.0])
  g = jax.grad(lambda x: pv.policy_variant_loss(x, None, a, jnp.ones((2, 3)), variant=variant)[0])(jnp.zeros((2, 3)))
  assert bool(jnp.all(g[0] < 0)) and bool(jnp.all(g[1] > 0))


def test_bad_arguments():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="variant.*cispo.*dapo"):
    pv.policy_variant_loss(x, None, jnp.ones(2), jnp.ones((2, 3)), variant="ppo")
  with pytest.raises(ValueError, match="surrogate.*clip.*gspo"):
    pv.variant_surrogate("sapo", x, None, jnp.ones(2), jnp.ones((2, 3)), epsilon=0.2, epsilon_high=None)
  with pytest.raises(ValueError, match="lower clip range epsilon"):
    pv.variant_surrogate("clip", x, None, jnp.ones(2), jnp.ones((2, 3)), epsilon=None, epsilon_high=0.2)
  with pytest.raises(ValueError, match="old_logps_BxT"):
    pv.cispo_surrogate(x, jnp.zeros((2, 4)), jnp.ones(2), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="epsilon"):
    pv.gspo_surrogate(x, None, jnp.ones(2), jnp.ones((2, 3)), epsilon=-0.1)
  with pytest.raises(ValueError, match="ref_logps_BxT"):
    pv.policy_variant_loss(x, None, jnp.ones(2), jnp.ones((2, 3)), variant="cispo", kl_coeff=0.1)

