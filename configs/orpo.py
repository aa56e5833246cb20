"""ORPO (SFT NLL + odds-ratio term, no reference) on the synthetic world, after SFT.

Variants: default, smoke.
"""

from configs import _sections as S


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke"):
    raise ValueError(f"configs/orpo.py: unknown variant {variant!r}; valid: default, smoke")
  return S.sft_then_preference(variant == "smoke", loss=dict(algorithm="orpo", beta=0.1))
