"""T-REG token-level reward regularization: hand-computed goldens on a 2x3 example, gradients, transformations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.losses import preference, token_level

# B = 2 pairs, T = 3 tokens. Chosen: 3 and 2 tokens; rejected: 2 and 3 tokens.
CHOSEN = jnp.array([[-1.0, -2.0, -3.0], [-0.5, -1.0, -7.0]])  # -7 sits on padding and must be ignored
CHOSEN_MASK = jnp.array([[1, 1, 1], [1, 1, 0]])
REJECTED = jnp.array([[-2.0, -1.0, -9.0], [-3.0, -1.0, -1.0]])
REJECTED_MASK = jnp.array([[1, 1, 0], [1, 1, 1]])
REF_CHOSEN = jnp.array([-5.0, -2.0])
REF_REJECTED = jnp.array([-4.0, -4.0])
R_CHOSEN = jnp.array([[0.2, -0.1, 0.3], [0.1, 0.4, 0.0]])
R_REJECTED = jnp.array([[-0.2, 0.1, 0.0], [-0.3, 0.0, 0.2]])
BETA, ALPHA = 0.5, 2.0


def _sig(x):
  return 1.0 / (1.0 + math.exp(-x))


def _softplus(x):
  return math.log1p(math.exp(x))


def _treg(chosen=CHOSEN, rejected=REJECTED, r_chosen=R_CHOSEN, r_rejected=R_REJECTED, **kw):
  return token_level.treg_loss(
      chosen, rejected, REF_CHOSEN, REF_REJECTED, r_chosen, r_rejected, CHOSEN_MASK, REJECTED_MASK,
      beta=kw.pop("beta", BETA), alpha=kw.pop("alpha", ALPHA), **kw,
  )


def test_contrastive_token_rewards_golden():
  better = jnp.array([[-1.0, -2.0, -3.0], [0.0, -4.0, -1.0]])
  worse = jnp.array([[-2.0, -2.0, -1.0], [-1.0, -1.0, -1.0]])
  mask = jnp.array([[1, 1, 1], [1, 1, 0]])
  r = token_level.contrastive_token_rewards(better, worse, mask)
  expected = [[_sig(1.0) - 0.5, 0.0, _sig(-2.0) - 0.5], [_sig(1.0) - 0.5, _sig(-3.0) - 0.5, 0.0]]
  np.testing.assert_allclose(r, expected, rtol=1e-6, atol=1e-7)
  g = jax.grad(lambda b: token_level.contrastive_token_rewards(b, worse, mask).sum())(better)
  np.testing.assert_array_equal(g, 0.0)  # rewards are targets, not trained through


def test_regularizer_golden():
  # chosen 0: -0.5 * (0.2*-1 + -0.1*-2 + 0.3*-3) = -0.5 * -0.9 = 0.45; chosen 1: -0.5 * (0.1*-0.5 + 0.4*-1) = 0.225
  reg = token_level.token_reward_regularizer(CHOSEN, R_CHOSEN, CHOSEN_MASK, beta=BETA)
  np.testing.assert_allclose(reg, [0.45, 0.225], rtol=1e-6)
  # rejected 0: -0.5 * (-0.2*-2 + 0.1*-1) = -0.15; rejected 1: -0.5 * (-0.3*-3 + 0 + 0.2*-1) = -0.35
  reg = token_level.token_reward_regularizer(REJECTED, R_REJECTED, REJECTED_MASK, beta=BETA)
  np.testing.assert_allclose(reg, [-0.15, -0.35], rtol=1e-6)


def test_treg_loss_golden():
  # Sequence log-probs: chosen [-6, -1.5], rejected [-3, -5]; log-ratios chosen [-1, 0.5], rejected [1, -1].
  # r_dpo = 0.5 * log-ratio: chosen [-0.5, 0.25], rejected [0.5, -0.5].
  # DPO: -log sig(0.5 * ([-1, 0.5] - [1, -1])) = softplus([1, -0.75]); w = sig(r_rej - r_cho) = sig([1, -0.75]).
  # total = DPO + 2 * w * (L_REG(y_w) + L_REG(y_l)) = DPO + 2 * w * ([0.45, 0.225] + [-0.15, -0.35]).
  expected = [
      _softplus(1.0) + 2.0 * _sig(1.0) * 0.3,
      _softplus(-0.75) + 2.0 * _sig(-0.75) * (-0.125),
  ]
  losses, m = _treg()
  np.testing.assert_allclose(losses, expected, rtol=1e-6)
  np.testing.assert_allclose(m["treg/weight"], [_sig(1.0), _sig(-0.75)], rtol=1e-6)
  np.testing.assert_allclose(m["rewards/chosen"], [-0.5, 0.25], rtol=1e-6)
  np.testing.assert_allclose(m["treg/reg_chosen"], [0.45, 0.225], rtol=1e-6)
  # alpha = 0 is plain DPO on the masked sums.
  dpo, _ = preference.dpo_loss(jnp.array([-6.0, -1.5]), jnp.array([-3.0, -5.0]), REF_CHOSEN, REF_REJECTED, beta=BETA)
  np.testing.assert_allclose(_treg(alpha=0.0)[0], dpo, rtol=1e-6)


def test_treg_gradient_treats_token_rewards_and_weight_as_constants():
  # d total / d logp_chosen[i, t] = mask * (dDPO/dlogp_chosen_i - alpha * w_i * beta * r_t); w and r carry no grad.
  grad_total = jax.grad(lambda c: _treg(chosen=c)[0].sum())(CHOSEN)
  d = np.array([-2.0, 1.5])
  w = np.array([_sig(1.0), _sig(-0.75)])
  d_dpo = -BETA * (1.0 - np.array([_sig(BETA * x) for x in d]))  # d softplus(-beta d) / d logp_chosen
  expected = np.asarray(CHOSEN_MASK) * (d_dpo[:, None] - ALPHA * w[:, None] * BETA * np.asarray(R_CHOSEN))
  np.testing.assert_allclose(grad_total, expected, rtol=1e-5, atol=1e-7)
  g_r = jax.grad(lambda r: _treg(r_chosen=r)[0].sum())(R_CHOSEN)
  np.testing.assert_array_equal(g_r, 0.0)


def test_treg_jit_vmap_bf16_weights():
  fn = lambda c, r: _treg(chosen=c, rejected=r)[0]  # noqa: E731
  eager = fn(CHOSEN, REJECTED)
  np.testing.assert_allclose(jax.jit(fn)(CHOSEN, REJECTED), eager, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(fn)(jnp.stack([CHOSEN] * 2), jnp.stack([REJECTED] * 2))[1], eager, rtol=1e-6)
  out = fn(CHOSEN.astype(jnp.bfloat16), REJECTED.astype(jnp.bfloat16))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, eager, rtol=1e-6)  # these values are exact in bf16
  weighted, _ = _treg(weights=jnp.array([0.0, 2.0]))
  np.testing.assert_allclose(weighted, eager * jnp.array([0.0, 2.0]), rtol=1e-6)
  # IPO's lengths come from the masks (chosen 3 and 2 tokens, rejected 2 and 3): with beta 0.5, 1 / (2 beta) = 1,
  # (lc / |y_c| - lr / |y_r| - 1)^2 on the log-ratios of test_treg_loss_golden, plus the same regularizer terms.
  ipo, _ = _treg(loss_type="ipo")
  expected = [(-1.0 / 3 - 1.0 / 2 - 1.0) ** 2 + 2.0 * _sig(1.0) * 0.3,
              (0.5 / 2 + 1.0 / 3 - 1.0) ** 2 + 2.0 * _sig(-0.75) * (-0.125)]
  np.testing.assert_allclose(ipo, expected, rtol=1e-6)


def test_treg_shape_errors():
  with pytest.raises(ValueError, match=r"chosen_token_rewards_BxT has shape \(2, 2\).*\(2, 3\)"):
    _treg(r_chosen=R_CHOSEN[:, :2])
  with pytest.raises(ValueError, match=r"worse_logps_BxT has shape"):
    token_level.contrastive_token_rewards(CHOSEN, CHOSEN[:1], CHOSEN_MASK)
