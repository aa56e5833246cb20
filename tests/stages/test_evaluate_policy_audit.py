"""evaluate_policy against independent recomputations where tests/evaluation/test_policy.py does not look: reward
sources with unscorable (NaN) samples (policy / base / gain / win rate over the samples both sides could score), an
ensemble proxy reduced at the configured lambda, a policy sampled on other prompts than the reference sees (the
goal-conditioned case: KL, base samples and rewards on the plain prompt), and the stage's results.json keys."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from random_models import random_model

from jaxrlhf.config import from_config
from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.data.padding import pad_prompts
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.data.transforms import inference_prompt
from jaxrlhf.models import CausalLM, ModelConfig, save_pretrained
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble
from jaxrlhf.sampling.generate import generate
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import evaluate_policy as ep_stage

NEW, S = 6, 2
TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)
WORLD = {"num_prompts": 256, "max_response_len": 12}


def odd_prompts_unscorable(prompts, completions, **_):
  """A python reward source that cannot score the prompts of odd text length (None)."""
  return [None if len(p) % 2 else float(len(c)) for p, c in zip(prompts, completions)]


@pytest.fixture(scope="module")
def setup():
  world = World(WorldConfig(**WORLD))
  tok = world.tokenizer
  config = ModelConfig(vocab_size=tok.vocab_size, **TINY)
  rows = [tok.encode(p) for p in world.prompts(6, "test")]
  plain = pad_prompts(rows, tok.pad_id, width=8)
  # The policy's prompts carry one extra leading token (a stand-in for the goal prompt).
  goal = pad_prompts([[tok.ids["the"]] + r for r in rows], tok.pad_id, width=9)
  return world, random_model(config, 1, 0.4), random_model(config, 2, 0.4), random_model(config, 3, 0.4), plain, goal


def _logps(model, ids, mask, tokens, out_mask):
  """Sum of the response tokens' log-probs from one full forward (float64 log-softmax)."""
  full = jnp.asarray(np.concatenate([ids, tokens], 1))
  full_mask = jnp.asarray(np.concatenate([mask, out_mask], 1))
  logp = jax.nn.log_softmax(np.asarray(model(full, full_mask), np.float64)[:, ids.shape[1] - 1:-1], axis=-1)
  return (np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0] * out_mask).sum(1)


def test_rewards_proxy_and_reference_prompts_against_recomputation(setup):
  world, policy, reference, base, (ids, mask), (goal_ids, goal_mask) = setup
  tok, rng = world.tokenizer, jax.random.key(7)
  members = lambda p_ids, p_mask, r_ids, r_mask: jnp.stack(  # noqa: E731  (R, 2): two "members"
      [jnp.sum(r_mask, 1).astype(jnp.float32), jnp.sum(r_ids * r_mask, 1).astype(jnp.float32) / 10.0], axis=1)

  def rewards(rollout):  # NaN (not scorable) where the first response token is odd
    t, m = np.asarray(rollout["tokens"]), np.asarray(rollout["mask"])
    value = (t * m).sum(1).astype(np.float64) % 7 + rollout["prompt_index"]
    return {"r": np.where(t[:, 0] % 2 == 1, np.nan, value)}

  result = ep_stage.evaluate_policy(
      policy, reference, goal_ids, goal_mask, base=base, gold_fn=None, rng=rng, max_new_tokens=NEW,
      proxy_fn=members, aggregation="mean_minus_var", lam=0.5, rewards=rewards, prompt_index_B=np.arange(10, 16),
      num_samples=S, eos_ids=(tok.eos_id,), pad_id=tok.pad_id, reference_prompt_ids_BxP=ids,
      reference_prompt_mask_BxP=mask)
  kwargs = dict(max_new_tokens=NEW, num_samples=S, eos_ids=(tok.eos_id,), pad_id=tok.pad_id)
  gen = generate(policy, goal_ids, goal_mask, rng=jax.random.fold_in(rng, 0), **kwargs)
  base_gen = generate(base, ids, mask, rng=jax.random.fold_in(rng, 1), **kwargs)
  t, m = np.asarray(gen.tokens), np.asarray(gen.mask)
  bt, bm = np.asarray(base_gen.tokens), np.asarray(base_gen.mask)
  rep = lambda x: np.repeat(x, S, 0)  # noqa: E731
  # KL: the policy on its own (goal) prompt, the reference on the plain prompt.
  kl = _logps(policy, rep(goal_ids), rep(goal_mask), t, m) - _logps(reference, rep(ids), rep(mask), t, m)
  np.testing.assert_allclose(result.per_prompt["kl"], kl.reshape(-1, S).mean(1), atol=2e-3)
  # Proxy: mean - lam * population variance of the members, lam = 0.5.
  sc = np.asarray(members(None, None, t, m), np.float64)
  uwo = sc.mean(1) - 0.5 * sc.var(1)
  np.testing.assert_allclose(result.per_prompt["proxy"], uwo.reshape(-1, S).mean(1), rtol=1e-5)
  # Rewards over the scorable samples; gain and win rate over the samples both sides could score.
  index = np.repeat(np.arange(10, 16), S)
  r = rewards({"tokens": t, "mask": m, "prompt_index": index})["r"].reshape(-1, S)
  rb = rewards({"tokens": bt, "mask": bm, "prompt_index": index})["r"].reshape(-1, S)
  assert np.isnan(r).any() and np.isnan(rb).any() and (~np.isnan(r) & ~np.isnan(rb)).any()
  for p in range(r.shape[0]):
    ok, ok_b = ~np.isnan(r[p]), ~np.isnan(rb[p])
    both = ok & ok_b
    for key, want in (("r", r[p][ok].mean() if ok.any() else np.nan),
                      ("r/base", rb[p][ok_b].mean() if ok_b.any() else np.nan),
                      ("r/gain", (r[p] - rb[p])[both].mean() if both.any() else np.nan),
                      ("r/win_rate", ((r[p] > rb[p]) + 0.5 * (r[p] == rb[p]))[both].mean() if both.any() else np.nan)):
      got = result.per_prompt[key][p]
      assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want), (key, p)
  assert result.metrics["r"].n == int((~np.isnan(r)).any(1).sum())
  assert "gold" not in result.metrics and "win_rate" not in result.metrics


def test_stage_results_keys_and_values(setup, tmp_path):
  """Two batches of the world's test prompts; results.json's keys are the documented names, and the reward source's
  policy mean, its prompt count and the gold win rate are reported."""
  world = setup[0]
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, **TINY)
  policy_dir, base_dir = str(tmp_path / "policy"), str(tmp_path / "base")
  save_pretrained(CausalLM(config, rngs=nnx.Rngs(0)), policy_dir)
  save_pretrained(CausalLM(config, rngs=nnx.Rngs(1)), base_dir)
  rm = RewardEnsemble(config, HeadConfig(), 2, rngs=nnx.Rngs(2))
  rm_dir = artifacts.save_reward_model(str(tmp_path / "rm"), config, HeadConfig(), 2, nnx.state(rm))
  cfg = from_config({"policy": policy_dir, "base": base_dir, "prompts": {"world": WORLD}, "num_prompts": 6,
                     "batch_size": 4, "max_new_tokens": 4,
                     "rewards": ({"kind": "reward_model", "name": "rm", "reward_model": rm_dir},
                                 {"kind": "python", "name": "half", "function": f"{__name__}:odd_prompts_unscorable"})},
                    ep_stage.EvaluatePolicyConfig)
  metrics = ep_stage.run(cfg, str(tmp_path / "eval"), {})["metrics"]
  with open(tmp_path / "eval" / "results.json") as f:
    assert json.load(f)["metrics"] == pytest.approx(metrics)
  names = ("gold/policy", "gold/base", "gold/gain", "gold/win_rate", "kl", "length/policy", "length/base",
           *(f"reward/{r}/{k}" for r in ("rm", "half") for k in ("policy", "base", "gain", "win_rate")))
  assert set(metrics) == ({f"{n}{s}" for n in names for s in ("", "_lower", "_upper")}
                          | {"reward/rm/prompts", "reward/half/prompts"})
  assert metrics["reward/rm/prompts"] == 6.0
  # The python source scores only the even-length prompts; the means are over those (no NaN leaks in).
  even = sum(len(p) % 2 == 0 for p in world.prompts(6, "test"))
  assert 0 < even < 6 and metrics["reward/half/prompts"] == float(even)
  assert all(np.isfinite(v) for k, v in metrics.items() if k.startswith("reward/half/") and "_" not in k[-6:])
  assert metrics["gold/gain"] == pytest.approx(metrics["gold/policy"] - metrics["gold/base"], abs=1e-9)
  assert 0.0 <= metrics["gold/win_rate"] <= 1.0


def test_goal_conditioned_stage_samples_the_policy_on_the_goal_prompt(setup, tmp_path, monkeypatch):
  """goal_conditioned: the policy sees inference_prompt(x, top_score); the reference / base / rewards see x."""
  world = setup[0]
  tok = world.tokenizer
  config = ModelConfig(vocab_size=tok.vocab_size, **TINY)
  save_pretrained(CausalLM(config, rngs=nnx.Rngs(0)), str(tmp_path / "policy"))
  calls = []

  def spy(policy, reference, ids, mask, **kwargs):
    calls.append((np.asarray(ids), np.asarray(mask), np.asarray(kwargs["reference_prompt_ids_BxP"]),
                  np.asarray(kwargs["reference_prompt_mask_BxP"])))
    return ep_stage.PolicyEvaluation(metrics={}, per_prompt={"kl": np.zeros(ids.shape[0])})

  monkeypatch.setattr(ep_stage, "evaluate_policy", spy)
  cfg = from_config({"policy": str(tmp_path / "policy"), "base": str(tmp_path / "policy"), "prompts": {"world": WORLD},
                     "num_prompts": 3, "batch_size": 2, "goal_conditioned": True, "top_score": 9.0},
                    ep_stage.EvaluatePolicyConfig)
  metrics = ep_stage.run(cfg, str(tmp_path / "eval"), {})["metrics"]
  assert metrics["kl"] == 0.0 and len(calls) == 2
  unpad = lambda ids, mask: [list(r[m > 0]) for r, m in zip(ids, mask)]  # noqa: E731
  policy_rows = [r for c in calls for r in unpad(c[0], c[1])]
  plain_rows = [r for c in calls for r in unpad(c[2], c[3])]
  texts = world.prompts(3, "test")
  goal = [tokenize_lib.encode_prompt(tok, inference_prompt(t, 9.0)) for t in texts]
  assert policy_rows == goal and plain_rows == [tokenize_lib.encode_prompt(tok, t) for t in texts]
  assert goal != plain_rows
