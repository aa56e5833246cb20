"""WPO's pieces: each token's log sum_v p_v^2 on every LM-head path (full, chunked, fused, with a soft-cap and a
temperature) against float64 numpy, without gradient, and `wpo_weights` against a hand computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.losses import logps, preference

B, T, D, V = 2, 7, 8, 300


def _inputs(seed):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)  # logits of scale ~3: peaked softmaxes
  targets = jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32)
  mask = jnp.asarray(rng.random((B, T)) < 0.7, jnp.float32).at[:, 0].set(1.0)
  return hidden, head, targets, mask


def _numpy_log_sum_sq(hidden, head, mask, temperature=1.0, softcap=None):
  z = np.einsum("btd,dv->btv", np.asarray(hidden, np.float64), np.asarray(head, np.float64))
  if softcap is not None:
    z = np.tanh(z / softcap) * softcap
  z = z / temperature
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.where(np.asarray(mask) > 0, np.log((p ** 2).sum(-1)), 0.0)


@pytest.mark.parametrize("temperature, softcap", [(1.0, None), (0.7, None), (1.0, 5.0)])
def test_every_path_gives_the_numpy_value(temperature, softcap):
  hidden, head, targets, mask = _inputs(int(temperature * 10))
  want = _numpy_log_sum_sq(hidden, head, mask, temperature, softcap)
  with jax.default_matmul_precision("highest"):
    logits = jnp.einsum("btd,dv->btv", hidden, head)
    if softcap is not None:
      logits = jnp.tanh(logits / softcap) * softcap
    got = {"full": logps.token_log_sum_sq_probs(logits, mask, temperature=temperature)}
    for chunk in (3, 64):
      got[f"chunked{chunk}"] = logps.chunked_sequence_logps(
          hidden, head, targets, mask, chunk_size=chunk, temperature=temperature, logit_softcap=softcap,
          return_log_sum_sq_probs=True)[2]
      for save in (True, False):
        got[f"fused{chunk}{save}"] = logps.fused_sequence_logps(
            hidden, head, targets, mask, chunk_size=chunk, temperature=temperature, logit_softcap=softcap,
            save_softmax_grad=save, return_log_sum_sq_probs=True)[2]
  for name, value in got.items():
    np.testing.assert_allclose(np.asarray(value), want, rtol=1e-5, atol=1e-5, err_msg=name)
  assert (want[np.asarray(mask) > 0] < 0).all()  # a log-probability of agreement


def test_it_carries_no_gradient_and_leaves_the_log_probs_unchanged():
  hidden, head, targets, mask = _inputs(3)
  for fn in (logps.chunked_sequence_logps, logps.fused_sequence_logps):
    grad = jax.grad(lambda h: jnp.sum(fn(h, head, targets, mask, chunk_size=4, return_log_sum_sq_probs=True)[2]))
    assert float(jnp.abs(grad(hidden)).max()) == 0.0
    plain = fn(hidden, head, targets, mask, chunk_size=4)
    with_side = fn(hidden, head, targets, mask, chunk_size=4, return_log_sum_sq_probs=True)
    np.testing.assert_array_equal(plain[0], with_side[0])
    with pytest.raises(ValueError, match="ask for one side statistic per call"):
      fn(hidden, head, targets, mask, return_entropy=True, return_log_sum_sq_probs=True)


def test_wpo_weights_hand_computed():
  # Pair 0: chosen tokens (logp, log sum p^2) = (-1, -0.5), (-3, -1.5) -> mean -1.0; rejected one token (-2, -1) ->
  # -1.0: weight e^-2. Pair 1: an empty chosen response (factor 1) and a rejected mean of (-0.5 + 0.25) / 1.
  token_logps = jnp.asarray([[-1.0, -3.0], [0.0, 0.0], [-2.0, 0.0], [-0.5, 0.0]])
  log_sum_sq = jnp.asarray([[-0.5, -1.5], [0.0, 0.0], [-1.0, 0.0], [-0.25, 0.0]])
  mask = jnp.asarray([[1, 1], [0, 0], [1, 0], [1, 0]], jnp.float32)
  np.testing.assert_allclose(np.asarray(preference.wpo_weights(token_logps, log_sum_sq, mask)),
                             [np.exp(-2.0), np.exp(-0.25)], rtol=1e-6)
  grad = jax.grad(lambda x: jnp.sum(preference.wpo_weights(x, log_sum_sq, mask)))(token_logps)
  assert float(jnp.abs(grad).max()) == 0.0  # a weight, not a term to optimize
  with pytest.raises(ValueError, match="even number of rows"):
    preference.wpo_weights(token_logps[:3], log_sum_sq[:3], mask[:3])
