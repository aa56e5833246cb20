"""Unlearning under preference optimization: how far training moved the log-probability of held-out responses.

Zhang et al. 2024 ("Reward-Augmented Data Enhances Direct Preference Alignment of LLMs") argue that DPO
lowers the likelihood of every rejected response, even one the judge scored highly (a 9 that lost to a 10),
and that DPO on reward-augmented (goal-conditioned) pairs unlearns such responses less. The "logp_shift" stage
(jaxrlhf.stages.logp_shift) measures it on held-out scored pairs (x, y_w, y_l, s_w, s_l); this module holds its
metrics:

    shift(y) = log pi(y | x') - log pi_ref(y | x')        (sequence log-prob, nats; end token included)

with x' the prompt under a conditioning (`goal`): the plain prompt, or the prompt with a goal score rendered
exactly as the reward-augmented transform renders it (`jaxrlhf.data.transforms.goal_conditioned_prompt`).
Policy and reference see the same x', so a shift is what training changed, not a prompt-format effect.
Reported means (each over the pairs of its bucket):
  chosen, rejected            all held-out chosen / rejected responses;
  rejected_high               rejected responses with judge score >= high_score (the "unlearning" bucket);
  rejected_low                rejected responses with judge score <= low_score;
  chosen_high                 chosen responses with judge score >= high_score;
  n/rejected_high, n/rejected_low   bucket sizes.
Goal sensitivity (did a reward-conditioned policy learn to read its goal?), over all held-out responses:
  goal_margin/high, goal_margin/low   mean log pi(y | x, goal=top) - log pi(y | x, goal=contrast) over responses
                                      scored >= high_score / <= low_score;
  goal_margin/gap                     high - low (> 0: the top goal favors high-score responses);
  goal_margin_ref/gap                 the same gap under the reference (near 0 for a goal-blind reference).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def bucket_mean(values_N: Any, include_N: Any) -> float:
  """Mean of `values_N` over the rows where `include_N` is true; NaN for an empty bucket.

  Args:
    values_N: float (N,) values (e.g. per-response log-prob shifts, nats).
    include_N: bool (N,) bucket membership.
  """
  values_N = np.asarray(values_N, np.float64)
  include_N = np.asarray(include_N, bool)
  if values_N.ndim != 1 or include_N.shape != values_N.shape:
    raise ValueError(f"values_N and include_N must be (N,) arrays of one shape, got {values_N.shape} and "
                     f"{include_N.shape}")
  if not include_N.any():
    return math.nan
  return float(values_N[include_N].mean())


def shift_metrics(policy_chosen_N, policy_rejected_N, ref_chosen_N, ref_rejected_N, chosen_score_N,
                  rejected_score_N, *, high_score: float = 7.0, low_score: float = 4.0) -> dict[str, float]:
  """Mean log-prob shifts (policy - reference, nats) of chosen / rejected responses by judge-score bucket.

  Args:
    policy_chosen_N, policy_rejected_N: (N,) sequence log-probs of each pair's responses under the policy.
    ref_chosen_N, ref_rejected_N: (N,) the same under the reference.
    chosen_score_N, rejected_score_N: (N,) judge scores of the responses.
    high_score, low_score: bucket thresholds (>= high_score is "high", <= low_score is "low").

  Returns:
    {"chosen", "rejected", "rejected_high", "rejected_low", "chosen_high", "n/rejected_high", "n/rejected_low"}.
  """
  arrays = [np.asarray(a, np.float64) for a in (policy_chosen_N, policy_rejected_N, ref_chosen_N, ref_rejected_N,
                                                 chosen_score_N, rejected_score_N)]
  n = arrays[0].shape
  names = ("policy_chosen_N", "policy_rejected_N", "ref_chosen_N", "ref_rejected_N", "chosen_score_N",
           "rejected_score_N")
  for name, a in zip(names, arrays):
    if a.ndim != 1 or a.shape != n:
      raise ValueError(f"{name}: expected shape {n} like policy_chosen_N, got {a.shape}")
    if not np.isfinite(a).all():
      raise ValueError(f"{name}: expected finite values")
  if low_score >= high_score:
    raise ValueError(f"low_score ({low_score}) must be < high_score ({high_score})")
  pc, pr, rc, rr, sc, sr = arrays
  shift_c, shift_r = pc - rc, pr - rr
  everyone = np.ones(n, bool)
  return {
      "chosen": bucket_mean(shift_c, everyone),
      "rejected": bucket_mean(shift_r, everyone),
      "rejected_high": bucket_mean(shift_r, sr >= high_score),
      "rejected_low": bucket_mean(shift_r, sr <= low_score),
      "chosen_high": bucket_mean(shift_c, sc >= high_score),
      "n/rejected_high": float(np.sum(sr >= high_score)),
      "n/rejected_low": float(np.sum(sr <= low_score)),
  }


def goal_margin_metrics(top_logps_N, contrast_logps_N, scores_N, *, high_score: float = 7.0,
                        low_score: float = 4.0) -> dict[str, float]:
  """Goal sensitivity: mean log pi(y | top goal) - log pi(y | contrast goal) over high / low-score responses.

  Args:
    top_logps_N, contrast_logps_N: (N,) sequence log-probs of N responses under the two goal prompts.
    scores_N: (N,) the responses' judge scores.

  Returns:
    {"high", "low", "gap" = high - low}.
  """
  top, contrast, scores = (np.asarray(a, np.float64) for a in (top_logps_N, contrast_logps_N, scores_N))
  if top.ndim != 1 or contrast.shape != top.shape or scores.shape != top.shape:
    raise ValueError(f"top_logps_N, contrast_logps_N, scores_N must be (N,) of one shape, got {top.shape}, "
                     f"{contrast.shape}, {scores.shape}")
  margin = top - contrast
  high = bucket_mean(margin, scores >= high_score)
  low = bucket_mean(margin, scores <= low_score)
  return {"high": high, "low": low, "gap": high - low}
