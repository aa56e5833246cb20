"""jaxrlhf/evaluation/unlearning.py: bucketed log-prob shifts and goal margins against hand-computed goldens,
and sequence log-probs of padded batches against an independent unpadded per-example forward."""

import math

import jax
import numpy as np
import pytest
import random_models

from jaxrlhf.evaluation import unlearning
from jaxrlhf.stages import logp_shift
from jaxrlhf.train import scoring
from jaxrlhf.models import ModelConfig

# Four pairs: judge scores (chosen, rejected) = (9, 8), (6, 2), (8, 7), (5, 4).
POLICY_C = [-10.0, -12.0, -8.0, -9.0]
POLICY_R = [-14.0, -20.0, -11.0, -10.0]
REF_C = [-11.0, -12.5, -9.0, -9.0]
REF_R = [-12.0, -18.0, -10.0, -10.5]
SCORE_C = [9.0, 6.0, 8.0, 5.0]
SCORE_R = [8.0, 2.0, 7.0, 4.0]


def test_shift_metrics_golden():
  m = unlearning.shift_metrics(POLICY_C, POLICY_R, REF_C, REF_R, SCORE_C, SCORE_R, high_score=7, low_score=4)
  # Shifts: chosen (+1, +0.5, +1, 0); rejected (-2, -2, -1, +0.5).
  assert m["chosen"] == pytest.approx(2.5 / 4)
  assert m["rejected"] == pytest.approx(-4.5 / 4)
  assert m["rejected_high"] == pytest.approx((-2.0 - 1.0) / 2)  # Scores 8 and 7.
  assert m["rejected_low"] == pytest.approx((-2.0 + 0.5) / 2)  # Scores 2 and 4.
  assert m["chosen_high"] == pytest.approx((1.0 + 1.0) / 2)  # Scores 9 and 8.
  assert (m["n/rejected_high"], m["n/rejected_low"]) == (2.0, 2.0)


def test_shift_metrics_empty_bucket_is_nan_and_bad_input_raises():
  m = unlearning.shift_metrics(POLICY_C, POLICY_R, REF_C, REF_R, SCORE_C, SCORE_R, high_score=10, low_score=1)
  assert math.isnan(m["rejected_high"]) and math.isnan(m["rejected_low"]) and m["n/rejected_high"] == 0
  with pytest.raises(ValueError, match="ref_rejected_N"):
    unlearning.shift_metrics(POLICY_C, POLICY_R, REF_C, REF_R[:3], SCORE_C, SCORE_R)
  with pytest.raises(ValueError, match="low_score"):
    unlearning.shift_metrics(POLICY_C, POLICY_R, REF_C, REF_R, SCORE_C, SCORE_R, high_score=4, low_score=4)
  with pytest.raises(ValueError, match="finite"):
    unlearning.shift_metrics(POLICY_C, POLICY_R, REF_C, [np.nan] * 4, SCORE_C, SCORE_R)


def test_goal_margin_golden():
  top = [-5.0, -7.0, -9.0, -4.0]
  contrast = [-6.0, -6.5, -8.0, -4.0]
  scores = [9.0, 8.0, 2.0, 5.0]
  m = unlearning.goal_margin_metrics(top, contrast, scores, high_score=7, low_score=4)
  assert m["high"] == pytest.approx((1.0 - 0.5) / 2)
  assert m["low"] == pytest.approx(-1.0)
  assert m["gap"] == pytest.approx(0.25 + 1.0)


def _reference_logps(model, prompts, responses):
  """log p(response | prompt) from one unpadded forward per example (numpy log-softmax)."""
  out = []
  for p, r in zip(prompts, responses):
    ids = np.asarray([p + r], np.int32)
    logits = np.asarray(model(ids, np.ones_like(ids)), np.float64)[0]
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    out.append(sum(logits[len(p) - 1 + n, tok] - logz[len(p) - 1 + n] for n, tok in enumerate(r)))
  return np.asarray(out)


def test_sequence_logps_matches_unpadded_forward():
  config = ModelConfig(family="llama", vocab_size=23, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2,
                       head_dim=8, mlp_dim=24, max_position_embeddings=32)
  model = random_models.random_model(config, seed=3, scale=0.4)
  prompts = [[3, 4, 5], [6], [7, 8], [9, 10, 11, 12], [1, 2]]
  responses = [[13, 2], [14, 15, 16, 2], [17], [18, 19, 2], [20, 21, 22]]
  got = scoring.sequence_logps(model, prompts, responses, pad_id=0, batch_size=2)  # Last batch is filled.
  np.testing.assert_allclose(got, _reference_logps(model, prompts, responses), rtol=1e-4, atol=1e-4)
  assert got.shape == (5,) and (got < 0).all()
  with pytest.raises(ValueError, match="response_rows"):
    scoring.sequence_logps(model, prompts, responses[:4], pad_id=0)


def test_stage_config_validation():
  from jaxrlhf import config as config_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(config_lib.ConfigError, match="policy"):
    config_lib.from_config({"base": "stage:sft"}, logp_shift.LogpShiftConfig, path="config.shift")
  with pytest.raises(config_lib.ConfigError, match="goal"):
    config_lib.from_config({"policy": "stage:a", "base": "stage:b", "goal": "own"}, logp_shift.LogpShiftConfig,
                           path="config.shift")
  with pytest.raises(config_lib.ConfigError, match="low_score"):
    config_lib.from_config({"policy": "stage:a", "base": "stage:b", "low_score": 8.0},
                           logp_shift.LogpShiftConfig, path="config.shift")
  jax.block_until_ready(0)
