"""Audit of the preference_strength stage: the saved strengths are the member mean and population std of the
ensemble's margins (Secrets of RLHF II, §2), the flagged pairs are the lowest-mean ones, and the config refuses
fractions outside (0, 1) and more buckets than pairs."""

import os

import numpy as np
import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.stages import preference_strength as ps
from jaxrlhf.stages.inputs import make_world

WORLD = {"num_prompts": 64, "max_response_len": 12, "flip_rate": 0.3, "seed": 5}


def test_strengths_are_member_mean_and_std_and_the_lowest_are_flagged(monkeypatch, tmp_path):
  n, m = 40, 3
  flipped = make_world(WORLD).preference_pairs(n, "train")["flipped"].astype(bool)
  rng = np.random.default_rng(0)
  # An ensemble that sees the flips: flipped pairs get negative margins (the paper's low-strength signal).
  margins = np.where(flipped, -1.0, 1.0)[:, None] + rng.normal(size=(n, m))
  monkeypatch.setattr(ps.artifacts, "load_reward_model", lambda path: None)
  monkeypatch.setattr(ps.inputs_lib, "member_margins", lambda rm, records, tokenizer, data: margins)
  cfg = from_config({"reward_model": str(tmp_path), "num_buckets": 4, "plots": False, "fractions": (0.25,),
                     "data": {"world": WORLD, "num_train": n}}, ps.PreferenceStrengthConfig)
  out = ps.run(cfg, str(tmp_path / "run"), {})
  with np.load(os.path.join(tmp_path, "run", "strengths.npz")) as f:
    np.testing.assert_allclose(f["mean_N"], margins.mean(1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f["std_N"], margins.std(1), rtol=1e-5, atol=1e-6)  # population std (ddof 0)
    np.testing.assert_array_equal(f["flipped_N"], flipped)
  metrics = out["metrics"]
  assert metrics["num_members"] == m
  flagged = np.argsort(margins.mean(1), kind="stable")[:10]  # the lowest 25 % of 40 pairs by mean strength
  assert metrics["lowest25/precision"] == pytest.approx(flipped[flagged].mean())
  assert metrics["lowest25/recall"] == pytest.approx(flipped[flagged].sum() / flipped.sum())
  assert metrics["lowest25/precision"] > flipped.mean()  # the signal is there to be found


def test_config_refuses_bad_fractions_and_too_many_buckets(tmp_path):
  data = {"world": WORLD, "num_train": 40}
  for fractions in ((0.1, 1.0), (0.0,), ()):
    with pytest.raises(ConfigError, match=r"config\.fractions"):
      from_config({"reward_model": str(tmp_path), "data": data, "num_buckets": 4, "fractions": fractions},
                  ps.PreferenceStrengthConfig)
  with pytest.raises(ConfigError, match=r"config\.data\.num_train: 40 pairs cannot fill config\.num_buckets=41"):
    from_config({"reward_model": str(tmp_path), "data": data, "num_buckets": 41}, ps.PreferenceStrengthConfig)
  from_config({"reward_model": str(tmp_path), "data": data, "num_buckets": 40}, ps.PreferenceStrengthConfig)
