"""Online RL (GRPO / RLOO): BLEU goldens, reward-source weighting, advantages in the step equal the loss
library's, the loss on a fixed rollout equals a hand computation, and a resumed run draws identical rollouts."""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.losses import policy_gradient as pg
from jaxrlhf.models import CausalLM, ModelConfig
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.data import padding
from jaxrlhf.stages import inputs
from jaxrlhf.stages import reward_sources as rewards_lib
from jaxrlhf.stages import rl

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)


# ------------------------------------------------------------------------------------------------ sources
def lengths_reward(prompts, completions):
  """A user reward function (module:function) for the tests: words in the completion."""
  return [float(len(c.split())) for c in completions]


def answer_in_completion(prompts, completions, answer, **kwargs):
  """A TRL-style reward function: 1 if the row's `answer` column occurs in the completion, None without one."""
  return [None if a is None else float(a in c) for c, a in zip(completions, answer)]


def _rollout_arrays():
  return {"prompt_ids": jnp.asarray([[0, 5], [6, 7]], jnp.int32), "prompt_mask": jnp.asarray([[0, 1], [1, 1]]),
          "tokens": jnp.asarray([[8, 9, 2], [10, 2, 0]], jnp.int32), "mask": jnp.asarray([[1, 1, 1], [1, 1, 0]]),
          "prompt_index": jnp.asarray([1, 0], jnp.int32)}


def test_reward_sources_weighted_sum_and_host_callbacks():
  words = {8: "alpha", 9: "beta", 10: "gamma", 2: "</s>"}

  class Tok:
    eos_id = 2

    def decode(self, ids, skip_special_tokens=True):
      return " ".join(words[i] for i in ids if i != 2 or not skip_special_tokens)

  table = rewards_lib.PromptTable(["p0", "p1"], {"references": [["gamma gamma"], ["alpha beta"]],
                                                   "answer": ["x", None]})
  specs = [rewards_lib.RewardSourceSpec(kind="python", function=f"{__name__}:lengths_reward", weight=0.5),
           rewards_lib.RewardSourceSpec(kind="bleu", weight=2.0),
           rewards_lib.RewardSourceSpec(kind="python", function=f"{__name__}:answer_in_completion", name="ans")]
  sources = rewards_lib.build_sources(specs, tokenizer=Tok(), table=table)
  total, per = jax.jit(lambda r: rewards_lib.combined_rewards(sources, {}, r))(_rollout_arrays())
  np.testing.assert_allclose(per["python"], [2.0, 1.0])
  # Row 0 equals its reference (prompt 1); row 1 "gamma" against "gamma gamma": p1 = 1, BP = exp(1 - 2/1).
  bleu = np.asarray([1.0, math.exp(-1.0)])
  np.testing.assert_allclose(per["bleu"], bleu, rtol=1e-6)
  # TRL-style keyword columns; row 0 reads prompt 1's answer None: not scorable (NaN), adding 0 to the total.
  assert np.isnan(per["ans"][0]) and per["ans"][1] == 0.0
  np.testing.assert_allclose(total, 0.5 * np.asarray([2.0, 1.0]) + 2.0 * bleu, rtol=1e-6)


def test_standardized_ensemble_source_by_hand():
  """standardize: (r_k - mean_k) / std_k per member before the aggregation (here min and mean - std)."""

  class Ensemble:  # (R, K) rewards that depend on the rollout only through its shape
    def __call__(self, ids, mask):
      del mask
      return jnp.asarray([[1.0, 10.0, -2.0], [3.0, 30.0, 2.0]])[:ids.shape[0]]

  stats = (np.asarray([2.0, 20.0, 0.0]), np.asarray([1.0, 10.0, 2.0]))
  specs = [rewards_lib.RewardSourceSpec(kind="reward_model", reward_model="x", aggregation="min", name="zmin",
                                        standardize=True),
           rewards_lib.RewardSourceSpec(kind="reward_model", reward_model="x", aggregation="mean_minus_std",
                                        lam=0.5, name="zmeanstd", standardize=True),
           rewards_lib.RewardSourceSpec(kind="reward_model", reward_model="x", aggregation="min", name="rawmin")]
  sources = rewards_lib.build_sources(specs, member_stats={0: stats, 1: stats})
  models = {f"rm_{i}": Ensemble() for i in range(3)}
  _, per = rewards_lib.combined_rewards(sources, models, _rollout_arrays())
  z = np.asarray([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])  # every member standardizes to the same values
  np.testing.assert_allclose(per["zmin"], z.min(1), rtol=1e-6)
  np.testing.assert_allclose(per["zmeanstd"], z.mean(1) - 0.5 * z.std(1), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(per["rawmin"], [-2.0, 2.0])  # raw: member 2's scale decides
  with pytest.raises(ValueError, match="member_stats"):
    rewards_lib.build_sources(specs[:1])
  with pytest.raises(ConfigError, match="standardize"):
    from_config({"kind": "gold", "standardize": True}, rewards_lib.RewardSourceSpec)


def test_member_statistics_score_rows_as_rollouts():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models import ModelConfig  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models.heads import HeadConfig  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models.reward_model import RewardEnsemble  # pylint: disable=g-import-not-at-top
  config = ModelConfig(vocab_size=16, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32)
  rm = RewardEnsemble(config, HeadConfig(), 3, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  p_ids, r_ids = rng.integers(3, 16, (5, 4)).astype(np.int32), rng.integers(3, 16, (5, 6)).astype(np.int32)
  p_mask, r_mask = np.ones((5, 4), np.int32), np.ones((5, 6), np.int32)
  p_mask[0, :2] = 0  # left-padded prompt
  r_mask[1, 3:] = 0  # short response
  mean, std = rewards_lib.member_statistics(rm, p_ids, p_mask, r_ids, r_mask, batch_size=2)
  rows = []
  for i in range(5):  # each row alone, without padding
    ids = np.concatenate([p_ids[i][p_mask[i] > 0], r_ids[i][r_mask[i] > 0]])[None]
    rows.append(np.asarray(rm(jnp.asarray(ids)))[0])
  np.testing.assert_allclose(mean, np.mean(rows, 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(std, np.std(rows, 0), rtol=1e-4, atol=1e-6)


def test_reward_source_config_errors():
  with pytest.raises(ConfigError, match="reward_model"):
    from_config({"kind": "reward_model"}, rewards_lib.RewardSourceSpec)
  with pytest.raises(ConfigError, match="function"):
    from_config({"kind": "python", "function": "no_such_module_xyz:f"}, rewards_lib.RewardSourceSpec)
  with pytest.raises(ValueError, match="distinct"):
    rewards_lib.build_sources([rewards_lib.RewardSourceSpec(), rewards_lib.RewardSourceSpec()], world=object())


# ------------------------------------------------------------------------------------------------ the loss
def _np_k3(logp, ref):
  log_r = ref - logp
  return np.exp(log_r) - 1 - log_r


def test_policy_loss_matches_hand_computation():
  rng = np.random.default_rng(0)
  logps = rng.normal(-2, 0.5, (4, 5)).astype(np.float32)
  old = (logps + rng.normal(0, 0.3, (4, 5))).astype(np.float32)
  ref = (logps + rng.normal(0, 0.3, (4, 5))).astype(np.float32)
  adv = np.asarray([1.0, -0.5, 2.0, -1.5], np.float32)
  mask = np.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], np.int32)
  eps, eps_high, beta = 0.2, 0.28, 0.1
  # Hand computation: rho = exp(logp - old); l = -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A) + beta k3.
  rho = np.exp(logps.astype(np.float64) - old)
  a = adv[:, None].astype(np.float64)
  per_token = -np.minimum(rho * a, np.clip(rho, 1 - eps, 1 + eps_high) * a) + beta * _np_k3(logps, ref)
  token_mean = np.sum(per_token * mask) / mask.sum()
  seq_mean = np.mean(np.sum(per_token * mask, 1) / mask.sum(1))
  batch = {"old_logps": jnp.asarray(old), "ref_logps": jnp.asarray(ref), "advantages": jnp.asarray(adv),
           "mask": jnp.asarray(mask)}
  for agg, expected in (("token_mean", token_mean), ("sequence_mean", seq_mean),
                        ("dr_grpo", np.sum(per_token * mask) / (4 * 5))):
    cfg = rl.RLLossConfig(epsilon=eps, epsilon_high=eps_high, beta=beta, kl_mode="loss", kl_estimator="k3",
                          loss_aggregation=agg)
    total, weight, m = rl.policy_loss_terms(cfg, jnp.asarray(logps), batch, max_length=5)
    assert float(total / weight) == pytest.approx(expected, rel=1e-5)
    lib, _ = pg.clipped_policy_loss(jnp.asarray(logps), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                                    epsilon=eps, epsilon_high=eps_high, loss_aggregation=agg,
                                    ref_logps_BxT=jnp.asarray(ref), kl_coeff=beta, kl_estimator="k3", max_length=5)
    assert float(total / weight) == pytest.approx(float(lib), rel=1e-5)
  clipped = ((rho < 1 - eps) & (a < 0)) | ((rho > 1 + eps_high) & (a > 0))
  assert float(metrics_lib.compute(m)["clip_ratio/region_mean"]) == pytest.approx(
      np.sum(clipped * mask) / mask.sum(), rel=1e-6)
  # Micro-batch totals and weights add up to the full batch's (exact gradient accumulation).
  cfg = rl.RLLossConfig(beta=beta, kl_mode="loss", loss_aggregation="sequence_mean")
  parts = [rl.policy_loss_terms(cfg, jnp.asarray(logps[s]), {k: v[s] for k, v in batch.items()}, 5)
           for s in (slice(0, 2), slice(2, 4))]
  total, weight, _ = rl.policy_loss_terms(cfg, jnp.asarray(logps), batch, 5)
  assert float(parts[0][0] + parts[1][0]) == pytest.approx(float(total), rel=1e-6)
  assert float(parts[0][1] + parts[1][1]) == float(weight)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_policy_loss_kl_term_uses_the_configured_estimator(estimator):
  # kl_mode "loss" adds beta * k(pi, pi_ref)_t with the chosen Schulman (2020) estimator, by hand (log r = ref - logp):
  # k1 = -log r, k2 = (log r)^2 / 2, k3 = e^{log r} - 1 - log r. On-policy (no old_logps): the surrogate is -A.
  rng = np.random.default_rng(4)
  logps = rng.normal(-2, 0.5, (3, 4)).astype(np.float32)
  ref = (logps + rng.normal(0, 0.6, (3, 4))).astype(np.float32)
  adv = np.asarray([0.5, -1.0, 2.0], np.float32)
  mask = np.asarray([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], np.int32)
  log_r = ref.astype(np.float64) - logps
  k = {"k1": -log_r, "k2": 0.5 * log_r ** 2, "k3": np.expm1(log_r) - log_r}[estimator]
  beta = 0.3
  per_token = -adv[:, None] + beta * k
  batch = {"ref_logps": jnp.asarray(ref), "advantages": jnp.asarray(adv), "mask": jnp.asarray(mask)}
  cfg = rl.RLLossConfig(beta=beta, kl_mode="loss", kl_estimator=estimator, loss_aggregation="token_mean")
  total, weight, m = rl.policy_loss_terms(cfg, jnp.asarray(logps), batch, max_length=4)
  assert float(total / weight) == pytest.approx(np.sum(per_token * mask) / mask.sum(), rel=1e-5)
  assert float(metrics_lib.compute(m)["kl_loss_term"]) == pytest.approx(np.sum(k * mask) / mask.sum(), rel=1e-5)


# ------------------------------------------------------------------------------------------------ rollouts
@pytest.fixture(scope="module")
def world():
  return World(WorldConfig(num_prompts=256, max_response_len=12))


def _model(world, seed):
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, **TINY)
  return CausalLM(config, rngs=nnx.Rngs(seed))


def _prompts(world, n=3, width=6):
  ids, mask = padding.encode_prompts(world.tokenizer, world.prompts(n, "train"), width)
  return {"prompt_ids": jnp.asarray(ids), "prompt_mask": jnp.asarray(mask),
          "prompt_index": jnp.arange(n, dtype=jnp.int32)}


@pytest.mark.parametrize("algorithm,kl_mode", [("grpo", "loss"), ("rloo", "reward")])
def test_rollout_advantages_equal_library(world, algorithm, kl_mode):
  model = rl.RLModel(_model(world, 0), _model(world, 1), {})
  loss = rl.RLLossConfig(algorithm=algorithm, num_generations=4, beta=0.3, kl_mode=kl_mode, scale_rewards="batch")
  sampling = rl.SamplingConfig(max_new_tokens=6, temperature=0.9)
  sources = [rewards_lib.RewardSource("gold", 1.0, rewards_lib.gold_score(world))]
  batch, metrics = rl.rollout(model, _prompts(world), jax.random.PRNGKey(0), loss=loss, sampling=sampling,
                              sources=sources, eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id,
                              world=world)
  gold = world.gold_reward_np(batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["mask"])
  seq_k1 = np.sum((np.asarray(batch["old_logps"]) - np.asarray(batch["ref_logps"])) * np.asarray(batch["mask"]), 1)
  expected_rewards = gold - 0.3 * seq_k1 if kl_mode == "reward" else gold
  np.testing.assert_allclose(batch["rewards"], expected_rewards, rtol=1e-5, atol=1e-5)
  if algorithm == "grpo":
    expected = pg.group_advantages(jnp.asarray(expected_rewards), 4, scale_rewards="batch")
  else:
    expected = pg.rloo_advantages(jnp.asarray(expected_rewards), 4)
  np.testing.assert_allclose(batch["advantages"], expected, rtol=1e-4, atol=1e-5)
  assert float(metrics["gold"]) == pytest.approx(float(np.mean(gold)), rel=1e-5)
  # Old log-probs are the sampling distribution's (logits / temperature): the KV-cache decode agrees.
  from jaxrlhf.sampling.generate import generate  # pylint: disable=g-import-not-at-top
  p = _prompts(world)
  gen = generate(model.policy, p["prompt_ids"], p["prompt_mask"], max_new_tokens=6, rng=jax.random.PRNGKey(0),
                 temperature=0.9, eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id, num_samples=4)
  np.testing.assert_array_equal(gen.tokens, batch["tokens"])
  np.testing.assert_allclose(gen.logps, batch["old_logps"], atol=1e-4)


def test_rollout_entropy_and_kl_metrics_average_over_the_response_tokens(world):
  # Responses of varied lengths (a third of the vocabulary ends one): `entropy` is the token mean over the response
  # mask of H(softmax(logits / T)) and `kl` the row mean of sum_t k1, by hand from a full forward of each model.
  model = rl.RLModel(_model(world, 0), _model(world, 1), {})
  loss = rl.RLLossConfig(num_generations=4, beta=0.3, kl_mode="loss")
  sampling = rl.SamplingConfig(max_new_tokens=6, temperature=0.9)
  sources = [rewards_lib.RewardSource("gold", 1.0, rewards_lib.gold_score(world))]
  eos_ids = (world.tokenizer.eos_id,) + tuple(range(3, world.tokenizer.vocab_size, 3))
  batch, metrics = rl.rollout(model, _prompts(world), jax.random.PRNGKey(2), loss=loss, sampling=sampling,
                              sources=sources, eos_ids=eos_ids, pad_id=world.tokenizer.pad_id)
  mask = np.asarray(batch["mask"])
  assert 0 < mask.sum() < mask.size, "the test wants padded responses"
  p = batch["prompt_ids"].shape[1]
  ids = jnp.concatenate([batch["prompt_ids"] * batch["prompt_mask"], batch["tokens"] * batch["mask"]], axis=1)
  attn = jnp.concatenate([batch["prompt_mask"], batch["mask"]], axis=1) > 0

  def logp(m):
    logits = np.asarray(m(ids, attn), np.float64)[:, p - 1:-1] / 0.9
    return logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True)) \
        - logits.max(-1, keepdims=True)

  pol, ref = logp(model.policy), logp(model.reference)
  entropy = -np.sum(np.exp(pol) * pol, -1)
  assert float(metrics_lib.compute({"e": metrics["entropy"]})["e"]) == pytest.approx(
      np.sum(entropy * mask) / mask.sum(), rel=1e-4)
  tok = np.asarray(batch["tokens"])[..., None]
  k1 = np.take_along_axis(pol, tok, -1)[..., 0] - np.take_along_axis(ref, tok, -1)[..., 0]
  assert float(metrics["kl"]) == pytest.approx(np.mean(np.sum(k1 * mask, 1)), rel=1e-4, abs=1e-6)


def test_update_policy_metrics_are_token_and_row_means():
  # The detached update reports the rollout's metrics: entropy averaged over the response tokens only (padding
  # after the end token excluded), kl averaged over rows; micro-batches add up (Avg totals and weights).
  entropy = np.asarray([[1.0, 2.0, 3.0, 9.0], [0.5, 9.0, 9.0, 9.0], [2.0, 2.0, 2.0, 2.0]], np.float32)
  mask = np.asarray([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], np.int32)
  seq_kl = np.asarray([0.3, -0.1, 0.7], np.float32)
  m = metrics_lib.compute(rl.update_policy_metrics(jnp.asarray(entropy), jnp.asarray(mask), jnp.asarray(seq_kl)))
  assert float(m["entropy"]) == pytest.approx((1 + 2 + 3 + 0.5 + 8) / 8, rel=1e-6)
  assert float(m["kl"]) == pytest.approx(0.9 / 3, rel=1e-6)


def _stage_config(workdir_steps, **loop):
  return from_config({
      "seed": 3, "model": {"config": TINY}, "prompts": {"world": {"num_prompts": 256, "max_response_len": 12}},
      "num_prompts": 16, "prompts_per_step": 2, "max_prompt_length": 6, "eval_prompts": 0, "num_devices": 1,
      "rewards": ({"kind": "gold"}, {"kind": "python", "function": f"{__name__}:lengths_reward", "weight": 0.1}),
      "loss": {"algorithm": "grpo", "num_generations": 4, "num_iterations": 2, "beta": 0.05},
      "sampling": {"max_new_tokens": 6}, "optimizer": {"learning_rate": 1e-2},
      "loop": {"num_steps": workdir_steps, "log_every": 1, "checkpoint_every": 1, "progress": False,
               "tensorboard": False, "async_checkpoints": False, **loop}}, rl.RLConfig)


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {d["step"]: d for d in map(json.loads, f) if "train/gold" in d}


@pytest.mark.slow
def test_stage_resume_draws_identical_rollouts(tmp_path):
  full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
  out = rl.run(_stage_config(3), full, {})
  assert os.path.exists(os.path.join(out["model_dir"], "config.json"))
  rl.run(_stage_config(2), resumed, {})
  rl.run(_stage_config(3), resumed, {})  # resumes at step 2: train state (rng, step) + prompt iterator
  a, b = _lines(full), _lines(resumed)
  for key in ("train/gold", "train/reward/python", "train/completion_length", "train/kl", "train/loss"):
    assert a[3][key] == pytest.approx(b[3][key], rel=1e-5, abs=1e-6), key
  assert a[3]["train/gold"] != a[2]["train/gold"] or a[3]["train/kl"] != a[2]["train/kl"]
  # num_iterations = 2 updates per rollout: the optimizer step count is 2 per loop step.
  with open(os.path.join(full, "results.json")) as f:
    assert json.load(f)["step"] == 6


@pytest.mark.slow
def test_stage_with_a_standardized_ensemble(tmp_path, capsys):
  """A saved 3-member ensemble as a standardized min source: the members' statistics over the reference
  responses are computed, logged and used (the train reward is the min of standardized members)."""
  from jaxrlhf.models.heads import HeadConfig  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models.reward_model import RewardEnsemble  # pylint: disable=g-import-not-at-top
  from jaxrlhf.stages import artifacts
  vocab = World(WorldConfig(num_prompts=256, max_response_len=12)).tokenizer.vocab_size
  config = ModelConfig(vocab_size=vocab, **TINY)
  ensemble = RewardEnsemble(config, HeadConfig(), 3, rngs=nnx.Rngs(5))
  rm_dir = artifacts.save_reward_model(str(tmp_path / "rm"), config, HeadConfig(), 3, nnx.state(ensemble))
  cfg = _stage_config(1)
  cfg = dataclasses.replace(cfg, rewards=(rewards_lib.RewardSourceSpec(
      kind="reward_model", reward_model=rm_dir, aggregation="min", standardize=True, name="zmin"),))
  rl.run(cfg, str(tmp_path / "run"), {})
  log = capsys.readouterr().out
  assert "rewards[0] (zmin): members standardized over 16 reference responses" in log
  line = _lines_of(str(tmp_path / "run"), "train/reward/zmin")[1]
  # min over members of z-scores of the policy's samples: near the reference distribution, so O(1) and <= 0-ish.
  assert np.isfinite(line["train/reward/zmin"]) and abs(line["train/reward/zmin"]) < 5


def _lines_of(workdir, key):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {d["step"]: d for d in map(json.loads, f) if key in d}


def test_prompt_iterator_state_roundtrip():
  ids = np.arange(10, dtype=np.int32)[:, None] + np.zeros((10, 3), np.int32)
  it = inputs.PromptIterator(ids, np.ones_like(ids), 4, seed=1)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)["prompt_index"] for _ in range(3)]
  it2 = inputs.PromptIterator(ids, np.ones_like(ids), 4, seed=1)
  it2.set_state(json.loads(json.dumps(state)))
  for e in expected:
    np.testing.assert_array_equal(next(it2)["prompt_index"], e)


def test_config_validation_names_keys():
  with pytest.raises(ConfigError, match="grad_accum_steps"):
    from_config({"prompts_per_step": 3, "loss": {"num_generations": 2}, "optimizer": {"grad_accum_steps": 4}},
                rl.RLConfig)
  with pytest.raises(ConfigError, match="beta"):
    from_config({"loss": {"beta": 0.0, "kl_mode": "loss"}}, rl.RLConfig)
  with pytest.raises(ConfigError, match="algorithm"):
    from_config({"loss": {"algorithm": "ppo"}}, rl.RLConfig)


def test_held_out_prompts_are_the_worlds_validation_prompts(tmp_path, monkeypatch):
  """eval_prompts draws the world's validation split (RLConfig's docstring), not its train split: one draw of
  eval_prompts prompts, none of them a training prompt, evaluated at every eval step."""
  from jaxrlhf.data.synthetic import world as world_lib  # pylint: disable=g-import-not-at-top
  draws, original = [], world_lib.World.prompts

  def recording_prompts(self, n, split, context=None):
    texts = original(self, n, split, context)
    draws.append((n, split, list(texts)))
    return texts

  monkeypatch.setattr(world_lib.World, "prompts", recording_prompts)
  workdir = str(tmp_path / "run")
  rl.run(dataclasses.replace(_stage_config(2, eval_every=1), eval_prompts=3), workdir, {})
  assert [(n, split) for n, split, _ in draws] == [(3, "validation")]
  held_out, world = draws[0][2], World(WorldConfig(num_prompts=256, max_response_len=12))
  train = {r.prompt for r in world.sft_records(16, "train")}
  assert len(set(held_out)) == 3 and not set(held_out) & train
  assert held_out == world.prompts(3, "validation")
  assert sorted(_lines_of(workdir, "eval/gold")) == [1, 2]
