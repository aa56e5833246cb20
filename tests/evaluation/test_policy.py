"""Policy evaluation in the synthetic world (gold, proxy, sampled KL, length, win rate) and confidence intervals."""

import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.evaluation import confidence_interval, win_credit
from jaxrlhf.models import ModelConfig, abstract_model
from jaxrlhf.models.decoder import layer_param_specs, model_param_specs
from jaxrlhf.data.padding import pad_prompts
from jaxrlhf.sampling import generate, gold_scorer
from jaxrlhf.stages.evaluate_policy import evaluate_policy

NEW = 8
SAMPLES = 2


def _random_model(config, seed, scale=0.3):
  """CausalLM from numpy draws (no jitted PRNG init, which compiles slowly on 2 cores)."""
  rng = np.random.default_rng(seed)
  draw = lambda spec, lead=(): ((1.0 if spec.init == "ones" else 0.0) + (0.1 if spec.init == "ones" else scale)
                                * rng.standard_normal((*lead, *spec.shape))).astype(np.float32)
  params = {name: draw(spec) for name, spec in model_param_specs(config).items()}
  params["layers"] = {name: draw(spec, (config.num_layers,)) for name, spec in layer_param_specs(config).items()}
  graphdef, state = nnx.split(abstract_model(config))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def setup():
  world = World(WorldConfig(seed=0, num_prompts=256))
  tok = world.tokenizer
  config = ModelConfig(family="llama", vocab_size=tok.vocab_size, embed_dim=16, num_layers=2, num_heads=2,
                       num_kv_heads=2, head_dim=8, mlp_dim=32, max_position_embeddings=64)
  ids, _ = world.prompt_arrays(12, "test")
  prompts = pad_prompts([[int(t) for t in r if t != tok.pad_id] for r in ids], pad_id=tok.pad_id, width=6)
  return world, _random_model(config, 0), _random_model(config, 1), prompts


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_normal_ci_hand_computed():
  est = confidence_interval([1.0, 2.0, 3.0, 4.0, 5.0])
  half = statistics.NormalDist().inv_cdf(0.975) * math.sqrt(2.5) / math.sqrt(5)
  assert est.mean == 3.0 and est.n == 5
  assert est.lower == pytest.approx(3.0 - half) and est.upper == pytest.approx(3.0 + half)
  assert half == pytest.approx(1.959964 * 0.7071068, rel=1e-6)
  one = confidence_interval([2.0])
  assert one.lower == -math.inf and one.upper == math.inf
  # Resampling one prompt would give [2, 2]; one unit carries no spread under either method.
  boot = confidence_interval([2.0], "bootstrap")
  assert (boot.mean, boot.lower, boot.upper, boot.n) == (2.0, -math.inf, math.inf, 1)


def test_bootstrap_ci_agrees_with_normal_on_a_large_sample():
  values = np.random.default_rng(0).normal(1.0, 2.0, size=400)
  normal = confidence_interval(values)
  boot = confidence_interval(values, "bootstrap", num_resamples=4000, seed=1)
  assert boot.lower < boot.mean < boot.upper
  assert boot.upper - boot.lower == pytest.approx(normal.upper - normal.lower, rel=0.1)
  # The percentile interval cuts (1 - level) / 2 from each tail: each bound lies near its normal counterpart (cutting
  # 5 % from one tail instead moves that bound by ~17 % of the half-width).
  half = (normal.upper - normal.lower) / 2
  assert abs(boot.lower - normal.lower) < 0.08 * half and abs(boot.upper - normal.upper) < 0.08 * half
  assert boot == confidence_interval(values, "bootstrap", num_resamples=4000, seed=1)  # seeded
  with pytest.raises(ValueError, match="method"):
    confidence_interval(values, "wald")


def test_normal_ci_coverage():
  """About 95% of intervals from N(0, 1) samples of 50 contain 0 (binomial slack: 2000 trials)."""
  samples = np.random.default_rng(2).normal(size=(2000, 50))
  intervals = [confidence_interval(s) for s in samples]
  hits = sum(e.lower <= 0.0 <= e.upper for e in intervals)
  assert 0.93 <= hits / 2000 <= 0.97


def test_win_credit():
  np.testing.assert_array_equal(win_credit([1.0, 2.0, 0.0], [0.0, 2.0, 1.0]), [1.0, 0.5, 0.0])


def test_evaluate_policy_against_independent_recomputation(setup):
  world, policy, reference, (ids, mask) = setup
  tok = world.tokenizer
  rng = jax.random.key(3)
  length_proxy = lambda p_ids, p_mask, r_ids, r_mask: jnp.sum(r_mask, axis=1).astype(jnp.float32)
  # A second end id that this random policy emits often, so that some rows end and the length rule is exercised.
  probe = np.asarray(generate(policy, ids, mask, rng=jax.random.key(0), max_new_tokens=NEW, num_samples=SAMPLES,
                              eos_ids=(tok.eos_id,), pad_id=tok.pad_id).tokens)
  frequent = int(np.bincount(probe.ravel(), minlength=tok.vocab_size)[4:].argmax()) + 4
  eos = (tok.eos_id, frequent)
  result = evaluate_policy(policy, reference, ids, mask, gold_fn=gold_scorer(world), rng=rng, max_new_tokens=NEW,
                           proxy_fn=length_proxy, num_samples=SAMPLES, eos_ids=eos, pad_id=tok.pad_id)
  m = result.metrics
  assert set(m) == {"gold", "proxy", "kl", "length", "base_length", "win_rate", "base_gold", "gold_gain"}
  # Redraw the same samples (same keys) and recompute every number independently.
  kwargs = dict(max_new_tokens=NEW, num_samples=SAMPLES, eos_ids=eos, pad_id=tok.pad_id)
  gen = generate(policy, ids, mask, rng=jax.random.fold_in(rng, 0), **kwargs)
  base = generate(reference, ids, mask, rng=jax.random.fold_in(rng, 1), **kwargs)
  ids_r, mask_r = np.repeat(ids, SAMPLES, 0), np.repeat(mask, SAMPLES, 0)
  tokens, out_mask = np.asarray(gen.tokens), np.asarray(gen.mask)
  gold = world.gold_reward_np(ids_r, mask_r, tokens, out_mask).reshape(-1, SAMPLES)
  base_gold = world.gold_reward_np(ids_r, mask_r, np.asarray(base.tokens), np.asarray(base.mask)).reshape(-1, SAMPLES)
  assert m["gold"].mean == pytest.approx(gold.mean(), abs=1e-5)
  assert m["base_gold"].mean == pytest.approx(base_gold.mean(), abs=1e-5)
  assert m["win_rate"].mean == pytest.approx(np.mean((gold > base_gold) + 0.5 * (gold == base_gold)))
  # Lengths count the tokens before the end token (gold's n): masked tokens other than <eos>.
  def before_end(t, msk):
    return sum(int(x not in eos) for row_t, row_m in zip(t, msk) for x, keep in zip(row_t, row_m) if keep)
  assert m["length"].mean == pytest.approx(before_end(tokens, out_mask) / out_mask.shape[0])
  assert m["base_length"].mean == pytest.approx(before_end(np.asarray(base.tokens), np.asarray(base.mask))
                                                / out_mask.shape[0])
  ended = int(np.sum(np.isin(tokens, eos) & (out_mask > 0)))
  assert ended > 0 and m["length"].mean == pytest.approx((out_mask.sum() - ended) / out_mask.shape[0])
  assert m["proxy"].mean == pytest.approx(out_mask.sum() / out_mask.shape[0])  # the proxy counts the mask
  # KL: policy and reference log-probs of the samples from plain full forwards.
  full_ids = jnp.asarray(np.concatenate([ids_r, tokens], 1))
  full_mask = jnp.asarray(np.concatenate([mask_r, out_mask], 1))
  P = ids.shape[1]
  lp = lambda model: _log_softmax(np.asarray(model(full_ids, full_mask))[:, P - 1:-1])
  pick = lambda logp: np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
  kl = ((pick(lp(policy)) - pick(lp(reference))) * out_mask).sum(1).reshape(-1, SAMPLES).mean(1)
  assert m["kl"].mean == pytest.approx(kl.mean(), abs=1e-4)
  np.testing.assert_allclose(result.per_prompt["kl"], kl, atol=1e-4)
  assert m["kl"].mean > 0 and m["kl"].n == ids.shape[0]
  assert m["gold"].lower < m["gold"].mean < m["gold"].upper
  assert result.summary()["gold_upper"] == m["gold"].upper


def test_policy_equal_to_reference_has_zero_kl(setup):
  world, _, reference, (ids, mask) = setup
  result = evaluate_policy(reference, reference, ids, mask, gold_fn=gold_scorer(world), rng=jax.random.key(5),
                           max_new_tokens=NEW, num_samples=8, eos_ids=(world.tokenizer.eos_id,),
                           pad_id=world.tokenizer.pad_id, ci="bootstrap", num_resamples=500, level=0.999)
  np.testing.assert_allclose(result.per_prompt["kl"], 0.0, atol=1e-4)
  win = result.metrics["win_rate"]  # the same policy against itself: 1/2 up to sampling noise
  assert win.lower <= 0.5 <= win.upper and win.level == 0.999
