"""GRPO on the synthetic world: SFT a base policy, train a reward model, GRPO against it (KL to the SFT
policy), then evaluate gold reward of the GRPO policy against the SFT policy.

  sft -> reward -> grpo (stage kind "rl") -> evaluate (stage kind "evaluate_policy")

Variants: default (a few CPU minutes), smoke (seconds), gold (GRPO on the gold reward itself: the ceiling),
mixed (0.8 * reward model + 0.2 * BLEU against the reference responses), kl_reward (KL as a k1 reward penalty),
acceptance (at the sizes of configs/best_of_n.py:acceptance, whose sft and reward stages it reuses when run in the
same workdir: GRPO on the proxy reward model AND, as "grpo_gold", on the gold reward, each evaluated against the SFT
policy on gold and on the proxy; the acceptance test compares the two), lora / lora_smoke (LoRA adapters in every
stage: the SFT policy, a K = 3 reward ensemble whose members are adapter sets + heads on ONE frozen copy of the SFT
backbone, and the GRPO policy, whose reference is itself with the adapters switched off).
    python -m experiments.run --config configs/grpo.py:smoke --workdir runs/grpo
"""

import copy

from configs import _sections as S
from jaxrlhf.stages import evaluate_policy, reward, rl, sft

VARIANTS = ("default", "smoke", "gold", "mixed", "kl_reward", "acceptance", "lora", "lora_smoke")
LORA = dict(rank=8, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down"))


def rl_chain(algorithm: str, size: str, **loss):
  """sft -> reward -> `algorithm` (an "rl" stage with `loss` overrides) -> evaluate; size: "default",
  "smoke" or "acceptance" (sft and reward sections identical to configs/best_of_n.py:acceptance)."""
  model = S.WORLD_MODEL if size == "default" else S.SMOKE_MODEL
  if size == "acceptance":
    from configs import best_of_n  # pylint: disable=g-import-not-at-top
    sft_stage = S.stage("sft", sft.SFTConfig, model=dict(config=model), **best_of_n.ACCEPTANCE_SFT)
    rm_stage = S.stage("reward", reward.RewardConfig, model=dict(config=model), **best_of_n.ACCEPTANCE_RM)
    rl_kwargs = dict(num_prompts=512, prompts_per_step=8, eval_prompts=128, num_devices=1,
                     sampling=dict(max_new_tokens=32), optimizer=dict(learning_rate=1e-3, clip_norm=1.0),
                     loop=dict(S.SMOKE_LOOP, num_steps=60, log_every=10, checkpoint_every=60))
    eval_kwargs = dict(num_prompts=512, batch_size=128, max_new_tokens=32)
  elif size == "smoke":
    sft_stage = S.stage("sft", sft.SFTConfig, model=dict(config=model), data=S.SMOKE_DATA, loop=S.SMOKE_LOOP,
                        optimizer=dict(learning_rate=3e-3))
    rm_stage = S.stage("reward", reward.RewardConfig, model=dict(config=model), data=S.SMOKE_DATA,
                       loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3))
    rl_kwargs = dict(num_prompts=64, prompts_per_step=4, eval_prompts=8, num_devices=1,
                     sampling=dict(max_new_tokens=12), loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=1e-3))
    eval_kwargs = dict(num_prompts=16, batch_size=16, max_new_tokens=12)
  else:
    sft_stage = S.stage("sft", sft.SFTConfig, model=dict(config=model),
                        data=dict(num_train=8192, num_eval=256, batch_size=32, max_length=48),
                        optimizer=dict(learning_rate=3e-3, schedule="cosine", warmup_steps=20, decay_steps=300,
                                       end_lr_factor=0.1, clip_norm=1.0),
                        loop=dict(num_steps=300, log_every=25, checkpoint_every=150, eval_every=150))
    rm_stage = S.stage("reward", reward.RewardConfig, model=dict(config=model),
                       data=dict(num_train=8192, num_eval=512, batch_size=32, max_length=48),
                       optimizer=dict(learning_rate=2e-3, schedule="cosine", warmup_steps=20, decay_steps=300,
                                      end_lr_factor=0.1, clip_norm=1.0, weight_decay=0.01),
                       loop=dict(num_steps=300, log_every=25, checkpoint_every=150, eval_every=150))
    rl_kwargs = dict(num_prompts=2048, prompts_per_step=16, eval_prompts=128, num_devices=1,
                     sampling=dict(max_new_tokens=32),
                     optimizer=dict(learning_rate=5e-4, clip_norm=1.0),
                     loop=dict(num_steps=100, log_every=10, checkpoint_every=50, eval_every=50))
    eval_kwargs = dict(num_prompts=512, batch_size=128, max_new_tokens=32)
  stages = {
      "sft": sft_stage,
      "reward": rm_stage,
      algorithm: S.stage("rl", rl.RLConfig, model=dict(init_from="stage:sft"),
                         rewards=(dict(kind="reward_model", reward_model="stage:reward", name="rm"),),
                         loss=dict(dict(algorithm=algorithm, num_generations=4), **loss), **rl_kwargs),
      "evaluate": S.stage("evaluate_policy", evaluate_policy.EvaluatePolicyConfig, policy=f"stage:{algorithm}",
                          base="stage:sft", **eval_kwargs),
  }
  config = S.chain(stages)
  config.tables = dict(metrics=(f"{algorithm}/eval/gold", f"{algorithm}/eval/kl", "evaluate/gold/gain"))
  return config


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/grpo.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  size = {"smoke": "smoke", "lora_smoke": "smoke", "acceptance": "acceptance"}.get(variant, "default")
  config = rl_chain("grpo", size, scale_rewards="group", beta=0.04, kl_mode="loss", kl_estimator="k3")
  if variant == "acceptance":
    rm_source = dict(kind="reward_model", reward_model="stage:reward", name="rm")
    config.evaluate.rewards = (rm_source,)
    grpo_gold, evaluate_gold = copy.deepcopy(config.grpo), copy.deepcopy(config.evaluate)
    grpo_gold.rewards = (dict(kind="gold", name="gold_reward"),)
    evaluate_gold.policy = "stage:grpo_gold"
    with config.unlocked():
      config.grpo_gold, config.evaluate_gold = grpo_gold, evaluate_gold
      config.stages = (*config.stages, "grpo_gold", "evaluate_gold")
  elif variant == "gold":
    config.grpo.rewards = (dict(kind="gold", name="gold_reward"),)
  elif variant == "mixed":
    config.grpo.rewards = (dict(kind="reward_model", reward_model="stage:reward", name="rm", weight=0.8),
                           dict(kind="bleu", weight=0.2))
  elif variant == "kl_reward":
    config.grpo.loss.kl_mode = "reward"
  elif variant in ("lora", "lora_smoke"):
    lora = dict(LORA, rank=4, alpha=8.0) if size == "smoke" else dict(LORA)
    for name in ("sft", "reward", "grpo"):
      config[name].model.lora = lora
    config.reward.model.init_from = "stage:sft"  # Adapters on the SFT backbone (frozen, held once).
    config.reward.num_members = 3
  return config
