"""The logp_shift stage end to end on tiny random policies: every metric of results.json against an independent
recomputation (one unpadded forward per example, numpy log-softmax) of the shift log pi(y | x') - log pi_ref(y | x'),
with x' the plain or the goal-conditioned prompt."""

import json

import numpy as np
import pytest
from random_models import save_strong_and_weak, unpadded_response_logps

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.data.transforms import goal_conditioned_prompt
from jaxrlhf.stages import logp_shift as ls_stage

WORLD = {"num_prompts": 256, "max_response_len": 12}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  world = World(WorldConfig(**WORLD))
  return {"world": world, **save_strong_and_weak(tmp_path_factory.mktemp("shift_models"), world.tokenizer.vocab_size)}


_logps = unpadded_response_logps


@pytest.mark.parametrize("goal", ["none", "top"])
def test_logp_shift_stage_metrics_against_unpadded_recomputation(models, tmp_path, goal):
  world, tok = models["world"], models["world"].tokenizer
  (policy_dir, policy), (base_dir, base) = models["strong"], models["weak"]
  cfg = from_config({"world": WORLD, "policy": policy_dir, "base": base_dir, "num_pairs": 6, "batch_size": 8,
                     "goal": goal, "high_score": 6.0, "low_score": 5.0}, ls_stage.LogpShiftConfig)
  metrics = ls_stage.run(cfg, str(tmp_path / "ls"), {})["metrics"]
  with open(tmp_path / "ls" / "results.json") as f:
    assert json.load(f)["metrics"] == pytest.approx(metrics, nan_ok=True)
  records = world.preference_records(6, "validation")  # the configured split (default "validation")

  def prompt_ids(record, score):
    if score is None:
      return tokenize_lib.encode_prompt(tok, record.prompt)
    return tokenize_lib.encode_prompt(tok, goal_conditioned_prompt(record.prompt, score,
                                                                   supports_system_role=tok.supports_system_role))

  top = 10.0 if goal == "top" else None
  responses = {side: [tokenize_lib.encode_response(tok, getattr(r, side)) for r in records]
               for side in ("chosen", "rejected")}
  logps = {(m, side): _logps(model, [prompt_ids(r, top) for r in records], responses[side])
           for m, model in (("policy", policy), ("base", base)) for side in ("chosen", "rejected")}
  shift_c = logps["policy", "chosen"] - logps["base", "chosen"]
  shift_r = logps["policy", "rejected"] - logps["base", "rejected"]
  assert metrics["chosen"] == pytest.approx(shift_c.mean(), abs=1e-3)
  assert metrics["rejected"] == pytest.approx(shift_r.mean(), abs=1e-3)
  score_r = np.asarray([r.rejected_score for r in records])
  high = score_r >= 6.0
  assert metrics["n/rejected_high"] == high.sum()
  if high.any():
    assert metrics["rejected_high"] == pytest.approx(shift_r[high].mean(), abs=1e-3)
  if goal == "none":
    assert "goal" not in metrics and not any(k.startswith("goal_margin") for k in metrics)
    return
  assert metrics["goal"] == 10.0
  # Goal margin: log p(y | goal 10) - log p(y | goal 3) of the policy, over all 2N responses, bucketed by score.
  scores = np.concatenate([[r.chosen_score for r in records], score_r])
  contrast = np.concatenate([_logps(policy, [prompt_ids(r, 3.0) for r in records], responses[side])
                             for side in ("chosen", "rejected")])
  margin = np.concatenate([logps["policy", "chosen"], logps["policy", "rejected"]]) - contrast
  hi, lo = scores >= 6.0, scores <= 5.0
  assert hi.any() and lo.any()
  assert metrics["goal_margin/high"] == pytest.approx(margin[hi].mean(), abs=1e-3)
  assert metrics["goal_margin/low"] == pytest.approx(margin[lo].mean(), abs=1e-3)
  assert "goal_margin_ref/high" in metrics


def test_logp_shift_config_needs_low_score_below_high_score():
  base = {"policy": "stage:dpo", "base": "stage:sft"}
  with pytest.raises(ConfigError, match="low_score"):
    from_config({**base, "low_score": 5.0, "high_score": 5.0}, ls_stage.LogpShiftConfig, path="config")
  from_config({**base, "low_score": 4.0, "high_score": 5.0}, ls_stage.LogpShiftConfig, path="config")
