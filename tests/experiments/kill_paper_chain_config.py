"""TEST FIXTURE config (not an experiment): the smallest world chain through the paper stage kinds the kill-point
test injects faults into (tests/experiments/test_kill_points.py), in seconds:

  sft -> ensemble ("reward", K = 2) -> heads ("reward_heads" on the sft backbone) -> heads_eval ("reward_eval")
      -> strength ("preference_strength") -> dpo ("preference") -> credit ("token_credit")
      -> ratio ("density_ratio") -> shift ("logp_shift")

Training stages checkpoint at steps 2 and 4 (SMOKE_LOOP, synchronously); the sizes are the paper configs' smoke sizes
or smaller.
"""

from configs import _sections as S
from jaxrlhf.stages import density_ratio, logp_shift, preference, preference_strength, reward, reward_eval
from jaxrlhf.stages import reward_heads, sft, token_credit


def get_config(arg=None):
  if arg not in (None, "", "smoke"):
    raise ValueError(f"tests/experiments/kill_paper_chain_config.py: unknown variant {arg!r}; valid: smoke")
  model = dict(config=S.SMOKE_MODEL)
  data = dict(S.SMOKE_DATA, contrastive_sft=True)
  stages = {
      "sft": S.stage("sft", sft.SFTConfig, model=model, data=data, loop=S.SMOKE_LOOP,
                     optimizer=dict(learning_rate=3e-3)),
      "ensemble": S.stage("reward", reward.RewardConfig, model=model, num_members=2, data=S.SMOKE_DATA,
                          loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3)),
      "heads": S.stage("reward_heads", reward_heads.RewardHeadsConfig, model=dict(init_from="stage:sft"),
                       data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=1e-2), num_members=2),
      "heads_eval": S.stage("reward_eval", reward_eval.RewardEvalConfig, reward_model="stage:heads",
                            data=dict(S.SMOKE_DATA, num_train=16), num_resamples=50),
      "strength": S.stage("preference_strength", preference_strength.PreferenceStrengthConfig,
                          reward_model="stage:ensemble", data=S.SMOKE_DATA, num_buckets=4),
      "dpo": S.stage("preference", preference.PreferenceConfig, model=dict(init_from="stage:sft"),
                     data=S.SMOKE_DATA, optimizer=dict(learning_rate=1e-3), loop=S.SMOKE_LOOP,
                     loss=dict(algorithm="dpo", beta=0.1)),
      "credit": S.stage("token_credit", token_credit.TokenCreditConfig, policy="stage:dpo", reference="stage:sft",
                        beta=0.1, num_pairs=16, batch_size=16, max_length=40),
      "ratio": S.stage("density_ratio", density_ratio.DensityRatioConfig, num_pairs=32, num_prompts=8,
                       batch_size=32, max_new_tokens=8,
                       ratios=(dict(name="dpo_sft", strong="stage:dpo", weak="stage:sft"),
                               dict(name="plain_worse", strong="stage:sft", weak="stage:sft", weak_context="worse"),
                               dict(name="better_worse", strong="stage:sft", strong_context="better",
                                    weak="stage:sft", weak_context="worse"))),
      "shift": S.stage("logp_shift", logp_shift.LogpShiftConfig, policy="stage:dpo", base="stage:sft",
                       num_pairs=16, batch_size=16),
  }
  return S.chain(stages)
