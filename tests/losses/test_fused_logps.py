"""Tests for logps.fused_sequence_logps: values equal to the chunked path, gradients equal to autodiff of the full
log-softmax (fp32) and within bf16 rounding of it (bf16), backward matmuls in the compute dtype, no (B, T, V)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.losses import logps
from jaxpr_walk import all_eqns

B, T, D, V = 2, 9, 8, 1000


def _inputs(seed: int):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(D, V)) * 0.5, jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32)
  mask = jnp.asarray(rng.random((B, T)) < 0.7, jnp.float32).at[:, 0].set(1.0)
  targets = jnp.where(mask > 0, targets, -100)  # masked targets may be pad labels
  weights = jnp.asarray(rng.normal(size=(B, T)), jnp.float32)  # a cotangent that differs per token
  return hidden, head, targets, mask, weights


def _values_and_grads(fn, hidden, head, targets, mask, weights):
  """(token_logps, logps), (d hidden, d head) of sum(weights * token_logps) + sum((1..B) * logps)."""

  def scalar(h, w):
    tok, seq = fn(h, w, targets, mask)
    return jnp.sum(tok * weights) + jnp.sum(seq * jnp.arange(1.0, B + 1.0)), (tok, seq)

  (_, values), grads = jax.jit(jax.value_and_grad(scalar, (0, 1), has_aux=True))(hidden, head)
  return values, grads


def _full(h, w, targets, mask, temperature=1.0):
  """The reference: the (B, T, V) fp32 logits of the whole batch and the library's plain log-softmax gather."""
  logits = jnp.einsum("btd,dv->btv", h.astype(jnp.float32), w.astype(jnp.float32))
  return logps.sequence_logps(logits, targets, mask, temperature=temperature)


@pytest.mark.parametrize("save", [True, False])
@pytest.mark.parametrize("chunk_size,temperature", [(1, 1.0), (4, 0.7), (7, 1.3), (18, 1.0), (64, 0.5)])
def test_fp32_equals_full_log_softmax(chunk_size, temperature, save):
  hidden, head, targets, mask, weights = _inputs(chunk_size)
  fused = lambda h, w, t, m: logps.fused_sequence_logps(  # noqa: E731
      h, w, t, m, chunk_size=chunk_size, temperature=temperature, save_softmax_grad=save)
  with jax.default_matmul_precision("highest"):
    (tok, seq), (gh, gw) = _values_and_grads(fused, hidden, head, targets, mask, weights)
    (want_tok, want_seq), (want_gh, want_gw) = _values_and_grads(
        lambda h, w, t, m: _full(h, w, t, m, temperature), hidden, head, targets, mask, weights)
  np.testing.assert_allclose(tok, want_tok, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(seq, want_seq, rtol=1e-5, atol=1e-4)
  assert float(jnp.abs(jnp.where(mask > 0, 0.0, tok)).max()) == 0.0
  np.testing.assert_allclose(gh, want_gh, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gw, want_gw, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("save", [True, False])
@pytest.mark.parametrize("cap,temperature", [(2.0, 1.0), (0.7, 0.6), (30.0, 1.3)])
def test_soft_capped_fp32_equals_the_capped_full_log_softmax(cap, temperature, save):
  """Gemma 2's final soft-cap: values and gradients equal autodiff of log softmax(cap * tanh(logits / cap) / tau),
  written out here; at cap 0.7 / 2.0 the cap bends most logits (|logits| ~ 1-3), at 30 it barely acts."""
  hidden, head, targets, mask, weights = _inputs(11)

  def capped_full(h, w, t, m):
    logits = jnp.einsum("btd,dv->btv", h, w)
    logits = cap * jnp.tanh(logits / cap) / temperature
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, jnp.where(m > 0, t, 0)[..., None], axis=-1)[..., 0] * (m > 0)
    return tok, tok.sum(-1)

  fused = lambda h, w, t, m: logps.fused_sequence_logps(  # noqa: E731
      h, w, t, m, chunk_size=4, temperature=temperature, save_softmax_grad=save, logit_softcap=cap)
  chunked = lambda h, w, t, m: logps.chunked_sequence_logps(  # noqa: E731
      h, w, t, m, chunk_size=4, temperature=temperature, logit_softcap=cap)
  with jax.default_matmul_precision("highest"):
    (tok, seq), (gh, gw) = _values_and_grads(fused, hidden, head, targets, mask, weights)
    (want_tok, want_seq), (want_gh, want_gw) = _values_and_grads(capped_full, hidden, head, targets, mask, weights)
    (chunk_tok, _), _ = _values_and_grads(chunked, hidden, head, targets, mask, weights)
  np.testing.assert_array_equal(tok, chunk_tok)  # the forward pass is the chunked path's arithmetic
  np.testing.assert_allclose(tok, want_tok, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(seq, want_seq, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(gh, want_gh, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gw, want_gw, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="logit_softcap"):
    logps.fused_sequence_logps(hidden, head, targets, mask, logit_softcap=0.0)


@pytest.mark.parametrize("save", [True, False])
@pytest.mark.parametrize("cap", [None, 1.5])
def test_entropy_equals_the_chunked_paths_and_passes_no_gradient(cap, save):
  """return_entropy: the chunked path's per-token entropy (same softmax: cap, temperature), detached; asking for it
  leaves the log-probs and their gradients unchanged."""
  hidden, head, targets, mask, weights = _inputs(12)
  kw = dict(chunk_size=4, temperature=0.8, logit_softcap=cap)
  fused = lambda h, w, **k: logps.fused_sequence_logps(h, w, targets, mask, save_softmax_grad=save, **kw, **k)  # noqa: E731
  tok, seq, ent = fused(hidden, head, return_entropy=True)
  want_tok, want_seq, want_ent = logps.chunked_sequence_logps(hidden, head, targets, mask, return_entropy=True, **kw)
  np.testing.assert_array_equal(tok, want_tok)
  np.testing.assert_array_equal(seq, want_seq)
  np.testing.assert_allclose(ent, want_ent, rtol=1e-5, atol=1e-6)
  assert float(jnp.min(jnp.where(mask > 0, ent, 1.0))) > 0.0 and float(jnp.max(jnp.abs(ent * (1 - mask)))) == 0.0

  def objective(h, w, with_entropy):
    out = fused(h, w, return_entropy=with_entropy)
    return jnp.sum(out[0] * weights)

  g_with = jax.grad(objective, (0, 1))(hidden, head, True)
  g_without = jax.grad(objective, (0, 1))(hidden, head, False)
  for a, b in zip(g_with, g_without):
    np.testing.assert_array_equal(a, b)
  g_entropy = jax.grad(lambda h, w: jnp.sum(fused(h, w, return_entropy=True)[2]), (0, 1))(hidden, head)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in g_entropy)


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_bf16_values_equal_chunked_and_gradients_within_bf16_rounding():
  hidden, head, targets, mask, weights = _inputs(1)
  h16, w16 = hidden.astype(jnp.bfloat16), head.astype(jnp.bfloat16)
  chunked = lambda h, w, t, m: logps.chunked_sequence_logps(h, w, t, m, chunk_size=5)  # noqa: E731
  (tok_c, seq_c), (gh_c, gw_c) = _values_and_grads(chunked, h16, w16, targets, mask, weights)
  # fp32 autodiff of the full log-softmax on the bf16-rounded inputs is the truth for the gradients.
  with jax.default_matmul_precision("highest"):
    _, (want_gh, want_gw) = _values_and_grads(_full, h16, w16, targets, mask, weights)
  for save in (True, False):
    fused = lambda h, w, t, m, s=save: logps.fused_sequence_logps(h, w, t, m, chunk_size=5,  # noqa: E731
                                                                   save_softmax_grad=s)
    (tok, seq), (gh, gw) = _values_and_grads(fused, h16, w16, targets, mask, weights)
    # The forward pass is the chunked path's arithmetic: the loss values are identical.
    np.testing.assert_array_equal(tok, tok_c)
    np.testing.assert_array_equal(seq, seq_c)
    assert gh.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
    # The chunked path (fp32 backward matmuls) lands within bf16 rounding of the truth, the fused path (bf16
    # d logits) within a few times that.
    for got, ref, want in ((gh, gh_c, want_gh), (gw, gw_c, want_gw)):
      err, ref_err = _rel(got, want), _rel(ref, want)
      assert err < 1e-2, (err, ref_err)
      assert err < 4 * ref_err + 2e-3, (err, ref_err)


def _dots(jaxpr):
  """Every dot_general equation of a jaxpr, scan / custom_vjp / pjit bodies included."""
  return (eqn for eqn in all_eqns(jaxpr) if eqn.primitive.name == "dot_general")


def test_backward_matmuls_run_in_the_compute_dtype_without_recomputation():
  hidden, head, targets, mask, _ = _inputs(2)
  h16, w16 = hidden.astype(jnp.bfloat16), head.astype(jnp.bfloat16)

  def dots_of(fn):
    grad = jax.grad(lambda h, w: fn(h, w, targets, mask)[1].sum(), (0, 1))
    return [[v.aval.dtype for v in e.invars] for e in _dots(jax.make_jaxpr(grad)(h16, w16).jaxpr)]

  chunked = dots_of(lambda *a: logps.chunked_sequence_logps(*a, chunk_size=4))
  saved = dots_of(lambda *a: logps.fused_sequence_logps(*a, chunk_size=4))
  recomputed = dots_of(lambda *a: logps.fused_sequence_logps(*a, chunk_size=4, save_softmax_grad=False))
  # Autodiff of the chunked path: forward, recomputed forward, and two backward matmuls of the fp32 d logits
  # with a bf16 operand, which XLA lowers as fp32 x fp32 matmuls (the bf16 operand upcast).
  assert len(chunked) == 4 and sum(jnp.float32 in dt for dt in chunked) == 2
  assert len(saved) == 3 and len(recomputed) == 4
  for dtypes in saved + recomputed:
    assert dtypes == [jnp.bfloat16, jnp.bfloat16], dtypes


def _v_shaped_sizes(jaxpr, dtype=None):
  for eqn in all_eqns(jaxpr):
    for v in eqn.outvars:
      if getattr(v.aval, "shape", None) and v.aval.shape[-1] == V and (dtype is None or v.aval.dtype == dtype):
        yield int(np.prod(v.aval.shape))


def test_memory_one_chunk_of_fp32_logits_and_the_bf16_softmax_gradient():
  hidden, head, targets, mask, _ = _inputs(3)
  h16, w16 = hidden.astype(jnp.bfloat16), head.astype(jnp.bfloat16)
  chunk = 4

  def grad_jaxpr(save):
    fn = lambda h, w: logps.fused_sequence_logps(h, w, targets, mask, chunk_size=chunk,  # noqa: E731
                                                 save_softmax_grad=save)[1].sum()
    return jax.make_jaxpr(jax.grad(fn, (0, 1)))(h16, w16).jaxpr

  padded = -(-B * T // chunk) * chunk
  # fp32 arrays with a vocabulary axis: one chunk of logits, or the (D, V) fp32 head-gradient accumulator.
  for save in (True, False):
    assert max(_v_shaped_sizes(grad_jaxpr(save), jnp.float32)) <= max(chunk * V, D * V)
  # The saved softmax gradient is the only (B*T, V) array, in bf16; without it nothing that large exists.
  assert max(_v_shaped_sizes(grad_jaxpr(True), jnp.bfloat16)) == padded * V
  assert max(_v_shaped_sizes(grad_jaxpr(False))) <= max(chunk * V, D * V)


def test_jit_vmap_and_bad_arguments():
  hidden, head, targets, mask, _ = _inputs(4)
  stacked = jax.jit(jax.vmap(lambda h: logps.fused_sequence_logps(h, head, targets, mask, chunk_size=4)[1]))(
      jnp.stack([hidden, 2 * hidden]))
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(stacked[1], _full(2 * hidden, head, targets, mask)[1], rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match="lm_head_DxV"):
    logps.fused_sequence_logps(hidden, head.T, targets, mask)
  with pytest.raises(ValueError, match="chunk_size"):
    logps.fused_sequence_logps(hidden, head, targets, mask, chunk_size=0)
  with pytest.raises(ValueError, match="targets_BxT"):
    logps.fused_sequence_logps(hidden, head, targets[:, :3], mask)
