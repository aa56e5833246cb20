"""Policy-gradient pieces for online RL from a reward: advantages (GRPO group normalization, RLOO), the PPO clipped
surrogate with DAPO clip-higher, token-loss aggregation, KL estimators against a reference, and process-reward
refinement (Clip / Delta).

Layout: B = completions, laid out as contiguous groups of `group_size` completions of one prompt (TRL's
`rewards.view(-1, num_generations)`); T = completion tokens; S = reasoning steps. Everything is float32.
"""

import jax
import jax.numpy as jnp


SCALE_REWARDS = ("group", "batch", "none")
LOSS_AGGREGATIONS = ("token_mean", "sequence_mean", "dr_grpo")
KL_ESTIMATORS = ("k1", "k2", "k3")


def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def _grouped(rewards_B: jax.Array, group_size: int) -> jax.Array:
  rewards = _f32(rewards_B)
  if rewards.ndim != 1:
    raise ValueError(f"rewards_B must have shape (B,); got {rewards.shape}")
  if not isinstance(group_size, int) or group_size < 1 or rewards.shape[0] % group_size:
    raise ValueError(f"group_size must be a positive int dividing B={rewards.shape[0]}; got {group_size!r}")
  return rewards.reshape(-1, group_size)


def _nanstd_ddof1(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
  """TRL's `nanstd`: Bessel-corrected std over non-NaN entries; NaN where fewer than two entries."""
  count = jnp.sum(~jnp.isnan(x), axis=axis, keepdims=True)
  mean = jnp.nanmean(x, axis=axis, keepdims=True)
  var = jnp.nanmean(jnp.square(x - mean), axis=axis, keepdims=True) * count / jnp.maximum(count - 1, 1)
  ok = (count > 1) & (var > 0)
  # Double-where keeps sqrt's gradient finite at zero variance.
  std = jnp.where(ok, jnp.sqrt(jnp.where(ok, var, 1.0)), 0.0)
  std = jnp.where(count > 1, std, jnp.nan)
  return std if keepdims else jnp.squeeze(std, axis=axis)


def group_advantages(rewards_B: jax.Array, group_size: int, *, scale_rewards: str = "group",
                     eps: float = 1e-4) -> jax.Array:
  """GRPO group-normalized advantages (Shao et al. 2024, DeepSeekMath §4.1.2), as TRL 1.16 GRPOTrainer computes them.

  A_i = (r_i - mean_{j in g(i)} r_j) / (s + eps), with s the Bessel-corrected std of the group ("group"), of the
  whole batch ("batch", Liu et al. 2025's suggestion keeps group means), or no scaling ("none", Dr. GRPO:
  A_i = r_i - mean_g). NaN rewards (unscorable completions) are left out of the statistics and get A_i = 0, as in
  TRL; a group with a single valid reward gets 0 too.

  Args:
    rewards_B: (B,) scalar rewards, B = num_prompts * group_size, groups contiguous.
    group_size: completions per prompt (TRL's num_generations).
    scale_rewards: "group", "batch" or "none".
    eps: added to the std (TRL uses 1e-4).

  Returns:
    advantages_B float32.
  """
  if scale_rewards not in SCALE_REWARDS:
    raise ValueError(f"scale_rewards must be one of {list(SCALE_REWARDS)}; got {scale_rewards!r}")
  grouped = _grouped(rewards_B, group_size)
  centered = grouped - jnp.nanmean(grouped, axis=1, keepdims=True)
  if scale_rewards == "group":
    std = _nanstd_ddof1(grouped, axis=1, keepdims=True) if group_size > 1 else jnp.zeros_like(grouped)
    centered = centered / (std + eps)
  elif scale_rewards == "batch":
    std = _nanstd_ddof1(grouped) if grouped.size > 1 else jnp.zeros(())
    centered = centered / (std + eps)
  return jnp.nan_to_num(centered.reshape(-1), nan=0.0)


def rloo_advantages(rewards_B: jax.Array, group_size: int, *, normalize: bool = False,
                    eps: float = 1e-4) -> jax.Array:
  """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, eq. 6; Kool et al. 2019), as TRL 1.16 RLOOTrainer.

  A_i = r_i - (1 / (G - 1)) sum_{j in g(i), j != i} r_j  ( = G / (G - 1) * (r_i - mean_g) ).
  NaN rewards are excluded from the baselines (divisor = valid count - 1) and get A_i = 0; group_size 1 gives 0.
  With normalize=True the advantages are then standardized over the batch: (A - mean A) / (std A + eps) (TRL's
  `normalize_advantages`, Bessel std).

  Args:
    rewards_B: (B,) rewards, groups of `group_size` contiguous completions per prompt.
    group_size: completions per prompt (k in the paper).
    normalize: batch-standardize the advantages.
    eps: added to the batch std when normalizing.

  Returns:
    advantages_B float32.
  """
  grouped = _grouped(rewards_B, group_size)
  if group_size == 1:
    return jnp.zeros(grouped.size, jnp.float32)
  count = jnp.sum(~jnp.isnan(grouped), axis=1, keepdims=True)
  total = jnp.nansum(grouped, axis=1, keepdims=True)
  # count - 1 == 0 gives 0/0 = NaN, zeroed below like TRL.
  baseline = (total - grouped) / (count - 1).astype(jnp.float32)
  adv = (grouped - baseline).reshape(-1)
  if normalize:
    adv = (adv - jnp.nanmean(adv)) / (_nanstd_ddof1(adv) + eps)
  return jnp.nan_to_num(adv, nan=0.0)


def _check_tokens(x: jax.Array, mask_BxT: jax.Array, name: str) -> None:
  if x.ndim != 2:
    raise ValueError(f"{name} must have shape (B, T); got {x.shape}")
  if mask_BxT.shape != x.shape:
    raise ValueError(f"mask_BxT must have the shape of {name} {x.shape}; got {mask_BxT.shape}")


def kl_divergence(logps_BxT: jax.Array, ref_logps_BxT: jax.Array, mask_BxT: jax.Array, *,
                  estimator: str = "k3") -> jax.Array:
  """Per-token Monte-Carlo estimators of KL(pi || pi_ref) on tokens sampled from pi (Schulman 2020, "Approximating
  KL divergence").

  With log r = log pi_ref(y_t) - log pi(y_t):
    k1 = -log r                  (unbiased, high variance, can be negative; RLOO's reward penalty)
    k2 = (log r)^2 / 2           (biased, low variance; its gradient is the true KL gradient on-policy)
    k3 = (r - 1) - log r >= 0    (unbiased, low variance; GRPO / TRL's per-token KL term).
  Sum over t for a sequence KL to subtract from rewards (r - beta * KL), or add beta * k to the per-token loss.

  Args:
    logps_BxT: (B, T) log-probs of the sampled tokens under the policy.
    ref_logps_BxT: (B, T) log-probs of the same tokens under the reference.
    mask_BxT: (B, T), nonzero on completion tokens.
    estimator: "k1", "k2" or "k3".

  Returns:
    kl_BxT float32, 0 at masked positions.
  """
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f"estimator must be one of {list(KL_ESTIMATORS)}; got {estimator!r}")
  _check_tokens(logps_BxT, mask_BxT, "logps_BxT")
  if ref_logps_BxT.shape != logps_BxT.shape:
    raise ValueError(f"ref_logps_BxT must have shape {logps_BxT.shape}; got {ref_logps_BxT.shape}")
  valid = mask_BxT > 0
  log_r = jnp.where(valid, _f32(ref_logps_BxT) - _f32(logps_BxT), 0.0)
  if estimator == "k1":
    kl = -log_r
  elif estimator == "k2":
    kl = 0.5 * jnp.square(log_r)
  else:
    # expm1 keeps (r - 1) - log r accurate near r = 1, where exp(x) - x - 1 cancels to rounding noise and can
    # come out slightly negative; the clamp removes the last ulp of doubt for a quantity that is >= 0.
    kl = jnp.maximum(jnp.expm1(log_r) - log_r, 0.0)
  return jnp.where(valid, kl, 0.0)


def kl_penalized_token_rewards(scores_B: jax.Array, kl_BxT: jax.Array, mask_BxT: jax.Array,
                               beta: float) -> jax.Array:
  """Per-token RLHF rewards r_t = -beta * kl_t, plus the sequence score on the last completion token (Ziegler et al.
  2019; Ouyang et al. 2022, eq. 2), for PPO-style per-token returns.

  Args:
    scores_B: (B,) sequence-level rewards (reward model or verifier).
    kl_BxT: (B, T) per-token KL estimates (`kl_divergence`, e.g. "k1").
    mask_BxT: (B, T) completion mask (right padded).
    beta: KL coefficient.

  Returns:
    rewards_BxT float32, 0 at masked positions.
  """
  _check_tokens(kl_BxT, mask_BxT, "kl_BxT")
  scores = _f32(scores_B)
  if scores.shape != kl_BxT.shape[:1]:
    raise ValueError(f"scores_B must have shape {kl_BxT.shape[:1]}; got {scores.shape}")
  valid = mask_BxT > 0
  t = kl_BxT.shape[1]
  last = t - 1 - jnp.argmax(valid[:, ::-1], axis=1)  # index of the last valid token
  is_last = (jnp.arange(t)[None, :] == last[:, None]) & valid
  rewards = -beta * _f32(kl_BxT) + jnp.where(is_last, scores[:, None], 0.0)
  return jnp.where(valid, rewards, 0.0)


def clipped_surrogate(logps_BxT: jax.Array, old_logps_BxT: jax.Array | None, advantages: jax.Array,
                      mask_BxT: jax.Array, *, epsilon: float = 0.2,
                      epsilon_high: float | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-token PPO clipped surrogate loss (Schulman et al. 2017, eq. 7) with DAPO clip-higher (Yu et al. 2025).

  rho_t = exp(logp_t - logp_old_t);  l_t = -min(rho_t A, clip(rho_t, 1 - epsilon, 1 + epsilon_high) A).
  With old_logps None, logp_old = stop_gradient(logp) (one update per batch: rho = 1, gradient = A * grad logp),
  as TRL does when num_iterations == 1.

  Args:
    logps_BxT: (B, T) current policy log-probs of the sampled tokens (differentiated).
    old_logps_BxT: (B, T) log-probs under the sampling policy, or None.
    advantages: (B,) per-sequence or (B, T) per-token advantages.
    mask_BxT: (B, T), nonzero on completion tokens.
    epsilon: lower clip range (and upper when epsilon_high is None).
    epsilon_high: upper clip range (DAPO uses 0.28 with epsilon 0.2).

  Returns:
    (loss_BxT float32 with 0 at masked positions, metrics) where metrics hold token means over the mask of
    `clip_ratio/low_mean`, `clip_ratio/high_mean`, `clip_ratio/region_mean` (TRL's definitions) and `ratio/mean`.
  """
  _check_tokens(logps_BxT, mask_BxT, "logps_BxT")
  if epsilon < 0 or (epsilon_high is not None and epsilon_high < 0):
    raise ValueError(f"epsilon and epsilon_high must be >= 0; got {epsilon}, {epsilon_high}")
  eps_high = epsilon if epsilon_high is None else epsilon_high
  logps = _f32(logps_BxT)
  if old_logps_BxT is None:
    old = jax.lax.stop_gradient(logps)
  else:
    if old_logps_BxT.shape != logps.shape:
      raise ValueError(f"old_logps_BxT must have shape {logps.shape}; got {old_logps_BxT.shape}")
    old = _f32(old_logps_BxT)
  adv = _f32(advantages)
  if adv.shape == logps.shape[:1]:
    adv = adv[:, None]
  elif adv.shape != logps.shape:
    raise ValueError(f"advantages must have shape {logps.shape[:1]} or {logps.shape}; got {adv.shape}")
  valid = mask_BxT > 0
  ratio = jnp.exp(jnp.where(valid, logps - old, 0.0))
  clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + eps_high)
  loss = jnp.where(valid, -jnp.minimum(ratio * adv, clipped * adv), 0.0)

  def token_mean(x):
    return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(jnp.sum(valid), 1)

  low = ((ratio < 1.0 - epsilon) & (adv < 0)).astype(jnp.float32)
  high = ((ratio > 1.0 + eps_high) & (adv > 0)).astype(jnp.float32)
  metrics = {
      "clip_ratio/low_mean": token_mean(low),
      "clip_ratio/high_mean": token_mean(high),
      "clip_ratio/region_mean": token_mean(jnp.maximum(low, high)),
      "ratio/mean": token_mean(jax.lax.stop_gradient(ratio)),
  }
  return loss, metrics


def aggregate_token_losses(loss_BxT: jax.Array, mask_BxT: jax.Array, mode: str = "token_mean", *,
                           max_length: int | None = None, num_tokens: jax.Array | int | None = None) -> jax.Array:
  """Reduces per-token losses to a scalar.

    "token_mean":    sum_{b,t} m l / N, N = sum_{b,t} m or `num_tokens` (DAPO's token-level mean, Yu et al. 2025
                     eq. 12: N = sum_i |o_i| over the whole generation batch; TRL "bnpo", and "dapo" with
                     num_tokens = TRL's num_items_in_batch when this batch is a slice of the generation batch)
    "sequence_mean": (1/B) sum_b (sum_t m l / sum_t m)   (GRPO's original per-sequence mean; TRL "grpo")
    "dr_grpo":       sum_{b,t} m l / (B * max_length)   (Dr. GRPO's constant normalizer, Liu et al. 2025; TRL
                     "dr_grpo" with max_length = max_completion_length, default T).

  Args:
    loss_BxT: (B, T) per-token losses.
    mask_BxT: (B, T), nonzero on counted tokens.
    mode: "token_mean", "sequence_mean" or "dr_grpo".
    max_length: the dr_grpo constant (defaults to T).
    num_tokens: the token_mean normalizer N (defaults to this batch's token count); clamped at 1.

  Returns:
    scalar float32 (empty sequences count as 0 and token counts are clamped at 1, as in TRL).
  """
  if mode not in LOSS_AGGREGATIONS:
    raise ValueError(f"mode must be one of {list(LOSS_AGGREGATIONS)}; got {mode!r}")
  _check_tokens(loss_BxT, mask_BxT, "loss_BxT")
  valid = mask_BxT > 0
  masked = jnp.where(valid, _f32(loss_BxT), 0.0)
  if num_tokens is not None and mode != "token_mean":
    raise ValueError(f"num_tokens applies to mode 'token_mean' only; got mode {mode!r}")
  if mode == "token_mean":
    count = jnp.sum(valid) if num_tokens is None else _f32(num_tokens)
    return jnp.sum(masked) / jnp.maximum(count, 1).astype(jnp.float32)
  if mode == "sequence_mean":
    per_seq = jnp.sum(masked, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1).astype(jnp.float32)
    return jnp.mean(per_seq)
  length = loss_BxT.shape[1] if max_length is None else max_length
  if length < 1:
    raise ValueError(f"max_length must be >= 1; got {max_length}")
  return jnp.sum(masked) / (loss_BxT.shape[0] * length)


def clipped_policy_loss(logps_BxT: jax.Array, old_logps_BxT: jax.Array | None, advantages: jax.Array,
                        mask_BxT: jax.Array, *, epsilon: float = 0.2, epsilon_high: float | None = None,
                        loss_aggregation: str = "token_mean", ref_logps_BxT: jax.Array | None = None,
                        kl_coeff: float = 0.0, kl_estimator: str = "k3", max_length: int | None = None,
                        num_tokens: jax.Array | int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """GRPO/DAPO/PPO policy loss: clipped surrogate + kl_coeff * per-token KL, aggregated to a scalar.

  L = agg_t( -min(rho_t A, clip(rho_t, 1-eps, 1+eps_high) A) + beta * k(pi, pi_ref)_t ), the GRPO objective
  (Shao et al. 2024, eq. 3) with TRL 1.16's per-token KL (k3 by default) and its loss types:
  loss_aggregation "sequence_mean" = TRL "grpo", "token_mean" = "bnpo" (= "dapo" on one process), "dr_grpo".

  Args:
    logps_BxT, old_logps_BxT, advantages, mask_BxT, epsilon, epsilon_high: as in `clipped_surrogate`.
    loss_aggregation: "token_mean", "sequence_mean" or "dr_grpo".
    ref_logps_BxT: (B, T) reference log-probs; required when kl_coeff != 0.
    kl_coeff: beta.
    kl_estimator: "k1", "k2" or "k3".
    max_length: the dr_grpo constant (defaults to T).
    num_tokens: the token_mean normalizer (DAPO's whole-batch token count; defaults to this batch's).

  Returns:
    (scalar loss float32, metrics: the clip ratios plus `kl` (token mean) when kl_coeff != 0).
  """
  if loss_aggregation not in LOSS_AGGREGATIONS:
    raise ValueError(f"loss_aggregation must be one of {list(LOSS_AGGREGATIONS)}; got {loss_aggregation!r}")
  per_token, metrics = clipped_surrogate(logps_BxT, old_logps_BxT, advantages, mask_BxT, epsilon=epsilon,
                                         epsilon_high=epsilon_high)
  return kl_regularized_loss(per_token, metrics, logps_BxT, mask_BxT, loss_aggregation=loss_aggregation,
                             ref_logps_BxT=ref_logps_BxT, kl_coeff=kl_coeff, kl_estimator=kl_estimator,
                             max_length=max_length, num_tokens=num_tokens)


def kl_regularized_loss(per_token_BxT: jax.Array, metrics: dict[str, jax.Array], logps_BxT: jax.Array,
                        mask_BxT: jax.Array, *, loss_aggregation: str = "token_mean",
                        ref_logps_BxT: jax.Array | None = None, kl_coeff: float = 0.0, kl_estimator: str = "k3",
                        max_length: int | None = None, num_tokens: jax.Array | int | None = None
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Adds kl_coeff * k(pi, pi_ref)_t to a per-token surrogate loss and aggregates: the shared tail of every
  policy objective here (clipped, GSPO, CISPO), as TRL adds beta * KL before its loss-type reduction.

  Args:
    per_token_BxT: (B, T) surrogate loss (`clipped_surrogate`, `policy_variants.gspo_surrogate`, ...).
    metrics: the surrogate's metrics; a copy gains `kl` (token mean) when kl_coeff != 0.
    logps_BxT, mask_BxT, ref_logps_BxT, kl_coeff, kl_estimator, loss_aggregation, max_length, num_tokens: as in
      `clipped_policy_loss`.

  Returns:
    (scalar loss float32, metrics).
  """
  if loss_aggregation not in LOSS_AGGREGATIONS:
    raise ValueError(f"loss_aggregation must be one of {list(LOSS_AGGREGATIONS)}; got {loss_aggregation!r}")
  metrics = dict(metrics)
  if kl_coeff:
    if ref_logps_BxT is None:
      raise ValueError("ref_logps_BxT is required when kl_coeff != 0")
    kl = kl_divergence(logps_BxT, ref_logps_BxT, mask_BxT, estimator=kl_estimator)
    per_token_BxT = per_token_BxT + kl_coeff * kl
    metrics["kl"] = aggregate_token_losses(jax.lax.stop_gradient(kl), mask_BxT, "token_mean")
  loss = aggregate_token_losses(per_token_BxT, mask_BxT, loss_aggregation, max_length=max_length,
                                num_tokens=num_tokens)
  return loss, metrics


def _check_steps(step_rewards_BxS: jax.Array, mask_BxS: jax.Array) -> jax.Array:
  rewards = _f32(step_rewards_BxS)
  if rewards.ndim != 2:
    raise ValueError(f"step_rewards_BxS must have shape (B, S); got {rewards.shape}")
  if mask_BxS.shape != rewards.shape:
    raise ValueError(f"mask_BxS must have shape {rewards.shape}; got {mask_BxS.shape}")
  return rewards


def clip_process_rewards(step_rewards_BxS: jax.Array, mask_BxS: jax.Array, eta: float) -> jax.Array:
  """Clip mechanism for process rewards (Gao et al. 2024, "On Designing Effective RL Reward at Training Time for
  LLM Reasoning", §4): r_t <- min(r_t - eta, 0), so every step reward is <= 0 and the policy cannot gain by adding
  steps (the PRM reward-hacking mode the paper identifies).

  Args:
    step_rewards_BxS: (B, S) per-step process rewards.
    mask_BxS: (B, S), nonzero on real steps (variable step counts padded).
    eta: threshold (the paper uses a value near the PRM's typical step score).

  Returns:
    (B, S) float32, 0 at padded steps.
  """
  rewards = _check_steps(step_rewards_BxS, mask_BxS)
  return jnp.where(mask_BxS > 0, jnp.minimum(rewards - eta, 0.0), 0.0)


def delta_process_rewards(step_rewards_BxS: jax.Array, mask_BxS: jax.Array) -> jax.Array:
  """Delta mechanism for process rewards (Gao et al. 2024, §4): r_t <- r_t - r_{t+1} for all but the last step,
  whose reward is kept, so the return-to-go sum_{k>=t} r_k telescopes to r_t (bounded, independent of length).

  Args:
    step_rewards_BxS: (B, S) per-step process rewards.
    mask_BxS: (B, S), nonzero on real steps; must be right padded (real steps first).

  Returns:
    (B, S) float32, 0 at padded steps.
  """
  rewards = _check_steps(step_rewards_BxS, mask_BxS)
  valid = mask_BxS > 0
  rewards = jnp.where(valid, rewards, 0.0)
  # With right padding, the step after the last real one is padding (0), so the last step keeps its reward.
  next_rewards = jnp.concatenate([rewards[:, 1:], jnp.zeros_like(rewards[:, :1])], axis=1)
  next_valid = jnp.concatenate([valid[:, 1:], jnp.zeros_like(valid[:, :1])], axis=1)
  return jnp.where(valid, rewards - jnp.where(next_valid, next_rewards, 0.0), 0.0)
