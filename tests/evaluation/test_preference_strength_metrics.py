"""Preference-strength metrics (jaxrlhf.evaluation.strength) against hand-computed goldens, scipy's
Mann-Whitney U, the curation transform, and the synthetic world's own labels."""

import dataclasses
import math

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from jaxrlhf.data.records import PreferenceRecord
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.data.transforms import curate_by_strength
from jaxrlhf.evaluation import strength
from jaxrlhf.stages import preference_strength as strength_stage
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble
from jaxrlhf.stages import artifacts, inputs


# ------------------------------------------------------------------------------------------------ goldens
def test_auroc_hand_golden():
  # flipped strengths {0, 2}, clean {1, 3}: (0<1, 0<3, 2<3) of 4 pairs -> 3/4.
  assert strength.auroc([0.0, 1.0, 2.0, 3.0], [1, 0, 1, 0]) == pytest.approx(0.75)
  # A tie counts 1/2: flipped {1}, clean {1, 2} -> (1/2 + 1) / 2.
  assert strength.auroc([1.0, 1.0, 2.0], [1, 0, 0]) == pytest.approx(0.75)
  assert math.isnan(strength.auroc([1.0, 2.0], [0, 0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_mann_whitney_with_ties(seed):
  rng = np.random.default_rng(seed)
  s = rng.integers(0, 6, size=200).astype(float)  # many ties
  flipped = rng.random(200) < 0.3
  u = stats.mannwhitneyu(s[~flipped], s[flipped], alternative="two-sided").statistic  # U of the clean class
  expected = u / (flipped.sum() * (~flipped).sum())  # P(clean > flipped) + 1/2 P(tie)
  assert strength.auroc(s, flipped) == pytest.approx(expected, abs=1e-12)


def test_detection_scores_hand_golden():
  s = [5.0, -1.0, 3.0, 0.0, 2.0, -2.0, 4.0, 1.0, 6.0, 7.0]
  flipped = np.zeros(10, bool)
  flipped[[1, 6, 8]] = True
  # lowest 20 % = 2 pairs: indices 5 (-2) and 1 (-1); one of them flipped; 3 flips in all.
  out = strength.detection_scores(s, flipped, 0.2)
  assert out == {"precision": 0.5, "recall": pytest.approx(1 / 3), "size": 2.0}
  # lowest 30 % adds index 3 (0.0), not flipped.
  out = strength.detection_scores(s, flipped, 0.3)
  assert out["precision"] == pytest.approx(1 / 3) and out["recall"] == pytest.approx(1 / 3)
  assert math.isnan(strength.detection_scores(s, flipped, 0.05)["precision"])  # floor(0.5) = 0 pairs


def test_lowest_bucket_is_what_curation_flips():
  rng = np.random.default_rng(0)
  s = rng.integers(-3, 3, size=37).astype(float)  # ties: the stable order must agree
  records = [PreferenceRecord(prompt=f"p{i}", chosen="a", rejected="b") for i in range(37)]
  curated, counts = curate_by_strength(records, s, flip_fraction=0.3)
  flipped_by_curation = np.asarray([c.chosen == "b" for c in curated])
  np.testing.assert_array_equal(strength.lowest_bucket(s, 0.3), flipped_by_curation)
  assert counts.flipped == strength.lowest_bucket(s, 0.3).sum() == 11


def test_bucket_table_hand_golden():
  mean = [0.4, -0.2, 0.1, 0.3, -0.5]
  std = [0.1, 0.2, 0.3, 0.4, 0.5]
  flipped = [0, 1, 0, 0, 1]
  agree = [1, 0, 1, 0, 0]
  rows = strength.bucket_table(mean, std, flipped, agree, num_buckets=2)
  # sorted: idx 4 (-0.5), 1 (-0.2), 2 (0.1) | 3 (0.3), 0 (0.4)
  assert rows[0] == pytest.approx({"bucket": 0, "count": 3, "strength_mean": (-0.5 - 0.2 + 0.1) / 3,
                                   "strength_std": (0.5 + 0.2 + 0.3) / 3, "flip_rate": 2 / 3,
                                   "gold_agreement": 1 / 3})
  assert rows[1] == pytest.approx({"bucket": 1, "count": 2, "strength_mean": 0.35, "strength_std": 0.25,
                                   "flip_rate": 0.0, "gold_agreement": 0.5})


def test_strength_metrics_hand_golden():
  mean = [-2.0, -1.0, 0.5, 1.0, 2.0, 3.0, -0.5, 4.0, 5.0, 6.0]
  std = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
  flipped = np.zeros(10, bool)
  flipped[[0, 6, 9]] = True
  agree = np.ones(10, bool)
  agree[[0, 1, 2]] = False  # these labels disagree with gold
  out = strength.strength_metrics(mean, std, flipped, agree, fractions=(0.2,), num_buckets=2)
  # Stable order by strength: 0, 1, 6, 2, 3 | 4, 5, 7, 8, 9. The lowest 20 % = pairs 0 and 1.
  # AUROC: flipped strengths {-2, -0.5, 6} below the 7 clean ones {-1, 0.5, 1, 2, 3, 4, 5}: 7 + 6 + 0 of 21.
  want = {"strength_mean": 1.8, "strength_std": 0.45, "flip_rate": 0.3, "auroc": 13 / 21,
          "lowest20/precision": 0.5, "lowest20/recall": 1 / 3, "label_gold_agreement": 0.7,
          "lowest20/gold_disagreement": 1.0,
          "bucket0/strength_mean": -0.4, "bucket0/strength_std": 0.24, "bucket0/flip_rate": 0.4,
          "bucket0/gold_agreement": 0.4,
          "bucket1/strength_mean": 4.0, "bucket1/strength_std": 0.66, "bucket1/flip_rate": 0.2,
          "bucket1/gold_agreement": 1.0}
  assert out == pytest.approx(want, abs=1e-12)


def test_strength_metrics_names_and_errors():
  rng = np.random.default_rng(1)
  mean = rng.normal(size=100)
  out = strength.strength_metrics(mean, np.abs(mean), mean < -1.0, mean > 0, (0.1, 0.25), num_buckets=4)
  for k in ("flip_rate", "auroc", "lowest10/precision", "lowest25/recall", "lowest10/gold_disagreement",
            "bucket0/strength_mean", "bucket3/flip_rate", "bucket3/gold_agreement", "label_gold_agreement"):
    assert k in out and np.isfinite(out[k]), k
  assert out["auroc"] == 1.0 and out["lowest10/precision"] == 1.0  # flips are exactly the lowest strengths
  with pytest.raises(ValueError, match="flipped_N"):
    strength.detection_scores(mean, mean[:5] > 0, 0.1)
  with pytest.raises(ValueError, match="strength_N must be finite"):
    strength.auroc([0.0, math.nan], [0, 1])
  with pytest.raises(ValueError, match="num_buckets"):
    strength.bucket_table(mean, mean, num_buckets=101)


# ------------------------------------------------------------------------------------------------ world truths
def test_world_truths_match_the_world_labels_and_gold_texts():
  world = World(WorldConfig(seed=3, flip_rate=0.3, num_prompts=256))
  records = world.preference_records(80, "train")
  flipped, agree = strength_stage.world_truths(world, records[10:] + records[:10], "train")
  pairs = world.preference_pairs(80, "train")
  order = np.r_[np.arange(10, 80), np.arange(10)]
  np.testing.assert_array_equal(flipped, pairs["flipped"][order])
  gold = np.asarray([world.gold_of_record(r) for r in records[10:] + records[:10]])
  np.testing.assert_array_equal(agree, gold[:, 0] > gold[:, 1])  # recomputed from the texts
  assert 0.15 < flipped.mean() < 0.45
  with pytest.raises(ValueError, match="source"):
    strength_stage.world_truths(world, [dataclasses.replace(records[0], source="x")], "train")


# ------------------------------------------------------------------------------------------------ scoring
@pytest.mark.parametrize("shared_prompt", ["off", "on"])
def test_member_margins_match_each_member_forward(tmp_path, shared_prompt):
  world = World(WorldConfig(seed=0, num_prompts=256))
  tok = world.tokenizer
  config = ModelConfig(vocab_size=tok.vocab_size, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2,
                       head_dim=8, mlp_dim=32, max_position_embeddings=64)
  head = HeadConfig(kind="linear")
  ens = RewardEnsemble(config, head, 3, rngs=nnx.Rngs(0))
  rm_dir = artifacts.save_reward_model(str(tmp_path / "rm"), config, head, 3, nnx.state(ens))
  records = world.preference_records(11, "train")
  data = inputs.DataSpec(batch_size=4, max_length=48, shared_prompt=shared_prompt)
  got = inputs.member_margins(artifacts.load_reward_model(rm_dir), records, tok, data)
  assert got.shape == (11, 3)
  # Independent path: one record at a time, unpadded, through the in-memory ensemble.
  for i in (0, 5, 10):
    rows = []
    for resp in (records[i].chosen, records[i].rejected):
      batch = inputs.eval_batches([dataclasses.replace(records[i], chosen=resp, rejected=resp)], tok,
                                    dataclasses.replace(data, batch_size=1), "preference")[0]
      rows.append(np.asarray(ens(batch["chosen_input_ids"], batch["chosen_attention_mask"]))[0])
    np.testing.assert_allclose(got[i], rows[0] - rows[1], rtol=1e-4, atol=1e-5)
  assert jax.numpy.all(jax.numpy.isfinite(got))
