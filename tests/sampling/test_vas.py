"""Value augmented sampling (Han et al. 2024, arXiv:2405.06639): the decoding logits on a tiny vocabulary, beta = 0
is base top-k sampling token for token, and every step's VAS distribution equals one recomputed from cache-free
forwards of the policy and the value models on [prompt | tokens so far | candidate] (the KV-cache bookkeeping of the
k candidates, the composition weights and the per-step KL)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxpr_walk import all_eqns, attention_slots_per_loop
from sampling_models import CONFIGS, full_forward, left_padded_prompts, random_model

from jaxrlhf.models import RewardModel
from jaxrlhf.sampling import generate, vas_cost, vas_generate, vas_logits
from jaxrlhf.train.scoring import state_values

N_NEW, K = 5, 4


def test_vas_logits_golden():
  base = jnp.array([[0.0, 1.0, 2.0, 3.0, -1.0]])
  cand = jnp.array([[3, 2]])
  q = jnp.array([[1.0, 3.0]])  # centered: (-1, +1)
  out = np.asarray(vas_logits(base, cand, q, 0.5, restrict=True))
  np.testing.assert_allclose(out[0, [2, 3]], [2.5, 2.5])
  assert (out[0, [0, 1, 4]] == np.finfo(np.float32).min).all()
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(out))[0, [2, 3]], [0.5, 0.5], rtol=1e-6)
  kept = np.asarray(vas_logits(base, cand, q, 0.5, restrict=False))
  np.testing.assert_allclose(kept[0], [0.0, 1.0, 2.5, 2.5, -1.0])  # the official processor: others keep base logits
  zero = np.asarray(jax.nn.softmax(vas_logits(base, cand, q, 0.0)))[0]
  p = np.exp([2.0, 3.0]) / np.exp([2.0, 3.0]).sum()  # beta = 0: base renormalized over the top-k
  np.testing.assert_allclose(zero[[2, 3]], p, rtol=1e-6)


@pytest.fixture(scope="module")
def models():
  config = CONFIGS["llama_gqa"]
  policy = random_model(config, seed=3, scale=0.3)
  values = [RewardModel.from_causal_lm(random_model(config, seed=s), seed=s) for s in (5, 6)]
  return policy, values


def test_beta_zero_is_base_top_k_sampling(models):
  policy, values = models
  ids, mask = left_padded_prompts()
  rng = jax.random.PRNGKey(7)
  vas = vas_generate(policy, values[:1], ids, mask, beta=0.0, top_k=K, max_new_tokens=N_NEW, rng=rng, eos_ids=(1,))
  ref = generate(policy, ids, mask, top_k=K, max_new_tokens=N_NEW, rng=rng, eos_ids=(1,))
  np.testing.assert_array_equal(np.asarray(vas.tokens), np.asarray(ref.tokens))
  np.testing.assert_allclose(np.asarray(vas.logps), np.asarray(ref.logps), atol=1e-5)
  np.testing.assert_allclose(np.asarray(vas.base_logps), np.asarray(ref.model_logps), atol=1e-5)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@nnx.jit
def _state_values(vm, ids, mask, resp, resp_mask):
  return state_values(vm, ids, mask, resp, resp_mask)


@pytest.mark.parametrize("restrict, bucket", [(True, 0), (False, 0), (False, 2)])
def test_steps_match_cache_free_reference(models, restrict, bucket):
  """bucket 2: decode phases reading 8, 10 and then all 11 cache slots of the policy and both value models."""
  policy, values = models
  ids, mask = left_padded_prompts(pads=(0, 3))
  beta, weights = 3.0, (0.7, -0.4)
  gen = vas_generate(policy, values, ids, mask, beta=beta, weights=weights, top_k=K, max_new_tokens=N_NEW,
                     rng=jax.random.PRNGKey(1), restrict=restrict, cache_bucket=bucket)
  tokens, logps = np.asarray(gen.tokens), np.asarray(gen.logps)
  B, P = ids.shape
  # Base logits at every step from one cache-free forward over [prompt | sampled tokens].
  buf = np.concatenate([ids, tokens], axis=1)
  buf_mask = np.concatenate([mask, np.ones_like(tokens)], axis=1)
  logits_BxTxV = np.asarray(full_forward(policy, jnp.asarray(buf), jnp.asarray(buf_mask)))
  base_TxBxV = logits_BxTxV[:, P - 1:-1].transpose(1, 0, 2)
  cand_TxBxK = np.argsort(-base_TxBxV, axis=-1, kind="stable")[..., :K]
  # Q(s_t, a) = V(s_t . a): one row [prompt | tokens[:t] a] per (t, b, candidate), right padded to N_NEW.
  rows, rows_mask = np.zeros((N_NEW, B, K, N_NEW), np.int32), np.zeros((N_NEW, B, K, N_NEW), np.int32)
  for t in range(N_NEW):
    rows[t, :, :, :t] = tokens[:, None, :t]
    rows[t, :, :, t] = cand_TxBxK[t]
    rows_mask[t, :, :, :t + 1] = 1
  rep_ids = np.broadcast_to(ids[None, :, None], (N_NEW, B, K, P)).reshape(-1, P)
  rep_mask = np.broadcast_to(mask[None, :, None], (N_NEW, B, K, P)).reshape(-1, P)
  q_TxBxK = np.zeros((N_NEW, B, K))
  for w, vm in zip(weights, values):
    v = np.asarray(_state_values(vm, jnp.asarray(rep_ids), jnp.asarray(rep_mask), jnp.asarray(rows.reshape(-1, N_NEW)),
                                 jnp.asarray(rows_mask.reshape(-1, N_NEW))))
    v = v.reshape(N_NEW, B, K, N_NEW + 1)
    q_TxBxK += w * np.take_along_axis(v, np.arange(1, N_NEW + 1)[:, None, None, None], axis=-1)[..., 0]
  kl = np.zeros(B)
  for t in range(N_NEW):
    base, cand, q = base_TxBxV[t], cand_TxBxK[t], q_TxBxK[t]
    logits = base.astype(np.float64).copy() if not restrict else np.full_like(base, -np.inf, np.float64)
    for b in range(B):
      logits[b, cand[b]] = base[b, cand[b]] + beta * (q[b] - q[b].mean())
    logq, logp = _log_softmax(logits), _log_softmax(base)
    np.testing.assert_allclose(logps[:, t], logq[np.arange(B), tokens[:, t]], atol=2e-4)
    qp = np.exp(logq)
    kl += np.sum(qp * np.where(qp > 0, logq - logp, 0.0), axis=-1)
  np.testing.assert_allclose(np.asarray(gen.kl), kl, atol=2e-4)


def test_decode_phases_read_and_copy_only_the_filled_slots(models):
  """The policy's and the value models' attention in each phase reads its slots (6 + 5 = 11 in all; buckets of 2:
  8, 10, 11), and the candidates' scratch copies of the value caches hold those slots plus the one they write."""
  policy, values = models
  ids, mask = left_padded_prompts()  # P = 6
  program = jax.make_jaxpr(lambda i, m: vas_generate(
      policy, values, i, m, beta=1.0, top_k=K, max_new_tokens=N_NEW, rng=jax.random.PRNGKey(0), cache_bucket=2))
  jaxpr = program(ids, mask).jaxpr
  loops = [eqn.params["body_jaxpr"].jaxpr for eqn in all_eqns(jaxpr) if eqn.primitive.name == "while"]
  assert attention_slots_per_loop(jaxpr) == [8, 10, 11]
  def tiled_slots(body):  # (L, B * K, kv heads, S, H) arrays: the candidates' copies (S > 1: not new tokens)
    return sorted({e.outvars[0].aval.shape[3] for e in all_eqns(body) if e.outvars[0].aval.ndim == 5
                   and e.outvars[0].aval.shape[1] == ids.shape[0] * K and e.outvars[0].aval.shape[3] > 1})
  tiled = [tiled_slots(body) for body in loops]
  assert tiled == [[9], [11], [11]]  # read + 1 slots, at most the cache's 11


def test_large_beta_follows_the_value(models):
  """beta -> infinity picks argmax_k Q: the values must move the samples (they do not at beta = 0)."""
  policy, values = models
  ids, mask = left_padded_prompts(pads=(0, 0, 0, 0, 0, 0))
  rng = jax.random.PRNGKey(3)
  lo = vas_generate(policy, values[:1], ids, mask, beta=0.0, top_k=K, max_new_tokens=N_NEW, rng=rng)
  hi = vas_generate(policy, values[:1], ids, mask, beta=200.0, top_k=K, max_new_tokens=N_NEW, rng=rng)
  v = lambda g: np.asarray(_state_values(values[0], jnp.asarray(ids), jnp.asarray(mask), g.tokens, g.mask))[:, -1]
  assert v(hi).mean() > v(lo).mean()
  assert float(np.asarray(hi.kl).mean()) > float(np.asarray(lo.kl).mean())


def test_cost_and_bad_input(models):
  cost = vas_cost(np.array([4, 2]), top_k=20, num_value_models=2, value_params_ratio=0.5)
  np.testing.assert_allclose(cost["value"], [168.0, 84.0])
  np.testing.assert_allclose(cost["flops"], [4 + 84.0, 2 + 42.0])
  policy, values = models
  ids, mask = left_padded_prompts()
  with pytest.raises(ValueError, match="weights"):
    vas_generate(policy, values, ids, mask, beta=1.0, weights=(1.0,), max_new_tokens=2, rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="top_k"):
    vas_generate(policy, values, ids, mask, beta=1.0, top_k=0, max_new_tokens=2, rng=jax.random.PRNGKey(0))


@pytest.mark.parametrize("bucket", [0, 2])
def test_blocks_of_steps_give_the_tokens_of_one_step_per_iteration(models, bucket):
  """tokens_per_iteration = k (the decode loop shared with `generate`): the same tokens, log-probs and KL as one step
  per iteration, with rows ending inside blocks and decode phases of 2 slots (phases shorter than a block)."""
  policy, values = models
  ids, mask = left_padded_prompts(pads=(0, 3))
  kw = dict(beta=2.0, weights=(0.7, -0.4), top_k=K, max_new_tokens=9, rng=jax.random.PRNGKey(4), restrict=False,
            cache_bucket=bucket)
  free = vas_generate(policy, values, ids, mask, **kw)
  eos = int(np.asarray(free.tokens)[0, 3])  # row 0 ends at its 4th token; others later or never
  one = vas_generate(policy, values, ids, mask, eos_ids=(eos,), **kw)
  lengths = np.asarray(one.lengths)
  assert lengths.min() < 9 and len(set(lengths.tolist())) > 1, lengths
  for k in (2, 3, 4, 9, 12):
    blocks = vas_generate(policy, values, ids, mask, eos_ids=(eos,), tokens_per_iteration=k, **kw)
    for name in ("tokens", "mask", "lengths"):
      np.testing.assert_array_equal(np.asarray(getattr(blocks, name)), np.asarray(getattr(one, name)), err_msg=name)
    for name in ("logps", "base_logps", "kl"):
      np.testing.assert_allclose(np.asarray(getattr(blocks, name)), np.asarray(getattr(one, name)), atol=1e-6,
                                 err_msg=name)


def test_the_vas_block_is_a_loop_of_known_trip_count(models):
  policy, values = models
  ids, mask = left_padded_prompts()

  def trip_counts(k):
    fn = lambda i, m: vas_generate(policy, values[:1], i, m, beta=1.0, top_k=K, max_new_tokens=N_NEW,  # noqa: E731
                                   rng=jax.random.PRNGKey(0), cache_bucket=0, tokens_per_iteration=k).tokens
    text = jax.jit(fn).lower(ids, mask).compile().as_text()
    return [int(n) for n in re.findall(r'"known_trip_count":\{"n":"(\d+)"\}', text)]

  assert 3 not in trip_counts(1)
  assert 3 in trip_counts(3)
  with pytest.raises(ValueError, match="tokens_per_iteration must be an int >= 1"):
    trip_counts(0)
