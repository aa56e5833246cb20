"""The GRPO variants people use, as named, config-selectable policy objectives: GRPO, Dr. GRPO, DAPO, GSPO,
GSPO-token and CISPO, plus DAPO's dynamic-sampling filter and soft overlong punishment.

A variant (`VARIANTS[name]`) is a surrogate ("clip" = `policy_gradient.clipped_surrogate`, "gspo", "gspo_token",
"cispo"), a token-loss aggregation, an advantage scaling for `policy_gradient.group_advantages`, and the paper's clip
ranges. Every surrogate returns per-token losses (B, T) and the same metric keys, so a stage that accumulates
micro-batches can swap surrogates by name (`variant_surrogate`); `policy_variant_loss` is the whole scalar
objective, numerically TRL 1.16's `GRPOTrainer._compute_loss` for the matching loss_type / importance level.

Layout as in `policy_gradient`: B = completions in contiguous groups, T = completion tokens. Everything is float32.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrlhf.losses import policy_gradient as pg

SURROGATES = ("clip", "gspo", "gspo_token", "cispo")


class PolicyLossVariant(NamedTuple):
  """One named objective. epsilon / epsilon_high are the paper's clip ranges (None: see the surrogate)."""
  surrogate: str         # one of SURROGATES
  loss_aggregation: str  # one of policy_gradient.LOSS_AGGREGATIONS
  scale_rewards: str     # one of policy_gradient.SCALE_REWARDS
  epsilon: float | None
  epsilon_high: float | None


VARIANTS: dict[str, PolicyLossVariant] = {
    # GRPO (Shao et al. 2024, eq. 3): (1/G) sum_i (1/|o_i|) sum_t min(r A, clip(r, 1 - eps, 1 + eps) A),
    # A_i = (R_i - mean_g R) / std_g R.
    "grpo": PolicyLossVariant("clip", "sequence_mean", "group", 0.2, None),
    # Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", eq. 3): no 1/|o_i| and no std,
    # (1/G) sum_i sum_t min(r A, clip(r) A) with A_i = R_i - mean_g R; TRL divides by a constant
    # G * max_completion_length instead of G (a fixed rescaling, no length bias).
    "dr_grpo": PolicyLossVariant("clip", "dr_grpo", "none", 0.2, None),
    # DAPO (Yu et al. 2025, eq. 8): (1 / sum_i |o_i|) sum_i sum_t min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)
    # over the whole batch (token-level), clip-higher eps_low 0.2 / eps_high 0.28, s.t. 0 < #correct < G in every
    # group (`dynamic_sampling_mask`), plus the soft overlong punishment (`soft_overlong_penalty`).
    "dapo": PolicyLossVariant("clip", "token_mean", "group", 0.2, 0.28),
    # GSPO (Zheng et al. 2025, eq. 5-7): (1/G) sum_i min(s_i A_i, clip(s_i, 1 - eps, 1 + eps_high) A_i),
    # s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|); the paper clips at 3e-4 / 4e-4.
    "gspo": PolicyLossVariant("gspo", "sequence_mean", "group", 3e-4, 4e-4),
    # GSPO-token (Zheng et al. 2025, eq. 13-14): per-token s_i,t = sg[s_i] * pi(y_t) / sg[pi(y_t)].
    "gspo_token": PolicyLossVariant("gspo_token", "sequence_mean", "group", 3e-4, 4e-4),
    # CISPO (MiniMax-M1, 2025, eq. 4-5): (1 / sum_i |o_i|) sum_i sum_t sg(clip(r, 1 - eps_low, 1 + eps_high)) A
    # log pi; no lower bound (eps_low None) and eps_high 4 (TRL's recommended eps_max = 1 + eps_high = 5).
    "cispo": PolicyLossVariant("cispo", "token_mean", "group", None, 4.0),
}


def _inputs(logps_BxT, old_logps_BxT, mask_BxT):
  pg._check_tokens(logps_BxT, mask_BxT, "logps_BxT")
  logps = pg._f32(logps_BxT)
  if old_logps_BxT is None:
    return logps, jax.lax.stop_gradient(logps), mask_BxT > 0
  if old_logps_BxT.shape != logps.shape:
    raise ValueError(f"old_logps_BxT must have shape {logps.shape}; got {old_logps_BxT.shape}")
  return logps, pg._f32(old_logps_BxT), mask_BxT > 0


def _token_advantages(advantages, shape, *, allow_tokens: bool = True) -> jax.Array:
  adv = pg._f32(advantages)
  if adv.shape == shape[:1]:
    return adv[:, None]
  if allow_tokens and adv.shape == shape:
    return adv
  want = f"{shape[:1]} or {shape}" if allow_tokens else f"{shape[:1]}"
  raise ValueError(f"advantages must have shape {want}; got {adv.shape}")


def _clip_metrics(ratio, adv, low_bound, high_bound, mean_fn) -> dict[str, jax.Array]:
  """TRL's clip-ratio metrics: low = ratio below the lower bound with A < 0, high = above the upper with A > 0."""
  low = ((ratio < low_bound) & (adv < 0)).astype(jnp.float32) if low_bound is not None else jnp.zeros_like(ratio)
  high = ((ratio > high_bound) & (adv > 0)).astype(jnp.float32)
  return {
      "clip_ratio/low_mean": mean_fn(low),
      "clip_ratio/high_mean": mean_fn(high),
      "clip_ratio/region_mean": mean_fn(jnp.maximum(low, high)),
      "ratio/mean": mean_fn(jax.lax.stop_gradient(ratio)),
  }


def gspo_surrogate(logps_BxT: jax.Array, old_logps_BxT: jax.Array | None, advantages: jax.Array,
                   mask_BxT: jax.Array, *, epsilon: float = 3e-4, epsilon_high: float | None = None,
                   token_level: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Group Sequence Policy Optimization surrogate (Zheng et al. 2025), per token for aggregation.

  s_i = exp((1/|y_i|) sum_t (log pi(y_i,t) - log pi_old(y_i,t)))   (length-normalized sequence ratio, eq. 7)
  GSPO:       l_i = -min(s_i A_i, clip(s_i, 1 - eps, 1 + eps_high) A_i), written on every token of y_i, so the
              "sequence_mean" aggregation gives (1/G) sum_i l_i (eq. 5; TRL importance_sampling_level="sequence"
              with loss_type "grpo").
  GSPO-token: s_i,t = sg[s_i] * pi(y_i,t) / sg[pi(y_i,t)] (eq. 14), l_i,t = -min(s_i,t A_i,t, clip(s_i,t) A_i,t);
              same value and, for A_i,t = A_i, the same gradient as GSPO, but per-token advantages are allowed.
  With old_logps None, pi_old = sg(pi) (s = 1).

  Args:
    logps_BxT: (B, T) policy log-probs of the sampled tokens (differentiated).
    old_logps_BxT: (B, T) sampling-policy log-probs, or None.
    advantages: (B,) sequence advantages ((B, T) allowed with token_level).
    mask_BxT: (B, T), nonzero on completion tokens.
    epsilon, epsilon_high: clip range of s (epsilon_high defaults to epsilon; the paper uses 3e-4 and 4e-4).
    token_level: GSPO-token instead of GSPO.

  Returns:
    (loss_BxT float32, 0 at masked positions, metrics: `clip_ratio/{low,high,region}_mean` and `ratio/mean`, means
    over sequences for GSPO (as TRL) and over tokens for GSPO-token).
  """
  if epsilon < 0 or (epsilon_high is not None and epsilon_high < 0):
    raise ValueError(f"epsilon and epsilon_high must be >= 0; got {epsilon}, {epsilon_high}")
  eps_high = epsilon if epsilon_high is None else epsilon_high
  logps, old, valid = _inputs(logps_BxT, old_logps_BxT, mask_BxT)
  adv = _token_advantages(advantages, logps.shape, allow_tokens=token_level)
  count_B = jnp.maximum(jnp.sum(valid, axis=1), 1).astype(jnp.float32)
  log_s_B = jnp.sum(jnp.where(valid, logps - old, 0.0), axis=1) / count_B
  if token_level:
    # exp(sg[log s] + log pi - sg[log pi]): the value is s_i, the gradient s_i * grad log pi(y_t). Padding is masked
    # before the exp (as the other surrogates do): a non-finite pad log-prob gives -inf - -inf = NaN there, and its
    # NaN derivative times the zero cotangent of the masking below would still be NaN.
    masked = jnp.where(valid, logps, 0.0)
    ratio = jnp.exp(jax.lax.stop_gradient(log_s_B)[:, None] + masked - jax.lax.stop_gradient(masked))
    ratio = jnp.where(valid, ratio, 1.0)

    def mean_fn(x):
      return pg.aggregate_token_losses(jnp.broadcast_to(x, logps.shape), mask_BxT, "token_mean")
  else:
    ratio = jnp.exp(log_s_B)[:, None]

    def mean_fn(x):
      return jnp.mean(x)
  clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + eps_high)
  per = -jnp.minimum(ratio * adv, clipped * adv)
  loss = jnp.where(valid, jnp.broadcast_to(per, logps.shape), 0.0)
  return loss, _clip_metrics(ratio, adv, 1.0 - epsilon, 1.0 + eps_high, mean_fn)


def cispo_surrogate(logps_BxT: jax.Array, old_logps_BxT: jax.Array | None, advantages: jax.Array,
                    mask_BxT: jax.Array, *, epsilon: float | None = None,
                    epsilon_high: float = 4.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped IS-weight policy optimization (CISPO, MiniMax-M1 2025, eq. 4-5), per token.

  r_t = pi(y_t) / pi_old(y_t),  r^_t = clip(r_t, 1 - eps_low, 1 + eps_high),  l_t = -sg(r^_t) A_t log pi(y_t).
  Unlike PPO clipping, no token loses its gradient: a clipped token still contributes r^ A grad log pi. The paper
  sets no lower bound (epsilon None). Aggregate with "token_mean" (1 / sum_i |o_i|, eq. 4). TRL 1.16 loss_type
  "cispo" is this with eps_low None and its `epsilon_high` = 1 + epsilon_high here.

  Args:
    logps_BxT: (B, T) policy log-probs (differentiated).
    old_logps_BxT: (B, T) sampling-policy log-probs, or None (r = 1: plain REINFORCE with advantages).
    advantages: (B,) or (B, T).
    mask_BxT: (B, T), nonzero on completion tokens.
    epsilon: eps_low (None: no lower bound).
    epsilon_high: eps_high (upper bound 1 + eps_high).

  Returns:
    (loss_BxT float32, 0 at masked positions; metrics as `clipped_surrogate`'s: `clip_ratio/high_mean` is TRL's
    `cispo_clip_ratio` (r above the bound with A > 0), `clip_ratio/low_mean` r below 1 - eps_low with A < 0).
  """
  if (epsilon is not None and epsilon < 0) or epsilon_high < 0:
    raise ValueError(f"epsilon and epsilon_high must be >= 0; got {epsilon}, {epsilon_high}")
  logps, old, valid = _inputs(logps_BxT, old_logps_BxT, mask_BxT)
  adv = _token_advantages(advantages, logps.shape)
  ratio = jnp.exp(jnp.where(valid, logps - old, 0.0))
  low = None if epsilon is None else 1.0 - epsilon
  weight = jax.lax.stop_gradient(jnp.clip(ratio, low, 1.0 + epsilon_high))
  loss = jnp.where(valid, -weight * adv * jnp.where(valid, logps, 0.0), 0.0)

  def mean_fn(x):
    return pg.aggregate_token_losses(jnp.broadcast_to(x, logps.shape), mask_BxT, "token_mean")

  return loss, _clip_metrics(ratio, adv, low, 1.0 + epsilon_high, mean_fn)


def variant_surrogate(surrogate: str, logps_BxT: jax.Array, old_logps_BxT: jax.Array | None,
                      advantages: jax.Array, mask_BxT: jax.Array, *, epsilon: float | None,
                      epsilon_high: float | None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-token losses and metrics of the surrogate named `surrogate` (one of SURROGATES)."""
  if surrogate not in SURROGATES:
    raise ValueError(f"surrogate must be one of {list(SURROGATES)}; got {surrogate!r}")
  if surrogate == "cispo":
    return cispo_surrogate(logps_BxT, old_logps_BxT, advantages, mask_BxT, epsilon=epsilon,
                           epsilon_high=epsilon_high)
  if epsilon is None:
    raise ValueError(f"surrogate {surrogate!r} needs a lower clip range epsilon; got None")
  if surrogate == "clip":
    return pg.clipped_surrogate(logps_BxT, old_logps_BxT, advantages, mask_BxT, epsilon=epsilon,
                                epsilon_high=epsilon_high)
  return gspo_surrogate(logps_BxT, old_logps_BxT, advantages, mask_BxT, epsilon=epsilon, epsilon_high=epsilon_high,
                        token_level=surrogate == "gspo_token")


def policy_variant_loss(logps_BxT: jax.Array, old_logps_BxT: jax.Array | None, advantages: jax.Array,
                        mask_BxT: jax.Array, *, variant: str = "grpo", epsilon: float | None = None,
                        epsilon_high: float | None = None, ref_logps_BxT: jax.Array | None = None,
                        kl_coeff: float = 0.0, kl_estimator: str = "k3", max_length: int | None = None,
                        num_tokens: jax.Array | int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The scalar objective of a named variant (see VARIANTS for each paper's formula): its surrogate, plus
  kl_coeff * per-token KL, reduced by its aggregation (`policy_gradient.kl_regularized_loss`).

  Advantages come from `group_advantages(rewards, G, scale_rewards=VARIANTS[variant].scale_rewards)`; DAPO's and
  CISPO's whole-batch token normalizer is `num_tokens` when this batch is a slice of the generation batch.

  Args:
    logps_BxT, old_logps_BxT, advantages, mask_BxT: as in `policy_gradient.clipped_surrogate`.
    variant: a key of VARIANTS.
    epsilon, epsilon_high: clip ranges; None takes the variant's paper value.
    ref_logps_BxT, kl_coeff, kl_estimator, max_length, num_tokens: as in `policy_gradient.clipped_policy_loss`.

  Returns:
    (scalar loss float32, metrics: the clip ratios, `ratio/mean`, and `kl` when kl_coeff != 0).
  """
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {sorted(VARIANTS)}; got {variant!r}")
  spec = VARIANTS[variant]
  per_token, metrics = variant_surrogate(
      spec.surrogate, logps_BxT, old_logps_BxT, advantages, mask_BxT,
      epsilon=spec.epsilon if epsilon is None else epsilon,
      epsilon_high=spec.epsilon_high if epsilon_high is None else epsilon_high)
  return pg.kl_regularized_loss(per_token, metrics, logps_BxT, mask_BxT, loss_aggregation=spec.loss_aggregation,
                                ref_logps_BxT=ref_logps_BxT, kl_coeff=kl_coeff, kl_estimator=kl_estimator,
                                max_length=max_length, num_tokens=num_tokens)


def dynamic_sampling_mask(rewards_B: jax.Array, group_size: int, *, atol: float = 0.0) -> jax.Array:
  """DAPO dynamic sampling (Yu et al. 2025, eq. 11's constraint 0 < |{o_i : correct}| < G): marks the groups whose
  rewards are not all equal. A group with equal rewards has zero advantage everywhere and no gradient; the stage
  drops it and samples more prompts until the batch is full.

  keep_i = max_{j in g(i)} R_j - min_{j in g(i)} R_j > atol, over the non-NaN rewards (an all-NaN or one-valid
  group is dropped).

  Args:
    rewards_B: (B,) rewards, groups of `group_size` contiguous completions per prompt.
    group_size: G.
    atol: spread at or below which a group counts as constant (0: exact equality, as accuracy rewards).

  Returns:
    keep_B bool, constant within each group.
  """
  grouped = pg._grouped(rewards_B, group_size)
  if atol < 0:
    raise ValueError(f"atol must be >= 0; got {atol}")
  spread = jnp.nanmax(grouped, axis=1) - jnp.nanmin(grouped, axis=1)
  keep_G = spread > atol  # NaN (all-NaN group) compares False
  return jnp.repeat(keep_G, group_size)


def soft_overlong_penalty(lengths_B: jax.Array, *, max_length: int, cache_length: int) -> jax.Array:
  """DAPO soft overlong punishment (Yu et al. 2025, eq. 13), added to the task reward:

    R_length(y) = 0                                   if |y| <= L_max - L_cache
                  ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
                  -1                                  if |y| > L_max

  as TRL's `get_soft_overlong_punishment(max_completion_len=L_max, soft_punish_cache=L_cache)`.

  Args:
    lengths_B: (B,) completion lengths in tokens.
    max_length: L_max.
    cache_length: L_cache, 0 <= L_cache <= L_max (0: a hard -1 past L_max only).

  Returns:
    penalty_B float32 in [-1, 0].
  """
  if not (0 <= cache_length <= max_length):
    raise ValueError(f"need 0 <= cache_length <= max_length; got cache_length={cache_length}, "
                     f"max_length={max_length}")
  lengths = pg._f32(lengths_B)
  if lengths.ndim != 1:
    raise ValueError(f"lengths_B must have shape (B,); got {lengths.shape}")
  start = float(max_length - cache_length)
  ramp = (start - lengths) / max(cache_length, 1)
  return jnp.where(lengths <= start, 0.0, jnp.where(lengths <= max_length, ramp, -1.0))
