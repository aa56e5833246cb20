"""TEST FIXTURE config (not an experiment): the smallest chain on the synthetic world that runs every built-in
stage kind the kill-point test injects faults into (tests/experiments/test_kill_points.py), in seconds:

  sft -> reward -> dpo ("preference") -> grpo ("rl") -> best_of_n -> evaluate ("evaluate_policy")

The sft, reward, grpo and evaluate sections are configs/grpo.py:smoke's (grpo on 32 prompts; evaluate scores the
dpo policy); dpo and best_of_n are configs/quickstart.py:smoke's and configs/best_of_n.py:smoke's, best_of_n
smaller and on the grpo policy. Every training stage checkpoints at steps 2 and 4 (synchronously,
SMOKE_LOOP), so a kill can land before, between and after checkpoints.
"""

from configs import _sections as S
from configs import grpo
from jaxrlhf.stages import best_of_n, preference


def get_config(arg=None):
  if arg not in (None, "", "smoke"):
    raise ValueError(f"tests/experiments/kill_chain_config.py: unknown variant {arg!r}; valid: smoke")
  base = grpo.rl_chain("grpo", "smoke", scale_rewards="group", beta=0.04, kl_mode="loss", kl_estimator="k3")
  base.grpo.num_prompts = 32
  stages = {
      "sft": base.sft,
      "reward": base.reward,
      "dpo": S.stage("preference", preference.PreferenceConfig, model=dict(init_from="stage:sft"),
                     data=S.SMOKE_DATA, optimizer=dict(learning_rate=1e-3), loop=S.SMOKE_LOOP,
                     loss=dict(algorithm="dpo", beta=0.1)),
      "grpo": base.grpo,
      "best_of_n": S.stage("best_of_n", best_of_n.BestOfNConfig, policy="stage:grpo", reward_model="stage:reward",
                           num_prompts=4, pool_size=8, batch_size=4, max_new_tokens=8, plots=False),
      "evaluate": base.evaluate,
  }
  stages["evaluate"].policy = "stage:dpo"
  return S.chain(stages)
