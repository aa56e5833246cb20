"""The "evaluate_policy" stage: a policy's samples on held-out synthetic-world prompts, scored by the gold
reward (and optionally a proxy reward model), against a base policy that is also the KL reference.

`evaluate_policy` (this module; usable from a notebook on one batch of prompts) samples from the policy and
from a base policy on the same prompts; the stage runs it over the prompts in batches and reports each metric
as a mean over prompts with a 95% confidence interval (`<name>_lower` / `<name>_upper`):

  gold/policy  mean gold reward r*(x, y) of the policy's samples
  gold/base    mean gold reward of the base policy's samples; gold/gain = policy - base (paired per prompt)
  gold/win_rate  P(r*(policy sample) > r*(base sample)) on the same prompt, ties counting 1/2
  kl           sampled KL(policy || reference) = E_y~policy [sum_t log q(y_t | ...) - log pi_ref(y_t | ...)],
               where q is the distribution the samples were drawn from (temperature / top-k / top-p applied)
               and pi_ref the reference at temperature 1: an unbiased Monte-Carlo estimate (nats per response)
  length/policy  response tokens (end token included)
  proxy/policy   mean proxy reward (a reward model / ensemble after aggregation), with a reward model

A goal-conditioned policy (reward-augmented DPO) samples on the top-score goal prompt; the base, the KL and the
rewards see the plain prompt. Intervals are over prompts (the unit of sampling;
`jaxrlhf.evaluation.policy.confidence_interval`): with num_samples > 1, a prompt's samples are averaged first.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.data import padding
from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.data.transforms import inference_prompt
from jaxrlhf.evaluation.policy import Estimate, confidence_interval, win_credit
from jaxrlhf.losses.aggregation import AGGREGATION_METHODS
from jaxrlhf.models import from_pretrained
from jaxrlhf.sampling.best_of_n import Scorer, gold_scorer, reduce_scores, reward_model_scorer
from jaxrlhf.sampling.generate import generate
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.train import scoring

_METRIC_NAMES = {"gold": "gold/policy", "base_gold": "gold/base", "gold_gain": "gold/gain",
                 "win_rate": "gold/win_rate", "kl": "kl", "length": "length/policy", "proxy": "proxy/policy"}


@dataclasses.dataclass(frozen=True)
class EvaluatePolicyConfig:
  """policy / base: "stage:<name>" or a HF folder. goal_conditioned: sample with the top-score goal prompt
  (what a reward-augmented policy is trained for); applies to the policy only."""
  seed: int = field(0)
  policy: str = stage_ref("model_dir")
  base: str = stage_ref("model_dir")
  reward_model: str = stage_ref("rm_dir")
  aggregation: str = field("mean", choices=AGGREGATION_METHODS)
  lam: float = field(1.0)
  goal_conditioned: bool = field(False)
  top_score: float = field(10.0)
  world: dict = field(default_factory=dict)
  num_prompts: int = field(256, min=1)
  batch_size: int = field(64, min=1)
  max_new_tokens: int = field(32, min=1)
  temperature: float = field(1.0, min=1e-3)

  def validate(self, path: str) -> None:
    for key in ("policy", "base"):
      if not getattr(self, key):
        raise ConfigError(f"{path}.{key}: required ('stage:<name>' or a HF folder; base is the KL reference)")
    inputs_lib.check_world(self.world, path)


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
  ref_logps = scoring.jit_response_logps(reference, ids_R, mask_R, gen.tokens, gen.mask)

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


def run(cfg: EvaluatePolicyConfig, workdir: str, inputs: dict) -> dict:
  """Samples the policy and the base on the world's test prompts in batches; writes `workdir/results.json` and
  returns {"metrics"}."""
  world = inputs_lib.make_world(cfg.world)
  tok = world.tokenizer
  policy, _ = from_pretrained(common.resolve_path(cfg.policy, inputs))
  base, _ = from_pretrained(common.resolve_path(cfg.base, inputs))
  proxy_fn = None
  if cfg.reward_model:
    rm_dir = common.resolve_path(cfg.reward_model, inputs, key="rm_dir")
    proxy_fn = reward_model_scorer(artifacts.load_reward_model(rm_dir))
  texts = world.prompts(cfg.num_prompts, "test")
  per_prompt: dict[str, list[np.ndarray]] = {}
  for start in range(0, len(texts), cfg.batch_size):
    chunk = texts[start:start + cfg.batch_size]
    plain_rows = [tokenize_lib.encode_prompt(tok, t) for t in chunk]
    policy_rows = ([tokenize_lib.encode_prompt(tok, inference_prompt(t, cfg.top_score)) for t in chunk]
                   if cfg.goal_conditioned else plain_rows)
    ids, mask = padding.pad_prompts(policy_rows, tok.pad_id)
    ref_ids, ref_mask = padding.pad_prompts(plain_rows, tok.pad_id)
    result = evaluate_policy(
        policy, base, ids, mask, gold_fn=gold_scorer(world), proxy_fn=proxy_fn, aggregation=cfg.aggregation,
        lam=cfg.lam, rng=jax.random.PRNGKey(cfg.seed + start), max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, eos_ids=(tok.eos_id,), pad_id=tok.pad_id,
        reference_prompt_ids_BxP=ref_ids, reference_prompt_mask_BxP=ref_mask)
    for name, values in result.per_prompt.items():
      per_prompt.setdefault(name, []).append(values)
  metrics = {}
  for name, chunks in per_prompt.items():
    estimate = confidence_interval(np.concatenate(chunks))
    key = _METRIC_NAMES[name]
    metrics.update({key: estimate.mean, f"{key}_lower": estimate.lower, f"{key}_upper": estimate.upper})
  common.write_results(workdir, metrics)
  print("[evaluate_policy] " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "_lower" not in k
                                         and "_upper" not in k), flush=True)
  return {"metrics": metrics}
