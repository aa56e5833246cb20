"""DR-IRL's GRPO-S (Cheng et al. 2025, "Inverse Reinforcement Learning with Dynamic Reward Scaling for LLM
Alignment", arXiv 2503.18991) vs plain GRPO on the synthetic world, at matched steps: gold reward of each policy.

GRPO-S multiplies each GRPO advantage by alpha = alpha^D * alpha^M (`jaxrlhf.losses.difficulty_scaling`):
  alpha^D: data-level hardness, once per prompt: delta = 1 - W, W the clause similarity (tokens as clauses, the SFT
           policy's input embedding rows as the encoder: an offline stand-in for the paper's CLIP / text encoder) of
           one SFT sample to the prompt's reference response; alpha^D = sigmoid(delta) / sigmoid(mean delta);
  alpha^M: model-level responsiveness, each step: reward gaps r(q, o_i) - r(q, o~) of the group's samples against the
           reference response, sigmoid(mean of the gaps within tau) / sigmoid(mean gap) per prompt's group.
One run (per seed) is the chain
  sft -> grpo     GRPO on the gold reward (the paper's shadow reward models are replaced by the world's r*, so the
                  comparison isolates the scaling), KL to the SFT policy in the loss
      -> grpo_s   the same with loss.difficulty_scaling = "grpo_s" (tau = 1.0, per-group pools)
Both rl stages share the SFT start, prompts, sampling, optimizer, steps and evaluation (eval/gold: one sample per
held-out validation prompt, the same key). The sweep: seeds {0, ..., 4} (a seed reseeds every stage).

Variants: default (the per-seed run), smoke (seconds: the GRPO-S stage alone, 1 step from a random tiny policy).
    python -m experiments.sweep --config configs/papers/dr_irl.py --workdir runs/papers/dr_irl
    python -m experiments.tables --workdir runs/papers/dr_irl
"""

from configs import _sections as S
from jaxrlhf.stages import rl, sft

VARIANTS = ("default", "smoke")
SEEDS = (0, 1, 2, 3, 4)  # >= 5 paired seeds: the verdict rule in docs/reproductions.md (DR-IRL section)
TAU = 1.0
# The verdict rule, stated before the run (docs/reproductions.md, DR-IRL section, "Rule (stated before the run)"):
# Delta_s = grpo_s/eval/gold - grpo/eval/gold per seed; reproduced if the paired 95% t-interval lies above 0, not
# reproduced if below, inconclusive if it contains 0.
VERDICTS = (
    dict(sweep="dr_irl", claim="GRPO-S raises gold over GRPO", value="grpo_s/eval/gold", baseline="grpo/eval/gold",
         direction=+1),
)


def _sizes(smoke: bool) -> dict:
  if smoke:  # One rl stage (GRPO-S) from a random tiny policy: seconds in CI.
    return dict(model=S.SMOKE_MODEL,
                rl=dict(num_prompts=8, prompts_per_step=2, eval_prompts=4, max_prompt_length=8,
                        sampling=dict(max_new_tokens=6), optimizer=dict(learning_rate=1e-3),
                        loop=dict(S.SMOKE_LOOP, num_steps=1, checkpoint_every=1, log_every=1)))
  return dict(model=S.WORLD_MODEL,
              sft=dict(data=dict(num_train=3200, num_eval=64, batch_size=32, max_length=48),
                       optimizer=dict(learning_rate=3e-3, schedule="cosine", warmup_steps=10, decay_steps=100,
                                      end_lr_factor=0.1, clip_norm=1.0),
                       loop=dict(num_steps=100, log_every=50, checkpoint_every=100, eval_every=0)),
              rl=dict(num_prompts=256, prompts_per_step=16, eval_prompts=128, max_prompt_length=8,
                      sampling=dict(max_new_tokens=16), optimizer=dict(learning_rate=1e-3, clip_norm=1.0),
                      loop=dict(num_steps=30, log_every=10, checkpoint_every=30, eval_every=30)))


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/dr_irl.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  sizes = _sizes(variant == "smoke")
  base_loss = dict(algorithm="grpo", num_generations=4, scale_rewards="group", beta=0.04, kl_mode="loss")
  rl_kwargs = dict(sizes["rl"], num_devices=1, rewards=(dict(kind="gold", name="gold_reward"),))
  grpo_s_loss = dict(base_loss, difficulty_scaling="grpo_s", responsiveness_tau=TAU, responsiveness_pool="group")
  if variant == "smoke":
    stages = {"grpo_s": S.stage("rl", rl.RLConfig, model=dict(config=sizes["model"]), loss=grpo_s_loss, **rl_kwargs)}
    config = S.chain(stages, seed=0)
    config.tables = dict(metrics=("grpo_s/eval/gold", "grpo_s/train/difficulty/alpha_data",
                                  "grpo_s/train/difficulty/alpha_model", "grpo_s/train/difficulty/reward_gap"))
    return config
  rl_kwargs["model"] = dict(init_from="stage:sft")
  stages = {
      "sft": S.stage("sft", sft.SFTConfig, model=dict(config=sizes["model"]), **sizes["sft"]),
      "grpo": S.stage("rl", rl.RLConfig, loss=base_loss, **rl_kwargs),
      "grpo_s": S.stage("rl", rl.RLConfig, loss=grpo_s_loss, **rl_kwargs),
  }
  config = S.chain(stages, seed=0)
  config.tables = dict(metrics=("grpo/eval/gold", "grpo_s/eval/gold", "grpo/eval/kl", "grpo_s/eval/kl",
                                "grpo_s/train/difficulty/alpha_data", "grpo_s/train/difficulty/alpha_model",
                                "grpo_s/train/difficulty/reward_gap"))
  return config


def sweep(add, arg=None):
  for seed in SEEDS[:1] if (arg or "default") == "smoke" else SEEDS:
    add(seed=seed)
