"""Reference-free pairwise preference losses: SimPO and ORPO, on length-averaged sequence log-probs.

Inputs are summed response log-probs (B,) and response token counts (B,), as for `dpo_loss`; the losses average
them per token themselves. Outputs are `(losses (B,) float32, metrics of (B,) arrays)`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxrlhf.losses.preference import (
    to_f32,
    check_label_smoothing,
    check_per_example,
    check_same_shape,
    pair_metrics,
)


def _average(logps: jax.Array, lengths: jax.Array) -> jax.Array:
  return to_f32(logps) / jnp.maximum(to_f32(lengths), 1.0)


def simpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    *,
    beta=2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", Eq. 6).

    z = beta / |y_w| * log pi(y_w|x) - beta / |y_l| * log pi(y_l|x) - gamma
    loss = -(1 - eps) log sigmoid(z) - eps log sigmoid(-z)

  The label smoothing eps follows the SimPO repository (princeton-nlp/SimPO, `simpo_loss`) and TRL's CPO
  `loss_type="simpo"`, which write z = beta * (avg_w - avg_l - gamma / beta).

  Args:
    chosen_logps, rejected_logps: policy log-probs summed over response tokens, (B,).
    chosen_lengths, rejected_lengths: response token counts |y| (B,) (clamped at 1).
    beta: reward scale, scalar or per-example (B,) (e.g. `dynamic_beta`).
    gamma: target reward margin (the paper's gamma, not gamma / beta).
    label_smoothing: eps in [0, 0.5).
    weights: optional per-example loss weights (B,).

  Returns:
    (losses (B,), metrics) with rewards beta * average log-prob, as in the SimPO repository.
  """
  check_label_smoothing(label_smoothing)
  check_same_shape(
      "chosen_logps",
      chosen_logps,
      rejected_logps=rejected_logps,
      chosen_lengths=chosen_lengths,
      rejected_lengths=rejected_lengths,
  )
  check_per_example("chosen_logps", chosen_logps, beta=beta, weights=weights)
  beta = to_f32(beta)
  chosen_avg = _average(chosen_logps, chosen_lengths)
  rejected_avg = _average(rejected_logps, rejected_lengths)
  z = beta * (chosen_avg - rejected_avg) - gamma
  losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)
  if weights is not None:
    losses = losses * to_f32(weights)
  metrics = pair_metrics(beta * chosen_avg, beta * rejected_avg, to_f32(chosen_logps), to_f32(rejected_logps))
  return losses, metrics


# The largest length-averaged log-prob ORPO's odds use: log(1 - P) is -inf at P = 1 (log P = 0, e.g. the empty
# response of a zero-length filler row, or fp32 rounding of a near-certain one), with an infinite gradient, and
# 0 * inf = NaN would poison a weighted sum even at weight 0. At -1e-6 the odds stay finite (log(1 - P) ~ -13.8).
_MAX_AVERAGE_LOGP = -1e-6


def log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x <= 0 without cancellation (Maechler 2012): log(-expm1(x)) near 0, log1p(-exp(x)) below
  -log 2. x = 0 gives -inf (a response of probability 1 has infinite odds)."""
  use_expm1 = x > -math.log(2.0)
  # Each branch sees only inputs where it is stable, so neither produces NaN gradients in the unused branch.
  near = jnp.where(use_expm1, x, -1.0)
  far = jnp.where(use_expm1, -1.0, x)
  return jnp.where(use_expm1, jnp.log(-jnp.expm1(near)), jnp.log1p(-jnp.exp(far)))


def orpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    *,
    chosen_nll: jax.Array | None,
    beta=0.1,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model", Eqs. 4-7).

    odds(y|x) = P / (1 - P),  log P = length-averaged log-prob
    log OR = (log P_w - log P_l) - (log(1 - P_w) - log(1 - P_l))            (Eq. 5, log1p(-exp) stable)
    loss = L_SFT + lambda * -log sigmoid(log OR)                             (Eqs. 6-7)

  log P is clamped at -1e-6 inside the odds (TRL's formula is inf / NaN at log P = 0: an empty filler row or fp32
  rounding), so the loss and its gradient are finite for every input; the rewards metrics use the raw log P.

  Args:
    chosen_logps, rejected_logps: policy log-probs summed over response tokens, (B,).
    chosen_lengths, rejected_lengths: response token counts (B,).
    chosen_nll: L_SFT, the per-example mean per-token NLL of the chosen response (B,); None leaves the odds-ratio
      term alone. (TRL's ORPOTrainer takes the token mean over the batch; equal when lengths are equal.)
    beta: lambda of the paper (TRL's `beta`), scalar or per-example (B,).
    weights: optional per-example loss weights (B,).

  Returns:
    (losses (B,), metrics): the pairwise metrics with rewards beta * average log-prob (as TRL) and
    `orpo/log_odds_ratio` (B,).
  """
  check_same_shape(
      "chosen_logps",
      chosen_logps,
      rejected_logps=rejected_logps,
      chosen_lengths=chosen_lengths,
      rejected_lengths=rejected_lengths,
  )
  check_per_example("chosen_logps", chosen_logps, beta=beta, chosen_nll=chosen_nll, weights=weights)
  beta = to_f32(beta)
  chosen_avg = _average(chosen_logps, chosen_lengths)
  rejected_avg = _average(rejected_logps, rejected_lengths)
  # Clamped below 0 so value and gradient stay finite (`_MAX_AVERAGE_LOGP`); a clamped row gets no odds gradient.
  chosen_odds_avg = jnp.minimum(chosen_avg, _MAX_AVERAGE_LOGP)
  rejected_odds_avg = jnp.minimum(rejected_avg, _MAX_AVERAGE_LOGP)
  log_odds = (chosen_odds_avg - rejected_odds_avg) - (log1mexp(chosen_odds_avg) - log1mexp(rejected_odds_avg))
  losses = -beta * jax.nn.log_sigmoid(log_odds)
  if chosen_nll is not None:
    losses = losses + to_f32(chosen_nll)
  if weights is not None:
    losses = losses * to_f32(weights)
  metrics = pair_metrics(beta * chosen_avg, beta * rejected_avg, to_f32(chosen_logps), to_f32(rejected_logps))
  metrics["orpo/log_odds_ratio"] = jax.lax.stop_gradient(log_odds)
  return losses, metrics
