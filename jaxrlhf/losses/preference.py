"""Pairwise preference-optimization losses: DPO and its family, as pure functions of sequence log-probs.

Every function takes per-example sequence log-probabilities (summed over the response tokens, shape (B,)) of the
policy and the frozen reference, computes in float32 whatever the input dtype, and returns
`(losses (B,), metrics)` where every metric is a per-example (B,) array; the trainer takes (weighted) means.

`dpo_loss` covers every pairwise `loss_type` of TRL 1.16's `DPOTrainer._compute_loss` (trl/trainer/dpo_trainer.py)
formula for formula, including its f-divergence generalization and weighted combinations of several types.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp


LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
    "sft",
)
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# The f-DPO reparameterization leaves a beta * log Z(x) term that only cancels in the chosen - rejected score
# difference, so (as in TRL) only the losses built on that difference accept another f-divergence.
F_DIVERGENCE_LOSS_TYPES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")
# Losses that sort the batch: their per-position losses do not belong to one example.
SORTING_LOSS_TYPES = ("aot", "aot_unpaired")
LENGTH_LOSS_TYPES = ("ipo", "sigmoid_norm")

# exp() arguments are clamped here (TRL's fp32/bf16 value) so the alpha-divergence score stays finite.
_ALPHA_DIV_CLAMP = 80.0


def to_f32(x) -> jax.Array:
  """x as a float32 array (losses accumulate in fp32 whatever the input dtype)."""
  return jnp.asarray(x, jnp.float32)


def check_same_shape(reference_name: str, reference: jax.Array, **others) -> None:
  """Raises ValueError naming both arrays when any of `others` differs in shape from `reference`."""
  for name, value in others.items():
    if value is None:
      continue
    if jnp.shape(value) != jnp.shape(reference):
      raise ValueError(
          f"{name} has shape {jnp.shape(value)} but {reference_name} has shape {jnp.shape(reference)}; "
          "they must match"
      )


def check_per_example(reference_name: str, reference: jax.Array, **others) -> None:
  """Raises ValueError unless each of `others` is a scalar or has the shape of `reference`."""
  for name, value in others.items():
    if value is None:
      continue
    shape = jnp.shape(value)
    if shape != () and shape != jnp.shape(reference):
      raise ValueError(
          f"{name} must be a scalar or have the shape of {reference_name} {jnp.shape(reference)}; got {shape}"
      )


def check_label_smoothing(label_smoothing) -> None:
  """label_smoothing must lie in [0, 0.5) (0.5 makes the labels uninformative and robust DPO divide by 0)."""
  if isinstance(label_smoothing, (int, float)) and not 0.0 <= label_smoothing < 0.5:
    raise ValueError(f"label_smoothing must lie in [0, 0.5); got {label_smoothing}")


def ld_sequence_logps(token_logps_2BxT: jax.Array, mask_2BxT: jax.Array, ld_alpha: float,
                      keep_end: bool = False) -> jax.Array:
  """LD-DPO's length-desensitized sequence log-probs (Liu et al. 2024, "LD-DPO"; TRL's `ld_alpha`), (2B,) float32.

  Rows [0, B) are the chosen responses and [B, 2B) the rejected ones of the same pairs. The first
  l_p = min(|y_c|, |y_r|) response tokens of both responses of a pair (the "public" length) count fully, the
  tokens past it are weighted by `ld_alpha`:
      log pi(y) = sum_{t <= l_p} log pi(y_t | ...) + ld_alpha * sum_{t > l_p} log pi(y_t | ...),
  so the longer response's excess tokens, whose sum drives DPO's length bias, are damped. `ld_alpha` = 1 is the
  plain sum; 0 scores only the shared length. Apply it to the policy and the reference alike.

  `keep_end` (an ablation, not in the paper or TRL) leaves each response's last token at full weight: that is its
  end token (unless the response was truncated), which the plain weighting down-weights in the longer response of
  every pair of unequal lengths and never in the shorter one.

  Args:
    token_logps_2BxT: per-token log-probs, 0 off the response (as `train.scoring.pair_token_logps` returns).
    mask_2BxT: 1 on each row's response tokens, in order along T (any positions: the t-th 1 of a row is token t).
    ld_alpha: the weight of the tokens past the public length, in [0, 1].
    keep_end: weigh each row's last response token 1 whatever its position.
  """
  if not 0.0 <= ld_alpha <= 1.0:
    raise ValueError(f"ld_alpha must be in [0, 1], got {ld_alpha}")
  if token_logps_2BxT.shape != mask_2BxT.shape or token_logps_2BxT.shape[0] % 2:
    raise ValueError(f"token_logps_2BxT {token_logps_2BxT.shape} and mask_2BxT {mask_2BxT.shape} must have one "
                     "shape with an even number of rows (chosen, then rejected)")
  mask = to_f32(mask_2BxT)
  position_2BxT = jnp.cumsum(mask, axis=-1)  # t on a row's t-th response token
  lengths_2B = jnp.sum(mask, axis=-1)
  b = lengths_2B.shape[0] // 2
  public_B = jnp.minimum(lengths_2B[:b], lengths_2B[b:])
  public_2B = jnp.concatenate([public_B, public_B])
  full_2BxT = position_2BxT <= public_2B[:, None]
  if keep_end:
    full_2BxT = full_2BxT | (position_2BxT == lengths_2B[:, None])
  weight_2BxT = jnp.where(full_2BxT, 1.0, ld_alpha) * mask
  return jnp.sum(to_f32(token_logps_2BxT) * weight_2BxT, axis=-1)


def wpo_weights(token_logps_2BxT: jax.Array, log_sum_sq_probs_2BxT: jax.Array, mask_2BxT: jax.Array) -> jax.Array:
  """WPO's pair weights (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization", Eq. 2;
  TRL's `use_weighting`), (B,) float32, without gradient.

  A response's weight is its length-normalized probability under the current policy with each token's
  probability divided by sum_v p_v^2 (the policy's own agreement probability at that step, which keeps greedy-like
  outputs from dominating): w(y) = exp(mean_t [log pi(y_t | ...) - log sum_v pi(v | ...)^2]); the pair weighs
  w(y_c) * w(y_r). It reweights the off-policy pairs of a dataset toward what the policy would itself produce.
  Rows [0, B) are the chosen responses and [B, 2B) the rejected ones.

  Args:
    token_logps_2BxT: per-token log-probs of the policy, 0 off the response.
    log_sum_sq_probs_2BxT: per-token log sum_v p_v^2 of the same softmax (`train.scoring.pair_token_logps` with
      return_log_sum_sq_probs).
    mask_2BxT: 1 on the response tokens; an empty response has mean 0 (weight factor 1), as TRL's clamp(min=1).
  """
  if not (token_logps_2BxT.shape == log_sum_sq_probs_2BxT.shape == mask_2BxT.shape) or token_logps_2BxT.shape[0] % 2:
    raise ValueError(f"token_logps_2BxT {token_logps_2BxT.shape}, log_sum_sq_probs_2BxT "
                     f"{log_sum_sq_probs_2BxT.shape} and mask_2BxT {mask_2BxT.shape} must have one shape with an "
                     "even number of rows (chosen, then rejected)")
  mask = to_f32(mask_2BxT)
  lengths_2B = jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
  mean_2B = jnp.sum((to_f32(token_logps_2BxT) - to_f32(log_sum_sq_probs_2BxT)) * mask, axis=-1) / lengths_2B
  weights_2B = jnp.exp(jax.lax.stop_gradient(mean_2B))
  b = weights_2B.shape[0] // 2
  return weights_2B[:b] * weights_2B[b:]


def dynamic_beta(beta0, reward_margin: jax.Array, w: float, k: float) -> jax.Array:
  """Dynamic reward scaling of MM-RLHF (Zhang et al. 2025, "MM-RLHF: The Next Step Forward in Multimodal LLM
  Alignment", Sec. 4 "MM-DPO"): beta_i = beta0 * (1 + w * (1 - exp(-k * delta_i))).

  Args:
    beta0: the base beta (scalar).
    reward_margin: delta_i, shape (B,): a reward model's r(chosen) - r(rejected). The paper's margins are >= 0;
      a negative one (a pair the reward model ranks the other way) is clamped to 0 and gives beta0, because the
      formula would otherwise shrink beta and turn negative below delta = -log(1 + 1/w) / k (about -2.2 at
      w = k = 0.5), which flips the loss. NaN (the dataset convention for "no margin") gives beta0.
    w: the maximum relative increase of beta (beta_i -> beta0 * (1 + w) for large margins).
    k: how fast beta saturates with the margin.

  Returns:
    beta_i in [beta0, beta0 * (1 + w)], shape (B,) float32, with no gradient path (the margin is data, beta a
    coefficient).
  """
  delta = to_f32(reward_margin)
  delta = jnp.maximum(jnp.where(jnp.isnan(delta), 0.0, delta), 0.0)
  beta = to_f32(beta0) * (1.0 + w * (1.0 - jnp.exp(-k * delta)))
  return jax.lax.stop_gradient(beta)


def f_divergence_scores(logratios: jax.Array, f_divergence: str, f_alpha: float) -> jax.Array:
  """The f-DPO score f'(pi/pi_ref) of a log-ratio log(pi/pi_ref) (Wang et al. 2023, "Beyond Reverse KL", Table 1),
  exactly as TRL 1.16 computes it:

    reverse_kl:        log t
    forward_kl:        1 - 1/t = 1 - exp(-log t)
    js_divergence:     log(2t / (t + 1)) = log 2 + log sigmoid(log t)
    alpha_divergence:  (t^(alpha - 1) - 1) / (alpha - 1), exp argument clamped at 80; alpha = 1 is reverse_kl.
  """
  if f_divergence == "reverse_kl":
    return logratios
  if f_divergence == "forward_kl":
    return 1.0 - jnp.exp(-logratios)
  if f_divergence == "js_divergence":
    return math.log(2.0) + jax.nn.log_sigmoid(logratios)
  if f_divergence == "alpha_divergence":
    if abs(f_alpha - 1.0) < 1e-6:
      return logratios
    t = jnp.minimum((f_alpha - 1.0) * logratios, _ALPHA_DIV_CLAMP)
    return (jnp.exp(t) - 1.0) / (f_alpha - 1.0)
  raise ValueError(f"unknown f_divergence {f_divergence!r}; valid values: {list(F_DIVERGENCES)}")


def _smoothed_sigmoid(logits: jax.Array, label_smoothing) -> jax.Array:
  """-(1 - eps) log sigmoid(z) - eps log sigmoid(-z): the conservative-DPO / AOT label-smoothed logistic loss."""
  return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits) - label_smoothing * jax.nn.log_sigmoid(-logits)


def _normalize_loss_types(loss_type, loss_weights) -> tuple[tuple[str, ...], tuple[float, ...]]:
  types = (loss_type,) if isinstance(loss_type, str) else tuple(loss_type)
  if not types:
    raise ValueError(f"loss_type must name at least one loss; valid values: {list(LOSS_TYPES)}")
  for t in types:
    if t not in LOSS_TYPES:
      raise ValueError(f"unknown loss_type {t!r}; valid values: {list(LOSS_TYPES)}")
  if loss_weights is None:
    weights = (1.0,) * len(types)
  else:
    weights = tuple(loss_weights)
    if len(weights) != len(types):
      raise ValueError(
          f"loss_weights has {len(weights)} entries but loss_type has {len(types)} ({list(types)}); they must match"
      )
  return types, weights


def dpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    beta=0.1,
    label_smoothing: float = 0.0,
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
    discopop_tau: float = 0.05,
    bco_delta=0.0,
    rpo_alpha: float = 0.0,
    chosen_nll: jax.Array | None = None,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Direct Preference Optimization and its pairwise family (TRL 1.16 `DPOTrainer._compute_loss`).

  With logratio_c = chosen_logps - ref_chosen_logps, logratio_r likewise, scores s = f'(exp(logratio)) (see
  `f_divergence_scores`; s = logratio for reverse KL) and d = s_c - s_r:

    sigmoid       -log sig(beta d)                               DPO, Rafailov et al. 2023, Eq. 7; with
                  label_smoothing eps: -(1-eps) log sig(beta d) - eps log sig(-beta d)  (conservative DPO;
                  TRL 1.16 ignores label_smoothing for sigmoid, so it matches TRL only at eps = 0)
    hinge         relu(1 - beta d)                               SLiC, Zhao et al. 2023
    ipo           (d_c/|y_c| - d_r/|y_r| - 1/(2 beta))^2         IPO, Azar et al. 2023, Eq. 17, length-normalized
                  as TRL (scores divided by max(length, 1))
    exo_pair      q_w (log q_w - log(1-eps)) + q_l (log q_l - log eps), q_w = sig(beta d), q_l = sig(-beta d)
                                                                 EXO, Ji et al. 2024, Eq. 16 (needs eps > 0)
    nca_pair      -log sig(beta lc) - 0.5 log sig(-beta lc) - 0.5 log sig(-beta lr)    NCA, Chen et al. 2024
    robust        ((1-eps)(-log sig(beta d)) - eps(-log sig(-beta d))) / (1 - 2 eps)   rDPO, Chowdhury et al. 2024
    bco_pair      -log sig(beta lc - delta) - log sig(-(beta lr - delta))  BCO, Jung et al. 2024; delta is the
                  running mean of the rewards (`bco_delta`; TRL 1.16 uses 0)
    sppo_hard     (lc - 1/(2 beta))^2 + (lr + 1/(2 beta))^2      SPPO, Wu et al. 2024, Eq. 4.7 with hard P
    aot           smoothed -log sig(beta (sort(pi_c - pi_r) - sort(ref_c - ref_r)))  AOT, Melnyk et al. 2024
    aot_unpaired  smoothed -log sig(beta (sort(lc) - sort(lr)))  (sorts over the batch axis 0)
    apo_zero      1 - sig(beta lc) + sig(beta lr)                APO, D'Oosterlinck et al. 2024, Eq. 7
    apo_down      sig(beta lc) + 1 - sig(beta (lc - lr))         APO, Eq. 8
    discopop      (1-m)(-log sig(beta d)) + m exp(-beta d), m = sig(beta d / tau)  DiscoPOP, Lu et al. 2024, Eq. 5
    sigmoid_norm  -log sig(beta (s_c/|y_c| - s_r/|y_r|))         length-normalized DPO
    sft           chosen_nll                                     (RPO, Pang et al. 2024, with loss_weights)

  (lc, lr = logratio_c, logratio_r.) Several types combine as sum_k loss_weights[k] * loss_k per example, the
  per-example form of TRL's sum_k loss_weights[k] * mean(loss_k); `rpo_alpha > 0` adds the term
  rpo_alpha * chosen_nll (equivalent to appending "sft" with weight rpo_alpha).

  Args:
    chosen_logps, rejected_logps: policy log-probs of the responses summed over response tokens, (B,).
    ref_chosen_logps, ref_rejected_logps: the same under the frozen reference, (B,).
    loss_type: one name from LOSS_TYPES or a sequence of them.
    loss_weights: one float per loss type (default all 1).
    beta: > 0, scalar or per-example (B,) array (e.g. from `dynamic_beta`); the rewards use the same beta.
    label_smoothing: eps in [0, 0.5); used by sigmoid, exo_pair, robust, aot, aot_unpaired.
    chosen_lengths, rejected_lengths: response token counts (B,), required by ipo and sigmoid_norm.
    f_divergence: one of F_DIVERGENCES; non-default values only with F_DIVERGENCE_LOSS_TYPES.
    f_alpha: alpha of the alpha-divergence.
    discopop_tau: tau of DiscoPOP (> 0).
    bco_delta: scalar reward offset for bco_pair (stop-gradient).
    rpo_alpha: weight of the NLL term on the chosen response.
    chosen_nll: per-example mean per-token NLL of the chosen response (B,), required by "sft" / rpo_alpha > 0.
      (TRL's "sft" takes one token-mean over the whole batch; the two agree when all chosen lengths are equal.)
    weights: optional per-example loss weights (B,), multiplied into the losses.

  Returns:
    (losses (B,) float32, metrics) with per-example (B,) metrics `rewards/chosen` = beta * logratio_c,
    `rewards/rejected`, `rewards/margin`, `rewards/accuracy` (1.0 where chosen reward > rejected reward),
    `logps/chosen`, `logps/rejected` (all without gradient).
  """
  types, type_weights = _normalize_loss_types(loss_type, loss_weights)
  if rpo_alpha:
    types, type_weights = types + ("sft",), type_weights + (float(rpo_alpha),)
  if f_divergence not in F_DIVERGENCES:
    raise ValueError(f"unknown f_divergence {f_divergence!r}; valid values: {list(F_DIVERGENCES)}")
  if f_divergence != "reverse_kl":
    bad = [t for t in types if t not in F_DIVERGENCE_LOSS_TYPES]
    if bad:
      raise ValueError(
          f"f_divergence={f_divergence!r} is only valid with loss_type in {list(F_DIVERGENCE_LOSS_TYPES)}; "
          f"got {bad} (use f_divergence='reverse_kl')"
      )
  # A Python beta <= 0 is refused (IPO's 1 / (2 beta) is inf at 0, a negative beta flips every objective); arrays
  # (per-example beta, traced values) are the caller's responsibility.
  if isinstance(beta, (int, float)) and not beta > 0:
    raise ValueError(f"beta must be > 0; got {beta}")
  if isinstance(discopop_tau, (int, float)) and not discopop_tau > 0:
    raise ValueError(f"discopop_tau must be > 0 (DiscoPOP's modulation sigmoid(beta d / tau)); got {discopop_tau}")
  check_label_smoothing(label_smoothing)
  if "exo_pair" in types and isinstance(label_smoothing, (int, float)) and label_smoothing == 0.0:
    raise ValueError("label_smoothing must be > 0 for loss_type 'exo_pair' (EXO recommends 1e-3); got 0.0")
  check_same_shape(
      "chosen_logps",
      chosen_logps,
      rejected_logps=rejected_logps,
      ref_chosen_logps=ref_chosen_logps,
      ref_rejected_logps=ref_rejected_logps,
  )
  check_per_example(
      "chosen_logps",
      chosen_logps,
      beta=beta,
      chosen_lengths=chosen_lengths,
      rejected_lengths=rejected_lengths,
      chosen_nll=chosen_nll,
      weights=weights,
  )
  needs_lengths = [t for t in types if t in LENGTH_LOSS_TYPES]
  if needs_lengths and (chosen_lengths is None or rejected_lengths is None):
    raise ValueError(f"loss_type {needs_lengths} needs chosen_lengths and rejected_lengths (response token counts)")
  if "sft" in types and chosen_nll is None:
    raise ValueError("loss_type 'sft' / rpo_alpha > 0 needs chosen_nll (per-example mean NLL of the chosen response)")
  sorting = [t for t in types if t in SORTING_LOSS_TYPES]
  if sorting and (jnp.ndim(chosen_logps) != 1 or jnp.shape(beta) != () or weights is not None):
    raise ValueError(
        f"loss_type {sorting} sorts the batch, so it needs 1-D logps, a scalar beta and no per-example weights "
        f"(got logps shape {jnp.shape(chosen_logps)}, beta shape {jnp.shape(beta)}, weights "
        f"{'given' if weights is not None else 'None'})"
    )

  pc, pr = to_f32(chosen_logps), to_f32(rejected_logps)
  rc, rr = to_f32(ref_chosen_logps), to_f32(ref_rejected_logps)
  beta = to_f32(beta)
  chosen_logratios = pc - rc
  rejected_logratios = pr - rr
  chosen_scores = f_divergence_scores(chosen_logratios, f_divergence, f_alpha)
  rejected_scores = f_divergence_scores(rejected_logratios, f_divergence, f_alpha)
  delta_score = chosen_scores - rejected_scores
  eps = label_smoothing

  def one_loss(t: str) -> jax.Array:
    if t == "sigmoid":
      return _smoothed_sigmoid(beta * delta_score, eps)
    if t == "hinge":
      return jax.nn.relu(1.0 - beta * delta_score)
    if t in LENGTH_LOSS_TYPES:
      chosen_avg = chosen_scores / jnp.maximum(to_f32(chosen_lengths), 1.0)
      rejected_avg = rejected_scores / jnp.maximum(to_f32(rejected_lengths), 1.0)
      if t == "ipo":
        return (chosen_avg - rejected_avg - 1.0 / (2.0 * beta)) ** 2
      return -jax.nn.log_sigmoid(beta * (chosen_avg - rejected_avg))
    if t == "exo_pair":
      z = beta * delta_score
      return jax.nn.sigmoid(z) * (jax.nn.log_sigmoid(z) - math.log1p(-eps)) + jax.nn.sigmoid(-z) * (
          jax.nn.log_sigmoid(-z) - math.log(eps)
      )
    if t == "nca_pair":
      cr, rj = beta * chosen_logratios, beta * rejected_logratios
      return -jax.nn.log_sigmoid(cr) - 0.5 * jax.nn.log_sigmoid(-cr) - 0.5 * jax.nn.log_sigmoid(-rj)
    if t == "robust":
      z = beta * delta_score
      return (-(1.0 - eps) * jax.nn.log_sigmoid(z) + eps * jax.nn.log_sigmoid(-z)) / (1.0 - 2.0 * eps)
    if t == "bco_pair":
      offset = jax.lax.stop_gradient(to_f32(bco_delta))
      cr, rj = beta * chosen_logratios - offset, beta * rejected_logratios - offset
      return -jax.nn.log_sigmoid(cr) - jax.nn.log_sigmoid(-rj)
    if t == "sppo_hard":
      return (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    if t == "aot":
      delta = jnp.sort(pc - pr, axis=0) - jnp.sort(rc - rr, axis=0)
      return _smoothed_sigmoid(beta * delta, eps)
    if t == "aot_unpaired":
      delta = jnp.sort(chosen_logratios, axis=0) - jnp.sort(rejected_logratios, axis=0)
      return _smoothed_sigmoid(beta * delta, eps)
    if t == "apo_zero":
      return 1.0 - jax.nn.sigmoid(beta * chosen_logratios) + jax.nn.sigmoid(beta * rejected_logratios)
    if t == "apo_down":
      return jax.nn.sigmoid(beta * chosen_logratios) + 1.0 - jax.nn.sigmoid(
          beta * (chosen_logratios - rejected_logratios)
      )
    if t == "discopop":
      z = beta * delta_score
      modulation = jax.nn.sigmoid(z / discopop_tau)
      # exp(-z) * sig(z / tau) as one exp: TRL's product is inf * 0 = NaN for very negative z.
      exp_part = jnp.exp(-z + jax.nn.log_sigmoid(z / discopop_tau))
      return -jax.nn.log_sigmoid(z) * (1.0 - modulation) + exp_part
    if t == "sft":
      return jnp.broadcast_to(to_f32(chosen_nll), pc.shape)
    raise AssertionError(t)  # unreachable: names were validated above

  losses = sum(w * one_loss(t) for t, w in zip(types, type_weights))
  if weights is not None:
    losses = losses * to_f32(weights)
  metrics = pair_metrics(beta * chosen_logratios, beta * rejected_logratios, pc, pr)
  return losses, metrics


def pair_metrics(
    chosen_rewards: jax.Array, rejected_rewards: jax.Array, chosen_logps: jax.Array, rejected_logps: jax.Array
) -> dict[str, jax.Array]:
  """The namespaced per-example (B,) metrics shared by the pairwise losses (no gradient)."""
  cr = jax.lax.stop_gradient(chosen_rewards)
  rr = jax.lax.stop_gradient(rejected_rewards)
  return {
      "rewards/chosen": cr,
      "rewards/rejected": rr,
      "rewards/margin": cr - rr,
      "rewards/accuracy": (cr > rr).astype(jnp.float32),
      "logps/chosen": jax.lax.stop_gradient(chosen_logps),
      "logps/rejected": jax.lax.stop_gradient(rejected_logps),
  }
