"""T-REG: preference optimization with token-level reward regularization (Zhou et al. 2024, arXiv:2412.02685,
"T-REG: Preference Optimization with Token-Level Reward Regularization", ACL 2025, Sec. 3).

Token rewards come from the policy itself under two contrastive prompts (one asking for a better, one for a worse
response); they regularize how the DPO objective distributes the sequence reward over the tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrlhf.losses.preference import check_same_shape, dpo_loss, to_f32


def contrastive_token_rewards(
    better_logps_BxT: jax.Array, worse_logps_BxT: jax.Array, mask_BxT: jax.Array
) -> jax.Array:
  """Self-generated token rewards r_t = sigmoid(log pi(y_t|x_better, y_<t) - log pi(y_t|x_worse, y_<t)) - 0.5.

  Args:
    better_logps_BxT: per-token log-probs of the response under the "write a better response" prompt.
    worse_logps_BxT: the same under the "write a worse response" prompt.
    mask_BxT: 1 on response tokens, 0 on padding.

  Returns:
    r_BxT float32 in (-0.5, 0.5), 0 where masked, without gradient (the rewards are targets).
  """
  check_same_shape("better_logps_BxT", better_logps_BxT, worse_logps_BxT=worse_logps_BxT, mask_BxT=mask_BxT)
  r = jax.nn.sigmoid(to_f32(better_logps_BxT) - to_f32(worse_logps_BxT)) - 0.5
  return jax.lax.stop_gradient(r * to_f32(mask_BxT))


def token_reward_regularizer(
    token_logps_BxT: jax.Array, token_rewards_BxT: jax.Array, mask_BxT: jax.Array, *, beta=0.1
) -> jax.Array:
  """L_REG(x, y) = -sum_t beta * r_t * log pi_theta(y_t | x, y_<t), with r_t held constant (stop-gradient).

  Minimizing it raises the policy's log-prob of tokens with positive token reward and lowers it for negative ones,
  i.e. aligns DPO's implicit token rewards beta * log(pi/pi_ref) with r_t (the reference term is constant in theta).

  Args:
    token_logps_BxT: policy per-token log-probs of the response.
    token_rewards_BxT: r_t, e.g. from `contrastive_token_rewards`.
    mask_BxT: 1 on response tokens.
    beta: scalar or per-example (B,).

  Returns:
    (B,) float32.
  """
  check_same_shape("token_logps_BxT", token_logps_BxT, token_rewards_BxT=token_rewards_BxT, mask_BxT=mask_BxT)
  r = jax.lax.stop_gradient(to_f32(token_rewards_BxT))
  per_token = r * to_f32(token_logps_BxT) * to_f32(mask_BxT)
  return -to_f32(beta) * jnp.sum(per_token, axis=-1)


def treg_loss(
    chosen_token_logps_BxT: jax.Array,
    rejected_token_logps_BxT: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    chosen_token_rewards_BxT: jax.Array,
    rejected_token_rewards_BxT: jax.Array,
    chosen_mask_BxT: jax.Array,
    rejected_mask_BxT: jax.Array,
    *,
    beta=0.1,
    alpha: float = 1.0,
    weights: jax.Array | None = None,
    **dpo_kwargs,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """T-REG objective per example (Zhou et al. 2024, Sec. 3.2-3.3):

    r_dpo(y) = beta * (log pi(y|x) - log pi_ref(y|x))                 (DPO's sequence reward)
    w = stop_gradient(sigmoid(r_dpo(y_l) - r_dpo(y_w)))                (sequence-level weight)
    loss = L_DPO + alpha * w * (L_REG(x, y_w) + L_REG(x, y_l))         (its batch mean is the paper's objective)

  with L_REG from `token_reward_regularizer`. The weight w is large when DPO still ranks the pair wrongly.

  Args:
    chosen_token_logps_BxT, rejected_token_logps_BxT: policy per-token log-probs (B, T) (Tc and Tr may differ).
    ref_chosen_logps, ref_rejected_logps: reference summed log-probs (B,).
    chosen_token_rewards_BxT, rejected_token_rewards_BxT: r_t for each response (`contrastive_token_rewards`).
    chosen_mask_BxT, rejected_mask_BxT: 1 on response tokens.
    beta: DPO beta, also the scale of L_REG; scalar or (B,).
    alpha: weight of the regularizer.
    weights: optional per-example loss weights (B,), applied to the total.
    **dpo_kwargs: passed to `dpo_loss` (loss_type, label_smoothing, ...; lengths are filled in from the masks).

  Returns:
    (losses (B,), metrics): `dpo_loss`'s metrics plus `treg/reg_chosen`, `treg/reg_rejected`, `treg/weight` (B,).
  """
  check_same_shape(
      "chosen_token_logps_BxT",
      chosen_token_logps_BxT,
      chosen_token_rewards_BxT=chosen_token_rewards_BxT,
      chosen_mask_BxT=chosen_mask_BxT,
  )
  check_same_shape(
      "rejected_token_logps_BxT",
      rejected_token_logps_BxT,
      rejected_token_rewards_BxT=rejected_token_rewards_BxT,
      rejected_mask_BxT=rejected_mask_BxT,
  )
  chosen_mask = to_f32(chosen_mask_BxT)
  rejected_mask = to_f32(rejected_mask_BxT)
  chosen_logps = jnp.sum(to_f32(chosen_token_logps_BxT) * chosen_mask, axis=-1)
  rejected_logps = jnp.sum(to_f32(rejected_token_logps_BxT) * rejected_mask, axis=-1)
  dpo_kwargs.setdefault("chosen_lengths", jnp.sum(chosen_mask, axis=-1))
  dpo_kwargs.setdefault("rejected_lengths", jnp.sum(rejected_mask, axis=-1))
  dpo_losses, metrics = dpo_loss(
      chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta, **dpo_kwargs
  )
  reg_chosen = token_reward_regularizer(chosen_token_logps_BxT, chosen_token_rewards_BxT, chosen_mask, beta=beta)
  reg_rejected = token_reward_regularizer(
      rejected_token_logps_BxT, rejected_token_rewards_BxT, rejected_mask, beta=beta
  )
  seq_weight = jax.lax.stop_gradient(jax.nn.sigmoid(metrics["rewards/rejected"] - metrics["rewards/chosen"]))
  losses = dpo_losses + alpha * seq_weight * (reg_chosen + reg_rejected)
  if weights is not None:
    losses = losses * to_f32(weights)
  metrics = dict(metrics)
  metrics["treg/reg_chosen"] = jax.lax.stop_gradient(reg_chosen)
  metrics["treg/reg_rejected"] = jax.lax.stop_gradient(reg_rejected)
  metrics["treg/weight"] = seq_weight
  return losses, metrics
