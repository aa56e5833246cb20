"""LoRA on reward models, on each ensemble member (K adapter sets + K heads on ONE frozen base) and on the rl
stage's policy (reference = adapters off), against independent references: a plain RewardModel / CausalLM with the
base weights, a numpy merge W + (alpha / r) A B, and a LoRA member trained alone by the plain train step; the
configs/grpo.py:lora_smoke pipeline runs end to end; bad keys fail at planning with the dotted key."""

import dataclasses
import os
import pathlib
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from random_models import random_model

from jaxrlhf import config as config_lib
from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.models import CausalLM, ModelConfig, from_pretrained, save_pretrained
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import PER_MEMBER, LoraRewardEnsemble, RewardEnsemble, RewardModel
from jaxrlhf.stages import artifacts, common, reward, rl
from jaxrlhf.train import optim, scoring
from jaxrlhf.train import state as state_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402

TINY = ModelConfig(vocab_size=32, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
LORA = lora_lib.LoraConfig(rank=2, alpha=4.0, targets=("q", "v", "o", "gate", "down"))
HEAD = HeadConfig()


def _ids(seed=0, b=3, t=7):
  rng = np.random.default_rng(seed)
  ids = jnp.asarray(rng.integers(1, TINY.vocab_size, (b, t)), jnp.int32)
  mask = np.ones((b, t), np.int32)
  mask[0, 5:] = 0
  return ids, jnp.asarray(mask)


def _random_b(pure_lora: dict, seed: int, scale: float = 0.3) -> dict:
  """The adapters with every B ~ N(0, scale) (a trained adapter; a fresh one has B = 0)."""
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(scale * rng.standard_normal(v.shape), v.dtype) if k.endswith("_b") else v
          for k, v in pure_lora.items()}


def _numpy_merged_layers(layers: dict, adapters: dict) -> dict:
  """W + (alpha / r) A B per layer and target (Hu et al. 2021, eq. 3), in float64 numpy."""
  out = {k: np.asarray(v) for k, v in layers.items()}
  for t in LORA.targets:
    a, b = np.asarray(adapters[f"{t}_a"], np.float64), np.asarray(adapters[f"{t}_b"], np.float64)
    delta = np.stack([np.tensordot(a[i], b[i], axes=1) for i in range(a.shape[0])])
    out[f"{t}_kernel"] = (out[f"{t}_kernel"] + LORA.alpha / LORA.rank * delta).astype(np.float32)
  return out


def _state_of(model, pure):
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, pure)
  return state


def _plain_rm(pure: dict) -> RewardModel:
  graphdef, state = nnx.split(nnx.eval_shape(lambda: RewardModel(TINY, HEAD, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  return nnx.merge(graphdef, state)


def test_lora_reward_model_zero_b_is_its_base_and_merged_equals_adapters():
  base = RewardModel(TINY, HEAD, rngs=nnx.Rngs(3))
  model = RewardModel(TINY, HEAD, rngs=nnx.Rngs(4), lora=LORA)
  nnx.update(model, nnx.state(base))  # Same base backbone and head; fresh adapters (B = 0).
  ids, mask = _ids()
  np.testing.assert_array_equal(np.asarray(model(ids, mask)), np.asarray(base(ids, mask)))
  pure = nnx.to_pure_dict(nnx.state(model))
  pure["backbone"]["lora"] = _random_b(pure["backbone"]["lora"], 0)
  nnx.update(model, _state_of(model, pure))
  trained = np.asarray(model(ids, mask))
  assert np.max(np.abs(trained - np.asarray(base(ids, mask)))) > 1e-3
  reference = {"backbone": {k: v for k, v in pure["backbone"].items() if k != "lora"}, "head": pure["head"]}
  reference["backbone"]["layers"] = _numpy_merged_layers(pure["backbone"]["layers"], pure["backbone"]["lora"])
  np.testing.assert_allclose(np.asarray(_plain_rm(reference)(ids, mask)), trained, atol=1e-5)
  merged = model.merged()
  assert getattr(merged.backbone, "lora", None) is None
  np.testing.assert_allclose(np.asarray(merged(ids, mask)), trained, atol=1e-5)


def _pair_batch(rng, b=4, t=6):
  batch = {}
  for side in ("chosen", "rejected"):
    ids = rng.integers(3, TINY.vocab_size, (b, t)).astype(np.int32)
    att = np.ones((b, t), np.int32)
    att[:, rng.integers(3, t + 1):] = 0
    batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"] = ids, att
    batch[f"{side}_loss_mask"] = att.copy()
  batch["margin"] = np.full((b,), np.nan, np.float32)
  batch["weight"] = np.array([1.0, 1.0, 0.5, 0.0][:b], np.float32)
  batch["chosen_score"] = batch["rejected_score"] = np.full((b,), np.nan, np.float32)
  return batch


@pytest.mark.parametrize("member_loop", ["vmap", "scan"])
def test_lora_ensemble_members_train_as_standalone_lora_models_on_one_frozen_base(member_loop):
  """Member k of the LoRA ensemble (stacked step) follows exactly the trajectory of a standalone LoRA reward model
  (member k's adapter and head init, member 0's base) trained alone by the plain step on member k's batches; only
  adapters and heads are params; the base is held once and never moves."""
  k_members, steps, seed = 3, 2, 5
  opt_cfg = optim.OptimizerConfig(learning_rate=1e-2, clip_norm=0.5)
  optimizer = optim.make_optimizer(opt_cfg)
  loss_fn = reward.reward_loss_fn(reward.RewardLossConfig(center_coeff=0.1), HEAD)
  setup = reward.ensemble_setup(TINY, HEAD, k_members, optimizer, seed, None, lora=LORA)
  member_graphdef = reward.member_graphdef(TINY, HEAD, seed, LORA)
  step = jax.jit(reward.make_ensemble_step(member_graphdef, loss_fn, opt_cfg, k_members, shared_extra=True,
                                           member_loop=member_loop))
  state0 = setup.init()
  params = nnx.to_pure_dict(state0.params)["members"]
  assert set(params) == {"backbone", "head"} and set(params["backbone"]) == {"lora"}
  single = nnx.to_pure_dict(nnx.state(reward.lora_member_model(TINY, HEAD, LORA, seed, 0)))["backbone"]
  base0 = nnx.to_pure_dict(state0.extra)["members"]["backbone"]
  assert set(base0) == set(single) - {"lora", "lm_head"}
  for a, b in zip(jax.tree.leaves(base0), jax.tree.leaves({k: single[k] for k in base0})):
    # ONE copy (no member axis) = member 0's base (jitted vs eager random draws: float32 rounding apart).
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
  rng = np.random.default_rng(0)
  batches = [[_pair_batch(rng) for _ in range(k_members)] for _ in range(steps)]
  state = state0
  for s in range(steps):
    state, metrics = step(state, {key: np.stack([b[key] for b in batches[s]]) for key in batches[s][0]})
  for a, b in zip(jax.tree.leaves(state.extra), jax.tree.leaves(state0.extra)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the base is frozen
  k = 2
  alone = reward.lora_member_model(TINY, HEAD, LORA, seed, k)
  pure = nnx.to_pure_dict(nnx.state(alone))
  pure["backbone"].update(base0)  # the ensemble's base (member 0's) under member k's adapters
  alone = common.frozen_base(nnx.merge(nnx.graphdef(alone), _state_of(alone, pure)),
                             trainable=nnx.Any(nnx.PathContains("lora"), nnx.PathContains("head")))
  _, solo_params, solo_extra = nnx.split(alone, nnx.Param, ...)
  solo = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=solo_params, extra=solo_extra,
                              opt_state=optimizer.init(solo_params), rng=jax.random.fold_in(state0.rng, k))
  solo_step = jax.jit(state_lib.make_train_step(member_graphdef, loss_fn, optimizer))
  for s in range(steps):
    solo, solo_metrics = solo_step(solo, batches[s][k])
  stacked_k = jax.tree.map(lambda x: np.asarray(x)[k], nnx.to_pure_dict(state.params)["members"])
  for a, b in zip(jax.tree.leaves(stacked_k), jax.tree.leaves(nnx.to_pure_dict(solo.params))):
    np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-6)
  loss_k = metrics[f"members/loss_{k}"]
  assert float(loss_k.total / loss_k.count) == pytest.approx(
      float(solo_metrics["loss"].total / solo_metrics["loss"].count), rel=1e-5)
  # Scores: member k's column of the ensemble equals the standalone model's; members differ.
  ensemble = nnx.merge(setup.graphdef, state.params, state.extra)
  solo_model = nnx.merge(member_graphdef, solo.params, solo.extra)
  ids, mask = _ids(1)
  scores = np.asarray(ensemble(ids, mask))
  np.testing.assert_allclose(scores[:, k], np.asarray(solo_model(ids, mask)), atol=1e-5)
  assert np.min(np.abs(scores[:, 0] - scores[:, 1])) > 1e-4


def test_lora_ensemble_saves_the_base_once_and_exports_merged(tmp_path):
  keys = jnp.stack([reward.member_key(0, k) for k in range(3)])
  ensemble = LoraRewardEnsemble(TINY, HEAD, LORA, keys)
  pure = nnx.to_pure_dict(nnx.state(ensemble))
  pure["members"]["backbone"]["lora"] = _random_b(pure["members"]["backbone"]["lora"], 1)
  nnx.update(ensemble, _state_of(ensemble, pure))
  ids, mask = _ids(2)
  scores = np.asarray(ensemble(ids, mask))
  for k in range(3):  # Member k against the numpy merge of (the base, its adapters) with its head.
    member_k = jax.tree.map(lambda x: np.asarray(x)[k], {"lora": pure["members"]["backbone"]["lora"],
                                                          "head": pure["members"]["head"]})
    backbone = {n: v for n, v in pure["members"]["backbone"].items() if n != "lora"}
    backbone["layers"] = _numpy_merged_layers(backbone["layers"], member_k["lora"])
    np.testing.assert_allclose(np.asarray(_plain_rm({"backbone": backbone, "head": member_k["head"]})(ids, mask)),
                               scores[:, k], atol=1e-5)
  rm_dir = artifacts.save_reward_model(str(tmp_path / "rm"), TINY, HEAD, 3, nnx.state(ensemble), lora=LORA)
  loaded = artifacts.load_reward_model(rm_dir)
  assert isinstance(loaded, LoraRewardEnsemble) and artifacts.reward_model_lora(rm_dir) == LORA
  np.testing.assert_array_equal(np.asarray(loaded(ids, mask)), scores)
  saved = nnx.to_pure_dict(nnx.state(loaded))["members"]["backbone"]
  base_floats = sum(np.size(x) for x in jax.tree.leaves({n: v for n, v in saved.items() if n != "lora"}))
  one_backbone = nnx.state(RewardModel(TINY, HEAD, rngs=nnx.Rngs(0)).backbone)
  assert base_floats == sum(np.size(x) for x in jax.tree.leaves(one_backbone))  # once, not 3 times
  merged = loaded.merged()
  assert isinstance(merged, RewardEnsemble)
  np.testing.assert_allclose(np.asarray(merged(ids, mask)), scores, atol=1e-5)
  merged_dir = artifacts.save_reward_model(str(tmp_path / "merged"), TINY, HEAD, 3, nnx.state(merged))
  np.testing.assert_allclose(np.asarray(artifacts.load_reward_model_any(merged_dir)(ids, mask)), scores, atol=1e-5)


def test_lora_reward_adapters_save_alone_and_load_back_onto_their_base(tmp_path):
  base = random_model(TINY, seed=5)
  base_dir = str(tmp_path / "base")
  save_pretrained(base, base_dir)
  ensemble = LoraRewardEnsemble(TINY, HEAD, LORA, jax.random.split(jax.random.PRNGKey(3), 2))
  graphdef, trained, frozen = nnx.split(ensemble, PER_MEMBER, ...)
  frozen_pure = nnx.to_pure_dict(frozen)  # the base weights, then trained adapters (B != 0) on them
  frozen_pure["members"]["backbone"].update(
      {k: v for k, v in nnx.to_pure_dict(nnx.state(base)).items() if k != "lm_head"})
  nnx.replace_by_pure_dict(frozen, frozen_pure)
  pure = nnx.to_pure_dict(trained)
  pure["members"]["backbone"]["lora"] = _random_b(pure["members"]["backbone"]["lora"], 7)
  nnx.replace_by_pure_dict(trained, pure)
  ensemble = nnx.merge(graphdef, trained, frozen)
  ids, mask = _ids(8)
  scores = np.asarray(ensemble(ids, mask))
  out = artifacts.save_reward_adapters(str(tmp_path / "adapters"), TINY, HEAD, ensemble)
  # Only the adapters and heads are written: no base weight (e.g. the embedding) is in the file.
  written = flax.serialization.msgpack_restore((tmp_path / "adapters" / artifacts.REWARD_ADAPTERS).read_bytes())
  assert sum(x.size for x in jax.tree.leaves(written)) == sum(x.size for x in jax.tree.leaves(pure))
  loaded = artifacts.load_reward_adapters(out, base_dir)
  assert isinstance(loaded, LoraRewardEnsemble) and loaded.num_members == 2
  np.testing.assert_allclose(np.asarray(loaded(ids, mask)), scores, atol=1e-6)
  # Member 1 equals its merged plain reward model (numpy merge checked above): the adapters are really on.
  assert np.ptp(scores, axis=1).max() > 1e-4
  # The base is really read from `base`: the same adapters on another base of the same shape score differently.
  save_pretrained(random_model(TINY, seed=6), str(tmp_path / "base6"))
  assert np.abs(np.asarray(artifacts.load_reward_adapters(out, str(tmp_path / "base6"))(ids, mask)) -
                scores).max() > 1e-3
  other = random_model(dataclasses.replace(TINY, mlp_dim=48), seed=1)
  save_pretrained(other, str(tmp_path / "other"))
  with pytest.raises(ValueError, match=r"adapters/spec.json: the adapters were trained on a base with .*mlp_dim"):
    artifacts.load_reward_adapters(out, str(tmp_path / "other"))
  with pytest.raises(ValueError, match="reward_adapters.msgpack: not found"):
    artifacts.load_reward_adapters(base_dir, base_dir)


def _rl_cfg(algorithm="grpo"):
  kl_mode = "reward" if algorithm == "ppo" else "loss"  # PPO puts the KL in its per-token rewards.
  extra = dict(num_generations=2) if algorithm == "online_dpo" else {}
  return from_config(dict(model=dict(lora=dict(rank=2, alpha=4.0, targets=("q", "v", "up"))),
                          loss=dict(algorithm=algorithm, kl_mode=kl_mode, **extra)), rl.RLConfig, path="config")


def test_rl_lora_reference_is_the_base_with_adapters_off():
  base = random_model(TINY, seed=3)
  pretrained = jax.device_get(nnx.to_pure_dict(nnx.state(base, nnx.Param)))
  # PPO, online DPO: what trains (abstract state, no init); GRPO: also the numerics.
  for algorithm in ("ppo", "online_dpo", "grpo"):
    cfg = _rl_cfg(algorithm)
    setup = rl.rl_setup(cfg, TINY, pretrained, {}, optim.make_optimizer(cfg.optimizer), None)
    params, extra = nnx.to_pure_dict(setup.abstract.params), nnx.to_pure_dict(setup.abstract.extra)
    # Only the policy's adapters train (and PPO's new value head); the base is frozen, once; no reference copy.
    assert set(params["policy"]) == {"lora"} and "lora" not in extra["policy"]
    assert set(params) == ({"policy", "value_head"} if algorithm == "ppo" else {"policy"})
    assert not jax.tree.leaves(extra.get("reference"))
  state = setup.init()
  params = nnx.to_pure_dict(state.params)
  params["policy"]["lora"] = _random_b(params["policy"]["lora"], 2)
  model = nnx.merge(setup.graphdef, _state_of_tree(state.params, params), state.extra)
  prompt_ids, prompt_mask = _ids(3, b=2, t=4)
  tokens, mask = _ids(4, b=2, t=5)
  args = (prompt_ids, prompt_mask, tokens, mask, 0.7)
  ref_logps, _ = scoring.response_logps(model.reference_model(), *args)
  np.testing.assert_allclose(np.asarray(ref_logps), np.asarray(scoring.response_logps(base, *args)[0]), atol=1e-6)
  policy_logps, _ = scoring.response_logps(model.policy, *args)
  assert np.max(np.abs(np.asarray(policy_logps) - np.asarray(ref_logps))) > 1e-3  # the adapters are on


def _state_of_tree(state, pure):
  out = jax.tree.map(lambda x: x, state)
  nnx.replace_by_pure_dict(out, pure)
  return out


def test_lora_grpo_smoke_config_runs_sft_reward_ensemble_grpo(tmp_path):
  config = config_lib.load_config(f"{REPO_ROOT / 'configs' / 'grpo.py'}:lora_smoke")
  with config.unlocked():
    config.stages = ("sft", "reward", "grpo")  # The evaluate stage is the plain one (tested with configs/grpo.py).
  config.grpo.eval_prompts = 0  # Held-out sampling is the plain rl stage's (tested there); CI time.
  outputs = run_lib.run(config, str(tmp_path))
  sft_out, rm_out, grpo_out = outputs["sft"], outputs["reward"], outputs["grpo"]
  rm = artifacts.load_reward_model(rm_out["rm_dir"])
  assert isinstance(rm, LoraRewardEnsemble) and rm.num_members == 3
  # The reward ensemble's one base is the SFT model (frozen); its members differ.
  sft_model, _ = from_pretrained(sft_out["model_dir"])
  np.testing.assert_array_equal(np.asarray(rm.members.backbone.embed[...]), np.asarray(sft_model.embed[...]))
  ids = jnp.asarray(np.random.default_rng(0).integers(1, sft_model.config.vocab_size, (2, 9)), jnp.int32)
  scores = np.asarray(rm(ids))
  assert scores.shape == (2, 3) and np.ptp(scores, axis=1).min() > 0
  # GRPO's export = the SFT base + its saved adapters (merged); its reference was that base.
  assert sorted(os.listdir(grpo_out["adapter_dir"])) == [lora_lib.ADAPTER_CONFIG, lora_lib.ADAPTER_WEIGHTS]
  merged, _ = from_pretrained(grpo_out["model_dir"])
  adapter_model = CausalLM(sft_model.config, rngs=nnx.Rngs(0), lora=lora_lib.read_adapter_config(
      grpo_out["adapter_dir"]))
  nnx.update(adapter_model, nnx.state(sft_model))
  lora_lib.load_adapters(adapter_model, grpo_out["adapter_dir"])
  np.testing.assert_allclose(np.asarray(merged(ids)), np.asarray(adapter_model(ids)), atol=1e-5)
  assert np.max(np.abs(np.asarray(merged(ids)) - np.asarray(sft_model(ids)))) > 1e-6


def test_online_dpo_with_lora_refuses_a_reference_schedule():
  # The reference is the policy with its adapters off: there is no copy for TR-DPO's update to move.
  with pytest.raises(ConfigError, match="config.loss.ref_update_every: with config.model.lora"):
    from_config(dict(model=dict(lora=dict(rank=2)), loss=dict(algorithm="online_dpo", num_generations=2,
                                                               ref_update_every=2)), rl.RLConfig, path="config")


@pytest.mark.parametrize("stage,key,value,match", [
    ("reward", "lora", dict(rank=0), "config.reward.model.lora: rank"),
    ("reward", "shared_backbone", True, "config.reward.shared_backbone: LoRA"),
    ("grpo", "lora", dict(targets=("qkv",)), "config.grpo.model.lora: targets")])
def test_bad_lora_options_fail_at_planning(stage, key, value, match):
  config = config_lib.load_config(f"{REPO_ROOT / 'configs' / 'grpo.py'}:lora_smoke")
  if key == "lora":
    config[stage].model.lora = value
  else:
    config[stage][key] = value
  with pytest.raises(ConfigError, match=match):
    run_lib.plan(config)
