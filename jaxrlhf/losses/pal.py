"""PAL's losses (Chen, Chen, Rege, Vinayak 2024, "PAL: Pluralistic Alignment Framework for Learning from
Heterogeneous Preferences", arXiv:2406.08469): the per-user Bradley-Terry likelihood of the rewards r_u(x) of
`jaxrlhf.models.pal`, optionally with every user weighted equally (the authors' "logistic_w": pair weight 1 / the
user's pair count), and their prototype-norm bound (a hinge on each prototype's norm above a bound).

Functions of arrays only (the rewards come from the model); float32 whatever the input dtype.
"""

import jax
import jax.numpy as jnp


def user_balanced_weights(user_B: jax.Array, counts_U: jax.Array) -> jax.Array:
  """(B,) pair weights 1 / counts_U[user_B], normalized to sum to B: each user's pairs weigh as much in total as any
  other user's (the authors' `logistic_w`, which divides by the batch's total instead; the normalization to B
  keeps the scale of the unweighted mean)."""
  inv = 1.0 / jnp.maximum(jnp.asarray(counts_U, jnp.float32)[user_B], 1.0)
  return inv * (inv.shape[0] / jnp.sum(inv))


def pal_loss(chosen_rewards_B: jax.Array, rejected_rewards_B: jax.Array, user_B: jax.Array | None = None,
             counts_U: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-pair PAL loss: the user's Bradley-Terry negative log-likelihood
    loss_i = -w_i log sigmoid(r_{u_i}(x_c,i) - r_{u_i}(x_r,i)),
  w_i = 1 (the paper's "logistic" loss on the ideal-point rewards) or, with counts_U, user-balanced weights
  (`user_balanced_weights`).

  Args:
    chosen_rewards_B / rejected_rewards_B: (B,) rewards of the preferred / dispreferred responses under the pair's
      own user (r_u = -distance to the user's ideal point for PAL-A).
    user_B: (B,) int user index of each pair (needed with counts_U).
    counts_U: (U,) pairs per user in the training data, or None for w = 1.

  Returns:
    (losses_B, metrics) with batch means `rewards/margin` and `rewards/accuracy` (r_c > r_r).
  """
  r_c = jnp.asarray(chosen_rewards_B).astype(jnp.float32)
  r_r = jnp.asarray(rejected_rewards_B).astype(jnp.float32)
  if r_c.ndim != 1 or r_c.shape != r_r.shape:
    raise ValueError(f"chosen_rewards_B / rejected_rewards_B must be matching (B,) arrays; got {r_c.shape}, "
                     f"{r_r.shape}")
  losses = -jax.nn.log_sigmoid(r_c - r_r)
  if counts_U is not None:
    if user_B is None:
      raise ValueError("pal_loss: counts_U needs user_B (the user of each pair)")
    losses = losses * user_balanced_weights(user_B, counts_U)
  metrics = {"rewards/margin": jnp.mean(r_c - r_r), "rewards/accuracy": jnp.mean((r_c > r_r).astype(jnp.float32))}
  return losses, metrics


def prototype_norm_penalty(prototypes_Kxd: jax.Array, bound: float) -> jax.Array:
  """() sum_k max(||p_k||_2 - bound, 0): the authors' bound on the prototypes' magnitude (their
  ProtoBoundLossFunction, used with a weight lambda)."""
  norms = jnp.linalg.norm(jnp.asarray(prototypes_Kxd, jnp.float32), axis=-1)
  return jnp.sum(jnp.maximum(norms - bound, 0.0))
