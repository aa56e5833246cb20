"""Density-ratio reward pieces (Xu et al. 2024, arXiv:2411.02481): the ratio, gold-oriented pairwise accuracy,
the gap-accuracy correlation, and the summed response log-probs against an unpadded per-row forward."""

import jax
import numpy as np
import pytest
from random_models import random_model

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.evaluation import density_ratio as dr
from jaxrlhf.evaluation import stats
from jaxrlhf.stages import density_ratio as dr_stage
from jaxrlhf.models import ModelConfig


def test_density_ratio_is_the_log_prob_difference():
  np.testing.assert_allclose(dr.density_ratio([-3.0, -10.5], [-4.0, -9.0]), [1.0, -1.5])
  with pytest.raises(ValueError, match="strong_logps_B"):
    dr.density_ratio([1.0, 2.0], [1.0])


def test_gold_oriented_drops_ties_and_orients_by_gold():
  better, worse = dr.gold_oriented(reward_a=[1.0, 2.0, 3.0, 4.0], reward_b=[0.0, 5.0, 1.0, 9.0],
                                   gold_a=[0.5, 0.1, 2.0, 1.0], gold_b=[0.2, 0.3, 2.0, 0.0])
  # pair 0: a better -> (1, 0); pair 1: b better -> (5, 2); pair 2: gold tie -> dropped; pair 3: a better.
  np.testing.assert_allclose(better, [1.0, 5.0, 4.0])
  np.testing.assert_allclose(worse, [0.0, 2.0, 9.0])


def test_ratio_metrics_hand_computed():
  m = dr.ratio_metrics(ratio_a=np.array([1.0, 0.0, 2.0, -1.0]), ratio_b=np.array([0.0, 1.0, 3.0, -2.0]),
                       gold_a=np.array([1.0, 1.0, 0.0, 0.0]), gold_b=np.array([0.0, 0.0, 1.0, 1.0]),
                       a_is_chosen=np.array([True, True, True, False]),
                       length_a=np.array([1.0, 2.0, 3.0, 4.0]), length_b=np.array([5.0, 6.0, 7.0, 8.0]))
  # gold: a, a, b, b better; reward prefers a, b, b, a -> 2/4. labels: a, a, a, b chosen -> 1, 0, 0, 0 -> 1/4.
  assert m["acc_gold"] == pytest.approx(0.5)
  assert m["acc_label"] == pytest.approx(0.25)
  # Spearman over all 8 responses, ratio_a then ratio_b against length_a then length_b. Ratio ranks (ties
  # averaged): a -> 5.5, 3.5, 7, 2; b -> 3.5, 5.5, 8, 1; length ranks 1..8: Pearson of the two rank vectors.
  ranks = np.array([5.5, 3.5, 7.0, 2.0, 3.5, 5.5, 8.0, 1.0])
  assert m["length_corr"] == pytest.approx(np.corrcoef(ranks, np.arange(1.0, 9.0))[0, 1], abs=1e-12)
  # An outlier ratio separates Spearman from Pearson, and a's lengths must pair with a's ratios: ratio ranks
  # (1, 2, 3, 8, 4, 5, 6, 7) against lengths 1..8 -> rho = 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 20 / 504.
  m = dr.ratio_metrics(ratio_a=np.array([0.0, 1.0, 2.0, 100.0]), ratio_b=np.array([3.0, 4.0, 5.0, 6.0]),
                       gold_a=np.zeros(4), gold_b=np.ones(4), a_is_chosen=np.zeros(4, bool),
                       length_a=np.array([1.0, 2.0, 3.0, 4.0]), length_b=np.array([5.0, 6.0, 7.0, 8.0]))
  assert m["length_corr"] == pytest.approx(1 - 6 * 20 / 504, abs=1e-12)


def test_pearson_matches_numpy_and_is_nan_below_three_points():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=7), rng.normal(size=7)
  assert stats.pearson(x, y, min_size=3) == pytest.approx(np.corrcoef(x, y)[0, 1])
  assert np.isnan(stats.pearson([1.0, 2.0], [2.0, 1.0], min_size=3))
  assert np.isnan(stats.pearson([1.0, 1.0, 1.0], [2.0, 1.0, 0.0], min_size=3))


def test_sequence_logps_match_an_unpadded_forward():
  world = World(WorldConfig(seed=0))
  tok = world.tokenizer
  config = ModelConfig(vocab_size=tok.vocab_size, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2,
                       head_dim=8, mlp_dim=32, max_position_embeddings=64)
  model = random_model(config, seed=1, scale=0.5)
  records = world.preference_records(5, "test")
  prompts = [f"<better> {r.prompt}" if i % 2 else r.prompt for i, r in enumerate(records)]
  responses = [r.chosen for r in records]
  got = dr_stage.text_logps(model, tok, prompts, responses, batch_size=2)
  for i, (p, r) in enumerate(zip(prompts, responses)):
    p_ids, r_ids = tok.encode(p), tok.encode(r) + [tok.eos_id]
    ids = np.asarray([p_ids + r_ids], np.int32)
    logp = jax.nn.log_softmax(np.asarray(model(ids), np.float64)[0], axis=-1)
    want = sum(float(logp[len(p_ids) + n - 1, t]) for n, t in enumerate(r_ids))
    assert got[i] == pytest.approx(want, rel=1e-4, abs=1e-3)


def test_config_rejects_duplicate_names_and_missing_models():
  ratio = dict(name="a", strong="stage:dpo", weak="stage:sft", strong_context="", weak_context="")
  with pytest.raises(ConfigError, match="distinct"):
    from_config(dict(ratios=(ratio, ratio)), dr_stage.DensityRatioConfig, path="config.density_ratio")
  with pytest.raises(ConfigError, match="weak"):
    from_config(dict(ratios=(dict(ratio, weak=""),)), dr_stage.DensityRatioConfig, path="config.density_ratio")
  with pytest.raises(ConfigError, match="strong_context"):
    from_config(dict(ratios=(dict(ratio, strong_context="best"),)), dr_stage.DensityRatioConfig, path="config.dr")
