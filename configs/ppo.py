"""PPO with a value model on the synthetic world (Ziegler et al. 2019; Stiennon et al. 2020; TRL's PPOTrainer):
SFT a base policy, train a reward model, PPO against it (per-token KL to the SFT policy in the reward, GAE, the
adaptive KL controller), then evaluate gold reward of the PPO policy against the SFT policy.

  sft -> reward -> ppo (stage kind "rl", loss.algorithm "ppo") -> evaluate (stage kind "evaluate_policy")

Variants: default (a few CPU minutes; a value head on the policy's backbone), smoke (seconds), critic (a separate
critic initialized from the reward stage's model, TRL's setup), smoke_critic.
    python -m experiments.run --config configs/ppo.py:smoke --workdir runs/ppo
"""

from configs import grpo

VARIANTS = ("default", "smoke", "critic", "smoke_critic")

# TRL PPOConfig defaults, except kl_coef (beta) 0.05, the adaptive controller (Ziegler et al.'s target / horizon
# scaled to this world's short responses) and 2 minibatches.
PPO_LOSS = dict(beta=0.05, kl_mode="reward", kl_estimator="k1", epsilon=0.2, ppo_epochs=4, num_mini_batches=2,
                gamma=1.0, lam=0.95, vf_coef=0.1, cliprange_value=0.2, kl_controller="adaptive", kl_target=1.0,
                kl_horizon=1000.0)


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/ppo.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  size = "smoke" if variant.startswith("smoke") else "default"
  loss = dict(PPO_LOSS, ppo_epochs=2) if size == "smoke" else PPO_LOSS
  config = grpo.rl_chain("ppo", size, **loss)
  if variant.endswith("critic"):
    config.ppo.value_model = "stage:reward"
  return config
