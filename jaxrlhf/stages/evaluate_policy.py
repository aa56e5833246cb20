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
  length/policy, length/base  response tokens before the end token (the n of the world's gold, comparable with
               its optimum L*) of the policy's and the base's samples
  proxy/policy   mean proxy reward (a reward model / ensemble after aggregation), with a reward model

Every reward source of `rewards` (`stages.reward_sources`: reward models, ensembles, text rewards such as exact
match, Python functions) scores the policy's and the base's samples: reward/<name>/policy, /base, /gain (paired per
prompt) and /win_rate (ties count half), each with its interval over the prompts it could score. On prompt files
(`prompts.source="files"`, the held-out prompts) there is no gold reward: these sources, the KL and the lengths are
the evaluation. A goal-conditioned policy (reward-augmented DPO) samples on the top-score goal prompt; the base, the
KL and the rewards see the plain prompt. Intervals are over prompts (the unit of sampling;
`jaxrlhf.evaluation.policy.confidence_interval`): with num_samples > 1, a prompt's samples are averaged first.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

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
from jaxrlhf.sampling.generate import content_lengths, generate
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import reward_sources as rewards_lib
from jaxrlhf.train import scoring

_METRIC_NAMES = {"gold": "gold/policy", "base_gold": "gold/base", "gold_gain": "gold/gain",
                 "win_rate": "gold/win_rate", "kl": "kl", "length": "length/policy", "base_length": "length/base",
                 "proxy": "proxy/policy"}


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
  rewards: tuple[rewards_lib.RewardSourceSpec, ...] = field(())
  goal_conditioned: bool = field(False)
  top_score: float = field(10.0)
  prompts: inputs_lib.PromptSpec = field(default_factory=inputs_lib.PromptSpec)
  num_prompts: int = field(256, min=1)
  max_prompt_length: int = field(256, min=1)  # Prompt files: the prompt budget in tokens (the world's are short).
  batch_size: int = field(64, min=1)
  max_new_tokens: int = field(32, min=1)
  temperature: float = field(1.0, min=1e-3)
  cache_bucket: int | None = field(None, min=0)  # decode phases (`sampling.generate`); None: the backend's rule
  tokens_per_iteration: int = field(1, min=1)  # decode steps per loop iteration (`sampling.generate`)

  def validate(self, path: str) -> None:
    for key in ("policy", "base"):
      if not getattr(self, key):
        raise ConfigError(f"{path}.{key}: required ('stage:<name>' or a HF folder; base is the KL reference)")
    labels = [r.label for r in self.rewards]
    if len(set(labels)) != len(labels):
      raise ConfigError(f"{path}.rewards: source names must be distinct (set `name`), got {labels}")
    for i, r in enumerate(self.rewards):
      if r.standardize:
        raise ConfigError(f"{path}.rewards[{i}].standardize: not available in evaluation (it needs the training "
                          "prompts' reference responses); evaluate the raw members' aggregation")
      if r.kind in rewards_lib.WORLD_KINDS:
        raise ConfigError(f"{path}.rewards[{i}].kind: {r.kind!r}: the gold reward is always reported on the world's "
                          "prompts; list the other sources here")
    if self.prompts.source != "world" and self.goal_conditioned:
      raise ConfigError(f"{path}.goal_conditioned: the goal prompt is a synthetic-world format "
                        f"({path}.prompts.source is {self.prompts.source!r})")


@dataclasses.dataclass(frozen=True)
class PolicyEvaluation:
  """Estimates (keys of `metrics`: gold, kl, length, base_length, win_rate, base_gold, gold_gain and proxy when given)
  and the per-prompt values they came from (`per_prompt`, arrays (B,))."""
  metrics: dict[str, Estimate]
  per_prompt: dict[str, np.ndarray]

  def summary(self) -> dict[str, float]:
    """Flat {name: mean, name_lower: ..., name_upper: ...} for metric writers."""
    out = {}
    for name, e in self.metrics.items():
      out.update({name: e.mean, f"{name}_lower": e.lower, f"{name}_upper": e.upper})
    return out


def evaluate_policy(policy, reference, prompt_ids_BxP, prompt_mask_BxP, *, gold_fn: Scorer | None, rng: Any,
                    max_new_tokens: int, proxy_fn: Scorer | None = None, aggregation: str | None = None,
                    rewards: Callable[[dict], dict[str, Any]] | None = None, prompt_index_B: Any = None,
                    lam: float = 1.0, base=None, num_samples: int = 1, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, eos_ids: Sequence[int] = (),
                    pad_id: int = 0, ci: str = "normal", level: float = 0.95, num_resamples: int = 2000,
                    mesh=None, reference_prompt_ids_BxP=None, reference_prompt_mask_BxP=None,
                    cache_bucket: int | None = None, tokens_per_iteration: int = 1) -> PolicyEvaluation:
  """Evaluates a policy against the gold reward, a proxy, the reference (KL) and a base policy (win rate).

  Args:
    policy: the CausalLM to evaluate.
    reference: the CausalLM the KL is measured against (e.g. the SFT policy RL started from).
    prompt_ids_BxP, prompt_mask_BxP: left-padded prompts (B prompts; intervals are over them).
    gold_fn: scorer for the gold reward, e.g. `jaxrlhf.sampling.gold_scorer(world)`, or None (no gold reward).
    rng: PRNG key; the policy uses fold_in(rng, 0), the base policy fold_in(rng, 1).
    max_new_tokens: response budget.
    proxy_fn, aggregation, lam: optional proxy scorer ((R,) or (R, K) reduced by `aggregation`).
    rewards: optional rollout -> {name: (R,) rewards, NaN where not scorable} (`reward_sources.jit_scores`),
      applied to the policy's and the base's samples; rollout rows carry `prompt_index` = `prompt_index_B`
      repeated (default arange(B)).
    base: the policy to compare win rates against (default: `reference`).
    num_samples: samples per prompt (averaged per prompt before the interval).
    temperature, top_k, top_p, eos_ids, pad_id, mesh, cache_bucket, tokens_per_iteration: sampling settings for
      both policies (see `generate`).
    ci, level, num_resamples: confidence intervals ("normal" or "bootstrap").
    reference_prompt_ids_BxP, reference_prompt_mask_BxP: the same B prompts as the reference, the base policy and
      the gold / proxy rewards see them (default: the policy's prompts). A goal-conditioned policy (reward-augmented
      DPO) is sampled on its goal prompt while the KL, the base samples and the rewards use the plain prompt.

  Returns:
    PolicyEvaluation: gold, base_gold, gold_gain, win_rate (with gold_fn), kl, length, base_length, proxy (with
    proxy_fn), and per reward name n: n (policy), n/base, n/gain, n/win_rate (prompts where the policy's and the base's
    samples could both be scored; a prompt's samples are averaged over those that could).
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
                  eos_ids=eos_ids, pad_id=pad_id, num_samples=S, mesh=mesh, cache_bucket=cache_bucket,
                  tokens_per_iteration=tokens_per_iteration)
  ids_R, mask_R = jnp.repeat(ref_ids_BxP, S, axis=0), jnp.repeat(ref_mask_BxP, S, axis=0)

  gen = generate(policy, prompt_ids_BxP, prompt_mask_BxP, rng=jax.random.fold_in(rng, 0), **sampling)
  base_gen = generate(base, ref_ids_BxP, ref_mask_BxP, rng=jax.random.fold_in(rng, 1), **sampling)
  ref_logps = scoring.jit_response_logps(reference, ids_R, mask_R, gen.tokens, gen.mask)

  def per_prompt(x) -> np.ndarray:
    return np.asarray(x, np.float64).reshape(B, S).mean(axis=1)

  def per_prompt_scored(x) -> np.ndarray:  # The mean over a prompt's scorable samples (NaN if none).
    x = np.asarray(x, np.float64).reshape(B, S)
    n = np.sum(~np.isnan(x), axis=1)
    return np.where(n > 0, np.nansum(x, axis=1) / np.maximum(n, 1), np.nan)

  kl = np.asarray(jnp.sum((gen.logps - ref_logps) * gen.mask, axis=1), np.float64)
  values = {}
  if gold_fn is not None:
    gold = np.asarray(gold_fn(ids_R, mask_R, gen.tokens, gen.mask), np.float64)
    base_gold = np.asarray(gold_fn(ids_R, mask_R, base_gen.tokens, base_gen.mask), np.float64)
    if gold.shape != (B * S,):
      raise ValueError(f"gold_fn must return (R,) = ({B * S},) rewards, got {gold.shape}")
    values["gold"] = per_prompt(gold)
  values.update(kl=per_prompt(kl), length=per_prompt(content_lengths(gen.tokens, gen.mask, eos_ids)),
                base_length=per_prompt(content_lengths(base_gen.tokens, base_gen.mask, eos_ids)))
  if gold_fn is not None:
    values.update(win_rate=per_prompt(win_credit(gold, base_gold)), base_gold=per_prompt(base_gold),
                  gold_gain=per_prompt(gold - base_gold))
  if proxy_fn is not None:
    values["proxy"] = per_prompt(reduce_scores(proxy_fn(ids_R, mask_R, gen.tokens, gen.mask), aggregation, lam))
  if rewards is not None:
    index_R = np.repeat(np.arange(B) if prompt_index_B is None else np.asarray(prompt_index_B), S).astype(np.int32)
    scored = {}
    for name, tokens, mask in (("policy", gen.tokens, gen.mask), ("base", base_gen.tokens, base_gen.mask)):
      rollout = dict(prompt_ids=ids_R, prompt_mask=mask_R, tokens=tokens, mask=mask, prompt_index=index_R)
      scored[name] = {k: np.asarray(v, np.float64) for k, v in rewards(rollout).items()}
    for label, r in scored["policy"].items():
      r_base = scored["base"][label]
      both = ~np.isnan(r) & ~np.isnan(r_base)
      values[label] = per_prompt_scored(r)
      values[f"{label}/base"] = per_prompt_scored(r_base)
      values[f"{label}/gain"] = per_prompt_scored(np.where(both, r - r_base, np.nan))
      values[f"{label}/win_rate"] = per_prompt_scored(np.where(both, win_credit(np.nan_to_num(r),
                                                                                 np.nan_to_num(r_base)), np.nan))
  metrics = {k: confidence_interval(v[~np.isnan(v)], ci, level, num_resamples) for k, v in values.items()
             if (~np.isnan(v)).any()}
  return PolicyEvaluation(metrics=metrics, per_prompt=values)


def run(cfg: EvaluatePolicyConfig, workdir: str, inputs: dict) -> dict:
  """Samples the policy and the base on held-out prompts (the world's test split, or the held-out prompts of
  prompt files) in batches; writes `workdir/results.json` and returns {"metrics"}."""
  policy_path = common.resolve_path(cfg.policy, inputs)
  source = inputs_lib.open_prompts(cfg.prompts, policy_path)
  world, tok = source.world, source.tokenizer
  policy, policy_config = from_pretrained(policy_path)
  base, _ = from_pretrained(common.resolve_path(cfg.base, inputs))
  proxy_fn = None
  if cfg.reward_model:
    rm_dir = common.resolve_path(cfg.reward_model, inputs, key="rm_dir")
    artifacts.check_reward_tokenizer(rm_dir, tok, "reward_model")
    proxy_fn = reward_model_scorer(artifacts.load_reward_model_any(rm_dir))
  if world is not None:
    texts = world.prompts(cfg.num_prompts, "test")
    table = rewards_lib.PromptTable(texts)
  else:
    held_out = source.split("eval", cfg.num_prompts, cfg.max_prompt_length)
    table = held_out.table
  rewards, sources = None, []
  errors = rewards_lib.CallbackErrors()
  if cfg.rewards:
    models = {f"rm_{i}": artifacts.load_reward_model_any(artifacts.check_reward_tokenizer(
        common.resolve_path(spec.reward_model, inputs, "rm_dir"), tok, f"rewards[{i}].reward_model"))
              for i, spec in enumerate(cfg.rewards) if spec.kind in rewards_lib.RM_KINDS}
    # FLR sources default to the base (the policy's starting model).
    models.update(rewards_lib.follow_up_models(cfg.rewards, inputs, common.resolve_path(cfg.base, inputs), tok))
    sources = rewards_lib.build_sources(cfg.rewards, world=world, tokenizer=tok, table=table, errors=errors)
    scores = rewards_lib.jit_scores(sources, models)
    rewards = lambda rollout: {f"reward/{k}": v for k, v in scores(rollout).items()}  # noqa: E731
  eos_ids = inputs_lib.end_ids(tok, policy_config, world)
  per_prompt: dict[str, list[np.ndarray]] = {}
  num = len(table.prompts)
  for start in range(0, num, cfg.batch_size):
    if world is not None:
      chunk = texts[start:start + cfg.batch_size]
      plain_rows = [tokenize_lib.encode_prompt(tok, t) for t in chunk]
      policy_rows = ([tokenize_lib.encode_prompt(tok, inference_prompt(t, cfg.top_score)) for t in chunk]
                     if cfg.goal_conditioned else plain_rows)
      ids, mask = padding.pad_prompts(policy_rows, tok.pad_id)
      ref_ids, ref_mask = padding.pad_prompts(plain_rows, tok.pad_id)
    else:
      ids = ref_ids = held_out.ids[start:start + cfg.batch_size]
      mask = ref_mask = held_out.mask[start:start + cfg.batch_size]
    try:
      result = evaluate_policy(
          policy, base, ids, mask, gold_fn=gold_scorer(world) if world is not None else None, proxy_fn=proxy_fn,
          aggregation=cfg.aggregation, lam=cfg.lam, rewards=rewards,
          prompt_index_B=np.arange(start, start + ids.shape[0]), rng=jax.random.PRNGKey(cfg.seed + start),
          max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, eos_ids=eos_ids, pad_id=tok.pad_id,
          reference_prompt_ids_BxP=ref_ids, reference_prompt_mask_BxP=ref_mask, cache_bucket=cfg.cache_bucket,
          tokens_per_iteration=cfg.tokens_per_iteration)
    except Exception as e:  # pylint: disable=broad-except
      errors.reraise_from(e)  # A reward function's own error, not XLA's report of it.
      raise
    for name, values in result.per_prompt.items():
      per_prompt.setdefault(name, []).append(values)
  metrics = {}
  for name, chunks in per_prompt.items():
    values = np.concatenate(chunks)
    values = values[~np.isnan(values)]
    if not values.size:
      continue
    estimate = confidence_interval(values)
    policy_reward = name.startswith("reward/") and name.count("/") == 1  # reward/<source> of the policy
    key = f"{name}/policy" if policy_reward else _METRIC_NAMES.get(name, name)
    metrics.update({key: estimate.mean, f"{key}_lower": estimate.lower, f"{key}_upper": estimate.upper})
    if policy_reward:
      metrics[f"{name}/prompts"] = float(values.size)  # How many prompts the source could score.
  # Text rewards' outcome counts over the policy's and the base's samples (e.g. SQL queries the time limit stopped).
  outcomes = rewards_lib.report_outcomes({"eval (policy and base samples)": sources})
  extra = {} if world is not None else {"prompts": held_out.report}  # the files' skip and truncation counts
  if outcomes:
    extra["reward_outcomes"] = outcomes
  common.write_results(workdir, metrics, **extra)
  print("[evaluate_policy] " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "_lower" not in k
                                         and "_upper" not in k), flush=True)
  return {"metrics": metrics}
