"""Reward-model evaluation (RewardBench-style pairwise accuracy, best-of-k, calibration, length bias), policy
evaluation against a known gold reward with confidence intervals, and over-optimization plots."""

from jaxrlhf.evaluation.pairwise import (
    EXAMPLE_COUNTS,
    PRIOR_SETS,
    SUBSET_MAPPING,
    accuracy_by_subset,
    best_of_k_credit,
    calibration,
    dpo_implicit_rewards,
    kway_correct_index,
    length_correlation,
    pairwise_accuracy,
    pairwise_correct,
    pairwise_report,
    rewardbench_scores,
    section_scores,
)
from jaxrlhf.evaluation.plots import plot_best_of_n, plot_reward_vs_kl
from jaxrlhf.evaluation.policy import Estimate, PolicyEvaluation, confidence_interval, evaluate_policy, win_credit

__all__ = [
    "EXAMPLE_COUNTS", "Estimate", "PRIOR_SETS", "PolicyEvaluation", "SUBSET_MAPPING", "accuracy_by_subset",
    "best_of_k_credit", "calibration", "confidence_interval", "dpo_implicit_rewards", "evaluate_policy",
    "kway_correct_index", "length_correlation", "pairwise_accuracy", "pairwise_correct", "pairwise_report",
    "plot_best_of_n", "plot_reward_vs_kl", "rewardbench_scores", "section_scores", "win_credit",
]
