"""T-REG (DPO + token-level reward regularization) on the synthetic world, after a contrastive SFT so the
policy follows the `<better>` / `<worse>` control contexts its token rewards come from.

Variants: default, smoke, reference (token rewards from the reference policy, precomputed with it).
"""

from configs import _sections as S


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke", "reference"):
    raise ValueError(f"configs/treg.py: unknown variant {variant!r}; valid: default, smoke, reference")
  config = S.sft_then_preference(variant == "smoke", contrastive_sft=True,
                                 loss=dict(algorithm="treg", beta=0.1, treg_alpha=1.0))
  if variant == "reference":
    config.preference.loss.treg_token_rewards = "reference"
  return config
