"""Policy evaluation where the true reward is known (the synthetic gold-reward world), with confidence intervals.

`evaluate_policy` samples from the policy and from a base policy on the same prompts and reports, each as a
mean over prompts with a 95% confidence interval:

  gold        mean gold reward r*(x, y) of the policy's samples
  proxy       mean proxy reward (a reward model / ensemble after aggregation), if a proxy scorer is given
  kl          sampled KL(policy || reference) = E_y~policy [sum_t log q(y_t | ...) - log pi_ref(y_t | ...)], where q
              is the distribution the samples were actually drawn from (temperature / top-k / top-p applied) and
              pi_ref the reference at temperature 1: an unbiased Monte-Carlo estimate of the sequence-level KL
  length      response tokens (end token included)
  win_rate    P(r*(policy sample) > r*(base sample)) on the same prompt, ties counting 1/2
  base_gold   mean gold reward of the base policy's samples; gold_gain = gold - base_gold (paired per prompt)

Intervals are over prompts (the unit of sampling): with num_samples > 1, the samples of a prompt are averaged
first. "normal": mean +- z * s / sqrt(n) with the sample standard deviation (ddof 1) and the normal quantile z;
"bootstrap": the percentile interval of the mean over `num_resamples` resamples of the prompts (seeded).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.sampling.best_of_n import Scorer, reduce_scores
from jaxrlhf.sampling.generate import generate, response_logps

CI_METHODS = ("normal", "bootstrap")


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A mean with its confidence interval [lower, upper] at `level`, over n units (prompts)."""
  mean: float
  lower: float
  upper: float
  n: int
  level: float = 0.95

  def __str__(self) -> str:
    return f"{self.mean:.4g} [{self.lower:.4g}, {self.upper:.4g}]"


def confidence_interval(values, method: str = "normal", level: float = 0.95, num_resamples: int = 2000,
                        seed: int = 0) -> Estimate:
  """Mean of `values` (one per unit) with a `level` confidence interval (see the module docstring).

  A single unit gives an interval of (-inf, inf) under "normal" and [mean, mean] under "bootstrap".
  """
  values = np.asarray(values, np.float64).reshape(-1)
  if values.size == 0 or not np.isfinite(values).all():
    raise ValueError(f"values must be a non-empty array of finite numbers, got {values.size} values")
  if method not in CI_METHODS:
    raise ValueError(f"method must be one of {CI_METHODS}, got {method!r}")
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  n, mean = values.size, float(values.mean())
  if method == "normal":
    if n == 1:
      return Estimate(mean, -math.inf, math.inf, n, level)
    half = statistics.NormalDist().inv_cdf(0.5 + level / 2) * float(values.std(ddof=1)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, level)
  if num_resamples < 1:
    raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
  rng = np.random.default_rng(seed)
  means = values[rng.integers(0, n, size=(num_resamples, n))].mean(axis=1)
  lower, upper = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return Estimate(mean, float(lower), float(upper), n, level)


def win_credit(a, b) -> np.ndarray:
  """1 where a > b, 1/2 where a == b, 0 where a < b (elementwise)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


@dataclasses.dataclass(frozen=True)
class PolicyEvaluation:
  """Estimates (keys of `metrics`: gold, kl, length, win_rate, base_gold, gold_gain and proxy when given) and the
  per-prompt values they came from (`per_prompt`, arrays (B,))."""
  metrics: dict[str, Estimate]
  per_prompt: dict[str, np.ndarray]

  def summary(self) -> dict[str, float]:
    """Flat {name: mean, name_lower: ..., name_upper: ...} for metric writers."""
    out = {}
    for name, e in self.metrics.items():
      out.update({name: e.mean, f"{name}_lower": e.lower, f"{name}_upper": e.upper})
    return out


def evaluate_policy(policy, reference, prompt_ids_BxP, prompt_mask_BxP, *, gold_fn: Scorer, rng: Any,
                    max_new_tokens: int, proxy_fn: Scorer | None = None, aggregation: str | None = None,
                    lam: float = 1.0, base=None, num_samples: int = 1, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, eos_ids: Sequence[int] = (),
                    pad_id: int = 0, ci: str = "normal", level: float = 0.95, num_resamples: int = 2000,
                    mesh=None, reference_prompt_ids_BxP=None, reference_prompt_mask_BxP=None
                    ) -> PolicyEvaluation:
  """Evaluates a policy against the gold reward, a proxy, the reference (KL) and a base policy (win rate).

  Args:
    policy: the CausalLM to evaluate.
    reference: the CausalLM the KL is measured against (e.g. the SFT policy RL started from).
    prompt_ids_BxP, prompt_mask_BxP: left-padded prompts (B prompts; intervals are over them).
    gold_fn: scorer for the gold reward, e.g. `jaxrlhf.sampling.gold_scorer(world)`.
    rng: PRNG key; the policy uses fold_in(rng, 0), the base policy fold_in(rng, 1).
    max_new_tokens: response budget.
    proxy_fn, aggregation, lam: optional proxy scorer ((R,) or (R, K) reduced by `aggregation`).
    base: the policy to compare win rates against (default: `reference`).
    num_samples: samples per prompt (averaged per prompt before the interval).
    temperature, top_k, top_p, eos_ids, pad_id, mesh: sampling settings for both policies (see `generate`).
    ci, level, num_resamples: confidence intervals ("normal" or "bootstrap").
    reference_prompt_ids_BxP, reference_prompt_mask_BxP: the same B prompts as the reference, the base policy and
      the gold / proxy rewards see them (default: the policy's prompts). A goal-conditioned policy (reward-augmented
      DPO) is sampled on its goal prompt while the KL, the base samples and the rewards use the plain prompt.

  Returns:
    PolicyEvaluation.
  """
  prompt_ids_BxP, prompt_mask_BxP = jnp.asarray(prompt_ids_BxP), jnp.asarray(prompt_mask_BxP)
  if (reference_prompt_ids_BxP is None) != (reference_prompt_mask_BxP is None):
    raise ValueError("give both reference_prompt_ids_BxP and reference_prompt_mask_BxP, or neither")
  if reference_prompt_ids_BxP is None:
    ref_ids_BxP, ref_mask_BxP = prompt_ids_BxP, prompt_mask_BxP
  else:
    ref_ids_BxP, ref_mask_BxP = jnp.asarray(reference_prompt_ids_BxP), jnp.asarray(reference_prompt_mask_BxP)
    if ref_ids_BxP.shape[0] != prompt_ids_BxP.shape[0]:
      raise ValueError(f"reference prompts: {ref_ids_BxP.shape[0]} rows for {prompt_ids_BxP.shape[0]} prompts")
  B, S = prompt_ids_BxP.shape[0], num_samples
  base = reference if base is None else base
  sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                  eos_ids=eos_ids, pad_id=pad_id, num_samples=S, mesh=mesh)
  ids_R, mask_R = jnp.repeat(ref_ids_BxP, S, axis=0), jnp.repeat(ref_mask_BxP, S, axis=0)

  gen = generate(policy, prompt_ids_BxP, prompt_mask_BxP, rng=jax.random.fold_in(rng, 0), **sampling)
  base_gen = generate(base, ref_ids_BxP, ref_mask_BxP, rng=jax.random.fold_in(rng, 1), **sampling)
  ref_logps = response_logps(reference, ids_R, mask_R, gen.tokens, gen.mask)

  def per_prompt(x) -> np.ndarray:
    return np.asarray(x, np.float64).reshape(B, S).mean(axis=1)

  gold = np.asarray(gold_fn(ids_R, mask_R, gen.tokens, gen.mask), np.float64)
  base_gold = np.asarray(gold_fn(ids_R, mask_R, base_gen.tokens, base_gen.mask), np.float64)
  if gold.shape != (B * S,):
    raise ValueError(f"gold_fn must return (R,) = ({B * S},) rewards, got {gold.shape}")
  kl = np.asarray(jnp.sum((gen.logps - ref_logps) * gen.mask, axis=1), np.float64)
  values = {
      "gold": per_prompt(gold),
      "kl": per_prompt(kl),
      "length": per_prompt(gen.lengths),
      "win_rate": per_prompt(win_credit(gold, base_gold)),
      "base_gold": per_prompt(base_gold),
      "gold_gain": per_prompt(gold - base_gold),
  }
  if proxy_fn is not None:
    values["proxy"] = per_prompt(reduce_scores(proxy_fn(ids_R, mask_R, gen.tokens, gen.mask), aggregation, lam))
  metrics = {k: confidence_interval(v, ci, level, num_resamples) for k, v in values.items()}
  return PolicyEvaluation(metrics=metrics, per_prompt=values)
