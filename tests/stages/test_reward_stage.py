"""Reward modeling: the loss against a hand computation, ensemble members trained in the stacked step (either
member loop) equal the same members trained alone, evaluation rules, training on the synthetic world."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import from_config
from jaxrlhf.models import ModelConfig
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.stages import artifacts, common, inputs
from jaxrlhf.stages import reward
from jaxrlhf.train import optim
from jaxrlhf.train import state as state_lib

TINY = ModelConfig(vocab_size=32, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32)


def _pair_batch(rng, b=4, t=6, k=0, vocab=32):
  batch = {}
  for side in ("chosen", "rejected"):
    ids = rng.integers(3, vocab, (b, t)).astype(np.int32)
    att = np.ones((b, t), np.int32)
    att[:, rng.integers(3, t + 1):] = 0
    batch[f"{side}_input_ids"] = ids
    batch[f"{side}_attention_mask"] = att
    batch[f"{side}_loss_mask"] = att.copy()
  batch["margin"] = np.array([0.5, np.nan, -0.2, 1.0][:b], np.float32)
  batch["weight"] = np.array([1.0, 1.0, 0.5, 0.0][:b], np.float32)
  batch["chosen_score"] = batch["rejected_score"] = np.full((b,), np.nan, np.float32)
  if k:
    batch["chosen_attributes"] = rng.normal(size=(b, k)).astype(np.float32)
    batch["rejected_attributes"] = rng.normal(size=(b, k)).astype(np.float32)
    batch["attributes_mask"] = (rng.random((b, k)) > 0.3).astype(np.int32)
  return batch


def _log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("margin,smoothing,center", [("none", 0.0, 0.0), ("margin", 0.1, 0.01),
                                                     ("adaptive", 0.0, 0.0)])
def test_bt_loss_matches_hand_computation(margin, smoothing, center):
  rm = reward.member_model(TINY, HeadConfig(), 0, 0)
  batch = _pair_batch(np.random.default_rng(1))
  cfg = reward.RewardLossConfig(margin=margin, margin_scale=2.0, margin_clip_min=0.0, label_smoothing=smoothing,
                                center_coeff=center)
  total, weight, metrics = reward.reward_loss_fn(cfg, HeadConfig())(rm, jax.tree.map(jnp.asarray, batch), None)
  r_c = np.asarray(rm(batch["chosen_input_ids"], batch["chosen_attention_mask"]), np.float64)
  r_r = np.asarray(rm(batch["rejected_input_ids"], batch["rejected_attention_mask"]), np.float64)
  m = np.nan_to_num(batch["margin"].astype(np.float64), nan=0.0)
  if margin == "adaptive":
    m = np.maximum(2.0 * m, 0.0)
  elif margin == "none":
    m = np.zeros_like(m)
  d = r_c - r_r - m
  per_pair = -(1 - smoothing) * _log_sigmoid(d) - smoothing * _log_sigmoid(-d) + center * (r_c + r_r) ** 2
  w = batch["weight"]
  np.testing.assert_allclose(float(total), np.sum(w * per_pair), rtol=1e-5)
  assert float(weight) == pytest.approx(2.5)
  acc = metrics["rewards/accuracy"]
  assert float(acc.total / acc.count) == pytest.approx(np.sum(w * (r_c > r_r)) / 2.5)


def test_attribute_and_multihead_losses_match_hand_computation():
  rng = np.random.default_rng(2)
  head = HeadConfig(kind="attributes", num_outputs=3, attribute_weights=(0.5, 0.3, 0.2))
  rm = reward.member_model(TINY, head, 0, 0)
  batch = _pair_batch(rng, k=3)
  cfg = reward.RewardLossConfig(attribute_weight=1.0, bt_weight=0.5)
  total, weight, _ = reward.reward_loss_fn(cfg, head)(rm, jax.tree.map(jnp.asarray, batch), None)
  a_c = np.asarray(rm.attributes(batch["chosen_input_ids"], batch["chosen_attention_mask"]), np.float64)
  a_r = np.asarray(rm.attributes(batch["rejected_input_ids"], batch["rejected_attention_mask"]), np.float64)
  mask = batch["attributes_mask"] * (batch["weight"][:, None] > 0)

  def mse(a, y):
    return np.sum(mask * (a - y) ** 2, -1) / np.maximum(mask.sum(-1), 1)

  wts = np.array([0.5, 0.3, 0.2])
  per_pair = mse(a_c, batch["chosen_attributes"]) + mse(a_r, batch["rejected_attributes"]) \
      - 0.5 * _log_sigmoid(a_c @ wts - a_r @ wts)
  np.testing.assert_allclose(float(total), np.sum(batch["weight"] * per_pair), rtol=1e-5)

  head = HeadConfig(kind="multihead", num_outputs=3)
  rm = reward.member_model(TINY, head, 0, 0)
  total, _, _ = reward.reward_loss_fn(reward.RewardLossConfig(), head)(rm, jax.tree.map(jnp.asarray, batch), None)
  r_c = np.asarray(rm(batch["chosen_input_ids"], batch["chosen_attention_mask"]), np.float64)  # (B, 3)
  r_r = np.asarray(rm(batch["rejected_input_ids"], batch["rejected_attention_mask"]), np.float64)
  per_pair = -np.sum(_log_sigmoid(r_c - r_r), axis=1)  # one BT loss per head
  np.testing.assert_allclose(float(total), np.sum(batch["weight"] * per_pair), rtol=1e-5)


@pytest.mark.parametrize("member_loop", ["vmap", "scan"])
def test_ensemble_member_equals_member_trained_alone(member_loop):
  k_members, steps, seed = 3, 3, 7
  head = HeadConfig()
  opt_cfg = optim.OptimizerConfig(learning_rate=1e-2, clip_norm=0.5)
  optimizer = optim.make_optimizer(opt_cfg)
  # The centering term gives the head bias a real gradient (BT alone cancels it: its gradient is float noise
  # that Adam would amplify to +-lr).
  loss_fn = reward.reward_loss_fn(reward.RewardLossConfig(center_coeff=0.1), head)
  setup = reward.ensemble_setup(TINY, head, k_members, optimizer, seed, None)
  member_graphdef = nnx.graphdef(reward.member_model(TINY, head, seed, 0))
  step = jax.jit(reward.make_ensemble_step(member_graphdef, loss_fn, opt_cfg, k_members, member_loop=member_loop))
  rng = np.random.default_rng(0)
  # Member k reads its own data: different batches per member and step.
  batches = [[_pair_batch(rng) for _ in range(k_members)] for _ in range(steps)]
  state = setup.init()
  for s in range(steps):
    stacked = {key: np.stack([b[key] for b in batches[s]]) for key in batches[s][0]}
    state, metrics = step(state, stacked)
  k = 1
  alone = reward.member_model(TINY, head, seed, k)
  _, params, extra = nnx.split(alone, nnx.Param, ...)
  solo = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, extra=extra,
                              opt_state=optimizer.init(params), rng=jax.random.fold_in(setup.init().rng, k))
  solo_step = jax.jit(state_lib.make_train_step(member_graphdef, loss_fn, optimizer))
  for s in range(steps):
    solo, solo_metrics = solo_step(solo, batches[s][k])
  stacked_k = jax.tree.map(lambda x: np.asarray(x)[k], nnx.to_pure_dict(state.params)["members"])
  for a, b in zip(jax.tree.leaves(stacked_k), jax.tree.leaves(nnx.to_pure_dict(solo.params))):
    np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-5)
  loss_k = metrics[f"members/loss_{k}"]
  np.testing.assert_allclose(float(loss_k.total / loss_k.count),
                             float(solo_metrics["loss"].total / solo_metrics["loss"].count), rtol=1e-5)
  # Members really differ (own seeds, own data).
  leaves = jax.tree.leaves(nnx.to_pure_dict(state.params))
  assert not np.allclose(np.asarray(leaves[0])[0], np.asarray(leaves[0])[1])


def test_pairwise_scores_count_ties_as_wrong():
  r_c = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 1.0]])
  r_r = np.array([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
  out = reward.pairwise_scores(r_c, r_r)
  assert out["accuracy_0"] == pytest.approx(1 / 3)  # tie on row 1 counts wrong
  assert out["accuracy_1"] == pytest.approx(1 / 3)
  assert out["accuracy"] == pytest.approx(1 / 3)  # means: 0.5 > 0, -0.5 < 0, 0 tie
  gold = reward.pairwise_scores(r_c, r_r, np.array([False, True, False]))
  assert gold["accuracy_0"] == pytest.approx(1 / 3)  # row 2: predicted rejected, gold agrees


def _stage_cfg(**overrides):
  section = dict(seed=0, num_members=2,
                 model=dict(config=dict(embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                                        mlp_dim=64)),
                 data=dict(num_train=256, num_eval=64, batch_size=16, max_length=40),
                 optimizer=dict(learning_rate=3e-3),
                 loop=dict(num_steps=3, log_every=1, checkpoint_every=3, progress=False, tensorboard=False,
                           async_checkpoints=False))
  section.update(overrides)
  return from_config(section, reward.RewardConfig, path="config")


@pytest.mark.slow  # ~30 s: two stage runs (world, compile, checkpoints).
def test_ensemble_stage_same_losses_on_1_and_8_devices_and_loads_back(tmp_path):
  runs = {}
  for n in (1, 8):
    out = reward.run(_stage_cfg(num_devices=n), str(tmp_path / f"d{n}"), {})
    with open(tmp_path / f"d{n}" / "metrics.jsonl") as f:
      runs[n] = [json.loads(l)["train/loss"] for l in f if "train/loss" in l]
  np.testing.assert_allclose(runs[1], runs[8], rtol=1e-5, atol=1e-5)
  assert {"eval/accuracy_0", "eval/accuracy_1", "eval/gold_agreement"} <= set(out["metrics"])
  ensemble = artifacts.load_reward_model(out["rm_dir"])
  ids = jnp.ones((2, 5), jnp.int32)
  assert ensemble(ids).shape == (2, 2)


@pytest.mark.slow
def test_tiny_rm_agrees_with_gold_on_held_out_pairs(tmp_path):
  """The number quoted in the docs: gold agreement on held-out world pairs from <= 20k pairs, <= 3 CPU min."""
  cfg = _stage_cfg(
      num_members=1,
      model=dict(config=dict(embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16, mlp_dim=128)),
      data=dict(num_train=16384, num_eval=1024, batch_size=64, max_length=48),
      optimizer=dict(learning_rate=2e-3, schedule="cosine", warmup_steps=20, decay_steps=300, end_lr_factor=0.1,
                     clip_norm=1.0, weight_decay=0.01),
      loop=dict(num_steps=300, log_every=50, checkpoint_every=300, progress=False, tensorboard=False,
                async_checkpoints=False))
  start = time.time()
  out = reward.run(cfg, str(tmp_path), {})
  elapsed = time.time() - start
  print(f"gold agreement {out['metrics']['eval/gold_agreement']:.3f}, held-out accuracy "
        f"{out['metrics']['eval/accuracy']:.3f}, {elapsed:.0f} s")
  assert out["metrics"]["eval/gold_agreement"] >= 0.75
  assert elapsed < 180


def test_members_from_one_pretrained_backbone_differ_only_by_head():
  from jaxrlhf.models import CausalLM
  lm = CausalLM(TINY, rngs=nnx.Rngs(3))
  pretrained = jax.device_get(nnx.to_pure_dict(nnx.state(lm, nnx.Param)))
  setup = reward.ensemble_setup(TINY, HeadConfig(), 3, optim.make_optimizer(optim.OptimizerConfig()), 0, None,
                                pretrained=pretrained)
  members = nnx.to_pure_dict(setup.init().params)["members"]
  for name, value in members["backbone"].items():
    if isinstance(value, dict):
      continue
    for k in range(3):
      np.testing.assert_array_equal(np.asarray(value)[k], np.asarray(pretrained[name]))
  np.testing.assert_array_equal(np.asarray(members["backbone"]["layers"]["q_kernel"])[2],
                                np.asarray(pretrained["layers"]["q_kernel"]))
  kernel = np.asarray(members["head"]["kernel"])
  assert not np.allclose(kernel[0], kernel[1]) and "lm_head" not in members["backbone"]


def test_saved_reward_model_margins_feed_the_data(tmp_path):
  data = inputs.DataSpec(num_train=12, num_eval=0, batch_size=8, max_length=40, margin_from="reward_model",
                           reward_model="stage:rm")
  world = inputs.make_world(data.world)
  records = world.preference_records(12, "train")
  config = TINY.replace(vocab_size=world.tokenizer.vocab_size)
  setup = reward.ensemble_setup(config, HeadConfig(), 2, optim.make_optimizer(optim.OptimizerConfig()), 0, None)
  state = setup.init()
  ensemble = nnx.merge(setup.graphdef, state.params, state.extra)
  rm_dir = artifacts.save_reward_model(str(tmp_path / "rm"), config, HeadConfig(), 2, nnx.state(ensemble))
  path = common.resolve_path(data.reward_model, {"rm": {"rm_dir": rm_dir}}, "rm_dir")
  margins = inputs.reward_margins(path, records, world.tokenizer, data)
  tok = world.tokenizer
  from jaxrlhf.data.padding import pad_rows
  rewards = []
  for side in ("chosen", "rejected"):
    ids, mask = pad_rows([tok.encode(r.prompt) + tok.encode(getattr(r, side)) + [tok.eos_id] for r in records])
    rewards.append(np.asarray(ensemble(jnp.asarray(ids), jnp.asarray(mask))))  # (N, K members)
  np.testing.assert_allclose(margins, (rewards[0] - rewards[1]).mean(axis=1), rtol=1e-4, atol=1e-5)
  relabeled = inputs.with_margins(records, margins, data)
  assert [r.margin for r in relabeled] == pytest.approx(list(margins))


def test_ensemble_stage_same_losses_with_shared_prompt_scoring(tmp_path):
  """Shared-prompt rows give the same member losses and held-out scores as two rows per pair."""
  runs = {}
  for mode in ("off", "on"):
    cfg = _stage_cfg(data=dict(num_train=256, num_eval=64, batch_size=16, max_length=40, shared_prompt=mode))
    out = reward.run(cfg, str(tmp_path / mode), {})
    assert out["data_report"]["shared_prompt"]["used"] == (mode == "on")
    with open(tmp_path / mode / "metrics.jsonl") as f:
      runs[mode] = ([json.loads(l)["train/loss"] for l in f if "train/loss" in l], out["metrics"])
  np.testing.assert_allclose(runs["on"][0], runs["off"][0], rtol=1e-5, atol=1e-5)
  for key in ("eval/accuracy", "eval/gold_agreement"):
    assert runs["on"][1][key] == pytest.approx(runs["off"][1][key])
