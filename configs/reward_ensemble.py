"""K = 3 independent reward models trained in one stacked step (own init seeds, own data orders).

Variants: default, smoke, finetune_seed (members from one SFT checkpoint with different head seeds:
`--config.model.init_from=runs/sft/model`).
    python -m experiments.run --config configs/reward_ensemble.py --workdir runs/rm_ens
"""

from configs import _sections as S
from jaxrlhf.stages import reward


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke", "finetune_seed"):
    raise ValueError(f"configs/reward_ensemble.py: unknown variant {variant!r}; valid: default, smoke, "
                     "finetune_seed")
  if variant == "smoke":
    return S.stage("reward", reward.RewardConfig, num_members=3, model=dict(config=S.SMOKE_MODEL),
                   data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3))
  return S.stage(
      "reward", reward.RewardConfig, num_members=3, model=dict(config=S.WORLD_MODEL),
      data=dict(num_train=8192, num_eval=512, batch_size=32, max_length=48),
      optimizer=dict(learning_rate=2e-3, schedule="cosine", warmup_steps=20, decay_steps=400, end_lr_factor=0.1,
                     clip_norm=1.0, weight_decay=0.01),
      loop=dict(num_steps=400, log_every=20, checkpoint_every=200, eval_every=200))
