"""Co-Reward (Zhang et al. 2025, "Co-Reward: Self-supervised Reinforcement Learning for Large Language Model Reasoning
via Contrastive Agreement", arXiv:2508.00410; code github.com/resistzzz/Co-Reward): label-free GRPO where a
question's rollouts are rewarded for agreeing with the majority answer of its rephrasing's rollouts, and vice versa
(`jaxrlhf.rewards.voting.co_reward`). The paper's claim: plain self-rewarding by majority vote on a question's own
rollouts collapses (the policy grows consistent, not correct), Co-Reward does not, and tracks the ground-truth reward.

Task: data/tasks/coreward/ (`jaxrlhf.data.arithmetic_tasks`): one-step addition / subtraction word problems, each in
an "original" and a "rephrased" form (two templates per operation) sharing `pair_id` and `answer`; sft.jsonl (1,200
problems, both forms), train.jsonl (256 RL problems = 512 prompts), eval.jsonl (128 held-out problems); disjoint
problems. The prompt ends "\\nAnswer:" and the answer is the number that follows.

Policy: SmolLM2-135M answers these too rarely and too slowly on a 2-core CPU, so one run = one seed of the chain
  sft (a small Llama, width 64, 2 layers, SmolLM2's tokenizer; SFT on sft.jsonl to PARTIAL accuracy)
    -> start    (evaluate_policy of the SFT policy on the held-out prompts: the accuracy every arm starts from)
    -> rl_truth (GRPO on the ground-truth exact match: the supervised upper reference)
    -> rl_self  (GRPO on plain self-consistency: majority vote of the question's own group, TTRL-style)
    -> rl_co    (GRPO on Co-Reward)
every RL stage from the same SFT policy, the same paired batches (`prompt_groups="pair_id"`: each step samples 4
problems = 8 prompts, both forms, 8 rollouts each), the same optimizer, KL (k3 loss, the paper's low_var_kl) and
sampling. Every arm logs, with weight 0: `accuracy` (exact match against the ground truth) and `unanimity` (the
share of groups whose 8 rollouts all give the same answer: the collapse signal), on the training batches and on
held-out prompts (eval).

    python -m experiments.sweep --config configs/papers/co_reward.py --workdir runs/papers/co_reward --workers 1
    python -m experiments.tables --workdir runs/papers/co_reward
    python -m experiments.run --config configs/papers/co_reward.py:smoke --workdir runs/co_reward_smoke
"""

from configs import _sections as S
from jaxrlhf.stages import evaluate_policy, rl, sft

VARIANTS = ("default", "smoke")
ARMS = ("truth", "self", "co")
SEEDS = (0, 1, 2, 3, 4)
TASK = S.REPO_ROOT / "data" / "tasks" / "coreward"
EXTRACT = "last_number"
MONITORS = (dict(kind="exact_match", name="accuracy", weight=0.0, options=dict(column="answer", extract=EXTRACT)),
            dict(kind="vote_unanimity", name="unanimity", weight=0.0, options=dict(extract=EXTRACT)))
POLICY = dict(embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16, mlp_dim=128,
              max_position_embeddings=64)
# Held-out accuracy (one sample per prompt); the training batches' accuracy and unanimity (8 rollouts per group; the
# held-out unanimity of one sample per prompt says only that an answer was given).
METRICS = ("eval/reward/accuracy", "train/reward/accuracy", "train/reward/unanimity")
# The verdict rule (a) as data (experiments.analysis.verdicts), stated before the first sweep (commit 217d2a1) in the
# section's "Rule" paragraph (docs/reproductions.md, Co-Reward): d = A_co - A_self, the held-out accuracies at the last
# step; "reproduced" needs >= 5 seeds with the paired 95% t-interval above 0, "not reproduced" a mean d <= 0. Rule (b),
# the collapse counts (A_arm < A_start - 0.05 with final training unanimity >= 0.5), is a count over seeds, not a
# paired difference: docs/reproductions/co_reward/aggregate.py computes it.
VERDICTS = (
    dict(sweep="co_reward", claim="Co-Reward beats self-consistency (held-out accuracy)",
         value="rl_co/eval/reward/accuracy", baseline="rl_self/eval/reward/accuracy", direction=+1,
         note="not reproduced when mean d <= 0"),
)


def rewards(arm: str) -> tuple[dict, ...]:
  """The trained reward of stage rl_<arm>, then the weight-0 monitors."""
  trained = {"truth": dict(kind="exact_match", name="truth", options=dict(column="answer", extract=EXTRACT)),
             "self": dict(kind="self_consistency", name="self", options=dict(extract=EXTRACT)),
             "co": dict(kind="co_reward", name="co", options=dict(pair_column="pair_id", extract=EXTRACT))}[arm]
  return (trained,) + MONITORS


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/co_reward.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  gguf = S.smollm2_gguf()
  smoke = variant == "smoke"
  sft_data = dict(source="files", format="pairwise", paths=(str(TASK / "sft.jsonl"),), tokenizer=gguf,
                  eval_fraction=0.05, max_length=40, batch_size=32)
  prompts = dict(source="files", paths=(str(TASK / "train.jsonl"),), eval_paths=(str(TASK / "eval.jsonl"),),
                 tokenizer=gguf)
  if smoke:
    sft_kwargs = dict(model=dict(config=S.SMOKE_MODEL), data=dict(sft_data, batch_size=8),
                      loop=dict(S.SMOKE_LOOP, num_steps=2, checkpoint_every=2),
                      optimizer=dict(learning_rate=3e-3))
    rl_kwargs = dict(num_prompts=16, prompts_per_step=4, eval_prompts=0, sampling=dict(max_new_tokens=3),
                     loop=dict(S.SMOKE_LOOP, num_steps=2, checkpoint_every=2),
                     loss=dict(num_generations=2), optimizer=dict(learning_rate=1e-3))
    arms = ("co",)
  else:
    sft_kwargs = dict(model=dict(config=POLICY), data=sft_data,
                      optimizer=dict(learning_rate=3e-3, schedule="cosine", warmup_steps=20, decay_steps=600,
                                     end_lr_factor=0.1, clip_norm=1.0),
                      loop=dict(S.SMOKE_LOOP, num_steps=600, log_every=100, checkpoint_every=600))
    rl_kwargs = dict(num_prompts=0, prompts_per_step=8, eval_prompts=256, sampling=dict(max_new_tokens=4),
                     loss=dict(num_generations=8),
                     optimizer=dict(learning_rate=5e-4, clip_norm=1.0),
                     loop=dict(S.SMOKE_LOOP, num_steps=200, log_every=10, checkpoint_every=200, eval_every=50))
    arms = ARMS
  stages = {"sft": S.stage("sft", sft.SFTConfig, **sft_kwargs)}
  if not smoke:  # The SFT policy's held-out accuracy and unanimity: where every arm starts.
    stages["start"] = S.stage("evaluate_policy", evaluate_policy.EvaluatePolicyConfig, policy="stage:sft",
                              base="stage:sft", prompts=prompts, rewards=MONITORS, num_prompts=256,
                              max_prompt_length=40, batch_size=64, max_new_tokens=4)
  for arm in arms:
    loss = dict(rl_kwargs["loss"], algorithm="grpo", scale_rewards="group", beta=0.005, kl_mode="loss",
                kl_estimator="k3")
    stages[f"rl_{arm}"] = S.stage("rl", rl.RLConfig, model=dict(init_from="stage:sft"), prompts=prompts,
                                  prompt_groups="pair_id", max_prompt_length=40, rewards=rewards(arm), num_devices=1,
                                  **{**rl_kwargs, "loss": loss})
  config = S.chain(stages, seed=0)
  start = () if smoke else ("start/reward/accuracy/policy",)
  metrics = METRICS[1:] if smoke else METRICS  # The smoke chain samples no held-out prompts (CI time).
  config.tables = dict(metrics=start + tuple(f"rl_{a}/{m}" for a in arms for m in metrics))
  return config


def sweep(add, arg=None):
  for seed in SEEDS[:1] if arg == "smoke" else SEEDS:
    add(seed=seed)
