"""Reward-augmented DPO (Zhang et al. 2024): DPO on the pairs doubled by goal conditioning on the judge scores
(`data.transform = "reward_augmented"`), after SFT.

Variants: default, smoke.
"""

from configs import _sections as S


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke"):
    raise ValueError(f"configs/reward_augmented_dpo.py: unknown variant {variant!r}; valid: default, smoke")
  config = S.sft_then_preference(variant == "smoke", loss=dict(algorithm="dpo", beta=0.1))
  config.preference.data.transform = "reward_augmented"
  if variant == "smoke":
    config.preference.data.max_length = 48  # The goal ("<system> score: 7 <user> ...") lengthens the prompt.
  return config
