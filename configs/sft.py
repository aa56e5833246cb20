"""SFT of a tiny policy on the synthetic world's reference distribution (the base policy of later stages).

Variants: default (about a minute on 2 CPU cores), smoke (seconds), contrastive (also the `<better>` /
`<worse>` samples, for T-REG's self-generated token rewards).
    python -m experiments.run --config configs/sft.py:smoke --workdir runs/sft
"""

from configs import _sections as S
from jaxrlhf.stages import sft


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke", "contrastive"):
    raise ValueError(f"configs/sft.py: unknown variant {variant!r}; valid: default, smoke, contrastive")
  if variant == "smoke":
    return S.stage("sft", sft.SFTConfig, model=dict(config=S.SMOKE_MODEL), data=S.SMOKE_DATA, loop=S.SMOKE_LOOP,
                   optimizer=dict(learning_rate=3e-3))
  return S.stage(
      "sft", sft.SFTConfig, model=dict(config=S.WORLD_MODEL),
      data=dict(num_train=8192, num_eval=256, batch_size=32, max_length=48, contrastive_sft=variant == "contrastive"),
      optimizer=dict(learning_rate=3e-3, schedule="cosine", warmup_steps=20, decay_steps=400, end_lr_factor=0.1,
                     clip_norm=1.0),
      loop=dict(num_steps=400, log_every=20, checkpoint_every=200, eval_every=200))
