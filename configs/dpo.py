"""DPO on the synthetic world: SFT a base policy, then DPO from it (reference = the SFT policy).

Variants: default, smoke, resident (reference kept in memory instead of precomputed), ipo, mixed
(loss_type = sigmoid + sft, the RPO recipe), dynamic_beta (MM-DPO beta from the judge-score margin), ld (LD-DPO:
tokens past a pair's shared response length weigh ld_alpha = 0.5 in both log-probs), wpo (WPO: each pair's loss
weighted by the policy's own probability of both responses), lora /
lora_smoke (LoRA adapters on every projection in both stages, base weights frozen; DPO's resident reference is the
policy with its adapters off, so one copy of the weights is held).
Any `dpo_loss` type: `--config.preference.loss.loss_type='("hinge",)'`.
    python -m experiments.run --config configs/dpo.py:smoke --workdir runs/dpo
"""

from configs import _sections as S

VARIANTS = ("default", "smoke", "resident", "ipo", "mixed", "dynamic_beta", "ld", "wpo", "lora",
            "lora_smoke")
LORA = dict(rank=8, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down"))


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/dpo.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  smoke = variant in ("smoke", "lora_smoke")
  config = S.sft_then_preference(smoke, loss=dict(algorithm="dpo", loss_type=("sigmoid",), beta=0.1))
  if variant in ("lora", "lora_smoke"):
    for name in ("sft", "preference"):
      config[name].model.lora = dict(LORA, rank=4, alpha=8.0) if smoke else dict(LORA)
    config.preference.reference = "resident"
  elif variant == "resident":
    config.preference.reference = "resident"
  elif variant == "ipo":
    config.preference.loss.loss_type = ("ipo",)
  elif variant == "mixed":
    config.preference.loss.loss_type = ("sigmoid", "sft")
    config.preference.loss.loss_weights = (1.0, 0.2)
  elif variant == "ld":
    config.preference.loss.ld_alpha = 0.5
  elif variant == "wpo":
    config.preference.loss.use_weighting = True
  elif variant == "dynamic_beta":
    config.preference.data.margin_from = "score"
    config.preference.loss.dynamic_beta_w = 0.5
    config.preference.loss.dynamic_beta_k = 0.5
  return config
