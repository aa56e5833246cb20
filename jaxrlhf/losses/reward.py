"""Reward-model losses: Bradley-Terry (with margin, label smoothing, centering), adaptive margins from ensemble
preference strength, and masked multi-attribute regression with its scalarization.

All functions take rewards as arrays, never a model; they compute in float32 whatever the input dtype.
"""

import jax
import jax.numpy as jnp



def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def _check_same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str, ndim: int) -> None:
  if a.ndim != ndim:
    raise ValueError(f"{name_a} must have {ndim} dims; got shape {a.shape}")
  if a.shape != b.shape:
    raise ValueError(f"{name_b} must have the shape of {name_a} {a.shape}; got {b.shape}")


def bradley_terry_loss(chosen_rewards_B: jax.Array, rejected_rewards_B: jax.Array, *,
                       margin: jax.Array | float | None = None, label_smoothing: float = 0.0,
                       center_coeff: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-pair Bradley-Terry reward-model loss.

  With d = r_c - r_r - m and eps = label_smoothing:
    loss_i = (1 - eps) * -log sigmoid(d_i) + eps * -log sigmoid(-d_i) + center_coeff * (r_c,i + r_r,i)^2.
  eps = 0 is the standard BT negative log-likelihood (Ouyang et al. 2022, eq. 1); the margin m is Llama 2's
  (Touvron et al. 2023, eq. 2); the centering term is TRL's `center_rewards_coefficient` (Eisenstein et al. 2023);
  eps > 0 is the label-smoothed / conservative BT form (a flip-noise robust likelihood, as in cDPO/robust DPO).
  The batch mean of `losses` equals TRL 1.16 `RewardTrainer.compute_loss` (which averages each term over the
  batch) for eps = 0.

  Args:
    chosen_rewards_B: (B,) rewards of the preferred responses.
    rejected_rewards_B: (B,) rewards of the dispreferred responses.
    margin: None, a scalar, or (B,) margins m (NaN entries, the data contract's "absent", count as 0).
    label_smoothing: eps in [0, 0.5), the assumed probability that a label is flipped.
    center_coeff: weight of the (r_c + r_r)^2 centering penalty (>= 0).

  Returns:
    (losses_B float32, metrics) with scalar batch means `rewards/chosen`, `rewards/rejected`, `rewards/margin`
    (r_c - r_r, without m) and `rewards/accuracy` (fraction with r_c > r_r).
  """
  chosen = _f32(chosen_rewards_B)
  rejected = _f32(rejected_rewards_B)
  _check_same_shape(chosen, rejected, "chosen_rewards_B", "rejected_rewards_B", 1)
  if not 0.0 <= label_smoothing < 0.5:
    raise ValueError(f"label_smoothing must be in [0, 0.5); got {label_smoothing}")
  if center_coeff < 0:
    raise ValueError(f"center_coeff must be >= 0; got {center_coeff}")
  diff = chosen - rejected
  logits = diff
  if margin is not None:
    m = _f32(margin)
    if m.ndim not in (0, 1) or (m.ndim == 1 and m.shape != chosen.shape):
      raise ValueError(f"margin must be a scalar or have shape {chosen.shape}; got {m.shape}")
    logits = diff - jnp.where(jnp.isnan(m), 0.0, m)
  losses = -jax.nn.log_sigmoid(logits)
  if label_smoothing:
    losses = (1.0 - label_smoothing) * losses + label_smoothing * -jax.nn.log_sigmoid(-logits)
  if center_coeff:
    losses = losses + center_coeff * jnp.square(chosen + rejected)
  metrics = {
      "rewards/chosen": jnp.mean(chosen),
      "rewards/rejected": jnp.mean(rejected),
      "rewards/margin": jnp.mean(diff),
      "rewards/accuracy": jnp.mean((diff > 0).astype(jnp.float32)),
  }
  return losses, metrics


def preference_strength(chosen_rewards_BxM: jax.Array,
                        rejected_rewards_BxM: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Preference strength of each pair under an M-member reward ensemble (Secrets of RLHF II, Wang et al. 2024, §2).

  d_m = r_m(x, y_c) - r_m(x, y_r);  mean_i = (1/M) sum_m d_m;  std_i = sqrt((1/M) sum_m (d_m - mean_i)^2)
  (population std, ddof=0). A negative mean flags a likely mislabeled pair; a large std an ambiguous one.

  Args:
    chosen_rewards_BxM: (B, M) rewards of the chosen responses from each member.
    rejected_rewards_BxM: (B, M) the same for the rejected responses.

  Returns:
    (mean_B, std_B) float32.
  """
  chosen = _f32(chosen_rewards_BxM)
  rejected = _f32(rejected_rewards_BxM)
  _check_same_shape(chosen, rejected, "chosen_rewards_BxM", "rejected_rewards_BxM", 2)
  diff = chosen - rejected
  return jnp.mean(diff, axis=-1), jnp.std(diff, axis=-1)


def adaptive_margin(strength_mean_B: jax.Array, scale: float = 1.0, *,
                    clip_min: float | None = None) -> jax.Array:
  """Adaptive BT margin from ensemble preference strength (Secrets of RLHF II, Wang et al. 2024, §3.2).

  margin_i = scale * stop_gradient(mu_i), optionally max(margin_i, clip_min), for the loss
  -log sigmoid(r_c - r_r - margin_i): pairs the ensemble finds clearly separated must be separated by more, weak
  or ambiguous pairs by less. Choice made here: the margin is the (scaled) ensemble mean difference itself, not a
  learned or bucketed function of it; pass clip_min=0.0 to keep suspected-mislabeled pairs (mu < 0) from pulling
  the reward the other way. The stop-gradient makes the margin a constant for the trained reward model.

  Args:
    strength_mean_B: (B,) mean preference strength (first output of `preference_strength`).
    scale: multiplies mu (the paper tunes this coefficient).
    clip_min: optional lower bound on the margin.

  Returns:
    margin_B float32, to pass as `bradley_terry_loss(..., margin=margin_B)`.
  """
  mu = _f32(strength_mean_B)
  if mu.ndim != 1:
    raise ValueError(f"strength_mean_B must have shape (B,); got {mu.shape}")
  margin = scale * jax.lax.stop_gradient(mu)
  if clip_min is not None:
    margin = jnp.maximum(margin, clip_min)
  return margin


def attribute_regression_loss(pred_BxK: jax.Array, target_BxK: jax.Array,
                              mask_BxK: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked per-attribute MSE for multi-attribute reward heads (HelpSteer2, Wang et al. 2024, §4 "regression").

  loss_i = sum_k m_ik (p_ik - y_ik)^2 / max(sum_k m_ik, 1): the mean squared error over the attributes observed for
  example i (0 for an example with none). Targets at unobserved positions may be NaN.

  Args:
    pred_BxK: (B, K) predicted attribute scores.
    target_BxK: (B, K) annotated scores.
    mask_BxK: (B, K), nonzero where the attribute is annotated; None means all observed.

  Returns:
    (losses_B float32, metrics) with `attributes/mse` (mean over all observed entries) and `attributes/mse_k`
    (K,) per-attribute MSE over observed entries (0 where an attribute is never observed).
  """
  pred = _f32(pred_BxK)
  target = _f32(target_BxK)
  _check_same_shape(pred, target, "pred_BxK", "target_BxK", 2)
  if mask_BxK is None:
    valid = jnp.ones(pred.shape, bool)
  else:
    if mask_BxK.shape != pred.shape:
      raise ValueError(f"mask_BxK must have shape {pred.shape}; got {mask_BxK.shape}")
    valid = mask_BxK > 0
  sq = jnp.where(valid, jnp.square(pred - jnp.where(valid, target, 0.0)), 0.0)
  count_B = jnp.sum(valid, axis=-1).astype(jnp.float32)
  losses = jnp.sum(sq, axis=-1) / jnp.maximum(count_B, 1.0)
  count_K = jnp.sum(valid, axis=0).astype(jnp.float32)
  metrics = {
      "attributes/mse": jnp.sum(sq) / jnp.maximum(jnp.sum(count_K), 1.0),
      "attributes/mse_k": jnp.sum(sq, axis=0) / jnp.maximum(count_K, 1.0),
  }
  return losses, metrics


def scalarize_attributes(attrs_BxK: jax.Array, weights_K: jax.Array) -> jax.Array:
  """Weighted sum of attribute scores into one reward (HelpSteer2, Wang et al. 2024, §4: r = sum_k w_k a_k).

  Args:
    attrs_BxK: (B, K) attribute scores (or (..., K)).
    weights_K: (K,) weights, e.g. over HelpSteer2's helpfulness, correctness, coherence, complexity, verbosity
      (the paper searches the weights on a validation set; verbosity usually gets a negative weight).

  Returns:
    rewards_B float32 (or the leading shape of attrs).
  """
  attrs = _f32(attrs_BxK)
  weights = _f32(weights_K)
  if attrs.ndim < 1 or weights.ndim != 1 or attrs.shape[-1] != weights.shape[0]:
    raise ValueError(f"weights_K must have shape ({attrs.shape[-1] if attrs.ndim else '?'},) to match attrs_BxK "
                     f"{attrs.shape}; got {weights.shape}")
  return jnp.sum(attrs * weights, axis=-1)
