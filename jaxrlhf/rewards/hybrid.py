"""The hybrid reward of "Beyond Monolithic Rewards": a model-based reward mixed with rule-based rewards, each rule
trusted to its own confidence.

Paper: Radha Gulhane and Sathish Reddy Indurthi (2025), "Beyond Monolithic Rewards: A Hybrid and Multi-Aspect
Reward Optimization for MLLM Alignment", arXiv:2510.05283 (ACL Findings 2026 as "Beyond Monolithic Rewards: Hybrid
Multi-Aspect Reward Optimization"). The paper combines (i) model-based rewards (a learned reward model's score) and
(ii) rule-based rewards, "domain-specific heuristics [that] provide explicit correctness signals with confidence".

What could be checked: only the abstract and the introduction were reachable offline (no official code repository was
found). The exact combination rule is therefore OURS, chosen as the simplest rule that matches that description and
reduces to both monolithic rewards: rule k has a confidence c_k in [0, 1] (how far its verdict is trusted over the
reward model), and on a row where the rules A apply (their value is not NaN / None)

    r_hybrid = (1 - sum_{k in A} c_k) r_model + sum_{k in A} c_k r_k,           sum_k c_k <= 1

so a rule with confidence 1 overrides the model where it applies, confidence 0 ignores the rule, and a row no rule
applies to keeps the model's score (the model covers what the rules cannot check). `confidence_mix` is that equation
as a pure function of arrays (numpy or jax.numpy); `stages.reward_sources` calls it inside the jitted step with the
reward-model source's score and the rules' host-computed values (a "hybrid" source: `reward_model` + options
{"rules": [{"kind", "options", "confidence"}, ...]}).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

RULE_KEYS = ("kind", "options", "confidence")


def confidence_mix(model_R: Any, rules_KxR: Any, confidence_K: Any, xp: Any = np) -> Any:
  """r_hybrid (R,) of the module docstring: (1 - sum_{k in A} c_k) r_model + sum_{k in A} c_k r_k.

  Args:
    model_R: (R,) the model-based reward (finite).
    rules_KxR: (K, R) the rules' values, NaN where rule k does not apply to row r.
    confidence_K: (K,) each rule's confidence in [0, 1] (their sum <= 1; checked by `check_rules`).
    xp: numpy or jax.numpy.

  Returns:
    (R,) float, same dtype as the inputs' promotion.
  """
  applies_KxR = ~xp.isnan(rules_KxR)
  weight_KxR = xp.where(applies_KxR, xp.asarray(confidence_K)[:, None], 0.0)
  rules_term_R = xp.sum(weight_KxR * xp.where(applies_KxR, rules_KxR, 0.0), axis=0)
  return (1.0 - xp.sum(weight_KxR, axis=0)) * model_R + rules_term_R


def check_rules(rules: Any, path: str = "options.rules") -> list[dict[str, Any]]:
  """The rules of a hybrid source as [{"kind", "options", "confidence"}] (options default {}); a ValueError naming
  `path`[i].<key> for a non-list, an unknown or missing key, a confidence outside [0, 1], or confidences summing
  over 1 (the model's share would be negative)."""
  if isinstance(rules, (str, bytes, Mapping)) or not isinstance(rules, Sequence) or not rules:
    raise ValueError(f"{path}: expected a non-empty list of {{'kind', 'options', 'confidence'}} mappings, "
                     f"got {rules!r}")
  out = []
  for i, rule in enumerate(rules):
    if not isinstance(rule, Mapping):
      raise ValueError(f"{path}[{i}]: expected a mapping with keys {RULE_KEYS}, got {rule!r}")
    unknown = sorted(set(rule) - set(RULE_KEYS))
    if unknown or "kind" not in rule or "confidence" not in rule:
      raise ValueError(f"{path}[{i}]: expected keys 'kind', 'confidence' and optionally 'options', got {sorted(rule)}")
    c = rule["confidence"]
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c <= 1.0:
      raise ValueError(f"{path}[{i}].confidence: expected a number in [0, 1], got {c!r}")
    out.append({"kind": rule["kind"], "options": dict(rule.get("options") or {}), "confidence": float(c)})
  total = math.fsum(r["confidence"] for r in out)
  if total > 1.0 + 1e-9:
    raise ValueError(f"{path}: the confidences sum to {total:g} > 1, which would give the model a negative share")
  return out
