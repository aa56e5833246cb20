"""Pure metrics and statistics of reward models and policies: RewardBench-style pairwise accuracy, best-of-k,
calibration, length bias, confidence intervals, best-of-n curve summaries, correlations, and the measurements
behind the paper reproductions (preference strength, token credit, density ratios, unlearning) with their plots.

Nothing here runs a model or imports the trainer: the stages (jaxrlhf.stages) produce scores and log-probs, and
these functions turn them into numbers, so a notebook can recompute any of them from saved arrays.
"""

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
from jaxrlhf.evaluation.policy import Estimate, confidence_interval, win_credit
from jaxrlhf.evaluation.stats import auroc, pearson, rankdata, spearman

__all__ = [
    "EXAMPLE_COUNTS", "Estimate", "PRIOR_SETS", "SUBSET_MAPPING", "accuracy_by_subset", "auroc", "best_of_k_credit",
    "calibration", "confidence_interval", "dpo_implicit_rewards", "kway_correct_index", "length_correlation",
    "pairwise_accuracy", "pairwise_correct", "pairwise_report", "pearson", "plot_best_of_n", "plot_reward_vs_kl",
    "rankdata", "rewardbench_scores", "section_scores", "spearman", "win_credit",
]
