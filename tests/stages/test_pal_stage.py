"""The pal stage: config errors name the key; cached backbone features are matched to records by index; the world
ceiling is each user's own weights on the labels; a tiny run trains PAL and BT on the seen users only and reports
per-user, few-shot and baseline accuracies consistent with per_user.json."""

import json
import os

import numpy as np
import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.parallel import distributed
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import pal

USERS = (("a", (2.0, 0.0, 0.0, 0.0, 1.0)), ("b", (0.0, 3.0, 0.0, 0.0, -1.5)), ("c", (0.0, 0.0, 3.0, 2.0, 0.0)),
         ("d", (1.0, 1.5, 0.0, 0.0, -0.25)))


def _cfg(**overrides):
  section = dict(data=dict(world=dict(annotators=USERS), num_train=256, num_eval=96, batch_size=16),
                 unseen_users=("d",), shots=(1, 4), num_steps=30, fewshot_steps=10, pref_dim=4,
                 optimizer=dict(learning_rate=1e-2))
  section.update(overrides)
  return from_config(section, pal.PALConfig, path="config.pal")


def test_config_errors_name_the_key():
  with pytest.raises(ConfigError, match=r"config.pal.unseen_users.*\['zed'\]"):
    _cfg(unseen_users=("zed",))
  with pytest.raises(ConfigError, match="config.pal.features_from"):
    _cfg(features="cache")
  with pytest.raises(ConfigError, match="config.pal.shots"):
    _cfg(shots=(5, 1))
  with pytest.raises(ConfigError, match="config.pal.data.transform"):
    _cfg(data=dict(world=dict(annotators=USERS), transform="reward_augmented"))
  with pytest.raises(ConfigError, match="config.pal.unseen_users.*every annotator"):
    _cfg(unseen_users=("a", "b", "c", "d"))


@pytest.mark.parametrize("key,value", [("attribute_noise", 0.5), ("attribute_levels", 3)])
def test_config_refuses_attribute_settings_it_does_not_apply(key, value):
  # Only `inputs.prepared_pairs` applies them; PAL reads `preference_records`, so they would change nothing.
  with pytest.raises(ConfigError, match=rf"config\.pal\.data\.{key}: must be 0"):
    _cfg(data=dict(world=dict(annotators=USERS), **{key: value}))


def test_config_refuses_gradient_accumulation():
  with pytest.raises(ConfigError, match=r"config\.pal\.optimizer\.grad_accum_steps: must be 1.*got 4"):
    _cfg(optimizer=dict(learning_rate=1e-2, grad_accum_steps=4))
  assert _cfg(optimizer=dict(learning_rate=1e-2, grad_accum_steps=1)).optimizer.grad_accum_steps == 1


def test_cached_features_are_matched_to_records_by_index(tmp_path):
  cfg = _cfg()
  world = inputs_lib.make_world(cfg.data.world)
  train, held_out, _ = inputs_lib.preference_records(cfg.data, world)
  records = list(train) + list(held_out)
  n = len(records)
  index = np.asarray([n - 1, 0, 5])  # any order; pairs missing from the cache (too long) stay unavailable
  chosen = np.arange(6, dtype=np.float32).reshape(3, 2)
  path = tmp_path / "features.npz"
  np.savez(path, key=np.asarray("k"), chosen=chosen, rejected=-chosen, index=index, seconds=np.asarray(0.0))
  with pytest.warns(UserWarning, match="does not record which records"):  # an older cache: read, with a warning
    c, r, available = pal.pair_features(_cfg(features="cache", features_from=str(path)), {}, records)
  assert available.sum() == 3 and available[[0, 5, n - 1]].all()
  np.testing.assert_array_equal(c[[n - 1, 0, 5]], chosen)
  np.testing.assert_array_equal(r[[n - 1, 0, 5]], -chosen)
  np.savez(path, key=np.asarray("k"), chosen=chosen, rejected=chosen, index=np.asarray([0, 1, n]),
           seconds=np.asarray(0.0))
  with pytest.raises(ValueError, match="features_from.*data section"), pytest.warns(UserWarning):
    pal.pair_features(_cfg(features="cache", features_from=str(path)), {}, records)
  # The attribute source reads the records' gold components.
  c, r, available = pal.pair_features(cfg, {}, records)
  np.testing.assert_array_equal(c[3], records[3].chosen_attributes)
  assert available.all()


def _cache(path, records, num_train, index):
  chosen = np.ones((len(index), 2), np.float32)
  np.savez(path, key=np.asarray("k"), chosen=chosen, rejected=-chosen, index=np.asarray(index),
           seconds=np.asarray(0.0), num_train=np.asarray(num_train),
           records_sha256=np.asarray(artifacts.records_digest(records)))


def test_cache_of_other_records_is_refused(tmp_path, recwarn):
  data = _cfg().data
  train, held_out, _ = inputs_lib.preference_records(data, inputs_lib.make_world(data.world))
  records = list(train) + list(held_out)
  # The cache of these very records: read without complaint.
  _cache(tmp_path / "features.npz", records, len(train), [0, 3])
  cfg = _cfg(features="cache", features_from=str(tmp_path / "features.npz"))
  _, _, available = pal.pair_features(cfg, {}, records, len(train))
  assert available.sum() == 2 and not recwarn.list
  # A reward_heads data section with fewer training pairs: every index is in range (the old, only check), but row i
  # is another record's features, e.g. PAL's training pair 200 would get a held-out pair's.
  small = _cfg(data=dict(world=dict(annotators=USERS), num_train=200, num_eval=96, batch_size=16))
  other_train, other_held, _ = inputs_lib.preference_records(small.data, inputs_lib.make_world(small.data.world))
  _cache(tmp_path / "features.npz", list(other_train) + list(other_held), 200, [0, 3, 295])
  with pytest.raises(ValueError, match=r"other records.*cache: 3 scored rows, num_train=200; config\.data: 352 "
                                       r"records, num_train=256"):
    pal.pair_features(cfg, {}, records, len(train))


def test_world_ceiling_is_each_users_own_weights_on_the_labels():
  cfg = _cfg()
  world = inputs_lib.make_world(cfg.data.world)
  pairs = world.preference_pairs(256, "train")
  records = world.preference_records(256, "train")
  weights = np.asarray([w for _, w in USERS])[pairs["annotator"]]
  u_a_minus_b = ((pairs["comps_a"] - pairs["comps_b"]) * weights).sum(1)
  # Correct = the labelled winner has the strictly higher utility (ties count as wrong, as in pairwise accuracy).
  expected = np.where(pairs["a_wins"], u_a_minus_b > 0, u_a_minus_b < 0)
  np.testing.assert_array_equal(pal.world_ceiling(cfg.data.world, records), expected)


def test_tiny_run_reports_seen_fewshot_and_baseline(tmp_path):
  out = pal.run(_cfg(), str(tmp_path), {})
  m = out["metrics"]
  per_user = json.load(open(tmp_path / "per_user.json"))
  assert per_user["seen_users"] == ["a", "b", "c"] and per_user["unseen_users"] == ["d"]
  assert m["seen/num_users"] == 3 and m["unseen/num_users"] == 1
  for key in ("seen/pal", "seen/bt", "seen/ceiling", "unseen/bt", "unseen/pal_n0", "unseen/pal_n1",
              "unseen/pal_n4", "unseen/ceiling"):
    assert np.isclose(m[f"{key}_accuracy"], np.mean(per_user[key])), key
    assert 0.0 <= m[f"{key}_accuracy"] <= 1.0
  np.testing.assert_allclose(m["seen/pal_minus_bt"], np.mean(np.subtract(per_user["seen/pal"], per_user["seen/bt"])))
  np.testing.assert_allclose(per_user["unseen/weights_n0"], [[1 / 3] * 3], atol=1e-4)  # uniform before any pair
  assert np.allclose(np.sum(per_user["unseen/weights_n4"], -1), 1.0, atol=1e-3)
  # Each n fits on its own first n pairs: 1 pair and 4 pairs move the mixture differently.
  assert not np.allclose(per_user["unseen/weights_n1"], per_user["unseen/weights_n0"], atol=1e-3)
  assert not np.allclose(per_user["unseen/weights_n1"], per_user["unseen/weights_n4"], atol=1e-3)
  # Only the seen users' training pairs are trained on: the unseen user's ~1/4 of them are held out.
  assert 256 * 0.6 < m["data/num_train_pairs"] < 256 * 0.9
  assert json.load(open(out["results"]))["metrics"]["seen/pal_accuracy"] == m["seen/pal_accuracy"]


def test_only_process_0_writes(monkeypatch, tmp_path):
  monkeypatch.setattr(distributed, "is_primary", lambda: False)
  barriers = []
  monkeypatch.setattr(distributed, "barrier", lambda name, *a, **k: barriers.append(name))
  workdir = str(tmp_path / "run")
  out = pal.run(_cfg(num_steps=5, unseen_users=()), workdir, {})
  assert 0.0 <= out["metrics"]["seen/pal_accuracy"] <= 1.0  # computed on every process
  assert not os.path.exists(workdir) or os.listdir(workdir) == []  # neither per_user.json nor results.json
  assert f"pal.per_user:{workdir}" in barriers  # the others wait for process 0's files
