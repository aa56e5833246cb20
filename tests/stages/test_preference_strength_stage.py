"""The "preference_strength" stage: the world's truths are looked up only for the world's general preference pairs
(criterion pairs share their indices but not their draws), criterion data is refused at config time, and only
process 0 writes the stage's files."""

import os

import numpy as np
import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.parallel import distributed
from jaxrlhf.stages import preference_strength as ps
from jaxrlhf.stages.inputs import make_world

WORLD = {"num_prompts": 64, "max_response_len": 12, "flip_rate": 0.3, "seed": 5,
         "criteria": [["c1", [1, 0, 0, 0, 0]], ["c2", [0, 1, 0, 0, 0]]]}


def test_world_truths_refuse_criterion_pairs():
  world = make_world(WORLD)
  general = world.preference_records(4, "train")
  criterion = world.criterion_records(40, "train", shown=True)
  # The general pairs alone: their own flips (a lookup by index, as before).
  flipped, _ = ps.world_truths(world, general, "train")
  np.testing.assert_array_equal(flipped, world.preference_pairs(4, "train")["flipped"])
  # A criterion pair ends in ':train:criterion:<i>': its index must not fetch general pair i's truths.
  with pytest.raises(ValueError, match=r"records\[4\]\.source: .*:train:criterion:0"):
    ps.world_truths(world, general + criterion, "train")
  # Another split's pairs, or another seed's, are not this split's pairs either.
  with pytest.raises(ValueError, match="records\\[0\\].source"):
    ps.world_truths(world, world.preference_records(2, "validation"), "train")
  other = make_world({**WORLD, "seed": 6}).preference_records(2, "train")
  with pytest.raises(ValueError, match="synthetic:seed=5:train:<index>"):
    ps.world_truths(world, other, "train")


def test_config_refuses_criterion_data(tmp_path):
  data = {"world": WORLD, "num_train": 40}
  from_config({"reward_model": str(tmp_path), "data": data, "num_buckets": 4}, ps.PreferenceStrengthConfig)
  for criteria in ("shown", "hidden"):
    with pytest.raises(ConfigError, match=r"config\.data\.criteria: must be 'none'"):
      from_config({"reward_model": str(tmp_path), "num_buckets": 4,
                   "data": {**data, "criteria": criteria, "num_criteria_train": 40}}, ps.PreferenceStrengthConfig)


@pytest.mark.parametrize("primary", [True, False])
def test_only_process_0_writes(monkeypatch, tmp_path, primary):
  # The ensemble's margins are stubbed: the test is about who writes, not the scoring.
  monkeypatch.setattr(ps.artifacts, "load_reward_model", lambda path: None)
  monkeypatch.setattr(ps.inputs_lib, "member_margins",
                      lambda rm, records, tokenizer, data: np.random.default_rng(0).normal(size=(len(records), 2)))
  monkeypatch.setattr(distributed, "is_primary", lambda: primary)
  barriers = []
  monkeypatch.setattr(distributed, "barrier", lambda name, *a, **k: barriers.append(name))
  cfg = from_config({"reward_model": str(tmp_path), "num_buckets": 4, "plots": False,
                     "data": {"world": {k: v for k, v in WORLD.items() if k != "criteria"}, "num_train": 40}},
                    ps.PreferenceStrengthConfig)
  workdir = str(tmp_path / "run")
  out = ps.run(cfg, workdir, {})
  assert np.isfinite(out["metrics"]["auroc"])  # every process still computes the metrics
  written = sorted(os.listdir(workdir)) if os.path.exists(workdir) else []
  assert written == (["buckets.md", "strengths.npz"] if primary else [])
  assert barriers == [f"preference_strength:{workdir}"]  # every process waits for the files
