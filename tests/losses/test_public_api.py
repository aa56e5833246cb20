"""The losses users reach for are importable from the package, as in optax (`jaxrlhf.losses.dpo_loss`), and are
the module functions themselves (one definition each)."""

import jaxrlhf.losses as losses
from jaxrlhf.losses import (aggregation, kto, logps, pal, policy_gradient, policy_variants, ppo, preference,
                            reference_free, reward, token_level, value)

PUBLIC = {
    aggregation: ("aggregate", "mean_reward", "median_reward", "min_reward", "mean_minus_std_reward",
                  "mean_minus_var_reward", "AGGREGATION_METHODS"),
    kto: ("kto_loss", "kto_kl_estimate"),
    pal: ("pal_loss", "prototype_norm_penalty", "user_balanced_weights"),
    logps: ("sequence_logps", "chunked_sequence_logps", "chunked_sequence_logps_from_logits", "fused_sequence_logps",
            "token_entropy", "shift_for_next_token"),
    policy_gradient: ("group_advantages", "rloo_advantages", "clipped_surrogate", "clipped_policy_loss",
                      "aggregate_token_losses", "kl_divergence", "kl_penalized_token_rewards", "clip_process_rewards",
                      "delta_process_rewards", "kl_regularized_loss"),
    policy_variants: ("VARIANTS", "gspo_surrogate", "cispo_surrogate", "variant_surrogate", "policy_variant_loss",
                      "dynamic_sampling_mask", "soft_overlong_penalty"),
    ppo: ("masked_whiten", "gae_advantages", "ppo_advantages", "clipped_value_loss", "ppo_loss", "fixed_kl_coef",
          "adaptive_kl_coef", "update_kl_coef", "KL_CONTROLLERS"),
    preference: ("dpo_loss", "dynamic_beta", "f_divergence_scores", "LOSS_TYPES"),
    reference_free: ("simpo_loss", "orpo_loss"),
    reward: ("bradley_terry_loss", "preference_strength", "adaptive_margin", "attribute_regression_loss",
             "scalarize_attributes"),
    token_level: ("treg_loss", "contrastive_token_rewards", "token_reward_regularizer"),
    value: ("td_lambda_returns", "value_regression_loss", "state_mask"),
}


def test_public_losses_are_exported_from_the_package():
  for module, names in PUBLIC.items():
    for name in names:
      assert getattr(losses, name) is getattr(module, name), f"jaxrlhf.losses.{name}"
