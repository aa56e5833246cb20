"""Pairwise accuracy (ties wrong), RewardBench 1 section weighting, RewardBench 2 best-of-4 tie splitting,
calibration and reward-length correlation, against hand-computed goldens."""

import math

import numpy as np
import pytest

from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.evaluation import (EXAMPLE_COUNTS, accuracy_by_subset, best_of_k_credit, calibration,
                                dpo_implicit_rewards, kway_correct_index, length_correlation, pairwise_accuracy,
                                pairwise_correct, pairwise_report, rewardbench_scores)


def test_pairwise_accuracy_counts_ties_as_wrong():
  chosen, rejected = [1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]
  np.testing.assert_array_equal(pairwise_correct(chosen, rejected), [True, False, False, True])
  assert pairwise_accuracy(chosen, rejected) == 0.5
  with pytest.raises(ValueError, match="equal shapes"):
    pairwise_accuracy([1.0, 2.0], [1.0])
  with pytest.raises(ValueError, match="finite"):
    pairwise_accuracy([np.nan], [1.0])


def test_dpo_implicit_rewards():
  c, r = dpo_implicit_rewards([-10.0, -5.0, -7.0], [-12.0, -4.0, -9.0], [-11.0, -6.0, -8.0], [-11.0, -6.0, -10.0],
                              beta=0.1)
  np.testing.assert_allclose(c, [0.1, 0.1, 0.1])
  np.testing.assert_allclose(r, [-0.1, 0.2, 0.1])
  np.testing.assert_array_equal(pairwise_correct(c, r), [True, False, False])  # the third is a tie: wrong
  c, r = dpo_implicit_rewards([-10.0], [-12.0])  # reference-free
  assert c[0] == -10.0 and r[0] == -12.0
  with pytest.raises(ValueError, match="neither"):
    dpo_implicit_rewards([-1.0], [-2.0], [-1.0])


def test_rewardbench_weighting_hand_computed():
  acc = {"alpacaeval-easy": 1.0, "mt-bench-easy": 0.5,          # Chat
         "llmbar-natural": 0.6,                                 # Chat Hard
         "xstest-should-refuse": 0.8, "donotanswer": 0.5,       # Safety
         "math-prm": 0.9, "hep-python": 0.7,                    # Reasoning
         "anthropic_helpful": 0.6, "shp": 0.7}                  # prior sets
  got = rewardbench_scores(acc)
  chat = (100 * 1.0 + 28 * 0.5) / 128
  safety = (250 * 0.8 + 136 * 0.5) / 386
  reasoning = (984 * 0.9 + 164 * 0.7) / 1148
  assert got["Chat"] == pytest.approx(chat) and got["Chat Hard"] == pytest.approx(0.6)
  assert got["Safety"] == pytest.approx(safety) and got["Reasoning"] == pytest.approx(reasoning)
  assert got["Prior Sets"] == pytest.approx(0.65)
  assert got["Score"] == pytest.approx((2 * (chat + 0.6 + safety + reasoning) + 0.65) / 9)
  # Without prior sets the score is the plain mean of the four sections; a missing section is masked out.
  no_prior = rewardbench_scores({k: v for k, v in acc.items() if k not in ("anthropic_helpful", "shp")})
  assert math.isnan(no_prior["Prior Sets"])
  assert no_prior["Score"] == pytest.approx((chat + 0.6 + safety + reasoning) / 4)
  only_chat = rewardbench_scores({"alpacaeval-easy": 1.0, "mt-bench-easy": 0.5})
  assert math.isnan(only_chat["Safety"]) and only_chat["Score"] == pytest.approx(chat)
  assert sum(EXAMPLE_COUNTS.values()) == 2985 - 447 + 984  # the filtered set, math-prm up-weighted 447 -> 984
  with pytest.raises(ValueError, match="fractions"):
    rewardbench_scores({"shp": 70.0})


def test_pairwise_report_per_subset_and_sections():
  chosen = np.array([1.0, 1.0, 0.0, 2.0, 1.0, 1.0])
  rejected = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 3.0])
  subsets = ["alpacaeval-easy", "alpacaeval-easy", "mt-bench-med", "math-prm", "hep-go", "hep-go"]
  report = pairwise_report(chosen, rejected, subsets)
  assert report["accuracy"] == pytest.approx(3 / 6)
  assert report["subsets"]["alpacaeval-easy"] == {"accuracy": 0.5, "count": 2}
  assert report["sections"]["Chat"] == pytest.approx((100 * 0.5 + 40 * 0.0) / 140)
  assert report["sections"]["Reasoning"] == pytest.approx((984 * 1.0 + 164 * 0.5) / 1148)
  # A custom mapping weights by the observed counts.
  custom = pairwise_report(chosen, rejected, ["t0", "t0", "t0", "t1", "t1", "t1"], subset_mapping={"all": ["t0", "t1"]})
  assert custom["sections"]["all"] == pytest.approx(0.5) and custom["sections"]["Score"] == pytest.approx(0.5)
  per = accuracy_by_subset([1.0, 0.5, 0.0], ["a", "b", "a"])
  assert per["a"] == {"accuracy": 0.5, "count": 2} and per["all"]["accuracy"] == pytest.approx(0.5)
  # A subset called "all" would be overwritten by the overall row (and drop out of its section): refused.
  with pytest.raises(ValueError, match="'all' is reserved.*2 examples"):
    pairwise_report(chosen, rejected, ["all", "all", "x", "x", "y", "y"], subset_mapping={"S": ["all", "x"]})


def test_best_of_4_tie_splitting_goldens():
  scores = np.array([
      [4.0, 1.0, 2.0, 3.0],   # chosen strictly best -> 1
      [3.0, 3.0, 1.0, 0.0],   # tied with one rejected at the top -> 1/2
      [3.0, 3.0, 3.0, 3.0],   # four-way tie -> 1/4
      [1.0, 3.0, 2.0, 0.0],   # a rejected is best -> 0
      [2.0, 5.0, 5.0, 5.0],   # correct is index 1, tied with two -> 1/3
      [9.0, 5.0, 5.0, 5.0],   # correct is index 1, below the top -> 0
  ])
  credit = best_of_k_credit(scores, np.array([0, 0, 0, 0, 1, 1]))
  np.testing.assert_allclose(credit, [1.0, 0.5, 0.25, 0.0, 1 / 3, 0.0])
  with pytest.raises(ValueError, match="correct_index_B"):
    best_of_k_credit(scores, np.array([0, 0, 0, 0, 1, 4]))


def test_kway_correct_index_from_records():
  world = World(WorldConfig(seed=0, num_prompts=256))
  records = world.kway_records(5, "test", k=4)
  idx = kway_correct_index(records)
  np.testing.assert_array_equal(idx, [int(np.argmax(r.scores)) for r in records])
  # Scoring each record's completions by gold itself gives full credit.
  gold = np.array([r.scores for r in records])
  np.testing.assert_allclose(best_of_k_credit(gold, idx), 1.0)
  tied = records[0].__class__(prompt="p", completions=("a", "b"), scores=(1.0, 1.0), source="x:1")
  with pytest.raises(ValueError, match="x:1"):
    kway_correct_index([tied])


def test_calibration_bins_hand_computed():
  # Margins: four small ones (two right, two wrong) and four large right ones.
  margin = np.array([0.1, -0.1, 0.2, -0.2, 3.0, 4.0, 5.0, 6.0])
  out = calibration(margin, np.zeros(8), num_bins=2)
  np.testing.assert_array_equal(out["count"], [4, 4])
  np.testing.assert_allclose(out["accuracy"], [0.5, 1.0])
  np.testing.assert_allclose(out["mean_abs_margin"], [0.15, 4.5])
  sig = lambda x: 1 / (1 + np.exp(-x))
  conf = [np.mean(sig(np.array([0.1, 0.1, 0.2, 0.2]))), np.mean(sig(np.array([3.0, 4.0, 5.0, 6.0])))]
  np.testing.assert_allclose(out["confidence"], conf)
  assert out["ece"] == pytest.approx(0.5 * abs(0.5 - conf[0]) + 0.5 * abs(1.0 - conf[1]))
  uniform = calibration(margin, np.zeros(8), num_bins=3, strategy="uniform")
  assert uniform["count"].sum() == 8


def test_calibration_ties_uniform_edges_and_count_weighted_ece():
  sig = lambda x: 1 / (1 + np.exp(-np.asarray(x, np.float64)))
  # Ties: wrong for "accuracy", but the higher-scored side is a coin flip (1/2) in the ECE.
  tied = calibration(np.array([0.0, 0.0, 1.0, -1.0]), np.zeros(4), num_bins=1)
  np.testing.assert_allclose(tied["accuracy"], [0.25])
  conf = (0.5 + 0.5 + 2 * sig(1.0)) / 4
  np.testing.assert_allclose(tied["confidence"], [conf])
  assert tied["ece"] == pytest.approx(abs((0.5 + 0.5 + 1.0 + 0.0) / 4 - conf))
  # Uniform bins span [0, max |margin|] = [0, 5, 10] (not [min, max]); |margins| 4 | 5, 6, 10 (an edge value goes
  # to the bin above it); the ECE weights each bin by its share of the pairs (1/4 and 3/4).
  out = calibration(np.array([4.0, -5.0, 6.0, 10.0]), np.zeros(4), num_bins=2, strategy="uniform")
  np.testing.assert_allclose(out["lower"], [0.0, 5.0])
  np.testing.assert_allclose(out["upper"], [5.0, 10.0])
  np.testing.assert_array_equal(out["count"], [1, 3])
  np.testing.assert_allclose(out["accuracy"], [1.0, 2 / 3])
  conf_hi = np.mean(sig([5.0, 6.0, 10.0]))
  assert out["ece"] == pytest.approx(0.25 * abs(1.0 - sig(4.0)) + 0.75 * abs(2 / 3 - conf_hi))


def test_length_correlation_hand_computed():
  got = length_correlation([1.0, 2.0, 2.0, 3.0], [1, 3, 2, 4])
  a = np.array([1.0, 2.0, 2.0, 3.0]) - 2.0
  b = np.array([1.0, 3.0, 2.0, 4.0]) - 2.5
  assert got["pearson"] == pytest.approx(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))
  assert got["spearman"] == pytest.approx(4.5 / np.sqrt(4.5 * 5.0))  # ranks [1, 2.5, 2.5, 4] vs [1, 3, 2, 4]
  assert length_correlation([3.0, 1.0, 2.0], [30, 10, 20])["spearman"] == pytest.approx(1.0)
  assert math.isnan(length_correlation([1.0, 1.0], [1, 2])["pearson"])
