"""The "best_of_n" stage: best-of-n curves of a policy on held-out synthetic-world prompts, selected by the gold
reward and by proxies (one reward model, or each aggregation of an ensemble), from ONE pool per prompt.

For `num_prompts` test prompts the policy draws a pool of `pool_size` samples each; every sample is scored by
the gold reward r* and by the reward model (members (R, K), reduced by each aggregation). The unbiased
estimator (`sampling.best_of_n_curves`) then gives, for every n <= N, the expected gold and proxy reward of
best-of-n, next to the analytic KL log n - (n-1)/n and the pool's sampled KL estimate.

Outputs (workdir): results.json {"metrics", "curves": {selector: {n, gold, proxy, gold_oracle, kl,
kl_estimate, length, proxy_std (that selector's std over the pool: a scalar)}}}, pool.npz (the samples: prompt
ids / masks, tokens / masks, gold, lengths), scores.npz (each selector's float64 (P, N) score of every pooled
sample, keyed by the selector's name) and best_of_n_<selector>.png. The metrics of each selector are
`jaxrlhf.evaluation.best_of_n.curve_metrics` (gold@1, gold@N, proxy@N, gains in pool-std units, gold_peak,
gold_drop, length@N, ...), prefixed with the selector's name.

`member_curves=True` also selects by each member alone and reports "rm_single": the member average of those
curves (the single-RM baseline of Coste et al. 2023, averaged over the K members instead of picking one).
`standardize=True` adds selectors "rmz_<aggregation>": the aggregation of the members' scores after standardizing
each member over the whole pool (Bradley-Terry rewards are defined up to a per-member shift and, after training,
differ in scale, so a raw min / std across members also measures those offsets, not only disagreement).
`pool_from="stage:<best_of_n stage>"` scores the pools that stage saved (pool.npz) instead of sampling new ones,
so several reward models are compared on exactly the same samples at the cost of one generation.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.evaluation.best_of_n import (constant_pool_fraction, curve_metrics, member_average_curves,
                                          standardize_members)
from jaxrlhf.evaluation.plots import plot_best_of_n
from jaxrlhf.losses.aggregation import AGGREGATION_METHODS, LAM_METHODS, aggregate
from jaxrlhf.models import from_pretrained
from jaxrlhf.sampling.best_of_n import best_of_n_curves, reward_model_scorer, unbiased_best_of_n
from jaxrlhf.sampling.generate import content_lengths, generate
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import reward_sources as rewards_lib


@dataclasses.dataclass(frozen=True)
class BestOfNConfig:
  """policy: "stage:<name>" or a HF folder. reward_model: "stage:<name>" or a saved RM folder (jaxrlhf or a HF
  sequence-classification folder; "" : no RM); its K members are reduced by each of `aggregations` (one selector
  each, named "rm_<aggregation>"). rewards: further reward sources (`stages.reward_sources`: text rewards, Python
  functions, other reward models), one selector each, named by the source. prompts: the world's test prompts
  (with the gold reward as a selector and as the curves' truth) or the held-out prompts of prompt files (no gold:
  the curves are each selector's own reward and the selected length)."""
  seed: int = field(0)
  policy: str = stage_ref("model_dir")
  reward_model: str = stage_ref("rm_dir")
  aggregations: tuple[str, ...] = field(("mean",))
  lam: float = field(1.0, min=0.0)
  # Further selectors at their own lambda, "<aggregation>:<lam>" (e.g. "mean_minus_var:0.5", Coste et al.'s best-of-n
  # UWO weight), named "rm_<aggregation>_lam<lam>".
  extra_aggregations: tuple[str, ...] = field(())
  # Words (single tokens) whose share among the selected response's tokens is reported per selector,
  # "<selector>/share_<word>@1" / "@N": a proxy flaw other than length (e.g. the world's labeler_bias word).
  track_words: tuple[str, ...] = field(())
  rewards: tuple[rewards_lib.RewardSourceSpec, ...] = field(())
  prompts: inputs_lib.PromptSpec = field(default_factory=inputs_lib.PromptSpec)
  num_prompts: int = field(64, min=1)
  pool_size: int = field(64, min=2)
  batch_size: int = field(8, min=1)  # Prompts per generate call (R = batch_size * pool_size rows).
  max_prompt_length: int = field(8, min=1)
  max_new_tokens: int = field(32, min=1)
  temperature: float = field(1.0, min=1e-3)
  cache_bucket: int | None = field(None, min=0)  # decode phases (`sampling.generate`); None: the backend's rule
  tokens_per_iteration: int = field(1, min=1)  # decode steps per loop iteration (`sampling.generate`)
  plots: bool = field(True)
  member_curves: bool = field(False)  # Also "rm_single": the average of the K single-member curves.
  pool_from: str = stage_ref("pool")  # "stage:<best_of_n stage>" or a pool.npz: reuse its samples.
  standardize: bool = field(False)  # Also "rmz_<aggregation>": members standardized over the pool first.

  def validate(self, path: str) -> None:
    if not self.policy:
      raise ConfigError(f"{path}.policy: required ('stage:<name>' or a HF folder)")
    bad = [a for a in self.aggregations if a not in AGGREGATION_METHODS]
    if bad or not self.aggregations:
      raise ConfigError(f"{path}.aggregations: {bad or '()'} invalid; valid choices: "
                        f"{', '.join(AGGREGATION_METHODS)}")
    if self.lam != BestOfNConfig.lam and not set(self.aggregations) & set(LAM_METHODS):
      raise ConfigError(f"{path}.lam: {self.lam!r} is not used by any of the aggregations {list(self.aggregations)} "
                        f"(only {' / '.join(LAM_METHODS)} read it); leave it at its default {BestOfNConfig.lam!r}")
    for i, spec in enumerate(self.extra_aggregations):
      try:
        parse_extra_aggregation(spec)
      except ValueError as e:
        raise ConfigError(f"{path}.extra_aggregations[{i}]: {e}") from None
    for i, r in enumerate(self.rewards):
      if r.kind in rewards_lib.WORLD_KINDS or r.standardize:
        raise ConfigError(f"{path}.rewards[{i}]: gold / process sources and standardize are not selectors here (the "
                          "world's gold is always one; `standardize` standardizes the reward model's members)")
    if not self.reward_model and not self.rewards and self.prompts.source != "world":
      raise ConfigError(f"{path}.reward_model: prompt files have no gold reward: give a reward_model or rewards")


def parse_extra_aggregation(spec: str) -> tuple[str, float, str]:
  """"<aggregation>:<lam>" -> (aggregation, lam, selector name "rm_<aggregation>_lam<lam>").

  Raises:
    ValueError: not of that form, an aggregation that does not read lam (or an unknown one), or a negative /
      non-finite lam.
  """
  method, sep, value = spec.partition(":")
  try:
    lam = float(value) if sep else float("nan")
  except ValueError:
    lam = float("nan")
  if method not in LAM_METHODS or not np.isfinite(lam) or lam < 0:
    raise ValueError(f"{spec!r} is not '<aggregation>:<lam>' with an aggregation that reads lam ({list(LAM_METHODS)}) "
                     "and a finite lam >= 0")
  return method, lam, f"rm_{method}_lam{lam:g}"


def word_shares(pools: dict, tokenizer: Any, words: Sequence[str]) -> dict[str, np.ndarray]:
  """{word: float64 (P, N) share of the word among each pooled response's tokens before the end token}.

  Raises:
    ValueError: a word that is not exactly one token of `tokenizer` (naming config.track_words[i]).
  """
  out = {}
  for i, word in enumerate(words):
    ids = tokenizer.encode(word)
    if len(ids) != 1:
      raise ValueError(f"config.track_words[{i}]: {word!r} is {len(ids)} tokens for this tokenizer; expected one")
    hits = np.sum((pools["tokens"] == ids[0]) & (pools["mask"] > 0), axis=-1)
    out[word] = hits / np.maximum(pools["lengths"], 1)
  return out


POOL_KEYS = ("prompt_ids", "prompt_mask", "tokens", "mask", "gold", "lengths")


def generate_pools(model: Any, prompts: inputs_lib.PromptSet, cfg: BestOfNConfig, eos_ids: tuple[int, ...],
                   pad_id: int, gold_fn: Any = None) -> dict[str, np.ndarray]:
  """Pools of N = pool_size samples for each of the P prompts: prompt_ids / prompt_mask (P, Lp), tokens / mask
  (P, N, T), lengths (P, N) int (response tokens before the end token) and, with `gold_fn` (the world's jittable r*),
  gold (P, N) float64."""
  ids, mask = prompts.ids, prompts.mask
  n = cfg.pool_size
  out = {k: [] for k in POOL_KEYS[2:] if k != "gold" or gold_fn is not None}
  for start in range(0, ids.shape[0], cfg.batch_size):
    p_ids, p_mask = ids[start:start + cfg.batch_size], mask[start:start + cfg.batch_size]
    gen = generate(model, p_ids, p_mask, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                   rng=jax.random.fold_in(jax.random.PRNGKey(cfg.seed), start), eos_ids=eos_ids,
                   pad_id=pad_id, num_samples=n, cache_bucket=cfg.cache_bucket,
                   tokens_per_iteration=cfg.tokens_per_iteration)
    b = p_ids.shape[0]
    if gold_fn is not None:
      rep_ids, rep_mask = np.repeat(p_ids, n, axis=0), np.repeat(p_mask, n, axis=0)
      out["gold"].append(np.asarray(gold_fn(rep_ids, rep_mask, gen.tokens, gen.mask), np.float64).reshape(b, n))
    out["lengths"].append(np.asarray(content_lengths(gen.tokens, gen.mask, eos_ids)).reshape(b, n))
    out["tokens"].append(np.asarray(gen.tokens).reshape(b, n, -1))
    out["mask"].append(np.asarray(gen.mask).reshape(b, n, -1))
  pools = {k: np.concatenate(v) for k, v in out.items()}
  pools.update(prompt_ids=np.asarray(ids), prompt_mask=np.asarray(mask))
  return pools


def _pool_rows(pools: dict[str, np.ndarray], start: int, batch_size: int) -> dict[str, np.ndarray]:
  """The rollout rows (prompt-major, b * N) of the pools' prompts [start, start + batch_size)."""
  sl = slice(start, start + batch_size)
  b, n = pools["tokens"][sl].shape[:2]
  return {"prompt_ids": np.repeat(pools["prompt_ids"][sl], n, axis=0),
          "prompt_mask": np.repeat(pools["prompt_mask"][sl], n, axis=0),
          "tokens": pools["tokens"][sl].reshape(b * n, -1), "mask": pools["mask"][sl].reshape(b * n, -1),
          "prompt_index": np.repeat(np.arange(start, start + b, dtype=np.int32), n)}


def score_pools(rm: Any, pools: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
  """float64 (P, N, K) reward-model scores of every pooled sample (K = 1 for a single model)."""
  rm_fn = reward_model_scorer(rm)
  num_prompts, n = pools["tokens"].shape[:2]
  scores = []
  for start in range(0, num_prompts, batch_size):
    rows = _pool_rows(pools, start, batch_size)
    r = np.asarray(rm_fn(rows["prompt_ids"], rows["prompt_mask"], rows["tokens"], rows["mask"]), np.float64)
    scores.append(r.reshape(r.shape[0] // n, n, -1))
  return np.concatenate(scores)


def source_scores(scores: Any, pools: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """{source label: float64 (P, N)} of every pooled sample under `scores` (`reward_sources.jit_scores`);
  ValueError naming a source that could not score some samples (a best-of-n selector must score them all)."""
  num_prompts, n = pools["tokens"].shape[:2]
  out: dict[str, list[np.ndarray]] = {}
  for start in range(0, num_prompts, batch_size):
    for label, r in scores(_pool_rows(pools, start, batch_size)).items():
      out.setdefault(label, []).append(np.asarray(r, np.float64).reshape(-1, n))
  result = {k: np.concatenate(v) for k, v in out.items()}
  for label, r in result.items():
    if np.isnan(r).any():
      raise ValueError(f"rewards ({label}): {int(np.isnan(r).sum())} of {r.size} pooled samples are not scorable "
                       "(NaN / None); a best-of-n selector must score every sample")
  return result


def _prompt_tokens(ids_PxL: np.ndarray, mask_PxL: np.ndarray) -> list[tuple[int, ...]]:
  """Each prompt's tokens without its padding (so pools drawn at another padded width still compare equal)."""
  return [tuple(int(t) for t in row[m > 0]) for row, m in zip(np.asarray(ids_PxL), np.asarray(mask_PxL))]


def load_pools(path: str, cfg: BestOfNConfig, held_out: Any) -> dict[str, np.ndarray]:
  """The pools saved by another best_of_n stage, checked against this stage: ValueError unless they match
  num_prompts and pool_size and were drawn on this stage's held-out prompts (`held_out.ids` / `held_out.mask`,
  (P, L) left-padded; compared without padding, row by row). Pools drawn on other prompts of the same count would
  otherwise be scored (reward sources with references, gold) against the wrong prompts' rows, silently."""
  with np.load(path) as f:
    pools = {k: f[k] for k in POOL_KEYS if k in f}
  if pools["tokens"].shape[:2] != (cfg.num_prompts, cfg.pool_size):
    raise ValueError(f"pool_from: {path!r} holds pools of shape {pools['tokens'].shape[:2]}; this stage expects "
                     f"(num_prompts, pool_size) = ({cfg.num_prompts}, {cfg.pool_size})")
  if "prompt_ids" not in pools or "prompt_mask" not in pools:
    raise ValueError(f"pool_from: {path!r} has no prompt_ids / prompt_mask, so it cannot be checked against this "
                     "stage's held-out prompts; draw the pool again")
  saved = _prompt_tokens(pools["prompt_ids"], pools["prompt_mask"])
  current = _prompt_tokens(held_out.ids, held_out.mask)
  if len(saved) != len(current):
    raise ValueError(f"pool_from: {path!r} holds {len(saved)} prompts; this stage has {len(current)} held-out prompts")
  differ = [i for i, (a, b) in enumerate(zip(saved, current)) if a != b]
  if differ:
    i = differ[0]
    raise ValueError(f"pool_from: {path!r} was drawn on other prompts than this stage's held-out prompts: "
                     f"{len(differ)} of {len(current)} prompts differ (first: prompt {i}, token ids "
                     f"{list(saved[i])[:12]} in the pool vs {list(current[i])[:12]} held out); use the prompts / "
                     "num_prompts / max_prompt_length of the stage that drew the pool")
  return pools


def run(cfg: BestOfNConfig, workdir: str, inputs: dict) -> dict:
  """Samples (or reuses) the pools, scores them, writes results.json, pool.npz and the plots; returns
  {"metrics", "results", "pool"}."""
  policy_path = common.resolve_path(cfg.policy, inputs)
  source = inputs_lib.open_prompts(cfg.prompts, policy_path)
  world, tok = source.world, source.tokenizer
  if world is not None:  # The world's test prompts, as `PromptSet` rows.
    held_out = source.split("eval", cfg.num_prompts, cfg.max_prompt_length, world_split="test")
  else:
    held_out = source.split("eval", cfg.num_prompts, cfg.max_prompt_length)
  if cfg.pool_from:
    pools = load_pools(common.resolve_path(cfg.pool_from, inputs, "pool"), cfg, held_out)
  else:
    policy, policy_config = from_pretrained(policy_path)
    pools = generate_pools(policy, held_out, cfg, inputs_lib.end_ids(tok, policy_config, world), tok.pad_id,
                           jax.jit(world.gold_reward) if world is not None else None)
  rm = None
  if cfg.reward_model:
    # Heads on one frozen backbone (the reward_heads stage) score with one backbone pass instead of K.
    rm_dir = common.resolve_path(cfg.reward_model, inputs, "rm_dir")
    artifacts.check_reward_tokenizer(rm_dir, tok, "reward_model")
    rm = artifacts.shared_backbone_model(artifacts.load_reward_model_any(rm_dir))
  gold, lengths = pools.get("gold"), pools["lengths"]
  shares = word_shares(pools, tok, cfg.track_words)
  rm_scores = score_pools(rm, pools, cfg.batch_size) if rm is not None else None
  proxies = {"gold": gold} if gold is not None else {}
  if rm_scores is not None:
    for agg in cfg.aggregations:
      proxies[f"rm_{agg}"] = np.asarray(aggregate(jnp.asarray(rm_scores, jnp.float32), agg, cfg.lam), np.float64)
    for spec in cfg.extra_aggregations:
      agg, lam, name = parse_extra_aggregation(spec)
      proxies[name] = np.asarray(aggregate(jnp.asarray(rm_scores, jnp.float32), agg, lam), np.float64)
    if cfg.standardize:
      z_scores = jnp.asarray(standardize_members(rm_scores), jnp.float32)
      for agg in cfg.aggregations:
        proxies[f"rmz_{agg}"] = np.asarray(aggregate(z_scores, agg, cfg.lam), np.float64)
  outcomes = {}
  if cfg.rewards:
    errors = rewards_lib.CallbackErrors()
    models = {}
    for i, spec in enumerate(cfg.rewards):
      if spec.kind in rewards_lib.RM_KINDS:
        rm_dir = artifacts.check_reward_tokenizer(common.resolve_path(spec.reward_model, inputs, "rm_dir"), tok,
                                                  f"rewards[{i}].reward_model")
        models[f"rm_{i}"] = artifacts.shared_backbone_model(artifacts.load_reward_model_any(rm_dir))
    models.update(rewards_lib.follow_up_models(cfg.rewards, inputs, policy_path, tok))  # FLR: default the policy.
    sources = rewards_lib.build_sources(cfg.rewards, tokenizer=tok, table=held_out.table, errors=errors)
    try:
      proxies.update(source_scores(rewards_lib.jit_scores(sources, models), pools, cfg.batch_size))
    except Exception as e:  # pylint: disable=broad-except
      errors.reraise_from(e)
      raise
    outcomes = rewards_lib.report_outcomes({"pools": sources})  # e.g. SQL queries the time limit stopped
  os.makedirs(workdir, exist_ok=True)
  pool_path = os.path.join(workdir, "pool.npz")
  np.savez_compressed(pool_path, **{k: pools[k] for k in POOL_KEYS if k in pools})
  np.savez_compressed(os.path.join(workdir, "scores.npz"), **proxies)
  metrics = {"length/mean": float(np.mean(lengths))}
  if gold is not None:
    metrics = {"gold_std": float(np.std(gold)), **metrics}
  all_curves = {name: (best_of_n_curves(proxy, gold, lengths_BxN=lengths), float(np.std(proxy)))
                for name, proxy in proxies.items()}
  for name, proxy in proxies.items():
    for word, share_PxN in shares.items():
      curve = unbiased_best_of_n(proxy, share_PxN, np.asarray([1, proxy.shape[1]])).mean(0)
      metrics[f"{name}/share_{word}@1"], metrics[f"{name}/share_{word}@N"] = float(curve[0]), float(curve[1])
  if cfg.member_curves and rm_scores is not None:
    all_curves["rm_single"] = member_average_curves(rm_scores, gold, lengths)
  curves_out = {}
  for name, (curves, proxy_std) in all_curves.items():
    gold_std = np.std(gold) if gold is not None else None
    metrics.update({f"{name}/{k}": v for k, v in curve_metrics(curves, gold_std, proxy_std).items()})
    if name in proxies:
      metrics[f"{name}/constant_pools"] = constant_pool_fraction(proxies[name])
    curves_out[name] = {k: np.asarray(v).tolist() for k, v in curves.items()}
    curves_out[name]["proxy_std"] = proxy_std
    if cfg.plots:
      plot_best_of_n(os.path.join(workdir, f"best_of_n_{name}.png"), curves,
                     title=f"best-of-n selected by {name} (N = {cfg.pool_size}, {cfg.num_prompts} prompts)")
  results_path = common.write_results(workdir, metrics, curves=curves_out, prompts=held_out.report,
                                      **({"reward_outcomes": outcomes} if outcomes else {}))
  print("[best_of_n] " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k.endswith(
      ("/gold@N", "/gold_drop", "/length@N", "/proxy@N"))), flush=True)
  return {"metrics": metrics, "results": results_path, "pool": pool_path}
