"""Ensemble reward aggregation over the member axis of (B, K) rewards.

Conservative ensembles against reward over-optimization: Coste et al. 2023 ("Reward Model Ensembles Help Mitigate
Overoptimization": mean, worst-case WCO = min, uncertainty-weighted UWO = mean - lambda * var) and Eisenstein et al.
2023 ("Helping or Herding?": mean, median, min, mean - lambda * std). All reduce the last axis, in float32, with
population statistics (ddof=0), except "mean_minus_var_unbiased" (ddof=1: Coste et al.'s PPO reward, torch.var;
their best-of-n code uses np.var, ddof=0), and work under jit/vmap/grad.
"""

import jax
import jax.numpy as jnp



def _members(rewards_BxK: jax.Array) -> jax.Array:
  rewards = jnp.asarray(rewards_BxK)
  if rewards.ndim < 1 or rewards.shape[-1] < 1:
    raise ValueError(f"rewards_BxK must have a non-empty member axis last, e.g. (B, K); got {rewards.shape}")
  return rewards.astype(jnp.float32)


def mean_reward(rewards_BxK: jax.Array) -> jax.Array:
  """Ensemble mean: R = (1/K) sum_k r_k (Coste et al. 2023, "mean"). (B, K) -> (B,) float32."""
  return jnp.mean(_members(rewards_BxK), axis=-1)


def median_reward(rewards_BxK: jax.Array) -> jax.Array:
  """Ensemble median over members (Eisenstein et al. 2023); even K averages the two middle values. (B, K) -> (B,)."""
  return jnp.median(_members(rewards_BxK), axis=-1)


def min_reward(rewards_BxK: jax.Array) -> jax.Array:
  """Worst-case optimization, R = min_k r_k (Coste et al. 2023, WCO). (B, K) -> (B,) float32."""
  return jnp.min(_members(rewards_BxK), axis=-1)


def mean_minus_std_reward(rewards_BxK: jax.Array, lam: float = 1.0) -> jax.Array:
  """R = mean_k r_k - lam * std_k r_k, population std (Eisenstein et al. 2023). (B, K) -> (B,) float32.

  The std gradient is made finite at zero spread (all members equal), where sqrt has an infinite derivative.
  """
  rewards = _members(rewards_BxK)
  mean = jnp.mean(rewards, axis=-1)
  var = jnp.mean(jnp.square(rewards - mean[..., None]), axis=-1)
  # Double-where: sqrt'(0) = inf would give NaN gradients for identical members.
  positive = var > 0
  std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
  return mean - lam * std


def mean_minus_var_reward(rewards_BxK: jax.Array, lam: float = 1.0) -> jax.Array:
  """Uncertainty-weighted optimization, R = mean_k r_k - lam * Var_k r_k, population variance (Coste et al. 2023,
  UWO eq. 3). (B, K) -> (B,) float32."""
  rewards = _members(rewards_BxK)
  mean = jnp.mean(rewards, axis=-1)
  return mean - lam * jnp.mean(jnp.square(rewards - mean[..., None]), axis=-1)


def mean_minus_var_unbiased_reward(rewards_BxK: jax.Array, lam: float = 1.0) -> jax.Array:
  """UWO with the unbiased variance: R = mean_k r_k - lam * sum_k (r_k - mean)^2 / (K - 1), as Coste et al.'s PPO
  reward function computes it (`torch.var`, their lambda 0.1; tlc4418/llm_optimization). (B, K) -> (B,) float32.

  Raises:
    ValueError: fewer than 2 members (the unbiased variance is undefined).
  """
  rewards = _members(rewards_BxK)
  k = rewards.shape[-1]
  if k < 2:
    raise ValueError(f"mean_minus_var_unbiased needs >= 2 members; got {k}")
  mean = jnp.mean(rewards, axis=-1)
  return mean - lam * jnp.sum(jnp.square(rewards - mean[..., None]), axis=-1) / (k - 1)


_METHODS = {
    "mean": mean_reward,
    "median": median_reward,
    "min": min_reward,
    "mean_minus_std": mean_minus_std_reward,
    "mean_minus_var": mean_minus_var_reward,
    "mean_minus_var_unbiased": mean_minus_var_unbiased_reward,
}
# The aggregations that read lam (the others ignore it).
LAM_METHODS = ("mean_minus_std", "mean_minus_var", "mean_minus_var_unbiased")
AGGREGATION_METHODS = tuple(_METHODS)


def aggregate(rewards_BxK: jax.Array, method: str, lam: float = 1.0) -> jax.Array:
  """Aggregates ensemble rewards over the last (member) axis.

  Args:
    rewards_BxK: (B, K) rewards of K members (any leading shape; members last).
    method: one of "mean", "median", "min" (worst case), "mean_minus_std", "mean_minus_var" (UWO),
      "mean_minus_var_unbiased" (UWO with the K - 1 variance).
    lam: the uncertainty penalty lambda of the two mean-minus methods (ignored by the others).

  Returns:
    (B,) float32 aggregated rewards.
  """
  if method not in _METHODS:
    raise ValueError(f"unknown aggregation method {method!r}; valid methods: {list(AGGREGATION_METHODS)}")
  if method in LAM_METHODS:
    return _METHODS[method](rewards_BxK, lam)
  return _METHODS[method](rewards_BxK)
