"""Pure loss functions of arrays (no model calls), importable from the package as in optax:
`jaxrlhf.losses.dpo_loss`, `jaxrlhf.losses.bradley_terry_loss`, ...

Modules: logps (sequence log-probs, chunked), reward (Bradley-Terry, margins, attributes, preference
strength), preference (the DPO family), reference_free (SimPO, ORPO), kto, token_level (T-REG), aggregation
(ensemble reward aggregation), self_rewarding (CREAM's consistency-regularized DPO), policy_gradient (GRPO/RLOO
advantages, clipped surrogate, KL estimators, process-reward refinement), policy_variants (Dr. GRPO, DAPO, GSPO,
CISPO as named objectives; dynamic sampling, overlong punishment), ppo (GAE, whitening, clipped value loss, PPO
loss, KL controllers), pal (PAL's per-user Bradley-Terry loss, prototype-norm bound), value (VAS's TD(lambda) value
targets and regression loss), difficulty_scaling (DR-IRL's GRPO-S difficulty coefficients).
A stage picks a variant by config name (`dpo_loss(loss_type=...)`, `aggregate(method)`,
`policy_variant_loss(variant=...)`, the preference stage's `loss.algorithm`); each name maps to one small function
inside its module.
"""

from jaxrlhf.losses.aggregation import (AGGREGATION_METHODS, aggregate, mean_minus_std_reward, mean_minus_var_reward,
                                        mean_reward, median_reward, min_reward)
from jaxrlhf.losses.difficulty_scaling import (RESPONSIVENESS_POOLS, clause_similarity, data_hardness,
                                              grpo_s_advantages, model_responsiveness)
from jaxrlhf.losses.kto import kto_kl_estimate, kto_loss
from jaxrlhf.losses.pal import pal_loss, prototype_norm_penalty, user_balanced_weights
from jaxrlhf.losses.logps import (chunked_sequence_logps, chunked_sequence_logps_from_logits, fused_sequence_logps,
                                  sequence_logps, shift_for_next_token, token_entropy, token_log_sum_sq_probs)
from jaxrlhf.losses.policy_gradient import (aggregate_token_losses, clip_process_rewards, clipped_policy_loss,
                                            clipped_surrogate, delta_process_rewards, group_advantages,
                                            kl_divergence, kl_penalized_token_rewards, kl_regularized_loss,
                                            rloo_advantages)
from jaxrlhf.losses.policy_variants import (VARIANTS, cispo_surrogate, dynamic_sampling_mask, gspo_surrogate,
                                            policy_variant_loss, soft_overlong_penalty, variant_surrogate)
from jaxrlhf.losses.ppo import (KL_CONTROLLERS, adaptive_kl_coef, clipped_value_loss, fixed_kl_coef, gae_advantages,
                                masked_whiten, ppo_advantages, ppo_loss, update_kl_coef)
from jaxrlhf.losses.preference import (LOSS_TYPES, dpo_loss, dynamic_beta, f_divergence_scores, ld_sequence_logps,
                                        wpo_weights)
from jaxrlhf.losses.reference_free import orpo_loss, simpo_loss
from jaxrlhf.losses.reward import (adaptive_margin, attribute_regression_loss, bradley_terry_loss,
                                   preference_strength, scalarize_attributes)
from jaxrlhf.losses.self_rewarding import consistency_regularized_dpo_loss
from jaxrlhf.losses.token_level import contrastive_token_rewards, token_reward_regularizer, treg_loss
from jaxrlhf.losses.value import state_mask, td_lambda_returns, value_regression_loss
