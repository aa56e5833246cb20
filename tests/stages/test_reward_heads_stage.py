"""The reward_heads stage: the BT loss on features against a hand computation, features read exactly where
RewardModel reads rewards, the feature cache (reused, rebuilt for another model), the saved reward model equal to
the heads on the cached features end to end, member data orders, and an exact resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data import tokenize
from jaxrlhf.models import from_pretrained, load_tokenizer
from jaxrlhf.models.heads import HeadConfig, gather_last
from jaxrlhf.parallel import distributed
from jaxrlhf.stages import artifacts, inputs
from jaxrlhf.stages import reward_heads
from jaxrlhf.train import scoring
from tiny_reward_files import model_folder, preference_rows, sequence_reward, write_jsonl

LOOP = dict(num_steps=8, log_every=2, checkpoint_every=4, eval_every=4, progress=False, tensorboard=False,
            async_checkpoints=False)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("reward_heads")
  return {"model": model_folder(root / "model", seed=0), "other": model_folder(root / "other", seed=1),
          "prefs": write_jsonl(root / "prefs.jsonl", preference_rows(24, seed=0)), "root": root}


def _cfg(assets, model="model", **overrides):
  data = dict(source="files", paths=(str(assets["prefs"]),), tokenizer=str(assets[model]), eval_fraction=0.25,
              num_eval=0, batch_size=4, eval_batch_size=4, max_length=24, shuffle=False)
  section = dict(model=dict(init_from=str(assets[model])), data=data, optimizer=dict(learning_rate=1e-2),
                 loop=dict(LOOP))
  for key, value in overrides.items():
    if isinstance(value, dict) and isinstance(section.get(key), dict):
      section[key] = {**section[key], **value}
    else:
      section[key] = value
  return from_config(section, reward_heads.RewardHeadsConfig)


@pytest.fixture(scope="module")
def trained(assets):
  """One K = 2 mlp-head run, shared by the tests that only read its outputs."""
  workdir = assets["root"] / "mlp2"
  out = reward_heads.run(_cfg(assets, head="mlp", hidden_dim=8, num_members=2), str(workdir), {})
  return out, workdir


def _log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("margin,smoothing,center", [("none", 0.0, 0.0), ("margin", 0.1, 0.01),
                                                     ("adaptive", 0.0, 0.0)])
def test_head_loss_matches_hand_computation(margin, smoothing, center):
  rng = np.random.default_rng(0)
  member = reward_heads.RewardHead(6, HeadConfig(), rngs=nnx.Rngs(3))
  batch = {"chosen_features": rng.normal(size=(4, 6)).astype(np.float32),
           "rejected_features": rng.normal(size=(4, 6)).astype(np.float32),
           "margin": np.array([0.5, np.nan, -0.2, 1.0], np.float32), "weight": np.array([1, 1, 0.5, 0], np.float32)}
  loss = reward_heads.HeadLossConfig(margin=margin, margin_scale=2.0, margin_clip_min=0.0, label_smoothing=smoothing,
                                     center_coeff=center)
  total, weight, metrics = reward_heads.head_loss_fn(loss)(member, jax.tree.map(jnp.asarray, batch), None)
  kernel = np.asarray(member.kernel[...][0], np.float64)
  bias = float(member.bias[...][0])
  r_c = batch["chosen_features"].astype(np.float64) @ kernel + bias
  r_r = batch["rejected_features"].astype(np.float64) @ kernel + bias
  m = np.nan_to_num(batch["margin"].astype(np.float64), nan=0.0)
  m = {"none": np.zeros(4), "margin": m, "adaptive": np.maximum(2.0 * m, 0.0)}[margin]
  d = r_c - r_r - m
  per_pair = -(1 - smoothing) * _log_sigmoid(d) - smoothing * _log_sigmoid(-d) + center * (r_c + r_r) ** 2
  np.testing.assert_allclose(float(total), np.sum(batch["weight"] * per_pair), rtol=1e-5)
  assert float(weight) == pytest.approx(2.5)
  acc = metrics["rewards/accuracy"]
  assert float(acc.total / acc.count) == pytest.approx(np.sum(batch["weight"] * (r_c > r_r)) / 2.5)


def test_stacked_heads_are_the_members_alone():
  stacked = reward_heads.stacked_heads(6, HeadConfig(kind="mlp", hidden_dim=4), 3, seed=5)
  for k in range(3):
    alone = reward_heads.RewardHead(6, HeadConfig(kind="mlp", hidden_dim=4),
                                    rngs=nnx.Rngs(reward_heads.member_key(5, k)))
    for name, value in nnx.to_pure_dict(nnx.state(alone)).items():
      np.testing.assert_array_equal(np.asarray(nnx.state(stacked)[name][...][k]), np.asarray(value))


@pytest.mark.parametrize("shared", [True, False])
def test_features_are_the_hidden_state_where_rewards_are_read(assets, shared):
  lm, config = from_pretrained(str(assets["model"]))
  backbone = {k: v for k, v in nnx.to_pure_dict(nnx.state(lm, nnx.Param)).items() if k != "lm_head"}
  features = reward_heads.feature_model(config, backbone)
  tok = load_tokenizer(str(assets["model"]))
  data = from_config(dict(source="files", paths=(str(assets["prefs"]),), max_length=24, batch_size=4),
                     inputs.DataSpec)
  records = inputs.read_files(data)[0][:6]
  plan = inputs.scoring_batches(records, tok, data, shared_prompt=shared)
  batch = plan.batches[0]
  rows = scoring.nonempty_rows(batch)
  f_c, f_r = scoring.pair_rewards(features, batch, attributes=True)
  for i, j in enumerate(plan.index[:rows.sum()]):
    r = records[j]
    for side, got in (("chosen", f_c[i]), ("rejected", f_r[i])):
      ids = np.asarray([(tokenize.encode_prompt(tok, r.prompt)
                         + tokenize.encode_response(tok, getattr(r, side)))[:24]], np.int32)
      mask = np.ones_like(ids)
      want = gather_last(lm.hidden_states(ids, mask), mask)[0]
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_saved_model_equals_heads_on_cached_features(assets, trained):
  out, workdir = trained
  rm = artifacts.load_reward_model(out["rm_dir"])
  assert rm.num_members == 2 and rm.members.head.config == HeadConfig(kind="mlp", hidden_dim=8)
  with np.load(out["features"]) as f:
    chosen, rejected, index = f["chosen"], f["rejected"], f["index"]
  heads = nnx.state(rm)["members"]["head"]
  graphdef = nnx.graphdef(reward_heads.RewardHead(16, HeadConfig(kind="mlp", hidden_dim=8), rngs=nnx.Rngs(0)))
  cached_c = np.asarray(reward_heads.member_rewards(graphdef, heads, nnx.State({}), chosen)).T
  cached_r = np.asarray(reward_heads.member_rewards(graphdef, heads, nnx.State({}), rejected)).T
  tok = load_tokenizer(str(assets["model"]))
  cfg = _cfg(assets)
  records = inputs.read_files(cfg.data)
  records = records[0] + records[1]
  for i in (0, 5, len(index) - 1):  # one row alone, as an independent end-to-end reference
    r = records[index[i]]
    np.testing.assert_allclose(sequence_reward(rm, tok, r.prompt, r.chosen, 24), cached_c[i], atol=1e-5)
    np.testing.assert_allclose(sequence_reward(rm, tok, r.prompt, r.rejected, 24), cached_r[i], atol=1e-5)
  for shared in (True, False):  # every pair, in batches of both layouts
    plan = inputs.scoring_batches(records, tok, cfg.data, shared_prompt=shared)
    got_c, got_r = [], []
    for batch in plan.batches:
      r_c, r_r = scoring.pair_rewards(rm, batch)
      got_c.append(np.asarray(r_c)[scoring.nonempty_rows(batch)])
      got_r.append(np.asarray(r_r)[scoring.nonempty_rows(batch)])
    order = np.argsort(plan.index)
    np.testing.assert_array_equal(plan.index[order], index)
    np.testing.assert_allclose(np.concatenate(got_c)[order], cached_c, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(got_r)[order], cached_r, atol=1e-5)
  # The stage's held-out accuracy is the heads' accuracy on the cached held-out features.
  held_out = index >= 18
  want = float(np.mean(cached_c[held_out].mean(1) > cached_r[held_out].mean(1)))
  assert out["metrics"]["eval/accuracy"] == pytest.approx(want)
  assert out["metrics"]["time/features_s"] > 0 and out["metrics"]["time/heads_s"] > 0


def test_feature_cache_is_reused_and_rebuilt_for_another_model(assets, trained):
  out, _ = trained
  first = out["data_report"]["features"]
  assert not first["reused"] and first["scored"] == 24 and first["dropped_too_long"] == 0
  same = reward_heads.run(_cfg(assets, features_from=out["features"]), str(assets["root"] / "same"), {})
  assert same["data_report"]["features"]["reused"] and same["features"] == out["features"]
  assert same["data_report"]["features"]["key"] == first["key"]
  other = reward_heads.run(_cfg(assets, model="other", features_from=out["features"]),
                           str(assets["root"] / "other_run"), {})
  report = other["data_report"]["features"]
  assert not report["reused"] and report["key"] != first["key"] and other["features"] != out["features"]
  with np.load(out["features"]) as a, np.load(other["features"]) as b:
    assert not np.allclose(a["chosen"], b["chosen"])
  # A shorter max_length changes the pairs' tokens: rebuilt as well.
  short = reward_heads.run(_cfg(assets, features_from=out["features"], data=dict(max_length=8)),
                           str(assets["root"] / "short"), {})
  assert not short["data_report"]["features"]["reused"]


def test_resume_after_interruption_is_exact(assets):
  full = reward_heads.run(_cfg(assets, num_members=2), str(assets["root"] / "full"), {})
  workdir = str(assets["root"] / "interrupted")
  reward_heads.run(_cfg(assets, num_members=2, loop=dict(num_steps=4)), workdir, {})  # stops at the step-4 checkpoint
  resumed = reward_heads.run(_cfg(assets, num_members=2), workdir, {})
  assert resumed["data_report"]["features"]["reused"]
  a = nnx.to_pure_dict(nnx.state(artifacts.load_reward_model(full["rm_dir"])))
  b = nnx.to_pure_dict(nnx.state(artifacts.load_reward_model(resumed["rm_dir"])))
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
  for key in ("train/loss", "eval/accuracy", "eval/accuracy_0", "eval/accuracy_1"):
    assert resumed["metrics"][key] == full["metrics"][key]

  def logged(run_dir):  # every logged metric but the timings, in order
    with open(f"{run_dir}/metrics.jsonl") as f:
      return [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")} for line in f]

  assert logged(workdir) == logged(assets["root"] / "full")


def test_feature_iterator_gives_members_their_own_order_and_resumes():
  n, d = 10, 3
  chosen = np.arange(n * d, dtype=np.float32).reshape(n, d)
  it = reward_heads.FeatureIterator(chosen, -chosen, np.zeros(n), batch_size=4, seed=7, num_members=2)
  batches = [next(it) for _ in range(3)]
  assert batches[0]["chosen_features"].shape == (2, 4, d)
  rows = [b["chosen_features"][:, :, 0] / d for b in batches]
  assert not np.array_equal(rows[0][0], rows[0][1])  # members read different pairs
  epoch0 = np.concatenate([rows[0][0], rows[1][0]])
  assert len(set(epoch0.tolist())) == 8  # no pair twice within an epoch
  state = it.get_state()
  after = next(it)
  it2 = reward_heads.FeatureIterator(chosen, -chosen, np.zeros(n), batch_size=4, seed=7, num_members=2)
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)["chosen_features"], after["chosen_features"])


def test_config_requires_a_backbone(assets):
  with pytest.raises(ConfigError, match=r"config\.model\.init_from: required"):
    from_config(dict(data=dict(source="files", paths=(str(assets["prefs"]),))), reward_heads.RewardHeadsConfig)


def test_config_refuses_lora_on_the_frozen_backbone(assets):
  # Only the heads train: adapters on the backbone would never be built, let alone trained.
  with pytest.raises(ConfigError, match=r"config\.model\.lora: not used by reward_heads"):
    from_config(dict(model=dict(init_from=str(assets["model"]), lora=dict(rank=4, alpha=8)),
                     data=dict(source="files", paths=(str(assets["prefs"]),))), reward_heads.RewardHeadsConfig)


def test_feature_cache_records_its_records(assets, trained):
  out, _ = trained
  records = inputs.read_files(_cfg(assets).data)
  with np.load(out["features"]) as f:
    assert int(f["num_train"]) == len(records[0]) == 18
    assert str(f["records_sha256"]) == artifacts.records_digest(records[0] + records[1])
  # Another order (or other records) is another digest: the rows would index other pairs.
  assert artifacts.records_digest(records[1] + records[0]) != artifacts.records_digest(records[0] + records[1])
  # An older cache without those fields is reused and rewritten with them (its features unchanged).
  workdir = assets["root"] / "old_cache"
  os.makedirs(workdir)
  with np.load(out["features"]) as f:
    old = {k: f[k] for k in f.files if k not in ("num_train", "records_sha256")}
  np.savez(workdir / reward_heads.FEATURES_FILE, **old)
  again = reward_heads.run(_cfg(assets, loop=dict(num_steps=1)), str(workdir), {})
  assert again["data_report"]["features"]["reused"]
  with np.load(workdir / reward_heads.FEATURES_FILE) as f, np.load(out["features"]) as want:
    assert sorted(f.files) == sorted(want.files)
    for k in want.files:
      np.testing.assert_array_equal(f[k], want[k])


@pytest.mark.parametrize("primary", [True, False])
def test_only_process_0_writes_the_cache(monkeypatch, tmp_path, primary):
  monkeypatch.setattr(distributed, "is_primary", lambda: primary)
  barriers = []
  monkeypatch.setattr(distributed, "barrier", lambda name, *a, **k: barriers.append(name))
  path = str(tmp_path / reward_heads.FEATURES_FILE)
  reward_heads.save_features(path, "k", np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32), np.arange(2),
                             1.0, 1, "digest")
  assert sorted(os.listdir(tmp_path)) == ([reward_heads.FEATURES_FILE] if primary else [])  # no tmp file either
  assert barriers == [f"reward_heads.save_features:{path}"]
