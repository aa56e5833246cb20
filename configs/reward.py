"""A Bradley-Terry reward model on the synthetic world (eval: held-out accuracy and gold agreement).

Variants: default (one RM, ~2-3 CPU minutes), smoke (seconds), margin (BT with the pairs' judge-score margin),
attributes (multi-attribute regression on the 5 gold components + BT on the scalarized reward),
multihead (3 heads on one backbone).
    python -m experiments.run --config configs/reward.py --workdir runs/rm
"""

from configs import _sections as S
from jaxrlhf.stages import reward

VARIANTS = ("default", "smoke", "margin", "attributes", "multihead")


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/reward.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  overrides = dict(
      model=dict(config=S.WORLD_MODEL),
      data=dict(num_train=16384, num_eval=1024, batch_size=64, max_length=48),
      optimizer=dict(learning_rate=2e-3, schedule="cosine", warmup_steps=20, decay_steps=500, end_lr_factor=0.1,
                     clip_norm=1.0, weight_decay=0.01),
      loop=dict(num_steps=500, log_every=25, checkpoint_every=250, eval_every=250))
  if variant == "smoke":
    overrides = dict(model=dict(config=S.SMOKE_MODEL), data=S.SMOKE_DATA, loop=S.SMOKE_LOOP,
                     optimizer=dict(learning_rate=3e-3))
  config = S.stage("reward", reward.RewardConfig, **overrides)
  if variant == "margin":
    config.data.margin_from = "score"
    config.loss.margin = "margin"
    config.loss.margin_scale = 0.1
  elif variant == "attributes":
    config.head.kind = "attributes"
    config.head.num_outputs = 5
    config.head.attribute_weights = (1.0, 1.0, 1.0, 1.0, 1.0)  # r* is the sum of the 5 gold components.
  elif variant == "multihead":
    config.head.kind = "multihead"
    config.head.num_outputs = 3
  return config
