"""Properties, goldens and argument checks of the preference losses (dpo_loss family, SimPO, ORPO, KTO)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrlhf.losses import kto as kto_lib
from jaxrlhf.losses import preference, reference_free

B = 4
PAIRWISE = [t for t in preference.LOSS_TYPES if t != "sft"]
_settings = settings(max_examples=20, deadline=None)
_logratio = st.floats(-50.0, 50.0, allow_nan=False, width=32)


def _inputs(seed=0, n=B, scale=5.0):
  rng = np.random.default_rng(seed)
  logps = [jnp.asarray(-rng.uniform(1, 30, n) + scale * rng.normal(size=n), jnp.float32) for _ in range(4)]
  lengths = jnp.asarray(rng.integers(1, 20, n), jnp.float32)
  return logps, lengths


def _kwargs(loss_type):
  kw = {"loss_type": loss_type}
  if loss_type in ("exo_pair",):
    kw["label_smoothing"] = 1e-3
  if loss_type in preference.LENGTH_LOSS_TYPES:
    kw["chosen_lengths"] = kw["rejected_lengths"] = jnp.full((B,), 3.0)
  return kw


def _dpo_from_logratios(lc, lr, **kw):
  """dpo_loss with zero reference log-probs, so the log-ratios are the policy log-probs."""
  lc, lr = jnp.asarray(lc, jnp.float32), jnp.asarray(lr, jnp.float32)
  return preference.dpo_loss(lc, lr, jnp.zeros_like(lc), jnp.zeros_like(lr), **kw)


# ----------------------------------------------------------------------------- goldens


def test_sigmoid_golden():
  # beta * ((-1 - -2) - (-3 - -1)) = 0.1 * 3 = 0.3 -> -log sigmoid(0.3) = log(1 + e^-0.3)
  losses, m = preference.dpo_loss(
      jnp.array([-1.0]), jnp.array([-3.0]), jnp.array([-2.0]), jnp.array([-1.0]), beta=0.1
  )
  np.testing.assert_allclose(losses, [math.log1p(math.exp(-0.3))], rtol=1e-6)
  np.testing.assert_allclose(m["rewards/chosen"], [0.1], rtol=1e-6)
  np.testing.assert_allclose(m["rewards/rejected"], [-0.2], rtol=1e-6)
  np.testing.assert_allclose(m["rewards/margin"], [0.3], rtol=1e-6)
  np.testing.assert_array_equal(m["rewards/accuracy"], [1.0])
  np.testing.assert_array_equal(m["logps/chosen"], [-1.0])


def test_ipo_golden_is_length_normalized():
  # logratios 6 (3 tokens) and -4 (2 tokens): (6/3 - -4/2 - 1/(2*0.25))^2 = (4 - 2)^2 = 4
  losses, _ = _dpo_from_logratios(
      [6.0], [-4.0], loss_type="ipo", beta=0.25, chosen_lengths=jnp.array([3.0]), rejected_lengths=jnp.array([2.0])
  )
  np.testing.assert_allclose(losses, [4.0], rtol=1e-6)


def test_combination_is_weighted_sum_and_rpo_adds_nll():
  (c, r, rc, rr), _ = _inputs(1)
  nll = jnp.array([1.0, 2.0, 3.0, 4.0])
  sig, _ = preference.dpo_loss(c, r, rc, rr, loss_type="sigmoid")
  hinge, _ = preference.dpo_loss(c, r, rc, rr, loss_type="hinge")
  both, _ = preference.dpo_loss(c, r, rc, rr, loss_type=["sigmoid", "hinge"], loss_weights=[0.3, 2.0])
  np.testing.assert_allclose(both, 0.3 * sig + 2.0 * hinge, rtol=1e-6)
  rpo, _ = preference.dpo_loss(c, r, rc, rr, rpo_alpha=0.5, chosen_nll=nll)
  np.testing.assert_allclose(rpo, sig + 0.5 * nll, rtol=1e-6)


def test_bco_delta_shifts_rewards():
  losses, _ = _dpo_from_logratios([2.0], [1.0], loss_type="bco_pair", beta=1.0, bco_delta=0.5)
  expected = -math.log(1 / (1 + math.exp(-1.5))) - math.log(1 / (1 + math.exp(0.5)))
  np.testing.assert_allclose(losses, [expected], rtol=1e-6)


def test_weights_multiply_every_loss():
  (c, r, rc, rr), lengths = _inputs(2)
  w = jnp.array([0.0, 0.5, 1.0, 2.0])
  for loss_type in PAIRWISE:
    if loss_type in preference.SORTING_LOSS_TYPES:
      continue
    kw = _kwargs(loss_type)
    plain, _ = preference.dpo_loss(c, r, rc, rr, **kw)
    weighted, _ = preference.dpo_loss(c, r, rc, rr, weights=w, **kw)
    np.testing.assert_allclose(weighted, w * plain, rtol=1e-6, err_msg=loss_type)
  for fn, extra in ((reference_free.simpo_loss, {}), (reference_free.orpo_loss, {"chosen_nll": None})):
    plain, _ = fn(c, r, lengths, lengths, **extra)
    weighted, _ = fn(c, r, lengths, lengths, weights=w, **extra)
    np.testing.assert_allclose(weighted, w * plain, rtol=1e-6)
  plain, _ = kto_lib.kto_loss(c, rc, jnp.array([1, 0, 1, 0]))
  weighted, _ = kto_lib.kto_loss(c, rc, jnp.array([1, 0, 1, 0]), weights=w)
  np.testing.assert_allclose(weighted, w * plain, rtol=1e-6)


def test_dynamic_beta_formula_and_per_example_beta():
  margin = jnp.array([0.0, 1.0, 5.0, jnp.nan])
  beta = preference.dynamic_beta(0.1, margin, w=0.5, k=2.0)
  expected = 0.1 * (1 + 0.5 * (1 - np.exp(-2.0 * np.array([0.0, 1.0, 5.0, 0.0]))))
  np.testing.assert_allclose(beta, expected, rtol=1e-6)
  (c, r, rc, rr), lengths = _inputs(3)
  per_example, m = preference.dpo_loss(c, r, rc, rr, beta=beta)
  for i in range(B):
    one, mi = preference.dpo_loss(c[i : i + 1], r[i : i + 1], rc[i : i + 1], rr[i : i + 1], beta=float(beta[i]))
    np.testing.assert_allclose(per_example[i], one[0], rtol=1e-6)
    np.testing.assert_allclose(m["rewards/chosen"][i], mi["rewards/chosen"][0], rtol=1e-6)
  simpo, _ = reference_free.simpo_loss(c, r, lengths, lengths, beta=beta)
  assert simpo.shape == (B,)
  kto, _ = kto_lib.kto_loss(c, rc, jnp.array([1, 0, 1, 0]), beta=beta)
  assert kto.shape == (B,)


def test_dynamic_beta_never_drops_below_beta0_for_negative_margins():
  """The unclamped formula turns beta negative below delta = -log(1 + 1/w) / k (-2.2 at w = k = 0.5): the loss
  would flip sign. A negative margin (the RM ranks the pair the other way) keeps beta0."""
  margin = jnp.array([-0.5, -2.2, -3.0, -50.0, 2.0])
  beta = preference.dynamic_beta(0.1, margin, w=0.5, k=0.5)
  np.testing.assert_allclose(beta[:4], 0.1, rtol=1e-7)
  assert float(beta[4]) == pytest.approx(0.1 * (1 + 0.5 * (1 - np.exp(-1.0))), rel=1e-6)
  assert bool(jnp.all(beta >= 0.1)) and bool(jnp.all(beta <= 0.1 * 1.5 + 1e-7))


def test_simpo_golden():
  # avg_w = -2/2 = -1, avg_l = -9/3 = -3: z = 2 * 2 - 0.5 = 3.5
  losses, m = reference_free.simpo_loss(
      jnp.array([-2.0]), jnp.array([-9.0]), jnp.array([2.0]), jnp.array([3.0]), beta=2.0, gamma=0.5,
      label_smoothing=0.1,
  )
  expected = 0.9 * math.log1p(math.exp(-3.5)) + 0.1 * math.log1p(math.exp(3.5))
  np.testing.assert_allclose(losses, [expected], rtol=1e-6)
  np.testing.assert_allclose(m["rewards/chosen"], [-2.0], rtol=1e-6)


def test_orpo_golden_and_stable_near_probability_one():
  # P_w = 0.5, P_l = 0.25 (averaged over 2 and 1 tokens): odds 1 and 1/3, log OR = log 3
  losses, m = reference_free.orpo_loss(
      jnp.array([2 * math.log(0.5)]), jnp.array([math.log(0.25)]), jnp.array([2.0]), jnp.array([1.0]),
      chosen_nll=jnp.array([0.7]), beta=0.1,
  )
  np.testing.assert_allclose(m["orpo/log_odds_ratio"], [math.log(3.0)], rtol=1e-5)
  np.testing.assert_allclose(losses, [0.7 + 0.1 * math.log1p(1 / 3)], rtol=1e-5)
  # log P = -1e-6: log(1 - P) ~ log(1e-6) in fp32 needs expm1; the gradient must be finite too.
  x = jnp.array([-1e-6, -30.0])
  np.testing.assert_allclose(reference_free.log1mexp(x), [math.log(-math.expm1(-1e-6)), math.log1p(-math.exp(-30))],
                             rtol=1e-5)
  assert np.all(np.isfinite(jax.grad(lambda v: reference_free.log1mexp(v).sum())(x)))


def test_orpo_is_finite_at_log_prob_zero():
  """An average log-prob of exactly 0 (the empty response of a zero-length filler row, or fp32 rounding of a
  near-certain one, even slightly > 0) makes log(1 - P) = -inf: clamped, the loss and its gradients stay finite, a
  weight-0 filler row adds exactly 0 to a weighted sum, and the real row keeps its hand-computed value and gradient."""
  # Row 0 is the golden above (P_w = 0.5 over 2 tokens, P_l = 0.25): log OR = log 3, sig(log 3) = 3/4, so
  # d loss / d chosen_logps = -beta (1 - 3/4) * (1 / (1 - P_w)) / 2 = -0.025 and
  # d loss / d rejected_logps = -beta (1 - 3/4) * -(1 / (1 - P_l)) = 0.1 / 3. Row 1 is an empty filler row.
  lengths_c, lengths_r, weights = jnp.array([2.0, 0.0]), jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0])

  def total(c, r):
    return jnp.sum(reference_free.orpo_loss(c, r, lengths_c, lengths_r, chosen_nll=None, beta=0.1,
                                            weights=weights)[0])

  c, r = jnp.array([2 * math.log(0.5), 0.0]), jnp.array([math.log(0.25), 0.0])
  value, (grad_c, grad_r) = jax.value_and_grad(total, argnums=(0, 1))(c, r)
  np.testing.assert_allclose(value, 0.1 * math.log1p(1 / 3), rtol=1e-5)
  np.testing.assert_allclose(grad_c, [-0.025, 0.0], rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(grad_r, [0.1 / 3, 0.0], rtol=1e-5, atol=1e-8)
  # Weight 1: log P = 0 (or fp32 rounding above it) on either side gives a finite loss and finite gradients.
  for chosen, rejected in ((0.0, -1.0), (-1.0, 0.0), (0.0, 0.0), (1e-7, -2.0), (-2.0, 1e-7)):
    def one(c, r):
      return reference_free.orpo_loss(c, r, jnp.ones(1), jnp.ones(1), chosen_nll=jnp.ones(1), beta=0.1)[0][0]

    loss, grads = jax.value_and_grad(one, argnums=(0, 1))(jnp.array([chosen]), jnp.array([rejected]))
    assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in grads), (chosen, rejected)


def test_kto_golden_and_kl_clamp():
  # logratios [1, -2]; z0 = max(mean([-1, -3]), 0) = 0 -> desirable 1 - sig(0.5*1), undesirable 1 - sig(0.5*2)
  z0 = kto_lib.kto_kl_estimate(jnp.array([-2.0, -4.0]), jnp.array([-1.0, -1.0]))
  assert float(z0) == 0.0
  losses, m = kto_lib.kto_loss(
      jnp.array([-1.0, -4.0]), jnp.array([-2.0, -2.0]), jnp.array([True, False]), kl=z0, beta=0.5,
      desirable_weight=2.0, undesirable_weight=0.5,
  )
  sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
  np.testing.assert_allclose(losses, [2.0 * (1 - sig(0.5)), 0.5 * (1 - sig(1.0))], rtol=1e-6)
  np.testing.assert_allclose(m["rewards/chosen"], [0.5, 0.0], rtol=1e-6)
  np.testing.assert_allclose(m["rewards/rejected"], [0.0, -1.0], rtol=1e-6)
  np.testing.assert_array_equal(m["logps/chosen"], [-1.0, 0.0])
  np.testing.assert_array_equal(m["logps/rejected"], [0.0, -4.0])
  np.testing.assert_array_equal(m["count/chosen"], [1.0, 0.0])
  # A negative reference point passed straight in is clamped to 0 by kto_loss itself: the same losses.
  clamped, m = kto_lib.kto_loss(
      jnp.array([-1.0, -4.0]), jnp.array([-2.0, -2.0]), jnp.array([True, False]), kl=jnp.float32(-3.0), beta=0.5,
      desirable_weight=2.0, undesirable_weight=0.5,
  )
  np.testing.assert_allclose(clamped, [2.0 * (1 - sig(0.5)), 0.5 * (1 - sig(1.0))], rtol=1e-6)
  np.testing.assert_array_equal(m["kl"], [0.0, 0.0])
  # The reference point is a constant: no gradient flows into kl.
  g = jax.grad(lambda k: kto_lib.kto_loss(jnp.array([-1.0]), jnp.array([-2.0]), jnp.array([True]), kl=k)[0].sum())
  assert float(g(jnp.float32(0.3))) == 0.0



# ----------------------------------------------------------------------------- properties


@_settings
@given(lc=_logratio, lr=_logratio, beta=st.floats(0.01, 2.0))
def test_sigmoid_swap_gives_negated_argument(lc, lr, beta):
  # loss(c, r) = -log sig(beta x); swapping gives -log sig(-beta x); their difference is -beta x exactly.
  fwd, _ = _dpo_from_logratios([lc], [lr], beta=beta)
  bwd, _ = _dpo_from_logratios([lr], [lc], beta=beta)
  x = jnp.float32(lc) - jnp.float32(lr)
  np.testing.assert_allclose(fwd - bwd, -beta * x, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(bwd, -jax.nn.log_sigmoid(-beta * x), rtol=1e-5, atol=1e-6)


@_settings
@given(lc=_logratio, lr=_logratio)
def test_beta_to_zero_limit(lc, lr):
  for loss_type, limit in (("sigmoid", math.log(2.0)), ("robust", math.log(2.0)), ("hinge", 1.0),
                           ("apo_zero", 1.0), ("nca_pair", 2 * math.log(2.0)), ("bco_pair", 2 * math.log(2.0))):
    losses, _ = _dpo_from_logratios([lc], [lr], loss_type=loss_type, beta=1e-9, label_smoothing=0.2)
    np.testing.assert_allclose(losses, [limit], rtol=1e-5, err_msg=loss_type)
  smoothed, _ = _dpo_from_logratios([lc], [lr], beta=1e-9, label_smoothing=0.3)
  np.testing.assert_allclose(smoothed, [math.log(2.0)], rtol=1e-5)


@_settings
@given(lc=_logratio, lr=_logratio, eps=st.floats(0.0, 0.45))
def test_label_smoothing_symmetry(lc, lr, eps):
  # cDPO/AOT: L(x) - L(-x) = -(1 - 2 eps) beta x and L(x) + L(-x) does not depend on eps.
  beta = 0.3
  fwd, _ = _dpo_from_logratios([lc], [lr], beta=beta, label_smoothing=eps)
  bwd, _ = _dpo_from_logratios([lr], [lc], beta=beta, label_smoothing=eps)
  plain_f, _ = _dpo_from_logratios([lc], [lr], beta=beta)
  plain_b, _ = _dpo_from_logratios([lr], [lc], beta=beta)
  x = float(jnp.float32(lc) - jnp.float32(lr))
  np.testing.assert_allclose(fwd - bwd, -(1 - 2 * eps) * beta * x, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(fwd + bwd, plain_f + plain_b, rtol=1e-4, atol=1e-4)
  # Robust DPO is unbiased: its expectation under flip probability eps is the clean loss.
  rob_f, _ = _dpo_from_logratios([lc], [lr], loss_type="robust", beta=beta, label_smoothing=eps)
  rob_b, _ = _dpo_from_logratios([lr], [lc], loss_type="robust", beta=beta, label_smoothing=eps)
  np.testing.assert_allclose((1 - eps) * rob_f + eps * rob_b, plain_f, rtol=1e-3, atol=1e-3)


# Monotone losses only. Not discopop (non-monotone blend near zero margin, Lu et al. 2024), nor the losses that
# regress onto a target and so push back beyond it: ipo, sppo_hard, exo_pair (optimum at q_w = 1 - eps), nca_pair
# (its -0.5 log sig(-r_w) term caps the chosen reward at log 2).
_GRAD_SIGN_TYPES = ["sigmoid", "hinge", "robust", "bco_pair", "apo_zero", "sigmoid_norm"]


def _grad_fn(loss_type):
  kw = _kwargs(loss_type)
  return jax.jit(jax.grad(lambda c, r: _dpo_from_logratios(c, r, **kw)[0].sum(), argnums=(0, 1)))


_GRAD_FNS = {t: _grad_fn(t) for t in _GRAD_SIGN_TYPES}
_SIMPO_GRAD = jax.jit(jax.grad(lambda c, r: reference_free.simpo_loss(c, r, jnp.ones(B), jnp.ones(B))[0].sum()))


@_settings
@given(lc=st.lists(_logratio, min_size=B, max_size=B), lr=st.lists(_logratio, min_size=B, max_size=B))
def test_gradient_signs(lc, lr):
  """Raising the chosen log-prob never raises the loss; raising the rejected one never lowers it (where the loss
  is monotone in them, see _GRAD_SIGN_TYPES)."""
  c, r = jnp.asarray(lc, jnp.float32), jnp.asarray(lr, jnp.float32)
  for loss_type, grad_fn in _GRAD_FNS.items():
    gc, gr = grad_fn(c, r)
    assert np.all(np.asarray(gc) <= 1e-6), (loss_type, gc)
    assert np.all(np.asarray(gr) >= -1e-6), (loss_type, gr)
    assert np.all(np.isfinite(gc)) and np.all(np.isfinite(gr)), loss_type
  assert np.all(np.asarray(_SIMPO_GRAD(c, r)) <= 0)


@pytest.mark.parametrize("loss_type", PAIRWISE)
@pytest.mark.parametrize("magnitude", [50.0, 1e4])
def test_no_nan_or_inf_for_large_logratios(loss_type, magnitude):
  lc = jnp.array([magnitude, -magnitude, magnitude, -magnitude, 0.0, 1.0], jnp.float32)
  lr = jnp.array([-magnitude, magnitude, magnitude, -magnitude, magnitude, -magnitude], jnp.float32)
  kw = _kwargs(loss_type)
  if loss_type in preference.LENGTH_LOSS_TYPES:
    kw["chosen_lengths"] = kw["rejected_lengths"] = jnp.full((6,), 3.0)
  f_divs = preference.F_DIVERGENCES if loss_type in preference.F_DIVERGENCE_LOSS_TYPES else ("reverse_kl",)
  for f_div in f_divs:
    if f_div in ("forward_kl", "alpha_divergence") and magnitude > 80:
      continue  # exp(|log-ratio|) itself overflows fp32: those scores are genuinely unbounded
    fn = lambda c, r: _dpo_from_logratios(c, r, f_divergence=f_div, **kw)[0]  # noqa: E731
    losses = fn(lc, lr)
    gc, gr = jax.grad(lambda c, r: fn(c, r).sum(), argnums=(0, 1))(lc, lr)
    for name, v in (("loss", losses), ("grad chosen", gc), ("grad rejected", gr)):
      if loss_type in ("ipo", "sppo_hard", "discopop") or (f_div != "reverse_kl" and name == "loss"):
        assert not np.any(np.isnan(v)), (f_div, name, v)  # quadratic / exponential losses may be large
      else:
        assert np.all(np.isfinite(v)), (f_div, name, v)


def test_no_nan_or_inf_reference_free_large():
  big = jnp.array([-1e4, -1e-8, -5.0, -1e4], jnp.float32)
  lengths = jnp.ones(4)
  for fn, extra in ((reference_free.simpo_loss, {}), (reference_free.orpo_loss, {"chosen_nll": jnp.ones(4)})):
    losses, _ = fn(big, big[::-1], lengths, lengths, **extra)
    g = jax.grad(lambda c: fn(c, big[::-1], lengths, lengths, **extra)[0].sum())(big)
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(g))


# ----------------------------------------------------------------------------- transformations and dtypes


@pytest.mark.parametrize("loss_type", PAIRWISE)
def test_jit_vmap_grad_bf16(loss_type):
  (c, r, rc, rr), _ = _inputs(5)
  kw = _kwargs(loss_type)
  fn = lambda c, r, rc, rr: preference.dpo_loss(c, r, rc, rr, **kw)  # noqa: E731
  eager, eager_m = fn(c, r, rc, rr)
  jitted, jitted_m = jax.jit(fn)(c, r, rc, rr)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  np.testing.assert_allclose(jitted_m["rewards/margin"], eager_m["rewards/margin"], rtol=1e-6)
  # vmap over a stack of 3 batches equals 3 separate calls.
  stack = lambda x: jnp.stack([x, x + 1.0, x - 2.0])  # noqa: E731
  vmapped, _ = jax.vmap(fn)(stack(c), stack(r), stack(rc), stack(rr))
  for k, shift in enumerate([0.0, 1.0, -2.0]):
    single, _ = fn(c + shift, r + shift, rc + shift, rr + shift)
    np.testing.assert_allclose(vmapped[k], single, rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda c: fn(c, r, rc, rr)[0].mean())(c)
  assert grads.shape == c.shape and np.all(np.isfinite(grads))
  # bf16 inputs: fp32 outputs and metrics, equal to the fp32 computation on the rounded inputs.
  bf = [x.astype(jnp.bfloat16) for x in (c, r, rc, rr)]
  out, m = fn(*bf)
  assert out.dtype == jnp.float32 and m["rewards/chosen"].dtype == jnp.float32
  ref, _ = fn(*[x.astype(jnp.float32) for x in bf])
  np.testing.assert_allclose(out, ref, rtol=1e-6)
  g_bf = jax.grad(lambda c: fn(c, *bf[1:])[0].sum())(bf[0])
  assert g_bf.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g_bf, np.float32)))


def test_reference_free_and_kto_under_jit_vmap_bf16():
  (c, r, rc, _), lengths = _inputs(6)
  labels = jnp.array([1, 0, 1, 0])
  fns = [
      lambda c, r: reference_free.simpo_loss(c, r, lengths, lengths)[0],
      lambda c, r: reference_free.orpo_loss(c, r, lengths, lengths, chosen_nll=-c / lengths)[0],
      lambda c, r: kto_lib.kto_loss(c, r, labels, kl=kto_lib.kto_kl_estimate(c, r))[0],
  ]
  for fn in fns:
    eager = fn(c, r)
    np.testing.assert_allclose(jax.jit(fn)(c, r), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(fn)(jnp.stack([c, c]), jnp.stack([r, r]))[1], eager, rtol=1e-6)
    assert np.all(np.isfinite(jax.grad(lambda c: fn(c, r).sum())(c)))
    assert fn(c.astype(jnp.bfloat16), r.astype(jnp.bfloat16)).dtype == jnp.float32


def test_sharded_inputs():
  devices = np.array(jax.devices()[:4])
  mesh = Mesh(devices, ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  rng = np.random.default_rng(8)
  arrays = [jnp.asarray(-rng.uniform(1, 30, 8), jnp.float32) for _ in range(4)]
  sharded = [jax.device_put(x, sharding) for x in arrays]
  for loss_type in ("sigmoid", "aot", "aot_unpaired"):
    fn = jax.jit(lambda c, r, rc, rr: preference.dpo_loss(c, r, rc, rr, loss_type=loss_type)[0])  # noqa: B023
    np.testing.assert_allclose(fn(*sharded), fn(*arrays), rtol=1e-6)
  z_sharded = jax.jit(kto_lib.kto_kl_estimate)(sharded[0], sharded[1])
  np.testing.assert_allclose(z_sharded, kto_lib.kto_kl_estimate(arrays[0], arrays[1]), rtol=1e-6)


# ----------------------------------------------------------------------------- argument checks


def test_bad_arguments_raise_value_error():
  (c, r, rc, rr), lengths = _inputs(9)
  with pytest.raises(ValueError, match=r"loss_type.*'sigmoid'.*'hinge'"):
    preference.dpo_loss(c, r, rc, rr, loss_type="dpo")
  with pytest.raises(ValueError, match=r"f_divergence.*'reverse_kl'.*'forward_kl'"):
    preference.dpo_loss(c, r, rc, rr, f_divergence="kl")
  with pytest.raises(ValueError, match=r"f_divergence='forward_kl'.*'bco_pair'"):
    preference.dpo_loss(c, r, rc, rr, loss_type="bco_pair", f_divergence="forward_kl")
  with pytest.raises(ValueError, match=r"rejected_logps has shape \(3,\).*chosen_logps has shape \(4,\)"):
    preference.dpo_loss(c, r[:3], rc, rr)
  with pytest.raises(ValueError, match=r"weights.*\(4,\).*\(2,\)"):
    preference.dpo_loss(c, r, rc, rr, weights=jnp.ones(2))
  for bad in (-0.1, 0.5, 0.7):
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 0.5\)"):
      preference.dpo_loss(c, r, rc, rr, label_smoothing=bad)
    with pytest.raises(ValueError, match="label_smoothing"):
      reference_free.simpo_loss(c, r, lengths, lengths, label_smoothing=bad)
  for loss_type in ("ipo", "sigmoid_norm"):
    with pytest.raises(ValueError, match=r"chosen_lengths and rejected_lengths"):
      preference.dpo_loss(c, r, rc, rr, loss_type=loss_type)
  with pytest.raises(ValueError, match="exo_pair"):
    preference.dpo_loss(c, r, rc, rr, loss_type="exo_pair")
  with pytest.raises(ValueError, match="chosen_nll"):
    preference.dpo_loss(c, r, rc, rr, rpo_alpha=1.0)
  with pytest.raises(ValueError, match="loss_weights has 1 entries but loss_type has 2"):
    preference.dpo_loss(c, r, rc, rr, loss_type=["sigmoid", "hinge"], loss_weights=[1.0])
  with pytest.raises(ValueError, match="sorts the batch"):
    preference.dpo_loss(c, r, rc, rr, loss_type="aot", weights=jnp.ones(4))
  with pytest.raises(ValueError, match=r"loss_type.*'kto'.*'apo_zero_unpaired'"):
    kto_lib.kto_loss(c, rc, jnp.ones(4), loss_type="bco")
  with pytest.raises(ValueError, match=r"desirable has shape"):
    kto_lib.kto_loss(c, rc, jnp.ones(3))
  with pytest.raises(ValueError, match=r"rejected_lengths has shape"):
    reference_free.orpo_loss(c, r, lengths, lengths[:2], chosen_nll=None)


def test_non_positive_beta_and_discopop_tau_raise():
  """beta 0 makes IPO's target 1 / (2 beta) infinite and a negative beta flips every objective (DPO would then
  prefer the rejected response); discopop_tau 0 divides by 0. Python numbers are checked up front."""
  (c, r, rc, rr), lengths = _inputs(10)
  for bad in (0.0, -0.1, 0, float("nan")):
    with pytest.raises(ValueError, match=r"beta must be > 0"):
      preference.dpo_loss(c, r, rc, rr, loss_type="ipo", beta=bad, chosen_lengths=lengths, rejected_lengths=lengths)
    with pytest.raises(ValueError, match=r"beta must be > 0"):
      preference.dpo_loss(c, r, rc, rr, beta=bad)
  for bad in (0.0, -0.05):
    with pytest.raises(ValueError, match=r"discopop_tau must be > 0"):
      preference.dpo_loss(c, r, rc, rr, loss_type="discopop", discopop_tau=bad)
  losses, _ = preference.dpo_loss(c, r, rc, rr, beta=1e-9)  # small but positive: the log 2 limit
  np.testing.assert_allclose(losses, np.full(B, math.log(2.0)), rtol=1e-5)
