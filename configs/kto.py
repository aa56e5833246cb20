"""KTO on the unpaired view of the synthetic world's pairs (chosen desirable, rejected undesirable), after SFT.

Variants: default, smoke.
"""

from configs import _sections as S


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke"):
    raise ValueError(f"configs/kto.py: unknown variant {variant!r}; valid: default, smoke")
  return S.sft_then_preference(variant == "smoke", loss=dict(algorithm="kto", beta=0.1, desirable_weight=1.0,
                                                             undesirable_weight=1.0))
