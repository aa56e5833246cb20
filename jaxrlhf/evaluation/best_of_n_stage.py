"""The "best_of_n" stage: best-of-n curves of a policy on held-out synthetic-world prompts, selected by the gold
reward and by proxies (one reward model, or each aggregation of an ensemble), from ONE pool per prompt.

For `num_prompts` test prompts the policy draws a pool of `pool_size` samples each; every sample is scored by
the gold reward r* and by the reward model (members (R, K), reduced by each aggregation). The unbiased
estimator (`sampling.best_of_n_curves`) then gives, for every n <= N, the expected gold and proxy reward of
best-of-n, next to the analytic KL log n - (n-1)/n and the pool's sampled KL estimate.

Outputs (workdir): results.json {"metrics", "curves": {selector: {n, gold, proxy, gold_oracle, kl,
kl_estimate, length, proxy_std (that selector's std over the pool: a scalar)}}}, pool.npz (the samples: prompt
ids / masks, tokens / masks, gold, lengths) and best_of_n_<selector>.png. Metrics per selector s (n_max = pool_size):
  s/gold@1, s/gold@N, s/proxy@1, s/proxy@N   expected rewards at n = 1 and n = N;
  s/gold_gain_std, s/proxy_gain_std          gain from n = 1 to N in units of that reward's pool std (the two
                                             rewards live on different scales; the std makes gains comparable);
  s/gold_slope_std, s/proxy_slope_std        gain over the last doubling (N/2 -> N), same units;
  s/gap_std                                  proxy_gain_std - gold_gain_std (> 0: overoptimization);
  s/gold_monotone                            1 if the gold curve never decreases in n;
  s/gold_peak, s/gold_peak_kl                the gold curve's maximum over n and its KL (log n - (n-1)/n);
  s/gold_drop                                gold_peak - gold@N (>= 0; > 0: gold collapsed after the peak);
  s/length@1, s/length@N                     expected length (tokens) of the selected response at n = 1, N.

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
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.config import ConfigError, field
from jaxrlhf.losses.aggregation import aggregate
from jaxrlhf.sampling.best_of_n import best_of_n_curves, best_of_n_kl
from jaxrlhf.train import builders

AGGREGATIONS = ("mean", "median", "min", "mean_minus_std", "mean_minus_var")


@dataclasses.dataclass(frozen=True)
class BestOfNConfig:
  """policy: "stage:<name>" or a HF folder. reward_model: "stage:<name>" or a saved RM folder ("" : gold only);
  its K members are reduced by each of `aggregations` (one selector each, named "rm_<aggregation>")."""
  seed: int = field(0)
  policy: str = field("")
  reward_model: str = field("")
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
  pool_from: str = field("")  # "stage:<best_of_n stage>" or a pool.npz: reuse its samples.
  standardize: bool = field(False)  # Also "rmz_<aggregation>": members standardized over the pool first.

  def validate(self, path: str) -> None:
    if not self.policy:
      raise ConfigError(f"{path}.policy: required ('stage:<name>' or a HF folder)")
    for key in ("policy", "reward_model", "pool_from"):
      value = getattr(self, key)
      if value and not value.startswith(builders.STAGE_PREFIX) and not os.path.exists(value):
        raise ConfigError(f"{path}.{key}: {value!r} does not exist")
    bad = [a for a in self.aggregations if a not in AGGREGATIONS]
    if bad or not self.aggregations:
      raise ConfigError(f"{path}.aggregations: {bad or '()'} invalid; valid choices: {', '.join(AGGREGATIONS)}")
    builders.DataSpec(world=self.world).validate(path)


POOL_KEYS = ("prompt_ids", "prompt_mask", "tokens", "mask", "gold", "lengths")


def generate_pools(model: Any, world: Any, cfg: BestOfNConfig) -> dict[str, np.ndarray]:
  """Pools of N = pool_size samples for each of the num_prompts test prompts (P = num_prompts):
  prompt_ids / prompt_mask (P, Lp), tokens / mask (P, N, T), gold (P, N) float64, lengths (P, N) int."""
  from jaxrlhf.sampling.generate import generate  # pylint: disable=g-import-not-at-top
  from jaxrlhf.train.rl import encode_prompts  # pylint: disable=g-import-not-at-top
  tok = world.tokenizer
  ids, mask = encode_prompts(tok, world.prompts(cfg.num_prompts, "test"), cfg.max_prompt_length)
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
  from jaxrlhf.sampling.best_of_n import reward_model_scorer  # pylint: disable=g-import-not-at-top
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


def sample_pools(model: Any, world: Any, rm: Any, cfg: BestOfNConfig) -> tuple[np.ndarray, np.ndarray | None,
                                                                                  np.ndarray]:
  """(gold (B, N), reward-model scores (B, N, K) or None, lengths (B, N)) of pools of N samples per prompt."""
  pools = generate_pools(model, world, cfg)
  scores = score_pools(rm, pools, cfg.batch_size) if rm is not None else None
  return pools["gold"], scores, pools["lengths"]


def curve_metrics(curves: dict[str, np.ndarray], gold_std: float, proxy_std: float) -> dict[str, float]:
  """The summary metrics of one selector's curves (see the module docstring)."""
  g, p = np.asarray(curves["gold"]), np.asarray(curves["proxy"])
  ns = np.asarray(curves["n"])
  half = int(np.argmin(np.abs(ns - ns[-1] / 2)))
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


def member_average_curves(scores_BxNxK: np.ndarray, gold_BxN: np.ndarray, lengths_BxN: np.ndarray
                          ) -> tuple[dict[str, np.ndarray], float]:
  """(the member average of the K single-member best-of-n curves, the members' mean proxy std)."""
  per_member = [best_of_n_curves(scores_BxNxK[..., k], gold_BxN, lengths_BxN=lengths_BxN)
                for k in range(scores_BxNxK.shape[-1])]
  curves = {key: np.mean([c[key] for c in per_member], axis=0) for key in per_member[0]}
  return curves, float(np.mean([np.std(scores_BxNxK[..., k]) for k in range(scores_BxNxK.shape[-1])]))


def run_best_of_n(cfg: BestOfNConfig, workdir: str, inputs: dict) -> dict:
  from jaxrlhf.evaluation.plots import plot_best_of_n  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models import from_pretrained  # pylint: disable=g-import-not-at-top
  world = builders.make_world(builders.DataSpec(world=cfg.world))
  if cfg.pool_from:
    pools = load_pools(builders.resolve_path(cfg.pool_from, inputs, "pool"), cfg)
  else:
    pools = generate_pools(from_pretrained(builders.resolve_path(cfg.policy, inputs))[0], world, cfg)
  rm = builders.load_reward_model(builders.resolve_path(cfg.reward_model, inputs, "rm_dir")) if cfg.reward_model \
      else None
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
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"status": "done", "metrics": metrics, "curves": curves_out}, f, indent=2)
  print("[best_of_n] " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k.endswith(
      ("/gold@N", "/gold_drop", "/length@N"))), flush=True)
  return {"metrics": metrics, "results": os.path.join(workdir, "results.json"), "pool": pool_path}
