"""Best-of-N sampling and its unbiased evaluation curves.

`best_of_n` samples n completions per prompt with `generate`, scores them with any scorer (a RewardModel, a
RewardEnsemble reduced by an aggregation method, or the synthetic world's gold reward) and keeps the argmax.

`unbiased_best_of_n` evaluates best-of-n for every n <= N from ONE pool of N samples per prompt, without
resampling (Nakano et al. 2021, WebGPT appendix; Coste et al. 2023, "Reward Model Ensembles Help Mitigate
Overoptimization", eq. 4): with the pool sorted by proxy reward ascending, x_(1) <= ... <= x_(N),

  E[r_gold(argmax_proxy of a uniformly random n-subset)] = sum_{i=n}^{N} C(i-1, n-1) / C(N, n) * gold_(i),

since x_(i) is the subset's proxy-argmax exactly when it is drawn together with n-1 of the i-1 lower samples.
The weights are computed from log-factorials in float64. Proxy ties are resolved as uniformly random
tie-breaking: tied samples share their group's mean gold reward (the expectation over tie-breaks).

The KL of best-of-n to the sampling policy is reported analytically as log n - (n-1)/n (Stiennon et al. 2020;
an upper bound, Beirami et al. 2024) next to `best_of_n_kl_estimate`, the exact KL of best-of-n (with
replacement) on the pool's empirical proxy-reward distribution, which is smaller for finite pools and with ties.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.losses.aggregation import aggregate
from jaxrlhf.sampling.generate import Generation, generate

Array = jax.Array
# scorer(prompt_ids_BxP, prompt_mask_BxP, response_ids_BxN, response_mask_BxN) -> rewards (B,) or (B, K)
Scorer = Callable[[Array, Array, Array, Array], Array]


# ------------------------------------------------------------------------------------------------ scorers
def _concat(prompt_ids_BxP, prompt_mask_BxP, response_ids_BxN, response_mask_BxN):
  """[left-padded prompt | right-padded response]: one contiguous run of real tokens per row."""
  ids = jnp.concatenate([prompt_ids_BxP, response_ids_BxN], axis=1).astype(jnp.int32)
  mask = jnp.concatenate([prompt_mask_BxP, response_mask_BxN], axis=1).astype(jnp.int32)
  return jnp.where(mask > 0, ids, 0), mask  # pad ids may be out of range (e.g. -1)


def reward_model_scorer(rm: nnx.Module) -> Scorer:
  """A jitted scorer from a RewardModel ((B,) or (B, K) for multi-head) or a RewardEnsemble ((B, K)), read at the
  last real token of prompt + response (the response's end token included, as in training)."""
  graphdef, state = nnx.split(rm)

  @jax.jit
  def score(state, prompt_ids, prompt_mask, response_ids, response_mask):
    ids, mask = _concat(prompt_ids, prompt_mask, response_ids, response_mask)
    return nnx.merge(graphdef, state)(ids, mask)

  return lambda *arrays: score(state, *(jnp.asarray(a) for a in arrays))


def gold_scorer(world: Any) -> Scorer:
  """The synthetic world's jittable gold reward r*(x, y) as a scorer (B,). `world` is a
  jaxrlhf.data.synthetic.World (anything with a JAX `gold_reward(prompt_ids, prompt_mask, ids, mask)`)."""
  score = jax.jit(world.gold_reward)
  return lambda *arrays: score(*(jnp.asarray(a) for a in arrays))


WORLD_REWARDS = ("gold", "quality", "relevance", "coherence", "repetition", "length")  # gold + the world's components


def world_scorer(world: Any, reward: str = "gold") -> Scorer:
  """A jitted scorer (B,) of the synthetic world: "gold" (r*, as `gold_scorer`) or one of its gold components
  ("quality", "relevance", "coherence", "repetition", "length"; their sum is r*): the separate rewards that value
  functions are trained on and composed at decoding time in Value Augmented Sampling."""
  if reward not in WORLD_REWARDS:
    raise ValueError(f"reward must be one of {WORLD_REWARDS}, got {reward!r}")
  if reward == "gold":
    return gold_scorer(world)
  column = WORLD_REWARDS.index(reward) - 1
  score = jax.jit(lambda *arrays: world.gold_components(*arrays)[:, column])
  return lambda *arrays: score(*(jnp.asarray(a) for a in arrays))


def reduce_scores(scores: Array, aggregation: str | None = None, lam: float = 1.0) -> Array:
  """(R,) rewards from a scorer's (R,) or (R, K) output; (R, K) needs an aggregation method
  (jaxrlhf.losses.aggregation: mean, median, min, mean_minus_std, mean_minus_var)."""
  scores = jnp.asarray(scores, jnp.float32)
  if scores.ndim == 1:
    return scores
  if scores.ndim != 2:
    raise ValueError(f"scores must be (R,) or (R, K); got shape {scores.shape}")
  if aggregation is None:
    raise ValueError(f"the scorer returned (R, K) = {scores.shape} rewards; pass aggregation=<method> to reduce them")
  return aggregate(scores, aggregation, lam=lam)


# -------------------------------------------------------------------------------------------- best-of-N
@flax.struct.dataclass
class BestOfN:
  """Best-of-n samples.

  Attributes:
    generation: all B * n samples (prompt-major rows, see Generation).
    scores: float32 (B, n) the (aggregated) proxy scores used for selection.
    raw_scores: the scorer's output reshaped to (B, n) or (B, n, K).
    best_index: int32 (B,) index in [0, n) of the selected sample (first on ties).
    tokens, mask: (B, N) the selected responses; lengths (B,); best_scores (B,) their scores.
  """
  generation: Generation
  scores: Array
  raw_scores: Array
  best_index: Array
  tokens: Array
  mask: Array
  lengths: Array
  best_scores: Array


def select_best(scores_BxN: Array) -> Array:
  """int32 (B,) argmax over each row's n scores (the first of tied maxima)."""
  scores_BxN = jnp.asarray(scores_BxN)
  if scores_BxN.ndim != 2:
    raise ValueError(f"scores_BxN must be (B, n); got shape {scores_BxN.shape}")
  return jnp.argmax(scores_BxN, axis=1).astype(jnp.int32)


def best_of_n(model, prompt_ids_BxP, prompt_mask_BxP, *, n: int, scorer: Scorer, rng: Any, max_new_tokens: int,
              aggregation: str | None = None, lam: float = 1.0, **generate_kwargs: Any) -> BestOfN:
  """Samples n completions per prompt, scores them and keeps the highest-scoring one.

  Args:
    model: the sampling policy (CausalLM).
    prompt_ids_BxP, prompt_mask_BxP: left-padded prompts.
    n: samples per prompt.
    scorer: `scorer(prompt_ids, prompt_mask, response_ids, response_mask)` -> (R,) or (R, K) rewards, e.g.
      `reward_model_scorer(rm)`, `reward_model_scorer(ensemble)`, `gold_scorer(world)`.
    rng: PRNG key (or (B,) per-prompt keys), see `generate`.
    max_new_tokens: response budget N.
    aggregation, lam: reduce (R, K) ensemble rewards (jaxrlhf.losses.aggregation.aggregate).
    **generate_kwargs: temperature, top_k, top_p, eos_ids, pad_id, mesh.

  Returns:
    BestOfN.
  """
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n must be an int >= 1, got {n!r}")
  prompt_ids_BxP, prompt_mask_BxP = jnp.asarray(prompt_ids_BxP), jnp.asarray(prompt_mask_BxP)
  B = prompt_ids_BxP.shape[0]
  gen = generate(model, prompt_ids_BxP, prompt_mask_BxP, max_new_tokens=max_new_tokens, rng=rng, num_samples=n,
                 **generate_kwargs)
  raw = jnp.asarray(scorer(jnp.repeat(prompt_ids_BxP, n, axis=0), jnp.repeat(prompt_mask_BxP, n, axis=0),
                           gen.tokens, gen.mask))
  if raw.shape[0] != B * n:
    raise ValueError(f"scorer returned shape {raw.shape}; expected a leading axis of B * n = {B * n}")
  scores_BxN = reduce_scores(raw, aggregation, lam).reshape(B, n)
  best_B = select_best(scores_BxN)
  rows_B = jnp.arange(B) * n + best_B
  return BestOfN(generation=gen, scores=scores_BxN, raw_scores=raw.reshape(B, n, *raw.shape[1:]), best_index=best_B,
                 tokens=gen.tokens[rows_B], mask=gen.mask[rows_B], lengths=gen.lengths[rows_B],
                 best_scores=jnp.take_along_axis(scores_BxN, best_B[:, None], axis=1)[:, 0])


# ------------------------------------------------------------------------------- unbiased best-of-n curves
def _pools(proxy, gold=None) -> tuple[np.ndarray, np.ndarray | None]:
  proxy = np.asarray(proxy, np.float64)
  if proxy.ndim == 1:
    proxy = proxy[None]
  if proxy.ndim != 2 or proxy.shape[1] < 1:
    raise ValueError(f"proxy must be (N,) or (B, N) pools of samples; got shape {np.shape(proxy)}")
  if not np.isfinite(proxy).all():
    raise ValueError("proxy must be finite")
  if gold is None:
    return proxy, None
  gold = np.asarray(gold, np.float64).reshape(proxy.shape) if np.size(gold) == proxy.size else None
  if gold is None:
    raise ValueError(f"gold must have the shape of proxy {proxy.shape}")
  if not np.isfinite(gold).all():
    raise ValueError("gold must be finite")
  return proxy, gold


def _check_ns(ns, pool_size: int) -> np.ndarray:
  ns = default_ns(pool_size) if ns is None else np.asarray(ns, np.int64).reshape(-1)
  if ns.size == 0 or ns.min() < 1 or ns.max() > pool_size:
    raise ValueError(f"ns must be integers in [1, N={pool_size}]; got {ns.tolist()}")
  return ns


def default_ns(pool_size: int) -> np.ndarray:
  """Every n up to 64, then powers of two, and N itself."""
  ns = set(range(1, min(pool_size, 64) + 1)) | {2 ** k for k in range(int(np.log2(pool_size)) + 1)} | {pool_size}
  return np.asarray(sorted(ns), np.int64)


def best_of_n_weights(pool_size: int, ns: Sequence[int]) -> np.ndarray:
  """float64 (len(ns), N): weight of the i-th lowest-proxy sample (i = 1..N) in best-of-n,
  C(i-1, n-1) / C(N, n) (0 for i < n), from log-factorials so that large N does not overflow. Rows sum to 1."""
  N = pool_size
  ns = _check_ns(ns, N)
  log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, N + 1, dtype=np.float64)))])

  def log_binom(a, b):
    return log_fact[a] - log_fact[b] - log_fact[a - b]

  i = np.arange(1, N + 1)[None, :]
  n = ns[:, None]
  valid = i >= n
  safe_n = np.where(valid, n, 1)
  log_w = log_binom(np.where(valid, i - 1, 0), np.where(valid, safe_n - 1, 0)) - log_binom(N, safe_n)
  return np.where(valid, np.exp(np.where(valid, log_w, 0.0)), 0.0)


def _tie_groups(sorted_proxy: np.ndarray) -> np.ndarray:
  """Start index of each run of equal values in a sorted vector."""
  return np.flatnonzero(np.concatenate([[True], sorted_proxy[1:] != sorted_proxy[:-1]]))


def unbiased_best_of_n(proxy, gold=None, ns: Sequence[int] | None = None) -> np.ndarray:
  """Expected gold reward of best-of-n under `proxy`, for every n in `ns`, from one pool per prompt.

  Args:
    proxy: (N,) or (B, N) proxy scores of N samples per prompt (the selection criterion).
    gold: same shape, the reward to report (defaults to proxy: the expected proxy reward of best-of-n).
    ns: values of n in [1, N] (default: `default_ns(N)`).

  Returns:
    float64 (len(ns),) for a single pool, (B, len(ns)) for B pools. n = 1 gives the pool mean; with gold ==
    proxy the curve is non-decreasing in n.
  """
  single = np.ndim(proxy) == 1
  proxy, gold = _pools(proxy, proxy if gold is None else gold)
  B, N = proxy.shape
  weights = best_of_n_weights(N, ns)
  ordered_gold = np.empty_like(gold)
  for b in range(B):
    order = np.argsort(proxy[b], kind="stable")
    sorted_proxy, sorted_gold = proxy[b, order], gold[b, order]
    starts = _tie_groups(sorted_proxy)
    sizes = np.diff(np.concatenate([starts, [N]]))
    ordered_gold[b] = np.repeat(np.add.reduceat(sorted_gold, starts) / sizes, sizes)  # tie -> group mean
  out = ordered_gold @ weights.T
  return out[0] if single else out


def best_of_n_kl(ns) -> np.ndarray:
  """Analytic KL(best-of-n || base) = log n - (n - 1) / n nats (an upper bound; exact for continuous rewards)."""
  ns = np.asarray(ns, np.float64)
  if (ns < 1).any():
    raise ValueError(f"ns must be >= 1, got {ns}")
  return np.log(ns) - (ns - 1.0) / ns


def best_of_n_kl_estimate(proxy, ns: Sequence[int] | None = None) -> np.ndarray:
  """KL of best-of-n from the pool: the exact KL(best-of-n || base) when the base distribution is the pool's
  empirical distribution over proxy values (n draws with replacement, ties as one atom).

  With groups g of equal proxy sorted ascending, m_g members and cumulative fractions F_g = sum_{h<=g} m_h / N,
  P_g(n) = F_g^n - F_{g-1}^n and KL = sum_g P_g log(P_g N / m_g). It tends to log n - (n-1)/n as N grows with
  distinct rewards and falls below it when n approaches N or rewards tie.

  Returns float64 (len(ns),) for an (N,) pool, (B, len(ns)) for (B, N) pools.
  """
  single = np.ndim(proxy) == 1
  proxy, _ = _pools(proxy)
  B, N = proxy.shape
  ns = _check_ns(ns, N).astype(np.float64)
  out = np.empty((B, ns.size))
  for b in range(B):
    sorted_proxy = np.sort(proxy[b])
    starts = _tie_groups(sorted_proxy)
    sizes = np.diff(np.concatenate([starts, [N]])).astype(np.float64)
    upper = np.cumsum(sizes) / N
    lower = upper - sizes / N
    p = upper[None, :] ** ns[:, None] - lower[None, :] ** ns[:, None]
    ratio = np.where(p > 0, p * N / sizes[None, :], 1.0)
    out[b] = np.sum(np.where(p > 0, p * np.log(ratio), 0.0), axis=1)
  return out[0] if single else out


def best_of_n_curves(proxy_BxN, gold_BxN, ns: Sequence[int] | None = None, lengths_BxN=None
                     ) -> dict[str, np.ndarray]:
  """Best-of-n curves averaged over prompts, from one pool of N samples per prompt.

  Returns a dict of float64 (len(ns),) arrays: "n", "gold" (expected gold reward of best-of-n under the proxy),
  "proxy" (its expected proxy reward), "gold_oracle" (best-of-n selected by gold itself: the ceiling),
  "kl" (log n - (n-1)/n) and "kl_estimate" (best_of_n_kl_estimate averaged over prompts); with `lengths_BxN`
  (response lengths in tokens) also "length": the expected length of the response best-of-n selects by proxy
  (the same unbiased estimator with length in place of gold: does selection push past the gold optimum?).
  Without a gold reward (`gold_BxN` None: real prompts) the "gold" and "gold_oracle" curves are left out.
  """
  proxy, gold = _pools(proxy_BxN, gold_BxN)
  ns = _check_ns(ns, proxy.shape[1])
  out = {"n": ns.astype(np.float64)}
  if gold is not None:
    out["gold"] = unbiased_best_of_n(proxy, gold, ns).mean(0)
  out["proxy"] = unbiased_best_of_n(proxy, proxy, ns).mean(0)
  if gold is not None:
    out["gold_oracle"] = unbiased_best_of_n(gold, gold, ns).mean(0)
  out.update(kl=best_of_n_kl(ns), kl_estimate=best_of_n_kl_estimate(proxy, ns).mean(0))
  if lengths_BxN is not None:
    if np.size(lengths_BxN) != proxy.size:
      raise ValueError(f"lengths_BxN must have the shape of proxy {proxy.shape}; got {np.shape(lengths_BxN)}")
    lengths = np.asarray(lengths_BxN, np.float64).reshape(proxy.shape)
    out["length"] = unbiased_best_of_n(proxy, lengths, ns).mean(0)
  return out
