"""A weighted sum of reward functions, with a stated rule for "not scorable" terms.

    r(row) = sum_i w_i r_i(row)

Each term is called through `call_reward_function` (so an error names the term: "weighted_sum[1]:exact_match").
A term that is NaN / None on a row ("not scorable") is handled by `nan`:
  "skip"      (default; TRL's GRPOTrainer with several reward_funcs: a nansum over the terms) the term counts 0 and
              the weights are NOT renormalized; the row is None only when every term is NaN;
  "propagate" any NaN term makes the row None.
The terms' outcome counts (`rewards.outcomes`) are the sum's, each case named "<term label>/<case>".
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from jaxrlhf.rewards.calling import call_reward_function, describe
from jaxrlhf.rewards.outcomes import CombinedOutcomes, outcomes_of

NAN_POLICIES = ("skip", "propagate")


def weighted_sum(terms: Sequence[tuple[Callable[..., Any], float]], nan: str = "skip", name: str = "weighted_sum"):
  """Reward function: sum_i w_i r_i over `terms` = [(reward function, weight), ...] (module docstring).

  Args:
    terms: at least one (function, weight) pair; each function follows the calling convention of `calling`.
    nan: "skip" | "propagate", the rule for not-scorable terms.
    name: the prefix of the terms' names in error messages.
  """
  if nan not in NAN_POLICIES:
    raise ValueError(f"weighted_sum.nan: expected one of {NAN_POLICIES}, got {nan!r}")
  terms = list(terms)
  if not terms:
    raise ValueError("weighted_sum.terms: expected at least one (function, weight) term")
  for i, term in enumerate(terms):
    if not (isinstance(term, tuple) and len(term) == 2 and callable(term[0])):
      raise ValueError(f"weighted_sum.terms[{i}]: expected a (function, weight) pair, got {term!r}")
    if isinstance(term[1], bool) or not isinstance(term[1], (int, float)) or not math.isfinite(term[1]):
      raise ValueError(f"weighted_sum.terms[{i}]: the weight must be a finite number, got {term[1]!r}")
  labels = [f"{name}[{i}]:{describe(fn).rsplit(':', 1)[-1]}" for i, (fn, _) in enumerate(terms)]

  def reward(prompts: Sequence[str], completions: Sequence[Any], **columns) -> list[float | None]:
    values_KxR = np.stack([call_reward_function(fn, prompts, completions, columns, label)
                           for (fn, _), label in zip(terms, labels)]).astype(np.float64)
    weights_K = np.asarray([w for _, w in terms], np.float64)
    missing_KxR = np.isnan(values_KxR)
    total_R = np.sum(np.where(missing_KxR, 0.0, values_KxR) * weights_K[:, None], axis=0)
    unscorable_R = missing_KxR.all(axis=0) if nan == "skip" else missing_KxR.any(axis=0)
    return [None if u else float(t) for t, u in zip(total_R, unscorable_R)]

  reward.__name__ = reward.__qualname__ = name
  counted = [(label, outcomes_of(fn)) for (fn, _), label in zip(terms, labels) if outcomes_of(fn) is not None]
  if counted:  # The terms' cases, each under its term's label (rewards.outcomes).
    reward.outcomes = CombinedOutcomes(counted)
  return reward
