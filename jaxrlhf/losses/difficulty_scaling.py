r"""GRPO-S: GRPO advantages scaled to task difficulty (DR-IRL's dynamic reward scaling).

Ruoxi Cheng, Haoxuan Ma, Weixin Wang, Ranjie Duan, Jiexi Liu, Xiaoshuang Jia, Simeng Qin, Xiaochun Cao, Yang Liu,
Xiaojun Jia, "Inverse Reinforcement Learning with Dynamic Reward Scaling for LLM Alignment" (DR-IRL), arXiv
2503.18991 (2025; ICLR 2026). For prompt q of category j with demonstration (reference) response o~ and a policy
response o, the paper's coefficient has two factors:

  data-level hardness (text-encoder similarity of the response to the demonstration, clause by clause):
    s_kl = cos(Phi(S^k), Phi(S~^l))            K clauses S^k of o, L clauses S~^l of o~, Phi a text encoder
    W = (1/K) sum_k max_l s_kl,   delta = 1 - W
    alpha^D = sigmoid(delta) / sigmoid(mean delta)        (the mean over the samples of category j)
  model-level responsiveness (reward gaps of the shadow reward model R_j):
    gap_i = R_j(q, o_i) - R_j(q, o~_i)
    keep_i = [(gap_i - mean gap)^2 <= tau]                 (outlier mask M)
    alpha^M = sigmoid(sum_i keep_i gap_i / sum_i keep_i) / sigmoid(mean gap)
  GRPO-S advantage (the coefficients multiply the group-normalized GRPO advantage; product, not sum):
    A_i = alpha^D * alpha^M * (r_i - mean_g r) / std_g r

What could not be checked: the paper's PDF/HTML method section was not readable here; the equations above come
from two independent write-ups of the ICLR 2026 version (paper notes quoting eqs. for W, delta, alpha^D, the mask
M with threshold tau, alpha^M, alpha = alpha^D * alpha^M and A_i^j = alpha_j(q) * normalized reward). Unchecked:
the sign convention of the reward gap (the notes write R_j(q, o) - R_j(q, o~) with o the policy response; we use
that), the value of tau, the clause splitter and encoder (the paper: CLIP's / a text encoder's cosine), and whether
the means run over a category, a batch or a group (here: a pooled axis the caller chooses).

Shapes: N = samples pooled for a mean (prompts of a table), B = completions in contiguous groups of `group_size`
(the `policy_gradient` layout), K / L = clauses, D = encoder width. Everything is float32.
"""

import jax
import jax.numpy as jnp

from jaxrlhf.losses import policy_gradient as pg

RESPONSIVENESS_POOLS = ("group", "batch")


def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def clause_similarity(clauses_NxKxD: jax.Array, mask_NxK: jax.Array, demo_NxLxD: jax.Array, demo_mask_NxL: jax.Array,
                      *, eps: float = 1e-8) -> jax.Array:
  """DR-IRL's data-level similarity W = (1/K) sum_k max_l cos(Phi(S^k), Phi(S~^l)) per sample.

  Args:
    clauses_NxKxD: (N, K, D) encoder embeddings Phi(S^k) of the response's clauses.
    mask_NxK: (N, K), nonzero on real clauses (K = the count of nonzero entries per row).
    demo_NxLxD: (N, L, D) embeddings Phi(S~^l) of the demonstration's clauses.
    demo_mask_NxL: (N, L), nonzero on real demonstration clauses.
    eps: guards the norms of all-zero embeddings.

  Returns:
    W_N float32 in [-1, 1]; 0 for a sample without clauses on either side.
  """
  a, b = _f32(clauses_NxKxD), _f32(demo_NxLxD)
  if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
    raise ValueError(f"clauses_NxKxD and demo_NxLxD must be (N, K, D) and (N, L, D); got {a.shape}, {b.shape}")
  if mask_NxK.shape != a.shape[:2] or demo_mask_NxL.shape != b.shape[:2]:
    raise ValueError(f"masks must be (N, K) {a.shape[:2]} and (N, L) {b.shape[:2]}; got {mask_NxK.shape}, "
                     f"{demo_mask_NxL.shape}")
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), eps)
  s_NxKxL = jnp.einsum("nkd,nld->nkl", a, b)
  valid_l = demo_mask_NxL[:, None, :] > 0
  s_max_NxK = jnp.max(jnp.where(valid_l, s_NxKxL, -jnp.inf), axis=2)
  valid_k = (mask_NxK > 0) & jnp.any(demo_mask_NxL > 0, axis=1, keepdims=True)
  count = jnp.sum(valid_k, axis=1)
  return jnp.sum(jnp.where(valid_k, s_max_NxK, 0.0), axis=1) / jnp.maximum(count, 1).astype(jnp.float32)


def data_hardness(delta_N: jax.Array) -> jax.Array:
  """DR-IRL's alpha^D = sigmoid(delta_i) / sigmoid(mean_i delta) over the N pooled samples (delta = 1 - W).

  Args:
    delta_N: (N,) dissimilarities 1 - W of each sample's response to its demonstration.

  Returns:
    alpha_N float32 (> 0; 1 at delta_i = the mean).
  """
  delta = _f32(delta_N)
  if delta.ndim != 1:
    raise ValueError(f"delta_N must have shape (N,); got {delta.shape}")
  return jax.nn.sigmoid(delta) / jax.nn.sigmoid(jnp.mean(delta))


def model_responsiveness(gaps_NxM: jax.Array, tau: float) -> jax.Array:
  """DR-IRL's alpha^M of each row of M pooled reward gaps: sigmoid(mean of the gaps within tau of the mean, in
  squared deviation) / sigmoid(mean gap).

  Args:
    gaps_NxM: (N, M) reward gaps R(q, o) - R(q, o~) (policy response minus demonstration), M per pool.
    tau: outlier threshold on (gap - mean)^2. A pool where every gap is an outlier (e.g. two gaps further apart
      than 2 sqrt(tau)) falls back to the plain mean (alpha = 1).

  Returns:
    alpha_N float32 (> 0; exactly 1 when no gap is an outlier).
  """
  gaps = _f32(gaps_NxM)
  if gaps.ndim != 2:
    raise ValueError(f"gaps_NxM must have shape (N, M); got {gaps.shape}")
  if not tau >= 0:
    raise ValueError(f"tau must be >= 0; got {tau!r}")
  mean = jnp.mean(gaps, axis=1)
  keep = jnp.square(gaps - mean[:, None]) <= tau
  kept = jnp.sum(keep, axis=1)
  filtered = jnp.where(kept > 0, jnp.sum(jnp.where(keep, gaps, 0.0), axis=1) / jnp.maximum(kept, 1), mean)
  return jax.nn.sigmoid(filtered) / jax.nn.sigmoid(mean)


def grpo_s_advantages(rewards_B: jax.Array, group_size: int, alpha_data_B: jax.Array, reward_gaps_B: jax.Array, *,
                      tau: float, pool: str = "group", scale_rewards: str = "group", eps: float = 1e-4
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """GRPO-S advantages A_i = alpha^D_i * alpha^M_i * GRPO's A_i (`policy_gradient.group_advantages`).

  Args:
    rewards_B: (B,) rewards, contiguous groups of `group_size` completions of one prompt.
    group_size: G.
    alpha_data_B: (B,) data-level coefficient of each row's prompt (`data_hardness`, computed once per prompt).
    reward_gaps_B: (B,) reward gaps R(q, o_i) - R(q, o~) of each completion against its prompt's demonstration.
    tau: `model_responsiveness`' outlier threshold.
    pool: the gaps alpha^M pools: "group" (each prompt's G completions: one alpha^M per prompt) or "batch" (all B
      rows: one alpha^M, the paper's per-category pool with the batch as the category).
    scale_rewards, eps: as `group_advantages`.

  Returns:
    (advantages_B float32, {"alpha_data", "alpha_model", "alpha", "reward_gap"}: (B,) per row).
  """
  if pool not in RESPONSIVENESS_POOLS:
    raise ValueError(f"pool must be one of {list(RESPONSIVENESS_POOLS)}; got {pool!r}")
  base = pg.group_advantages(rewards_B, group_size, scale_rewards=scale_rewards, eps=eps)
  b = base.shape[0]
  alpha_data, gaps = _f32(alpha_data_B), _f32(reward_gaps_B)
  if alpha_data.shape != (b,) or gaps.shape != (b,):
    raise ValueError(f"alpha_data_B and reward_gaps_B must have shape ({b},); got {alpha_data.shape}, {gaps.shape}")
  if pool == "group":
    alpha_model = jnp.repeat(model_responsiveness(gaps.reshape(-1, group_size), tau), group_size)
  else:
    alpha_model = jnp.broadcast_to(model_responsiveness(gaps[None, :], tau), (b,))
  alpha = alpha_data * alpha_model
  return alpha * base, {"alpha_data": alpha_data, "alpha_model": alpha_model, "alpha": alpha, "reward_gap": gaps}
