"""The "best_of_n" stage: best-of-n curves of a policy on held-out synthetic-world prompts, selected by the gold
reward and by proxies (one reward model, or each aggregation of an ensemble), from ONE pool per prompt.

For `num_prompts` test prompts the policy draws a pool of `pool_size` samples each; every sample is scored by
the gold reward r* and by the reward model (members (R, K), reduced by each aggregation). The unbiased
estimator (`sampling.best_of_n_curves`) then gives, for every n <= N, the expected gold and proxy reward of
best-of-n, next to the analytic KL log n - (n-1)/n and the pool's sampled KL estimate.

Outputs (workdir): results.json {"metrics", "curves": {selector: {n, gold, proxy, gold_oracle, kl,
kl_estimate, length, proxy_std (that selector's std over the pool: a scalar)}}}, pool.npz (the samples: prompt
ids / masks, tokens / masks, gold, lengths) and best_of_n_<selector>.png. The metrics of each selector are
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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.data import padding
from jaxrlhf.evaluation.best_of_n import curve_metrics, member_average_curves, standardize_members
from jaxrlhf.evaluation.plots import plot_best_of_n
from jaxrlhf.losses.aggregation import AGGREGATION_METHODS, aggregate
from jaxrlhf.models import from_pretrained
from jaxrlhf.sampling.best_of_n import best_of_n_curves, reward_model_scorer
from jaxrlhf.sampling.generate import generate
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib


@dataclasses.dataclass(frozen=True)
class BestOfNConfig:
  """policy: "stage:<name>" or a HF folder. reward_model: "stage:<name>" or a saved RM folder ("" : gold only);
  its K members are reduced by each of `aggregations` (one selector each, named "rm_<aggregation>")."""
  seed: int = field(0)
  policy: str = stage_ref("model_dir")
  reward_model: str = stage_ref("rm_dir")
  aggregations: tuple[str, ...] = field(("mean",))
  lam: float = field(1.0, min=0.0)
  world: dict = field(default_factory=dict)
  num_prompts: int = field(64, min=1)
  pool_size: int = field(64, min=2)
  batch_size: int = field(8, min=1)  # Prompts per generate call (R = batch_size * pool_size rows).
  max_prompt_length: int = field(8, min=1)
  max_new_tokens: int = field(32, min=1)
  temperature: float = field(1.0, min=1e-3)
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
    inputs_lib.check_world(self.world, path)


POOL_KEYS = ("prompt_ids", "prompt_mask", "tokens", "mask", "gold", "lengths")


def generate_pools(model: Any, world: Any, cfg: BestOfNConfig) -> dict[str, np.ndarray]:
  """Pools of N = pool_size samples for each of the num_prompts test prompts (P = num_prompts):
  prompt_ids / prompt_mask (P, Lp), tokens / mask (P, N, T), gold (P, N) float64, lengths (P, N) int."""
  tok = world.tokenizer
  ids, mask = padding.encode_prompts(tok, world.prompts(cfg.num_prompts, "test"), cfg.max_prompt_length)
  n = cfg.pool_size
  gold_fn = jax.jit(world.gold_reward)
  out = {k: [] for k in POOL_KEYS[2:]}
  for start in range(0, ids.shape[0], cfg.batch_size):
    p_ids, p_mask = ids[start:start + cfg.batch_size], mask[start:start + cfg.batch_size]
    gen = generate(model, p_ids, p_mask, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                   rng=jax.random.fold_in(jax.random.PRNGKey(cfg.seed), start), eos_ids=tok.eos_id,
                   pad_id=tok.pad_id, num_samples=n)
    rep_ids, rep_mask = np.repeat(p_ids, n, axis=0), np.repeat(p_mask, n, axis=0)
    b = p_ids.shape[0]
    out["gold"].append(np.asarray(gold_fn(rep_ids, rep_mask, gen.tokens, gen.mask), np.float64).reshape(b, n))
    out["lengths"].append(np.asarray(gen.lengths).reshape(b, n))
    out["tokens"].append(np.asarray(gen.tokens).reshape(b, n, -1))
    out["mask"].append(np.asarray(gen.mask).reshape(b, n, -1))
  pools = {k: np.concatenate(v) for k, v in out.items()}
  pools.update(prompt_ids=np.asarray(ids), prompt_mask=np.asarray(mask))
  return pools


def score_pools(rm: Any, pools: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
  """float64 (P, N, K) reward-model scores of every pooled sample (K = 1 for a single model)."""
  rm_fn = reward_model_scorer(rm)
  num_prompts, n = pools["gold"].shape
  scores = []
  for start in range(0, num_prompts, batch_size):
    sl = slice(start, start + batch_size)
    b = pools["prompt_ids"][sl].shape[0]
    r = rm_fn(np.repeat(pools["prompt_ids"][sl], n, axis=0), np.repeat(pools["prompt_mask"][sl], n, axis=0),
              pools["tokens"][sl].reshape(b * n, -1), pools["mask"][sl].reshape(b * n, -1))
    scores.append(np.asarray(r, np.float64).reshape(b, n, -1))
  return np.concatenate(scores)


def load_pools(path: str, cfg: BestOfNConfig) -> dict[str, np.ndarray]:
  """The pools saved by another best_of_n stage; ValueError unless they match num_prompts and pool_size."""
  with np.load(path) as f:
    pools = {k: f[k] for k in POOL_KEYS}
  if pools["gold"].shape != (cfg.num_prompts, cfg.pool_size):
    raise ValueError(f"pool_from: {path!r} holds pools of shape {pools['gold'].shape}; this stage expects "
                     f"(num_prompts, pool_size) = ({cfg.num_prompts}, {cfg.pool_size})")
  return pools


def run(cfg: BestOfNConfig, workdir: str, inputs: dict) -> dict:
  """Samples (or reuses) the pools, scores them, writes results.json, pool.npz and the plots; returns
  {"metrics", "results", "pool"}."""
  world = inputs_lib.make_world(cfg.world)
  if cfg.pool_from:
    pools = load_pools(common.resolve_path(cfg.pool_from, inputs, "pool"), cfg)
  else:
    pools = generate_pools(from_pretrained(common.resolve_path(cfg.policy, inputs))[0], world, cfg)
  rm = None
  if cfg.reward_model:
    rm = artifacts.load_reward_model(common.resolve_path(cfg.reward_model, inputs, "rm_dir"))
  gold, lengths = pools["gold"], pools["lengths"]
  rm_scores = score_pools(rm, pools, cfg.batch_size) if rm is not None else None
  proxies = {"gold": gold}
  if rm_scores is not None:
    for agg in cfg.aggregations:
      proxies[f"rm_{agg}"] = np.asarray(aggregate(jnp.asarray(rm_scores, jnp.float32), agg, cfg.lam), np.float64)
    if cfg.standardize:
      z_scores = jnp.asarray(standardize_members(rm_scores), jnp.float32)
      for agg in cfg.aggregations:
        proxies[f"rmz_{agg}"] = np.asarray(aggregate(z_scores, agg, cfg.lam), np.float64)
  os.makedirs(workdir, exist_ok=True)
  pool_path = os.path.join(workdir, "pool.npz")
  np.savez_compressed(pool_path, **{k: pools[k] for k in POOL_KEYS})
  metrics = {"gold_std": float(np.std(gold)), "length/mean": float(np.mean(lengths))}
  all_curves = {name: (best_of_n_curves(proxy, gold, lengths_BxN=lengths), float(np.std(proxy)))
                for name, proxy in proxies.items()}
  if cfg.member_curves and rm_scores is not None:
    all_curves["rm_single"] = member_average_curves(rm_scores, gold, lengths)
  curves_out = {}
  for name, (curves, proxy_std) in all_curves.items():
    metrics.update({f"{name}/{k}": v for k, v in curve_metrics(curves, np.std(gold), proxy_std).items()})
    curves_out[name] = {k: np.asarray(v).tolist() for k, v in curves.items()}
    curves_out[name]["proxy_std"] = proxy_std
    if cfg.plots:
      plot_best_of_n(os.path.join(workdir, f"best_of_n_{name}.png"), curves,
                     title=f"best-of-n selected by {name} (N = {cfg.pool_size}, {cfg.num_prompts} prompts)")
  results_path = common.write_results(workdir, metrics, curves=curves_out)
  print("[best_of_n] " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k.endswith(
      ("/gold@N", "/gold_drop", "/length@N"))), flush=True)
  return {"metrics": metrics, "results": results_path, "pool": pool_path}
