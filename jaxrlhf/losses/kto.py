"""KTO: unpaired prospect-theoretic preference loss (Ethayarajh et al. 2024), as TRL 1.16's KTOTrainer computes it."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrlhf.losses.preference import check_per_example, check_same_shape, to_f32

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


def kto_kl_estimate(kl_logps: jax.Array, ref_kl_logps: jax.Array) -> jax.Array:
  """The KTO reference point z0 = max(0, mean_i [log pi(y'_i|x_i) - log pi_ref(y'_i|x_i)]), without gradient.

  y'_i are mismatched completions (TRL pairs each prompt with the previous example's completion). The mean runs over
  the whole (global, possibly sharded) batch, as TRL's gather-then-mean does across processes.

  Args:
    kl_logps, ref_kl_logps: summed log-probs of the mismatched completions under policy and reference, (B,).

  Returns:
    scalar float32.
  """
  check_same_shape("kl_logps", kl_logps, ref_kl_logps=ref_kl_logps)
  kl = jnp.mean(to_f32(kl_logps) - to_f32(ref_kl_logps))
  return jax.lax.stop_gradient(jnp.maximum(kl, 0.0))


def kto_loss(
    policy_logps: jax.Array,
    ref_logps: jax.Array,
    desirable: jax.Array,
    *,
    kl=0.0,
    beta=0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", Eq. 7).

    r = log pi(y|x) - log pi_ref(y|x),  z0 = stop_gradient(max(kl, 0))
    desirable:    lambda_D * (1 - sigmoid(beta (r - z0)))
    undesirable:  lambda_U * (1 - sigmoid(beta (z0 - r)))
  loss_type "apo_zero_unpaired" (APO, D'Oosterlinck et al. 2024, unpaired Eq. 7) uses 1 - sigmoid(beta r) and
  sigmoid(beta r) and no reference point. The mean of the returned losses equals TRL 1.16's KTOTrainer loss.

  Args:
    policy_logps, ref_logps: summed response log-probs under policy and reference, (B,).
    desirable: (B,) bool or 0/1: whether each response is desirable (TRL's `label`).
    kl: the reference point z0 (scalar), e.g. from `kto_kl_estimate`; clamped at 0 and stop-gradient here too.
    beta: scalar or per-example (B,).
    desirable_weight, undesirable_weight: lambda_D, lambda_U.
    loss_type: "kto" or "apo_zero_unpaired".
    weights: optional per-example loss weights (B,).

  Returns:
    (losses (B,), metrics) where `rewards/chosen` / `rewards/rejected` hold beta * r on desirable / undesirable
    examples and 0 elsewhere, `count/chosen` / `count/rejected` the 0/1 indicators (divide summed rewards by summed
    counts for TRL's means), `logps/chosen` / `logps/rejected` likewise masked, and `kl` (z0 broadcast to (B,)).
  """
  if loss_type not in KTO_LOSS_TYPES:
    raise ValueError(f"unknown loss_type {loss_type!r}; valid values: {list(KTO_LOSS_TYPES)}")
  check_same_shape("policy_logps", policy_logps, ref_logps=ref_logps, desirable=desirable)
  check_per_example("policy_logps", policy_logps, beta=beta, weights=weights)
  if jnp.shape(kl) != ():
    raise ValueError(f"kl must be a scalar reference point; got shape {jnp.shape(kl)}")
  beta = to_f32(beta)
  logps = to_f32(policy_logps)
  is_desirable = jnp.asarray(desirable).astype(bool)
  logratios = logps - to_f32(ref_logps)
  z0 = jax.lax.stop_gradient(jnp.maximum(to_f32(kl), 0.0))
  if loss_type == "kto":
    chosen_losses = 1.0 - jax.nn.sigmoid(beta * (logratios - z0))
    rejected_losses = 1.0 - jax.nn.sigmoid(beta * (z0 - logratios))
  else:
    chosen_losses = 1.0 - jax.nn.sigmoid(beta * logratios)
    rejected_losses = jax.nn.sigmoid(beta * logratios)
  losses = jnp.where(is_desirable, desirable_weight * chosen_losses, undesirable_weight * rejected_losses)
  if weights is not None:
    losses = losses * to_f32(weights)
  rewards = jax.lax.stop_gradient(beta * logratios)
  d = is_desirable.astype(jnp.float32)
  metrics = {
      "rewards/chosen": rewards * d,
      "rewards/rejected": rewards * (1.0 - d),
      "count/chosen": d,
      "count/rejected": 1.0 - d,
      "logps/chosen": jax.lax.stop_gradient(logps) * d,
      "logps/rejected": jax.lax.stop_gradient(logps) * (1.0 - d),
      "kl": jnp.broadcast_to(z0, logps.shape),
  }
  return losses, metrics
