"""TEST FIXTURE config (not an experiment): the smallest world chain through the paper stage kinds the kill-point
test injects faults into (tests/experiments/test_kill_points.py), in seconds:

  sft -> ensemble ("reward", K = 2) -> heads ("reward_heads" on the sft backbone) -> heads_eval ("reward_eval")
      -> strength ("preference_strength") -> dpo ("preference") -> credit ("token_credit")
      -> ratio ("density_ratio") -> shift ("logp_shift") -> probe ("probe", on both reward models) -> pal ("pal",
      oracle features, 12 users) -> value ("value_train" on the sft policy) -> vas ("vas_decode" with that value
      model) -> self_rewarding ("self_rewarding", one iteration from dpo, reference sft)

Training stages checkpoint at steps 2 and 4 (SMOKE_LOOP, synchronously), except self_rewarding, whose iterations
checkpoint ASYNCHRONOUSLY (orbax writes in a background thread while the next steps train), so a kill can land in
an async write. The sizes are the paper configs' smoke sizes (configs/papers/probing.py, pal.py, cream.py, vas.py)
or smaller.
"""

from configs import _sections as S
from configs.papers import pal as pal_config
from jaxrlhf.stages import density_ratio, logp_shift, pal, preference, preference_strength, probe, reward, reward_eval
from jaxrlhf.stages import reward_heads, self_rewarding, sft, token_credit, value_train, vas_decode


def get_config(arg=None):
  if arg not in (None, "", "smoke"):
    raise ValueError(f"tests/experiments/kill_paper_chain_config.py: unknown variant {arg!r}; valid: smoke")
  model = dict(config=S.SMOKE_MODEL)
  users = pal_config.population(num_users=12)  # configs/papers/pal.py:smoke's population
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
      "probe": S.stage("probe", probe.ProbeConfig, num_fit=32, num_test=32, max_length=40, batch_size=16,
                       targets=(dict(name="ensemble1", reward_model="stage:ensemble", member=1),)),
      "pal": S.stage("pal", pal.PALConfig, unseen_users=tuple(name for name, _ in users[-3:]), shots=(1,),
                     data=dict(world=dict(annotators=users), num_train=128, num_eval=32, batch_size=32),
                     num_steps=10, fewshot_steps=5, pref_dim=4, optimizer=dict(learning_rate=3e-3)),
      "value": S.stage("value_train", value_train.ValueTrainConfig, policy="stage:sft", reward="gold", num_steps=2,
                       prompts_per_step=4, samples_per_prompt=2, num_prompts=8, max_new_tokens=6, eval_prompts=4,
                       log_every=1),
      "vas": S.stage("vas_decode", vas_decode.VASDecodeConfig, policy="stage:sft", num_prompts=8, batch_size=8,
                     max_new_tokens=6, top_k=4, betas=(4.0,), bon_ns=(), compose_weights=(),
                     values=(dict(value_model="stage:value", reward="gold"),)),
      # Last, so that the chain's last kill point is an injected one (deterministic).
      "self_rewarding": S.stage("self_rewarding", self_rewarding.SelfRewardingConfig, model=dict(init_from="stage:dpo"),
                                reference="stage:sft", consistency="dynamic", num_iterations=1, num_prompts=8,
                                num_samples=2, max_new_tokens=6, sample_batch_size=8, num_eval_prompts=8,
                                data=dict(S.SMOKE_DATA, max_length=40, shared_prompt="off"),
                                loop=dict(S.SMOKE_LOOP, async_checkpoints=True), optimizer=dict(learning_rate=1e-3)),
  }
  return S.chain(stages)
