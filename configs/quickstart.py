"""The quickstart chain on the synthetic gold-reward world, sized for a 2-core CPU (<= 10 minutes):

  sft      a tiny base policy on the world's reference distribution; half of its prompts carry a goal prompt with a
           random score (data.goal_fraction), so reward-augmented DPO starts from a policy that knows the format
  reward   an ensemble of K = 3 reward models (one stacked step; eval: held-out and gold agreement)
  dpo      DPO from the SFT policy
  ra_dpo   reward-augmented DPO from the SFT policy
  eval_dpo / eval_ra_dpo   gold reward of each policy's samples vs the SFT policy's

Variants: default, smoke (seconds).
    python -m experiments.run --config configs/quickstart.py --workdir runs/quickstart
"""

from configs import _sections as S
from jaxrlhf.stages import evaluate_policy, preference, reward, sft


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke"):
    raise ValueError(f"configs/quickstart.py: unknown variant {variant!r}; valid: default, smoke")
  smoke = variant == "smoke"
  model = S.SMOKE_MODEL if smoke else S.WORLD_MODEL
  if smoke:
    data, loop = S.SMOKE_DATA, S.SMOKE_LOOP
    sft_loop = rm_loop = po_loop = loop
    sft_opt = rm_opt = dict(learning_rate=3e-3)
    po_opt = dict(learning_rate=1e-3)
    rm_data = po_data = sft_data = data
  else:
    sft_data = dict(num_train=8192, num_eval=256, batch_size=32, max_length=48)
    rm_data = dict(num_train=8192, num_eval=512, batch_size=32, max_length=48)
    po_data = dict(num_train=4096, num_eval=256, batch_size=32, max_length=64)
    sft_loop = dict(num_steps=300, log_every=25, checkpoint_every=150, eval_every=150)
    rm_loop = dict(num_steps=300, log_every=25, checkpoint_every=150, eval_every=150)
    po_loop = dict(num_steps=150, log_every=25, checkpoint_every=75, eval_every=75)
    cosine = dict(schedule="cosine", warmup_steps=10, end_lr_factor=0.1, clip_norm=1.0)
    sft_opt = dict(cosine, learning_rate=3e-3, decay_steps=300)
    rm_opt = dict(cosine, learning_rate=2e-3, decay_steps=300, weight_decay=0.01)
    po_opt = dict(cosine, learning_rate=3e-4, decay_steps=150)
  stages = {
      "sft": S.stage("sft", sft.SFTConfig, model=dict(config=model), data=dict(sft_data, goal_fraction=0.5),
                     optimizer=sft_opt, loop=sft_loop),
      "reward": S.stage("reward", reward.RewardConfig, num_members=3, model=dict(config=model), data=rm_data,
                        optimizer=rm_opt, loop=rm_loop),
      "dpo": S.stage("preference", preference.PreferenceConfig, model=dict(init_from="stage:sft"),
                     data=po_data, optimizer=po_opt, loop=po_loop, loss=dict(algorithm="dpo", beta=0.1)),
      "ra_dpo": S.stage("preference", preference.PreferenceConfig, model=dict(init_from="stage:sft"),
                        data=dict(po_data, transform="reward_augmented", max_length=64), optimizer=po_opt,
                        loop=po_loop, loss=dict(algorithm="dpo", beta=0.1)),
  }
  eval_kwargs = dict(reward_model="stage:reward", num_prompts=32 if smoke else 512, batch_size=32 if smoke else 128,
                     max_new_tokens=16 if smoke else 32)
  stages["eval_dpo"] = S.stage("evaluate_policy", evaluate_policy.EvaluatePolicyConfig, policy="stage:dpo",
                               base="stage:sft", **eval_kwargs)
  stages["eval_ra_dpo"] = S.stage("evaluate_policy", evaluate_policy.EvaluatePolicyConfig, policy="stage:ra_dpo",
                                  base="stage:sft", goal_conditioned=True, **eval_kwargs)
  config = S.chain(stages)
  config.tables = dict(metrics=("reward/eval/gold_agreement", "eval_dpo/gold/gain", "eval_ra_dpo/gold/gain"))
  return config
