"""The GRPO variants in the rl stage (`loss.variant`, DAPO's `dynamic_sampling` and `overlong_cache`): the stage's
loss on a fixed rollout batch equals `policy_variants.policy_variant_loss` (value and gradient), gradient
accumulation is exact for every variant, the default objective is the library's clipped loss, the dynamic-sampling
selection keeps the right groups of a hand-built reward pattern, the overlong penalty reaches the rewards, config
mistakes name their key, and every variant trains end to end on the tiny chat model."""

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))
import tiny_chat_model  # noqa: E402  pylint: disable=g-import-not-at-top

from jaxrlhf.config import ConfigError, from_config  # noqa: E402
from jaxrlhf.data import padding  # noqa: E402
from jaxrlhf.data.synthetic import World, WorldConfig  # noqa: E402
from jaxrlhf.losses import policy_gradient as pg  # noqa: E402
from jaxrlhf.losses import policy_variants as pv  # noqa: E402
from jaxrlhf.models import CausalLM, ModelConfig  # noqa: E402
from jaxrlhf.stages import reward_sources as rewards_lib  # noqa: E402
from jaxrlhf.stages import rl  # noqa: E402
from jaxrlhf.train import metrics as metrics_lib  # noqa: E402
from jaxrlhf.train import state as state_lib  # noqa: E402

VARIANTS = tuple(pv.VARIANTS)  # grpo, dr_grpo, dapo, gspo, gspo_token, cispo
TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)


def _batch(seed=0, b=8, t=6, noise=0.3):
  """A fixed rollout batch: (B, T) log-probs, old / reference log-probs nearby, ragged masks, (B,) advantages."""
  rng = np.random.default_rng(seed)
  logps = rng.normal(-2.0, 0.5, (b, t)).astype(np.float32)
  lengths = rng.integers(1, t + 1, b)
  lengths[-1] = 0  # an empty completion counts as 0, as in the library
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
  batch = {"old_logps": logps + rng.normal(0, noise, (b, t)).astype(np.float32),
           "ref_logps": logps + rng.normal(0, noise, (b, t)).astype(np.float32),
           "advantages": rng.normal(0, 1, b).astype(np.float32), "mask": mask}
  return jnp.asarray(logps), {k: jnp.asarray(v) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------ the loss
@pytest.mark.parametrize("kl_mode", ["loss", "none"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_loss_equals_library(variant, kl_mode):
  logps, batch = _batch()
  t = logps.shape[1]
  cfg = rl.RLLossConfig(variant=variant, kl_mode=kl_mode, beta=0.1)

  def stage(lp):
    total, weight, _ = rl.policy_loss_terms(cfg, lp, batch, max_length=t)
    return total / weight

  def library(lp):
    loss, _ = pv.policy_variant_loss(lp, batch["old_logps"], batch["advantages"], batch["mask"], variant=variant,
                                     ref_logps_BxT=batch["ref_logps"], kl_coeff=0.1 if kl_mode == "loss" else 0.0,
                                     max_length=t)
    return loss

  assert float(stage(logps)) == pytest.approx(float(library(logps)), rel=1e-6, abs=1e-6)
  np.testing.assert_allclose(jax.grad(stage)(logps), jax.grad(library)(logps), rtol=1e-5, atol=1e-7)
  # The metrics are the library's, merged with the right counts (GSPO: sequences, the others: tokens).
  _, _, metrics = rl.policy_loss_terms(cfg, logps, batch, max_length=t)
  _, lib_metrics = pv.policy_variant_loss(logps, batch["old_logps"], batch["advantages"], batch["mask"],
                                          variant=variant)
  computed = metrics_lib.compute(metrics)
  for key, value in lib_metrics.items():
    assert float(computed[key]) == pytest.approx(float(value), rel=1e-6, abs=1e-7), key


def test_variants_differ_from_each_other():
  """The variant really selects the objective (a wiring mistake would make two of them coincide)."""
  logps, batch = _batch(noise=0.6)
  losses = {v: float(np.divide(*rl.policy_loss_terms(rl.RLLossConfig(variant=v), logps, batch, 6)[:2]))
            for v in VARIANTS}
  # GSPO-token has GSPO's value (and gradient, for sequence advantages) by design; its metrics are token means.
  assert losses["gspo_token"] == pytest.approx(losses.pop("gspo_token"))
  assert len({round(x, 7) for x in losses.values()}) == len(losses), losses
  ratio = {v: float(metrics_lib.compute(rl.policy_loss_terms(rl.RLLossConfig(variant=v), logps, batch, 6)[2])[
      "ratio/mean"]) for v in ("gspo", "gspo_token")}
  assert ratio["gspo"] != pytest.approx(ratio["gspo_token"], rel=1e-4), ratio


def test_default_objective_is_the_clipped_policy_loss():
  """variant "" keeps today's objective: the library's clipped loss with the config's clip range, aggregation and
  KL term, and the variant-free advantages (GRPO group scaling, RLOO)."""
  logps, batch = _batch(1)
  for kwargs in ({}, {"loss_aggregation": "sequence_mean", "epsilon": 0.1, "epsilon_high": 0.3},
                 {"loss_aggregation": "dr_grpo", "kl_mode": "none"}):
    cfg = rl.RLLossConfig(**kwargs)
    total, weight, _ = rl.policy_loss_terms(cfg, logps, batch, max_length=6)
    eps_high = None if cfg.epsilon_high < 0 else cfg.epsilon_high
    lib, _ = pg.clipped_policy_loss(logps, batch["old_logps"], batch["advantages"], batch["mask"],
                                    epsilon=cfg.epsilon, epsilon_high=eps_high,
                                    loss_aggregation=cfg.loss_aggregation, ref_logps_BxT=batch["ref_logps"],
                                    kl_coeff=cfg.beta if cfg.kl_mode == "loss" else 0.0, kl_estimator=cfg.kl_estimator,
                                    max_length=6)
    assert float(total / weight) == pytest.approx(float(lib), rel=1e-6), kwargs
  rewards = jnp.asarray([1.0, 0.0, 2.0, 0.5, 3.0, 3.0, 1.0, -1.0])
  np.testing.assert_array_equal(rl.advantages(rl.RLLossConfig(), rewards), pg.group_advantages(rewards, 4))
  np.testing.assert_array_equal(rl.advantages(rl.RLLossConfig(algorithm="rloo"), rewards),
                                pg.rloo_advantages(rewards, 4))
  # A variant's advantages use its own scaling (Dr. GRPO: centered, not divided by the std).
  np.testing.assert_array_equal(rl.advantages(rl.RLLossConfig(variant="dr_grpo"), rewards),
                                pg.group_advantages(rewards, 4, scale_rewards="none"))


class _Logps(nnx.Module):
  """A "policy" whose log-probs are its parameters, (rows, T), read by the batch's row index."""

  def __init__(self, logps):
    self.logps = nnx.Param(jnp.asarray(logps))


@pytest.mark.parametrize("variant", VARIANTS + ("",))
def test_gradient_accumulation_is_exact(variant):
  """Through `state.make_train_step`: 1 and 2 (strided) micro-batches give the same loss, metrics and update."""
  logps, batch = _batch(2, b=8)
  batch = dict(batch, row=jnp.arange(8))
  cfg = rl.RLLossConfig(variant=variant, beta=0.1)

  def loss_fn(model, mb, rng):
    del rng
    return rl.policy_loss_terms(cfg, model.logps[mb["row"]], mb, 6)

  setup = state_lib.init_train_state(lambda key: _Logps(logps), optax.sgd(1.0), 0)
  results = []
  for accum in (1, 2):
    step = jax.jit(state_lib.make_train_step(setup.graphdef, loss_fn, optax.sgd(1.0), grad_accum_steps=accum))
    state, metrics = step(setup.init(), batch)
    results.append((metrics_lib.compute(metrics), np.asarray(state.params["logps"].value)))
  (m1, p1), (m2, p2) = results
  assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), abs=1e-6)
  for key in m1:
    assert float(m1[key]) == pytest.approx(float(m2[key]), rel=1e-5, abs=1e-6), key
  np.testing.assert_allclose(p1, p2, rtol=1e-6, atol=1e-6)
  assert not np.allclose(p1, np.asarray(logps))  # the update moved the parameters


# ------------------------------------------------------------------------------------------------ dynamic sampling
def test_select_groups_on_a_hand_built_pattern():
  # Six groups of 2: constant, varying, constant, varying, all unscored (NaN), varying.
  rewards = jnp.asarray([1, 1, 0, 1, 2, 2, 3, 1, np.nan, np.nan, 5, 4], jnp.float32)
  index, qualifies, m = rl.select_groups(rewards, 2, 2)
  np.testing.assert_array_equal(index, [1, 3])
  np.testing.assert_array_equal(qualifies, [True, True])
  assert float(m["groups_with_variance"]) == pytest.approx(0.5) and float(m["groups_filled"]) == 2
  # Fewer qualify than needed: the three qualifying groups first, then the others in sampling order.
  index, qualifies, m = rl.select_groups(rewards, 2, 5)
  np.testing.assert_array_equal(index, [1, 3, 5, 0, 2])
  np.testing.assert_array_equal(qualifies, [True, True, True, False, False])
  assert float(m["groups_filled"]) == 3
  index, qualifies, m = rl.select_groups(jnp.zeros(6), 3, 1)  # nothing qualifies
  np.testing.assert_array_equal(index, [0])
  assert not bool(qualifies[0]) and float(m["groups_with_variance"]) == 0 and float(m["groups_filled"]) == 0
  with pytest.raises(ValueError, match="num_groups"):
    rl.select_groups(rewards, 2, 7)


def test_dynamic_sample_keeps_rows_and_zeroes_fillers():
  g = 2
  task = jnp.asarray([1, 1, 0, 1, 2, 2, 3, 1], jnp.float32)  # groups: constant, varying, constant, varying
  rewards = task + jnp.asarray([0.0, 0.5, 0, 0, 0.0, 0.25, 0, 0])  # e.g. an overlong penalty after the filter
  tokens = jnp.arange(8)[:, None] * jnp.ones((1, 3), jnp.int32)
  batch = {"task_rewards": task, "rewards": rewards, "tokens": tokens, "advantages": jnp.full(8, 9.0)}
  loss = rl.RLLossConfig(variant="dapo", num_generations=g, dynamic_sampling=True, oversample=2)
  kept, m = rl.dynamic_sample(loss, batch, 3)
  np.testing.assert_array_equal(kept["tokens"][:, 0], [2, 3, 6, 7, 0, 1])  # groups 1, 3, then filler group 0
  kept_rewards = rewards[jnp.asarray([2, 3, 6, 7, 0, 1])]
  np.testing.assert_array_equal(kept["rewards"], kept_rewards)
  expected = pg.group_advantages(kept_rewards, g) * jnp.asarray([1, 1, 1, 1, 0, 0], jnp.float32)
  np.testing.assert_array_equal(kept["advantages"], expected)
  assert float(m["groups_with_variance"]) == 0.5 and float(m["groups_filled"]) == 2


@pytest.mark.parametrize("loss_kwargs", [dict(scale_rewards="batch"), dict(algorithm="rloo", rloo_normalize=True)])
def test_dynamic_sample_recomputes_batch_statistics_on_the_kept_rows(loss_kwargs):
  # Batch-level statistics (scale_rewards "batch": the batch std; RLOO normalize: the batch mean / std) are those of
  # the kept rows, not of the oversampled rollout (DAPO filters first, then computes advantages). By hand: kept
  # groups [0, 1] and [3, 1] (the constant groups [1, 1] and [2, 2] dropped).
  g = 2
  rewards = jnp.asarray([1, 1, 0, 1, 2, 2, 3, 1], jnp.float32)
  batch = {"task_rewards": rewards, "rewards": rewards, "advantages": jnp.full(8, 9.0)}
  loss = rl.RLLossConfig(num_generations=g, dynamic_sampling=True, oversample=2, **loss_kwargs)
  kept, _ = rl.dynamic_sample(loss, batch, 2)
  kept_rewards = np.asarray([0.0, 1.0, 3.0, 1.0])
  np.testing.assert_array_equal(kept["rewards"], kept_rewards)
  centered = kept_rewards - np.repeat(kept_rewards.reshape(2, g).mean(1), g)
  if loss.algorithm == "rloo":
    loo = g / (g - 1) * centered  # r_i - mean of the others
    want = (loo - loo.mean()) / (np.std(loo, ddof=1) + 1e-4)
  else:
    want = centered / (np.std(kept_rewards, ddof=1) + 1e-4)
  np.testing.assert_allclose(kept["advantages"], want, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ rollout rewards
@pytest.fixture(scope="module")
def world():
  return World(WorldConfig(num_prompts=256, max_response_len=12))


def test_overlong_penalty_reaches_the_rewards(world):
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, **TINY)
  model = rl.RLModel(CausalLM(config, rngs=nnx.Rngs(0)), CausalLM(config, rngs=nnx.Rngs(1)), {})
  ids, mask = padding.encode_prompts(world.tokenizer, world.prompts(4, "train"), 6)
  prompts = {"prompt_ids": jnp.asarray(ids), "prompt_mask": jnp.asarray(mask), "prompt_index": jnp.arange(4)}
  sources = [rewards_lib.RewardSource("gold", 1.0, rewards_lib.gold_score(world))]
  loss = rl.RLLossConfig(variant="dapo", num_generations=4, overlong_cache=4, dynamic_sampling=True)
  sampling = rl.SamplingConfig(max_new_tokens=8, temperature=1.0)
  # A third of the vocabulary ends a response, so a random policy's lengths spread over 1..8.
  eos_ids = (world.tokenizer.eos_id,) + tuple(range(3, world.tokenizer.vocab_size, 3))
  batch, metrics = rl.rollout(model, prompts, jax.random.PRNGKey(3), loss=loss, sampling=sampling, sources=sources,
                              eos_ids=eos_ids, pad_id=world.tokenizer.pad_id, world=world)
  gold = world.gold_reward_np(batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["mask"])
  lengths = np.asarray(batch["mask"]).sum(1)
  assert lengths.min() <= 4 < lengths.max(), "the test wants lengths on both sides of L_max - L_cache"
  # DAPO eq. 13 by hand with L_max 8, L_cache 4: 0 up to 4 tokens, then (4 - |y|) / 4.
  penalty = np.where(lengths <= 4, 0.0, (4.0 - lengths) / 4.0)
  np.testing.assert_allclose(batch["rewards"], gold + penalty, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(batch["task_rewards"], gold, rtol=1e-5, atol=1e-6)  # the filter's reward: task only
  assert float(metrics["reward/overlong"]) == pytest.approx(penalty.mean(), abs=1e-6)
  assert float(metrics["reward/total"]) == pytest.approx(float(np.mean(gold + penalty)), rel=1e-5, abs=1e-6)
  np.testing.assert_allclose(batch["advantages"], pg.group_advantages(jnp.asarray(gold + penalty), 4), rtol=1e-4,
                             atol=1e-5)


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("loss,key", [
    ({"variant": "dapo", "algorithm": "rloo"}, "loss.algorithm"),
    ({"variant": "gspo", "epsilon": 0.1}, "loss.epsilon"),
    ({"variant": "cispo", "epsilon_high": 5.0}, "loss.epsilon_high"),
    ({"variant": "dr_grpo", "scale_rewards": "batch"}, "loss.scale_rewards"),
    ({"variant": "grpo", "loss_aggregation": "dr_grpo"}, "loss.loss_aggregation"),
    ({"variant": "ppo"}, "loss.variant"),
    ({"oversample": 2}, "loss.oversample"),
    ({"dynamic_sampling": True, "oversample": 0}, "loss.oversample"),
    ({"overlong_cache": 25}, "loss.overlong_cache"),
])
def test_config_errors_name_the_key(loss, key):
  with pytest.raises(ConfigError, match=rf"config\.{key}\b"):
    from_config({"loss": loss, "sampling": {"max_new_tokens": 24}}, rl.RLConfig)


def test_prompts_per_rollout():
  cfg = from_config({"prompts_per_step": 3, "loss": {"dynamic_sampling": True, "oversample": 3}}, rl.RLConfig)
  assert cfg.prompts_per_rollout == 9
  assert from_config({"prompts_per_step": 3, "loss": {"oversample": 1}}, rl.RLConfig).prompts_per_rollout == 3


# ------------------------------------------------------------------------------------------------ end to end
def half_constant(prompts, completions, a, **kwargs):
  """A reward with zero variance on odd-operand prompts (their groups never qualify) and the completion's length
  in characters / 10 on the others."""
  del prompts, kwargs
  return [0.0 if x % 2 else len(c) / 10.0 for c, x in zip(completions, a)]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("chat")
  model = tiny_chat_model.write_model(root / "model")
  train, held_out = tiny_chat_model.write_prompt_files(root / "prompts")
  return model, train, held_out


def _config(assets, steps=2, **loss):
  stage = tiny_chat_model.rl_stage(*assets, steps=steps)
  stage["loss"] = {"num_generations": 4, "beta": 0.05, **loss}
  stage["eval_prompts"] = 0
  stage["loop"]["eval_every"] = 0
  return from_config(stage, rl.RLConfig)


def _train_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {d["step"]: d for d in map(json.loads, f) if "train/loss" in d}


@pytest.mark.slow  # each run compiles a rollout and an update (10-30 s on 2 cores)
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_end_to_end(assets, tmp_path, variant):
  rl.run(_config(assets, variant=variant), str(tmp_path), {})
  lines = _train_lines(str(tmp_path))
  assert sorted(lines) == [1, 2]
  for line in lines.values():
    assert np.isfinite(line["train/loss"]) and line["train/grad_norm"] > 0
    assert 0.0 <= line["train/clip_ratio/region_mean"] <= 1.0


@pytest.mark.slow
def test_dapo_dynamic_sampling_end_to_end_and_resume(assets, tmp_path):
  """DAPO with dynamic sampling (2 x oversampled prompts), the overlong penalty and 2 micro-batches; a run stopped
  after step 1 and resumed logs the uninterrupted run's step 2 (the oversized prompt batches resume exactly)."""
  rewards = ({"kind": "python", "function": f"{__name__}:half_constant", "name": "half"},)

  def config(steps):
    cfg = _config(assets, steps=steps, variant="dapo", dynamic_sampling=True, oversample=2, overlong_cache=3)
    return dataclasses.replace(cfg, rewards=tuple(from_config(r, rewards_lib.RewardSourceSpec) for r in rewards),
                               optimizer=dataclasses.replace(cfg.optimizer, grad_accum_steps=2))

  full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
  rl.run(config(2), full, {})
  lines = _train_lines(full)
  assert sorted(lines) == [1, 2]
  for line in lines.values():
    sampled = 4 * line["train/groups_with_variance"]  # 4 prompts' groups sampled per step
    assert sampled == pytest.approx(round(sampled))
    assert line["train/groups_filled"] == min(2, round(sampled))
    assert -1.0 <= line["train/reward/overlong"] <= 0.0
    assert np.isfinite(line["train/loss"])
  rl.run(config(1), resumed, {})
  rl.run(config(2), resumed, {})
  again = _train_lines(resumed)
  for key in ("train/reward/half", "train/groups_with_variance", "train/groups_filled", "train/reward/overlong",
              "train/loss", "train/kl"):
    assert lines[2][key] == pytest.approx(again[2][key], rel=1e-5, abs=1e-6), key
