"""R^3, the regularized relevance reward (Kim & Seo 2024, "Preference-free Alignment Learning with Regularized
Relevance Reward", arXiv 2402.03469), against the plain relevance reward it regularizes, by best-of-N on SmolLM2.

Rewards (`jaxrlhf.rewards.semantic`, both under the offline encoder `jaxrlhf.rewards.encoder`: SmolLM2-135M-Instruct's
mean-pooled, L2-normalized last hidden states, a stand-in for the paper's Contriever):
  relevance     r_x = cos(e(prompt), e(response)), the plain relevance the paper finds hacked (copying the question);
  r3_relevance  r_x * LI * RP on open-ended prompts, F(r_y) * RP on closed-ended ones (r_y: relevance to the
                reference answer; LI = words / 100, RP = distinct / all word trigrams).

Prompts: data/tasks/relevance/prompts.jsonl, 32 hand-written chat prompts (24 open-ended, 8 closed-ended with a
reference answer; columns `query_type` and `references`), written for this demonstration.

  default  (one best_of_n stage "pools") SmolLM2 samples 6 completions of up to 64 tokens for each of the 32 prompts;
           both rewards select among them. The hack candidates (the prompt echoed, the prompt repeated) are added
           to these pools by docs/reproductions/r3/hack_pools.py, which reads this stage's pool.npz.
  smoke    two prompts x two 4-token samples (CI runs it end to end, with the tiny test model in place of SmolLM2).

    python -m experiments.run --config configs/papers/r3.py --workdir runs/r3 --config.seed=0
"""

from configs import _sections as S
from jaxrlhf.stages import best_of_n

VARIANTS = ("default", "smoke")
SEEDS = (0, 1, 2)
PROMPTS = S.REPO_ROOT / "data" / "tasks" / "relevance" / "prompts.jsonl"


def rewards(model: str) -> tuple[dict, ...]:
  """The two selectors under the encoder `model` (a HF folder or a .gguf)."""
  return (dict(kind="relevance", name="relevance", options=dict(model=model)),
          dict(kind="r3_relevance", name="r3", options=dict(model=model, type_column="query_type",
                                                          reference_column="references")))


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/r3.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  smoke = variant == "smoke"
  gguf = S.smollm2_gguf()
  prompts = dict(source="files", paths=(str(PROMPTS),), eval_paths=(str(PROMPTS),))
  size = dict(num_prompts=2, pool_size=2, batch_size=2, max_new_tokens=4, max_prompt_length=96) if smoke else dict(
      num_prompts=32, pool_size=6, batch_size=4, max_new_tokens=64, max_prompt_length=64)
  stages = {"pools": S.stage("best_of_n", best_of_n.BestOfNConfig, policy=gguf, prompts=prompts,
                             rewards=rewards(gguf), plots=not smoke, **size)}
  config = S.chain(stages, seed=0)
  config.tables = dict(metrics=tuple(f"pools/{n}/{s}" for n in ("relevance", "r3") for s in ("proxy@1", "proxy@N")))
  return config


def sweep(add, arg=None):
  """Three sampling seeds (the smoke variant: one)."""
  for seed in SEEDS[:1] if (arg or "default") == "smoke" else SEEDS:
    add(seed=seed)
