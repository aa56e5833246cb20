"""PPO with a value model (Schulman et al. 2017) in the RLHF setup of Ziegler et al. 2019, Stiennon et al. 2020
("Learning to summarize") and Gao et al. 2022: per-token rewards (score on the last token minus beta * KL), GAE,
masked whitening, the clipped value loss, the PPO loss, and the KL-coefficient controllers as pure state updates.

Numerics follow TRL's PPOTrainer (v1.9.0, trl/experimental/ppo/ppo_trainer.py; TRL 1.16 no longer ships PPO) and,
for the adaptive controller, TRL v0.13.0's `AdaptiveKLController`.

Layout: B = responses, T = response tokens, right padded (real tokens first). TRL uses two masks: the policy mask
(the response tokens whose log-probs are trained) and a value mask that may extend one token further (TRL's
`padding_mask_p1`, the token after the last real one, where its score lands); `value_mask_BxT` defaults to the
policy mask. Everything is float32.
"""

import jax
import jax.numpy as jnp

from jaxrlhf.losses import policy_gradient as pg

KL_CONTROLLERS = ("fixed", "adaptive")


def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def _check_like(x: jax.Array, shape: tuple[int, ...], name: str) -> None:
  if jnp.shape(x) != shape:
    raise ValueError(f"{name} must have shape {shape}; got {jnp.shape(x)}")


def _masked_mean(x: jax.Array, valid: jax.Array) -> jax.Array:
  return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def masked_whiten(values_BxT: jax.Array, mask_BxT: jax.Array, *, shift_mean: bool = True,
                  eps: float = 1e-8) -> jax.Array:
  """Whitens values over the masked entries of the whole batch, as TRL's `masked_whiten` (then `masked_fill` 0).

  mu = mean_m(x), var = n / (n - 1) * mean_m((x - mu)^2) (Bessel, n = mask count), y = (x - mu) / sqrt(var + eps);
  with shift_mean=False the mean is added back (y + mu: rescaled, not centered; TRL's reward whitening).

  Args:
    values_BxT: (B, T) values (advantages or rewards).
    mask_BxT: (B, T), nonzero on entries that enter the statistics.
    shift_mean: center (True) or keep the mean (False).
    eps: added to the variance (TRL: 1e-8).

  Returns:
    (B, T) float32, 0 at masked positions. With one valid entry the variance is taken as 0 (TRL divides by zero).
  """
  pg._check_tokens(values_BxT, mask_BxT, "values_BxT")
  valid = mask_BxT > 0
  x = _f32(values_BxT)
  count = jnp.sum(valid).astype(jnp.float32)
  mean = _masked_mean(x, valid)
  var = _masked_mean(jnp.square(x - mean), valid) * count / jnp.maximum(count - 1.0, 1.0)
  whitened = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    whitened = whitened + mean
  return jnp.where(valid, whitened, 0.0)


def gae_advantages(rewards_BxT: jax.Array, values_BxT: jax.Array, mask_BxT: jax.Array, *, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[jax.Array, jax.Array]:
  """Generalized advantage estimation (Schulman et al. 2016, eq. 16), backwards over right-padded sequences.

  delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1},  R_t = A_t + V_t,
  with r, V set to 0 outside the mask, so V after the last real token is 0 (the episode ends) and padding adds
  nothing: TRL's loop over the response with values masked to 0 past `padding_mask_p1`.

  Args:
    rewards_BxT: (B, T) per-token rewards (`kl_penalized_token_rewards`).
    values_BxT: (B, T) value-model predictions V(s_t) for the state before token t.
    mask_BxT: (B, T) right-padded mask of the tokens the values/rewards belong to (TRL's value mask).
    gamma: discount (TRL default 1.0).
    lam: GAE lambda (TRL default 0.95); lam = 1 gives Monte-Carlo returns, lam = 0 one-step TD.

  Returns:
    (advantages_BxT, returns_BxT) float32, 0 at masked positions; returns are the value targets.
  """
  pg._check_tokens(rewards_BxT, mask_BxT, "rewards_BxT")
  _check_like(values_BxT, rewards_BxT.shape, "values_BxT")
  valid = mask_BxT > 0
  rewards = jnp.where(valid, _f32(rewards_BxT), 0.0)
  values = jnp.where(valid, _f32(values_BxT), 0.0)
  next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)

  def step(last_gae_B, xs):
    r_B, v_B, next_v_B = xs
    delta = r_B + gamma * next_v_B - v_B
    gae = delta + gamma * lam * last_gae_B
    return gae, gae

  _, adv_TxB = jax.lax.scan(step, jnp.zeros(rewards.shape[:1], jnp.float32),
                            (rewards.T, values.T, next_values.T), reverse=True)
  advantages = adv_TxB.T
  returns = advantages + values
  return jnp.where(valid, advantages, 0.0), jnp.where(valid, returns, 0.0)


def ppo_advantages(scores_B: jax.Array, logps_BxT: jax.Array, ref_logps_BxT: jax.Array, values_BxT: jax.Array,
                   mask_BxT: jax.Array, *, kl_coef: float | jax.Array, gamma: float = 1.0, lam: float = 0.95,
                   kl_estimator: str = "k1", whiten_rewards: bool = False,
                   value_mask_BxT: jax.Array | None = None, token_rewards_BxT: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """PPO rollout targets, TRL PPOTrainer steps 4-6: per-token rewards, optional reward whitening, GAE, and
  advantage whitening.

  r_t = -kl_coef * k(pi_old, pi_ref)_t + [t = last token of the value mask] * score   (Ziegler et al. 2019 eq. 2;
  Stiennon et al. 2020 eq. 1), then (A, R) = GAE(r, V) and A <- whiten_{policy mask}(A).

  Args:
    scores_B: (B,) reward-model scores of the responses.
    logps_BxT: (B, T) log-probs of the sampled tokens under the sampling policy.
    ref_logps_BxT: (B, T) log-probs under the reference policy.
    values_BxT: (B, T) value-model predictions at rollout time (the old values of the value loss).
    mask_BxT: (B, T) policy mask (right padded).
    kl_coef: beta (a float, or the controller's traced coefficient).
    gamma, lam: GAE parameters.
    kl_estimator: "k1" (TRL default) or "k3" (or "k2").
    whiten_rewards: whiten the per-token rewards over the value mask without centering (TRL `whiten_rewards`).
    value_mask_BxT: (B, T) mask of the value targets; must contain the policy mask (defaults to it).
    token_rewards_BxT: optional (B, T) rewards added to r_t on their tokens (e.g. a process reward's step rewards,
      whose return-to-go then varies along the response); 0 outside the value mask.

  Returns:
    (advantages_BxT, returns_BxT, metrics): advantages whitened over the policy mask and 0 outside it; returns 0
    outside the value mask; metrics `objective/kl` (mean over responses of the summed KL),
    `objective/non_score_reward` (mean of -kl_coef * summed KL), `objective/scores`, `objective/rlhf_reward`.
  """
  value_mask = mask_BxT if value_mask_BxT is None else value_mask_BxT
  _check_like(value_mask, jnp.shape(mask_BxT), "value_mask_BxT")
  _check_like(values_BxT, jnp.shape(mask_BxT), "values_BxT")
  kl = pg.kl_divergence(logps_BxT, ref_logps_BxT, mask_BxT, estimator=kl_estimator)
  rewards = pg.kl_penalized_token_rewards(scores_B, kl, value_mask, kl_coef)
  if token_rewards_BxT is not None:
    _check_like(token_rewards_BxT, jnp.shape(mask_BxT), "token_rewards_BxT")
    rewards = rewards + jnp.where(value_mask > 0, _f32(token_rewards_BxT), 0.0)
  if whiten_rewards:
    rewards = masked_whiten(rewards, value_mask, shift_mean=False)
  advantages, returns = gae_advantages(rewards, values_BxT, value_mask, gamma=gamma, lam=lam)
  advantages = masked_whiten(advantages, mask_BxT)
  seq_kl = jnp.sum(kl, axis=1)
  non_score = -_f32(kl_coef) * jnp.mean(seq_kl)
  metrics = {
      "objective/kl": jnp.mean(seq_kl),
      "objective/non_score_reward": non_score,
      "objective/scores": jnp.mean(_f32(scores_B)),
      "objective/rlhf_reward": non_score + jnp.mean(_f32(scores_B)),
  }
  return advantages, returns, metrics


def clipped_value_loss(values_BxT: jax.Array, old_values_BxT: jax.Array, returns_BxT: jax.Array,
                       mask_BxT: jax.Array, *, clip_range_value: float | None = 0.2
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-token clipped value loss (PPO2's value clipping; TRL's `vf_loss` with `cliprange_value`).

  V_clip = clip(V, V_old - c, V_old + c),  l_t = 0.5 * max((V - R)^2, (V_clip - R)^2); TRL's scalar value loss is
  the mean of l_t over the value mask (`aggregate_token_losses(..., "token_mean")`). clip_range_value None gives
  the unclipped 0.5 * (V - R)^2.

  Args:
    values_BxT: (B, T) current value predictions (differentiated).
    old_values_BxT: (B, T) value predictions at rollout time.
    returns_BxT: (B, T) value targets (`gae_advantages`).
    mask_BxT: (B, T) value mask.
    clip_range_value: c >= 0 (TRL default 0.2), or None.

  Returns:
    (loss_BxT float32, 0 at masked positions; metrics `value/clipfrac` = token mean of [clipped loss is larger],
    `value/mean`, `value/error` = token mean of (V - R)^2).
  """
  pg._check_tokens(values_BxT, mask_BxT, "values_BxT")
  _check_like(old_values_BxT, values_BxT.shape, "old_values_BxT")
  _check_like(returns_BxT, values_BxT.shape, "returns_BxT")
  if clip_range_value is not None and clip_range_value < 0:
    raise ValueError(f"clip_range_value must be >= 0 or None; got {clip_range_value}")
  valid = mask_BxT > 0
  v = jnp.where(valid, _f32(values_BxT), 0.0)
  old = _f32(old_values_BxT)
  ret = _f32(returns_BxT)
  unclipped = jnp.square(v - ret)
  if clip_range_value is None:
    clipped = unclipped
  else:
    clipped = jnp.square(jnp.clip(v, old - clip_range_value, old + clip_range_value) - ret)
  loss = jnp.where(valid, 0.5 * jnp.maximum(unclipped, clipped), 0.0)
  metrics = {
      "value/clipfrac": _masked_mean((clipped > unclipped).astype(jnp.float32), valid),
      "value/mean": _masked_mean(jax.lax.stop_gradient(v), valid),
      "value/error": _masked_mean(jax.lax.stop_gradient(unclipped), valid),
  }
  return loss, metrics


def ppo_loss(logps_BxT: jax.Array, old_logps_BxT: jax.Array, advantages_BxT: jax.Array, values_BxT: jax.Array,
             old_values_BxT: jax.Array, returns_BxT: jax.Array, mask_BxT: jax.Array, *,
             value_mask_BxT: jax.Array | None = None, clip_range: float = 0.2,
             clip_range_value: float | None = 0.2, vf_coef: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO loss of one minibatch: L = mean_m(-min(rho A, clip(rho, 1 - c, 1 + c) A)) + vf_coef * mean_vm(l_value)
  (Schulman et al. 2017, eq. 9 without the entropy bonus; TRL PPOTrainer `loss = pg_loss + vf_coef * vf_loss`).

  Args:
    logps_BxT: (B, T) current policy log-probs (differentiated).
    old_logps_BxT: (B, T) log-probs at rollout time.
    advantages_BxT: (B, T) whitened advantages (`ppo_advantages`).
    values_BxT, old_values_BxT, returns_BxT: as in `clipped_value_loss`.
    mask_BxT: (B, T) policy mask; value_mask_BxT: (B, T) value mask (defaults to the policy mask).
    clip_range: policy ratio clip c (TRL `cliprange`, 0.2).
    clip_range_value: value clip (TRL `cliprange_value`, 0.2), or None.
    vf_coef: value-loss weight (TRL `vf_coef`, 0.1).

  Returns:
    (scalar float32, metrics): `loss/policy`, `loss/value`, `policy/clipfrac` (TRL's pg_clipfrac: tokens where the
    clipped term is active), `policy/approxkl` (token mean of 0.5 * (logp - logp_old)^2), `ratio/mean`, and the
    value metrics.
  """
  value_mask = mask_BxT if value_mask_BxT is None else value_mask_BxT
  pg_BxT, pg_metrics = pg.clipped_surrogate(logps_BxT, old_logps_BxT, advantages_BxT, mask_BxT, epsilon=clip_range)
  vf_BxT, vf_metrics = clipped_value_loss(values_BxT, old_values_BxT, returns_BxT, value_mask,
                                          clip_range_value=clip_range_value)
  pg_loss = pg.aggregate_token_losses(pg_BxT, mask_BxT, "token_mean")
  vf_loss = pg.aggregate_token_losses(vf_BxT, value_mask, "token_mean")
  valid = mask_BxT > 0
  log_ratio = jax.lax.stop_gradient(_f32(logps_BxT) - _f32(old_logps_BxT))
  metrics = {
      "loss/policy": jax.lax.stop_gradient(pg_loss),
      "loss/value": jax.lax.stop_gradient(vf_loss),
      "policy/clipfrac": pg_metrics["clip_ratio/region_mean"],
      "policy/approxkl": _masked_mean(0.5 * jnp.square(log_ratio), valid),
      "ratio/mean": pg_metrics["ratio/mean"],
      **vf_metrics,
  }
  return pg_loss + vf_coef * vf_loss, metrics


def fixed_kl_coef(kl_coef: float | jax.Array, current_kl: float | jax.Array, n_steps: int | jax.Array, *,
                  target: float | None = None, horizon: float | None = None) -> jax.Array:
  """Fixed KL controller: beta stays beta (TRL's `FixedKLController.update`). The signature matches
  `adaptive_kl_coef` so a config picks either by name; current_kl, n_steps, target and horizon are unused."""
  del current_kl, n_steps, target, horizon
  return _f32(kl_coef)


def adaptive_kl_coef(kl_coef: float | jax.Array, current_kl: float | jax.Array, n_steps: int | jax.Array, *,
                     target: float = 6.0, horizon: float = 10000.0) -> jax.Array:
  """Adaptive KL controller (Ziegler et al. 2019, §2.2), one pure update of the coefficient:

  e = clip(KL_current / KL_target - 1, -0.2, 0.2),  beta <- beta * (1 + K_beta * e), K_beta = n_steps / horizon,

  as TRL v0.13.0's `AdaptiveKLController.update(current, n_steps)` (n_steps = samples in the batch).

  Args:
    kl_coef: the current beta.
    current_kl: the measured KL(pi || pi_ref) of the batch (summed over tokens, averaged over responses).
    n_steps: samples (episodes) since the last update.
    target: KL_target (Ziegler et al.: 6 nats for the sentiment task; TRL default 6).
    horizon: the horizon (TRL default 10000).

  Returns:
    the new beta, float32 scalar (jit-friendly: thread it through the train state).
  """
  if target <= 0 or horizon <= 0:
    raise ValueError(f"target and horizon must be > 0; got target={target}, horizon={horizon}")
  error = jnp.clip(_f32(current_kl) / target - 1.0, -0.2, 0.2)
  return _f32(kl_coef) * (1.0 + error * _f32(n_steps) / horizon)


def update_kl_coef(controller: str, kl_coef: float | jax.Array, current_kl: float | jax.Array,
                   n_steps: int | jax.Array, *, target: float = 6.0, horizon: float = 10000.0) -> jax.Array:
  """The KL-coefficient update named by config: "fixed" or "adaptive" (see their functions)."""
  if controller not in KL_CONTROLLERS:
    raise ValueError(f"kl controller must be one of {list(KL_CONTROLLERS)}; got {controller!r}")
  fn = fixed_kl_coef if controller == "fixed" else adaptive_kl_coef
  return fn(kl_coef, current_kl, n_steps, target=target, horizon=horizon)
