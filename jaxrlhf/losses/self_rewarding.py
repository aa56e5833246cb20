"""The consistency-regularized DPO objective of CREAM (Wang, He, Liang, Zhang, Bansal, Wei, Zhang, Yao 2024,
"CREAM: Consistency Regularized Self-Rewarding Language Models", arXiv:2410.12735, ICLR 2025).

A self-rewarding iteration labels a pair (y+, y-) with the policy's own reward; CREAM trusts that label only as far
as the rewards of two consecutive iterations rank the samples alike. With consistency rate C in [0, 1] (Kendall's
tau between the two rankings mapped to (tau + 1) / 2, `jaxrlhf.evaluation.rank_consistency`), the loss of a pair is

    L = C * L_DPO(y+ > y-) + (1 - C) * L_DPO(y- > y+)
      = -C log sig(beta d) - (1 - C) log sig(-beta d),    d = (log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-)),

(the paper's Eq. for the regularized objective; the official code, github.com/Raibows/CREAM sft_dpo_trainer.py,
computes `consistency * dpo + (1 - consistency) * -logsigmoid(rejected_rewards - chosen_rewards)`). C = 1 is DPO
(Rafailov et al. 2023, Eq. 7), C = 0 DPO on the reversed pair, and for C in (1/2, 1] it is conservative DPO
(cDPO, `dpo_loss(label_smoothing=1 - C)`) with a per-pair smoothing. Plain self-rewarding (SRLM) is C = 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxrlhf.losses.preference import check_per_example, check_same_shape, to_f32


def consistency_regularized_dpo_loss(chosen_logps: jax.Array, rejected_logps: jax.Array,
                                     ref_chosen_logps: jax.Array, ref_rejected_logps: jax.Array,
                                     consistency: jax.Array | float, *, beta: float = 0.1
                                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CREAM's loss per pair: C * DPO(chosen > rejected) + (1 - C) * DPO(rejected > chosen).

  Args:
    chosen_logps, rejected_logps: policy log-probs of the responses summed over response tokens, float (B,).
    ref_chosen_logps, ref_rejected_logps: the same under the frozen reference (the iteration's starting policy), (B,).
    consistency: C, a scalar (the dataset-level rate) or (B,) per-pair rates, in [0, 1] (a Python number outside
      is a ValueError: C > 1 or < 0 would weight one direction negatively).
    beta: the DPO temperature (> 0), scalar or (B,).

  Returns:
    (losses (B,) float32, metrics) with metrics `rewards/chosen`, `rewards/rejected` (beta * log-ratios),
    `rewards/margin`, `rewards/accuracy` (margin > 0) and `consistency` (C broadcast to (B,)), all (B,) float32 and
    detached. Computed in float32 whatever the input dtype, as every preference loss.
  """
  check_same_shape("chosen_logps", chosen_logps, rejected_logps=rejected_logps, ref_chosen_logps=ref_chosen_logps,
                   ref_rejected_logps=ref_rejected_logps)
  check_per_example("chosen_logps", chosen_logps, consistency=consistency, beta=beta)
  if isinstance(consistency, (int, float)) and not 0.0 <= consistency <= 1.0:  # also refuses NaN
    raise ValueError(f"consistency must lie in [0, 1] (a rate of agreeing rankings); got {consistency}")
  if isinstance(beta, (int, float)) and not (beta > 0 and math.isfinite(beta)):
    raise ValueError(f"beta must be a finite number > 0; got {beta}")
  beta = to_f32(beta)
  chosen_rewards = beta * (to_f32(chosen_logps) - to_f32(ref_chosen_logps))
  rejected_rewards = beta * (to_f32(rejected_logps) - to_f32(ref_rejected_logps))
  logits = chosen_rewards - rejected_rewards
  c = jnp.broadcast_to(to_f32(consistency), logits.shape)
  losses = -c * jax.nn.log_sigmoid(logits) - (1.0 - c) * jax.nn.log_sigmoid(-logits)
  sg = jax.lax.stop_gradient
  metrics = {"rewards/chosen": sg(chosen_rewards), "rewards/rejected": sg(rejected_rewards),
             "rewards/margin": sg(logits), "rewards/accuracy": sg((logits > 0).astype(jnp.float32)),
             "consistency": sg(c)}
  return losses, metrics
