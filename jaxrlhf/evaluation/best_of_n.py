"""Summaries of best-of-n curves (`jaxrlhf.sampling.best_of_n_curves`): per-selector metrics, member
standardization and the single-member average, as the "best_of_n" stage (jaxrlhf.stages.best_of_n) reports them.

Metrics of one selector s (`curve_metrics`; n_max = the pool size N):
  s/gold@1, s/gold@N, s/proxy@1, s/proxy@N   expected rewards at n = 1 and n = N;
  s/gold_gain_std, s/proxy_gain_std          gain from n = 1 to N in units of that reward's pool std (the two
                                             rewards live on different scales; the std makes gains comparable);
  s/gold_slope_std, s/proxy_slope_std        gain over the last doubling (N/2 -> N), same units;
  s/gap_std                                  proxy_gain_std - gold_gain_std (> 0: overoptimization);
  s/gold_monotone                            1 if the gold curve never decreases in n;
  s/gold_peak, s/gold_peak_kl                the gold curve's maximum over n and its KL (log n - (n-1)/n);
  s/gold_drop                                gold_peak - gold@N (>= 0; > 0: gold collapsed after the peak);
  s/length@1, s/length@N                     expected length (tokens) of the selected response at n = 1, N;
  s/constant_pools                           the fraction of prompts whose N samples all score the same under s
                                             (`constant_pool_fraction`): selection is arbitrary there, and a GRPO
                                             group of those samples has zero advantage (the sparse-reward
                                             problem that partial rewards address, e.g. Reasoning-SQL).
"""

from __future__ import annotations

import numpy as np

from jaxrlhf.sampling.best_of_n import best_of_n_curves, best_of_n_kl


def curve_metrics(curves: dict[str, np.ndarray], gold_std: float | None, proxy_std: float) -> dict[str, float]:
  """The summary metrics of one selector's curves (see the module docstring); without a "gold" curve (real
  prompts, `gold_std` None) only the proxy and length metrics. A std of 0 (a constant reward over the pool) makes
  that reward's *_std metrics (and gap_std) NaN."""
  p = np.asarray(curves["proxy"])
  ns = np.asarray(curves["n"])
  # A selector (or a gold reward) that scores every pooled sample the same has no scale: its gains in std units are
  # NaN (undefined), not the +-inf / 0/0 of a division by 0 with its RuntimeWarning.
  proxy_std = proxy_std if proxy_std > 0 else np.nan
  if gold_std is not None:
    gold_std = gold_std if gold_std > 0 else np.nan
  half = int(np.argmin(np.abs(ns - ns[-1] / 2)))
  if "gold" not in curves:
    out = {"proxy@1": p[0], "proxy@N": p[-1], "proxy_gain_std": (p[-1] - p[0]) / proxy_std,
           "proxy_slope_std": (p[-1] - p[half]) / proxy_std}
    if "length" in curves:
      out["length@1"], out["length@N"] = curves["length"][0], curves["length"][-1]
    return {k: float(v) for k, v in out.items()}
  g = np.asarray(curves["gold"])
  peak = int(np.argmax(g))
  out = {"gold@1": g[0], "gold@N": g[-1], "proxy@1": p[0], "proxy@N": p[-1],
         "gold_gain_std": (g[-1] - g[0]) / gold_std, "proxy_gain_std": (p[-1] - p[0]) / proxy_std,
         "gold_slope_std": (g[-1] - g[half]) / gold_std, "proxy_slope_std": (p[-1] - p[half]) / proxy_std,
         "gold_monotone": float(np.all(np.diff(g) >= -1e-9)),
         "gold_peak": g[peak], "gold_peak_kl": best_of_n_kl(ns[peak]), "gold_drop": g[peak] - g[-1]}
  out["gap_std"] = out["proxy_gain_std"] - out["gold_gain_std"]
  if "length" in curves:
    out["length@1"], out["length@N"] = curves["length"][0], curves["length"][-1]
  return {k: float(v) for k, v in out.items()}


def standardize_members(scores_BxNxK: np.ndarray) -> np.ndarray:
  """Each member's scores shifted and scaled to mean 0, std 1 over all B * N pooled samples (a constant member
  gets std 1); float64, same shape."""
  scores = np.asarray(scores_BxNxK, np.float64)
  if scores.ndim != 3:
    raise ValueError(f"scores_BxNxK must be (B, N, K); got shape {scores.shape}")
  std = scores.std(axis=(0, 1))
  return (scores - scores.mean(axis=(0, 1))) / np.where(std > 0, std, 1.0)


def member_average_curves(scores_BxNxK: np.ndarray, gold_BxN: np.ndarray | None, lengths_BxN: np.ndarray
                          ) -> tuple[dict[str, np.ndarray], float]:
  """(the member average of the K single-member best-of-n curves, the members' mean proxy std)."""
  per_member = [best_of_n_curves(scores_BxNxK[..., k], gold_BxN, lengths_BxN=lengths_BxN)
                for k in range(scores_BxNxK.shape[-1])]
  curves = {key: np.mean([c[key] for c in per_member], axis=0) for key in per_member[0]}
  return curves, float(np.mean([np.std(scores_BxNxK[..., k]) for k in range(scores_BxNxK.shape[-1])]))


def constant_pool_fraction(scores_BxN: np.ndarray, *, atol: float = 0.0) -> float:
  """The fraction of the B prompts whose N scores are all equal (max - min <= atol), in [0, 1].

  NaN scores ("not scorable") are ignored within a pool; a pool with fewer than two scorable samples counts as
  constant (it gives no ranking and no GRPO advantage either).
  """
  scores = np.asarray(scores_BxN, np.float64)
  if scores.ndim != 2 or scores.shape[0] == 0:
    raise ValueError(f"scores_BxN must be a non-empty (B, N) array; got shape {scores.shape}")
  finite = ~np.isnan(scores)
  # max - min over the scorable samples: 0 for one sample, -inf for none, so both count as constant.
  spread = np.where(finite, scores, -np.inf).max(axis=1) - np.where(finite, scores, np.inf).min(axis=1)
  return float(np.mean(spread <= atol))
