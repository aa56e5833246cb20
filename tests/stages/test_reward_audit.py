"""Audit of the reward stage's rules that the main tests leave open: ties in the training accuracy metric, the
ensemble's headline accuracy is the member MEAN's, the held-out evaluation (padding rows, multihead members, gold
agreement), the member loop chosen per backend, and the step counter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.models import ModelConfig
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.stages import reward
from jaxrlhf.train import optim

TINY = ModelConfig(vocab_size=32, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32)


def _pair_batch(rng, b=4, t=6):
  batch = {}
  for side in ("chosen", "rejected"):
    batch[f"{side}_input_ids"] = rng.integers(3, 32, (b, t)).astype(np.int32)
    att = np.ones((b, t), np.int32)
    att[:, rng.integers(3, t + 1):] = 0
    batch[f"{side}_attention_mask"] = att
    batch[f"{side}_loss_mask"] = att.copy()
  batch["margin"] = np.full((b,), np.nan, np.float32)
  batch["weight"] = np.ones((b,), np.float32)
  batch["chosen_score"] = batch["rejected_score"] = np.full((b,), np.nan, np.float32)
  return batch


def test_training_accuracy_counts_tied_rewards_as_wrong():
  # chosen == rejected token for token: r_c == r_r exactly. BT's loss is then -log sigmoid(0) = log 2 per pair and
  # the pair is not ranked right (ties wrong, as everywhere in jaxrlhf's accuracies).
  rm = reward.member_model(TINY, HeadConfig(), 0, 0)
  batch = _pair_batch(np.random.default_rng(0))
  for key in ("input_ids", "attention_mask", "loss_mask"):
    batch[f"rejected_{key}"] = batch[f"chosen_{key}"].copy()
  total, weight, metrics = reward.reward_loss_fn(reward.RewardLossConfig(), HeadConfig())(
      rm, jax.tree.map(jnp.asarray, batch), None)
  assert float(total / weight) == pytest.approx(np.log(2.0), rel=1e-6)
  acc = metrics["rewards/accuracy"]
  assert float(acc.total) == 0.0 and float(acc.count) == 4.0


def test_ensemble_accuracy_is_the_member_means():
  # Member 0 ranks the pair right by 1, member 1 wrong by 3: the member mean (-1) ranks it wrong.
  r_c, r_r = np.array([[1.0, -3.0], [2.0, 2.0]]), np.zeros((2, 2))
  out = reward.pairwise_scores(r_c, r_r)
  assert out["accuracy_0"] == 1.0 and out["accuracy_1"] == 0.5 and out["accuracy"] == 0.5
  # Against reference labels: pair 0's label says rejected is better, so the mean's verdict (rejected) agrees.
  gold = reward.pairwise_scores(r_c, r_r, np.array([False, True]))
  assert gold["accuracy"] == 1.0 and gold["accuracy_0"] == 0.5 and gold["accuracy_1"] == 1.0


def test_held_out_eval_scores_real_rows_by_member_mean_of_heads():
  # A K = 2 ensemble of 3-head multihead members: each member's reward is the mean of its heads, the headline
  # accuracy the mean over members, padding rows (weight 0) are no pairs; gold agreement against given labels.
  head = HeadConfig(kind="multihead", num_outputs=3)
  setup = reward.ensemble_setup(TINY, head, 2, optim.make_optimizer(optim.OptimizerConfig()), 0, None)
  state = setup.init()
  rng = np.random.default_rng(3)
  batches = [_pair_batch(rng), _pair_batch(rng)]
  for b in batches:
    b["weight"][-1] = 0.0  # one filler row per batch
  model = nnx.merge(setup.graphdef, state.params, state.extra)
  d = []
  for b in batches:
    r_c = np.asarray(model(jnp.asarray(b["chosen_input_ids"]), jnp.asarray(b["chosen_attention_mask"])), np.float64)
    r_r = np.asarray(model(jnp.asarray(b["rejected_input_ids"]), jnp.asarray(b["rejected_attention_mask"])),
                     np.float64)
    assert r_c.shape == (4, 2, 3)
    d.append((r_c - r_r).mean(-1)[:3])  # (3 real rows, K)
  d = np.concatenate(d)
  gold = np.array([True, False, True, True, False, True])
  out = reward.make_eval_fn(setup.graphdef, batches, gold)(state)
  agree = lambda x: float(np.mean(np.where(gold, x > 0, x < 0)))  # noqa: E731
  assert out["accuracy"] == pytest.approx(float(np.mean(d.mean(1) > 0)))
  for k in range(2):
    assert out[f"accuracy_{k}"] == pytest.approx(float(np.mean(d[:, k] > 0)))
    assert out[f"gold_agreement_{k}"] == pytest.approx(agree(d[:, k]))
  assert out["gold_agreement"] == pytest.approx(agree(d.mean(1)))
  # The check must see the rules: heads that disagree in sign with their mean exist in this draw.
  assert out["gold_agreement"] != out["accuracy"]


def test_gold_labels_compare_the_gold_reward_of_each_response():
  from jaxrlhf.stages import inputs
  world = inputs.make_world({"flip_rate": 0.3})
  records = world.preference_records(64, "validation")
  gold = np.asarray([world.gold_of_record(r) for r in records])  # (N, 2): r*(chosen), r*(rejected)
  labels = reward.gold_labels(world, records)
  np.testing.assert_array_equal(labels, gold[:, 0] > gold[:, 1])
  assert 0 < labels.mean() < 1  # flipped labels exist: some chosen responses are gold-worse


@pytest.mark.parametrize("backend,want", [("cpu", "scan"), ("gpu", "vmap"), ("tpu", "vmap")])
def test_auto_member_loop_is_scan_on_cpu_and_vmap_on_accelerators(backend, want):
  assert reward.resolved_member_loop("auto", backend) == want
  for explicit in ("vmap", "scan"):
    assert reward.resolved_member_loop(explicit, backend) == explicit
  with pytest.raises(ValueError, match="member_loop"):
    reward.resolved_member_loop("loop", backend)


def test_ensemble_step_counts_steps():
  head = HeadConfig()
  opt_cfg = optim.OptimizerConfig(learning_rate=1e-2)
  setup = reward.ensemble_setup(TINY, head, 2, optim.make_optimizer(opt_cfg), 0, None)
  step = jax.jit(reward.make_ensemble_step(reward.member_graphdef(TINY, head, 0), reward.reward_loss_fn(
      reward.RewardLossConfig(), head), opt_cfg, 2, member_loop="scan"))
  rng = np.random.default_rng(0)
  state = setup.init()
  for _ in range(2):
    batches = [_pair_batch(rng) for _ in range(2)]
    state, _ = step(state, {key: np.stack([b[key] for b in batches]) for key in batches[0]})
  assert int(state.step) == 2


class _Stop(Exception):
  pass


def test_member_k_reads_its_own_pipeline_seeded_seed_plus_k(monkeypatch):
  from jaxrlhf.config import from_config
  from jaxrlhf.stages import inputs
  seeds, captured = [], {}
  make = inputs.train_iterator

  def spy(records, tokenizer, data, kind, seed, **kwargs):
    seeds.append(seed)
    return make(records, tokenizer, data, kind, seed, **kwargs)

  def stop(**kwargs):
    captured.update(kwargs)
    raise _Stop

  monkeypatch.setattr(reward.inputs_lib, "train_iterator", spy)
  monkeypatch.setattr(reward.loop_lib, "train", stop)
  cfg = from_config(dict(seed=5, num_members=3, model=dict(config=dict(embed_dim=16, num_layers=1, num_heads=2,
                                                                       num_kv_heads=2, head_dim=8, mlp_dim=32)),
                         data=dict(num_train=64, num_eval=8, batch_size=8, max_length=40, shared_prompt="off")),
                    reward.RewardConfig, path="config")
  with pytest.raises(_Stop):
    reward.run(cfg, "unused", {})
  assert seeds == [5, 6, 7]
  batch = next(captured["data_iter"])
  ids = batch["chosen_input_ids"]
  assert ids.shape[:2] == (3, 8)
  assert not np.array_equal(ids[0], ids[1]) and not np.array_equal(ids[1], ids[2])  # three different orders
