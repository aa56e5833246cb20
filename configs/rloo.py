"""RLOO on the synthetic world (KL to the SFT policy as a k1 reward penalty, as in Ahmadian et al. 2024):

  sft -> reward -> rloo (stage kind "rl") -> evaluate

Variants: default, smoke.
    python -m experiments.run --config configs/rloo.py:smoke --workdir runs/rloo
"""

from configs import grpo


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke"):
    raise ValueError(f"configs/rloo.py: unknown variant {variant!r}; valid: default, smoke")
  return grpo.rl_chain("rloo", variant, beta=0.05, kl_mode="reward", kl_estimator="k1")
