"""Best-of-N: the unbiased estimator vs exhaustive subset enumeration, KL formulas, and end-to-end selection."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_models import random_model

from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.models import ModelConfig
from jaxrlhf.models.reward_model import RewardModel
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.data.padding import pad_prompts
from jaxrlhf.sampling import (best_of_n, best_of_n_curves, best_of_n_kl, best_of_n_kl_estimate, best_of_n_weights,
                              gold_scorer, reward_model_scorer, unbiased_best_of_n)


def _brute_force(proxy, gold, n):
  """Mean over all n-subsets of the gold reward of the subset's proxy argmax (ties: mean over the tied maxima)."""
  values = []
  for subset in itertools.combinations(range(len(proxy)), n):
    p = proxy[list(subset)]
    winners = [subset[j] for j in np.flatnonzero(p == p.max())]
    values.append(np.mean(gold[winners]))
  return np.mean(values)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimator_equals_exhaustive_subsets(seed):
  rng = np.random.default_rng(seed)
  N = 8
  proxy, gold = rng.normal(size=(2, N)), rng.normal(size=(2, N))
  ns = np.arange(1, N + 1)
  got = unbiased_best_of_n(proxy, gold, ns)
  assert got.shape == (2, N)
  for b in range(2):
    want = [_brute_force(proxy[b], gold[b], n) for n in ns]
    np.testing.assert_allclose(got[b], want, rtol=1e-12, atol=1e-12)


def test_estimator_with_proxy_ties_equals_random_tie_breaking():
  proxy = np.array([0.0, 1.0, 1.0, 2.0, 2.0, 2.0, -1.0])
  gold = np.array([3.0, -1.0, 5.0, 0.5, 2.0, -4.0, 7.0])
  ns = np.arange(1, 8)
  np.testing.assert_allclose(unbiased_best_of_n(proxy, gold, ns), [_brute_force(proxy, gold, n) for n in ns],
                             atol=1e-12)


def test_n1_is_the_pool_mean_and_nN_the_proxy_argmax():
  rng = np.random.default_rng(3)
  proxy, gold = rng.normal(size=50), rng.normal(size=50)
  got = unbiased_best_of_n(proxy, gold, [1, 50])
  np.testing.assert_allclose(got, [gold.mean(), gold[proxy.argmax()]], atol=1e-12)


def test_monotone_in_n_when_proxy_is_gold():
  rng = np.random.default_rng(4)
  pool = rng.gamma(2.0, size=(3, 200))
  curve = unbiased_best_of_n(pool, ns=np.arange(1, 201))
  assert (np.diff(curve, axis=1) >= -1e-12).all()
  # and not when the proxy is anti-correlated with gold: the test can fail.
  assert (np.diff(unbiased_best_of_n(-pool, pool, np.arange(1, 201)), axis=1) < 0).all()


def test_weights_are_stable_for_large_pools():
  w = best_of_n_weights(20000, [1, 2, 100, 20000])
  assert np.isfinite(w).all()
  np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-9)
  np.testing.assert_allclose(w[0], 1 / 20000)
  assert w[-1, -1] == pytest.approx(1.0) and w[-1, :-1].sum() == 0


def test_best_of_n_kl_formula_and_estimate():
  np.testing.assert_allclose(best_of_n_kl([1, 2, 4, 16]), [0.0, np.log(2) - 0.5, np.log(4) - 0.75,
                                                           np.log(16) - 15 / 16])
  pool = np.random.default_rng(5).normal(size=20000)
  ns = [1, 2, 4, 16]
  est = best_of_n_kl_estimate(pool, ns)
  np.testing.assert_allclose(est, best_of_n_kl(ns), atol=5e-3)  # distinct rewards, N >> n: the analytic value
  assert (est <= best_of_n_kl(ns) + 1e-9).all()
  # All rewards tied: best-of-n is the base distribution, KL 0.
  np.testing.assert_allclose(best_of_n_kl_estimate(np.ones(10), ns[:3]), 0.0, atol=1e-12)
  # Two atoms with mass 1/2: best-of-2 picks the top one w.p. 3/4 -> KL = 3/4 log 3/2 + 1/4 log 1/2.
  np.testing.assert_allclose(best_of_n_kl_estimate(np.array([0.0, 0.0, 1.0, 1.0]), [2]),
                             [0.75 * np.log(1.5) + 0.25 * np.log(0.5)], atol=1e-12)


def test_curves_and_bad_input():
  rng = np.random.default_rng(6)
  gold = rng.normal(size=(4, 32))
  proxy = gold + rng.normal(size=(4, 32))
  c = best_of_n_curves(proxy, gold, ns=[1, 2, 8, 32])
  assert set(c) == {"n", "gold", "proxy", "gold_oracle", "kl", "kl_estimate"}
  assert (c["gold_oracle"] >= c["gold"] - 1e-12).all() and (c["proxy"][1:] > c["gold"][1:]).all()
  with pytest.raises(ValueError, match="ns"):
    unbiased_best_of_n(proxy, gold, [0, 3])
  with pytest.raises(ValueError, match="gold"):
    unbiased_best_of_n(proxy, gold[:, :5])


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def world():
  return World(WorldConfig(seed=0, num_prompts=256))


@pytest.fixture(scope="module")
def policy(world):
  config = ModelConfig(family="llama", vocab_size=world.tokenizer.vocab_size, embed_dim=16, num_layers=2,
                       num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32, max_position_embeddings=64)
  return random_model(config, seed=0, scale=0.3)


def _prompts(world, n=4):
  ids, _ = world.prompt_arrays(n, "test")
  rows = [[int(t) for t in r if t != world.tokenizer.pad_id] for r in ids]
  return pad_prompts(rows, pad_id=world.tokenizer.pad_id, width=8)


def test_best_of_n_with_the_gold_reward_selects_the_argmax(world, policy):
  ids, mask = _prompts(world)
  eos = world.tokenizer.eos_id
  out = best_of_n(policy, ids, mask, n=6, scorer=gold_scorer(world), rng=jax.random.key(0), max_new_tokens=10,
                  eos_ids=(eos,), pad_id=world.tokenizer.pad_id)
  assert out.scores.shape == (4, 6) and out.tokens.shape == (4, 10)
  gold = world.gold_reward_np(np.repeat(ids, 6, 0), np.repeat(mask, 6, 0), np.asarray(out.generation.tokens),
                              np.asarray(out.generation.mask)).reshape(4, 6)
  np.testing.assert_allclose(np.asarray(out.scores), gold, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out.best_index), gold.argmax(1))
  np.testing.assert_allclose(np.asarray(out.best_scores), gold.max(1), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out.tokens),
                                np.asarray(out.generation.tokens).reshape(4, 6, 10)[np.arange(4), gold.argmax(1)])


def test_best_of_n_with_an_ensemble_needs_an_aggregation(world, policy):
  ids, mask = _prompts(world)

  def two_heads(p_ids, p_mask, r_ids, r_mask):  # (R, 2): length and minus the first token id
    return jnp.stack([r_mask.sum(1).astype(jnp.float32), -r_ids[:, 0].astype(jnp.float32)], axis=1)

  kwargs = dict(n=5, scorer=two_heads, rng=jax.random.key(1), max_new_tokens=6, eos_ids=(world.tokenizer.eos_id,))
  with pytest.raises(ValueError, match="aggregation"):
    best_of_n(policy, ids, mask, **kwargs)
  out = best_of_n(policy, ids, mask, aggregation="min", **kwargs)
  raw = np.asarray(out.raw_scores)
  assert raw.shape == (4, 5, 2)
  np.testing.assert_array_equal(np.asarray(out.best_index), raw.min(-1).argmax(1))


def test_reward_model_scorer_matches_unpadded_rows(world):
  config = ModelConfig(family="llama", vocab_size=world.tokenizer.vocab_size, embed_dim=16, num_layers=1,
                       num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32)
  rm = RewardModel.from_causal_lm(random_model(config, seed=1), HeadConfig(), seed=0)
  p_ids, p_mask = pad_prompts([[10, 11, 12], [13, 14]], width=4)
  r_ids = np.array([[20, 21, 2, 0], [22, 2, 0, 0]], np.int32)
  r_mask = (r_ids > 0).astype(np.int32)
  got = np.asarray(reward_model_scorer(rm)(p_ids, p_mask, r_ids, r_mask))
  want = [float(rm(jnp.asarray([[10, 11, 12, 20, 21, 2]]))[0]), float(rm(jnp.asarray([[13, 14, 22, 2]]))[0])]
  np.testing.assert_allclose(got, want, atol=1e-5)
