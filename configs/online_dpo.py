"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", arXiv 2402.04792) vs offline
DPO on the synthetic world, from the same SFT policy:

  sft -> reward -> online_dpo (stage kind "rl", loss.algorithm "online_dpo": 2 samples per prompt from the policy,
                               the reward model picks the chosen one, DPO loss against the reference)
              \\-> dpo (stage kind "preference": DPO on the world's offline preference pairs, the data the reward
                        model learned from)
  evaluate, evaluate_dpo (evaluate_policy: gold reward gain and sampled KL of each policy vs the SFT policy)

Both DPO stages use beta 0.1, the same optimizer (lr 5e-4, clip 1) and the same number of updates (60) of the same
number of pairs (16; the offline stage sees each of its 960 pairs once). Online DPO's reference stays the SFT policy
(ref_update_every 0); variant tr_dpo moves it as TR-DPO (Gorbatovski et al. 2024, arXiv 2404.09656): every 20 rollouts
ref <- 0.6 * policy + 0.4 * ref.

Variants: default (a few CPU minutes per seed), smoke (seconds; sft -> reward -> online_dpo -> evaluate, without
the offline baseline), tr_dpo. Sweep: seeds 0-4 (a seed reseeds every
stage: SFT, reward model, sampling, data order; the world is fixed).
    python -m experiments.run --config configs/online_dpo.py:smoke --workdir runs/online_dpo
    python -m experiments.sweep --config configs/online_dpo.py --workdir runs/sweep_online_dpo
    python -m experiments.tables --workdir runs/sweep_online_dpo
"""

from configs import _sections as S
from configs import grpo
from jaxrlhf.stages import evaluate_policy, preference

VARIANTS = ("default", "smoke", "tr_dpo")
SEEDS = (0, 1, 2, 3, 4)
BETA = 0.1
STEPS = {"sft": 150, "dpo": 60}  # SFT and reward model; each DPO stage
# The verdict rule, stated before the first run in docs/reproductions.md ("Online DPO vs offline DPO", "Rule (stated
# before the run)"): d_s = gold gain online - gold gain offline per seed; reproduced when its paired 95% t interval
# excludes 0 above 0 (over >= 5 seeds, the project's rule, ARCHITECTURE.md section 7).
VERDICTS = (
    dict(sweep="online_dpo", claim="online DPO beats offline DPO in gold", value="evaluate/gold/gain",
         baseline="evaluate_dpo/gold/gain", direction=+1, note="KL of each policy reported beside it (not matched)"),
)


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/online_dpo.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  smoke = variant == "smoke"
  config = grpo.rl_chain("online_dpo", "smoke" if smoke else "default", num_generations=2, beta=BETA)
  online = config.online_dpo
  with config.unlocked():
    config.seed = 0  # reseeds every stage (the sweep's axis)
  if smoke:
    online.loss.ref_update_every = 2  # the smoke run exercises the reference update
    pref = dict(data=dict(S.SMOKE_DATA, batch_size=online.prompts_per_step), loop=S.SMOKE_LOOP)
  else:  # Sizes for a 5-seed sweep on a shared 2-core CPU: 150 SFT / reward-model steps, 60 updates of 16 pairs.
    for name in ("sft", "reward"):
      config[name].loop.update(num_steps=STEPS["sft"], checkpoint_every=STEPS["sft"], eval_every=0)
      config[name].optimizer.decay_steps = STEPS["sft"]
    online.loop.update(num_steps=STEPS["dpo"], log_every=10, checkpoint_every=STEPS["dpo"], eval_every=0)
    online.eval_prompts = 0  # the evaluate stages measure both policies on the same held-out prompts
    config.evaluate.num_prompts = 256
    pref = dict(data=dict(num_train=online.prompts_per_step * online.loop.num_steps, num_eval=256,
                          batch_size=online.prompts_per_step, max_length=48),
                loop=dict(num_steps=online.loop.num_steps, log_every=10, checkpoint_every=online.loop.num_steps,
                          eval_every=0))
  if variant == "tr_dpo":
    online.loss.ref_update_every, online.loss.ref_update_alpha = 20, 0.6
  optimizer = online.optimizer.to_dict()
  dpo = S.stage("preference", preference.PreferenceConfig, model=dict(init_from="stage:sft"),
                loss=dict(algorithm="dpo", beta=BETA), optimizer=optimizer, num_devices=1, **pref)
  evaluate_dpo = S.stage("evaluate_policy", evaluate_policy.EvaluatePolicyConfig, policy="stage:dpo",
                         base="stage:sft", **{k: config.evaluate[k] for k in ("num_prompts", "batch_size",
                                                                                "max_new_tokens")})
  if smoke:  # CI time: the offline baseline's stages are the preference stage's and evaluate_policy's own smoke runs
    return config
  with config.unlocked():
    config.dpo, config.evaluate_dpo = dpo, evaluate_dpo
    config.stages = ("sft", "reward", "online_dpo", "dpo", "evaluate", "evaluate_dpo")
    config.tables = dict(metrics=("evaluate/gold/gain", "evaluate_dpo/gold/gain", "evaluate/kl", "evaluate_dpo/kl",
                                  "online_dpo/train/rewards/accuracy", "online_dpo/train/pairs/ties"))
  return config


def sweep(add, arg=None):
  for seed in SEEDS[:1] if arg == "smoke" else SEEDS:
    add(seed=seed)
