"""CREAM's consistency-regularized DPO (Wang et al. 2024, arXiv:2410.12735): C = 1 is DPO (TRL's sigmoid formula,
evaluated in torch), C = 0 is DPO on the swapped pair, C in (1/2, 1] is conservative DPO with label smoothing
1 - C, a hand-computed golden, per-pair C, the soft-label optimum sigmoid(beta d) = C, and jit / vmap / grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxrlhf.losses as losses_pkg
from jaxrlhf.losses import preference as pref_lib
from jaxrlhf.losses import self_rewarding as sr


def _logps(seed=0, b=6):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(-10.0, 3.0, b), jnp.float32) for _ in range(4)]


def _trl_sigmoid_dpo(pc, pr, rc, rr, beta):
  """TRL's DPO sigmoid loss: -logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), in torch."""
  t = [torch.tensor(np.asarray(x), dtype=torch.float64) for x in (pc, pr, rc, rr)]
  logits = (t[0] - t[2]) - (t[1] - t[3])
  return (-torch.nn.functional.logsigmoid(beta * logits)).numpy()


def test_exported_from_the_package():
  assert losses_pkg.consistency_regularized_dpo_loss is sr.consistency_regularized_dpo_loss


def test_consistency_one_is_dpo():
  pc, pr, rc, rr = _logps()
  got, m = sr.consistency_regularized_dpo_loss(pc, pr, rc, rr, 1.0, beta=0.3)
  np.testing.assert_allclose(got, _trl_sigmoid_dpo(pc, pr, rc, rr, 0.3), rtol=1e-5, atol=1e-6)
  want, wm = pref_lib.dpo_loss(pc, pr, rc, rr, beta=0.3)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  for k in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
    np.testing.assert_allclose(m[k], wm[k], rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(m["consistency"], np.ones(6))


def test_consistency_zero_is_reversed_dpo():
  pc, pr, rc, rr = _logps(1)
  got, _ = sr.consistency_regularized_dpo_loss(pc, pr, rc, rr, 0.0, beta=0.2)
  np.testing.assert_allclose(got, _trl_sigmoid_dpo(pr, pc, rr, rc, 0.2), rtol=1e-5, atol=1e-6)


def test_is_conservative_dpo_with_smoothing_one_minus_c():
  pc, pr, rc, rr = _logps(2)
  for c in (0.55, 0.7, 0.9, 1.0):
    got, _ = sr.consistency_regularized_dpo_loss(pc, pr, rc, rr, c, beta=0.1)
    want, _ = pref_lib.dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=1.0 - c)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_golden_and_per_pair_consistency():
  # beta 0.5: rewards 0.5 * (-1 + 1.5) = 0.25 and 0.5 * (-2 + 1.5) = -0.25, d = 0.5;
  # L = -0.8 log sig(0.5) - 0.2 log sig(-0.5) = 0.8 * 0.474077 + 0.2 * 0.974077 = 0.574077
  # (log sig(-x) = log sig(x) - x).
  one = lambda v: jnp.asarray([v], jnp.float32)  # noqa: E731
  got, m = sr.consistency_regularized_dpo_loss(one(-1.0), one(-2.0), one(-1.5), one(-1.5), 0.8, beta=0.5)
  np.testing.assert_allclose(got, [0.5740770], rtol=1e-6)
  np.testing.assert_allclose(m["rewards/margin"], [0.5], rtol=1e-6)
  pc, pr, rc, rr = _logps(3, b=3)
  c = jnp.asarray([1.0, 0.0, 0.5])
  got, _ = sr.consistency_regularized_dpo_loss(pc, pr, rc, rr, c, beta=0.1)
  for i, ci in enumerate((1.0, 0.0, 0.5)):
    want, _ = sr.consistency_regularized_dpo_loss(pc[i:i + 1], pr[i:i + 1], rc[i:i + 1], rr[i:i + 1], ci, beta=0.1)
    np.testing.assert_allclose(got[i], want[0], rtol=1e-6)


def test_soft_label_optimum_and_gradients():
  # d/dd L = -beta (C - sig(beta d)): zero where sig(beta d) = C, so CREAM fits the pair's probability to C.
  zero = jnp.zeros((1,))

  def loss(d, c):
    return sr.consistency_regularized_dpo_loss(d, zero, zero, zero, c, beta=1.0)[0][0]

  for c in (0.6, 0.75, 0.9):
    d_star = np.log(c / (1 - c))
    np.testing.assert_allclose(jax.grad(loss)(jnp.asarray([d_star], jnp.float32), c), [0.0], atol=1e-6)
    assert jax.grad(loss)(jnp.asarray([d_star - 1.0]), c)[0] < 0 < jax.grad(loss)(jnp.asarray([d_star + 1.0]), c)[0]
  pc, pr, rc, rr = _logps(4)
  f = jax.jit(lambda *a: sr.consistency_regularized_dpo_loss(*a, 0.8, beta=0.1)[0])
  np.testing.assert_allclose(f(pc, pr, rc, rr), jax.vmap(lambda *a: f(*(x[None] for x in a))[0])(pc, pr, rc, rr),
                             rtol=1e-6)


def test_float32_shapes_and_ranges_like_the_other_preference_losses():
  """bf16 log-probs are computed in float32 (the losses equal the float32 inputs' to bf16 input rounding only), the
  four log-prob arrays and a per-pair C / beta must share the batch shape, and a Python C outside [0, 1] (which
  would weight one direction negatively) or beta <= 0 is a ValueError."""
  pc, pr, rc, rr = (x.astype(jnp.bfloat16) for x in _logps(5))
  got, m = sr.consistency_regularized_dpo_loss(pc, pr, rc, rr, 0.7, beta=0.3)
  want, _ = sr.consistency_regularized_dpo_loss(*(x.astype(jnp.float32) for x in (pc, pr, rc, rr)), 0.7, beta=0.3)
  assert got.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in m.values())
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # -258 - (-1.0078125) = -256.9921875 (both exact in bf16) is exact in float32; bf16 arithmetic would give -256.
  one = lambda v: jnp.asarray([v], jnp.bfloat16)  # noqa: E731
  _, m = sr.consistency_regularized_dpo_loss(one(-258.0), one(0.0), one(-1.0078125), one(0.0), 1.0, beta=1.0)
  np.testing.assert_array_equal(m["rewards/margin"], [-256.9921875])
  with pytest.raises(ValueError, match=r"rejected_logps has shape \(5,\) but chosen_logps has shape \(6,\)"):
    sr.consistency_regularized_dpo_loss(pc, pr[:5], rc, rr, 0.5)
  with pytest.raises(ValueError, match=r"consistency must be a scalar or have the shape of chosen_logps"):
    sr.consistency_regularized_dpo_loss(pc, pr, rc, rr, jnp.ones(3))
  for bad in (1.5, -0.1, float("nan")):
    with pytest.raises(ValueError, match=r"consistency must lie in \[0, 1\]"):
      sr.consistency_regularized_dpo_loss(pc, pr, rc, rr, bad)
  for bad in (0.0, -0.1):
    with pytest.raises(ValueError, match=r"beta must be a finite number > 0"):
      sr.consistency_regularized_dpo_loss(pc, pr, rc, rr, 0.5, beta=bad)
