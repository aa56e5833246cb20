"""FLR, follow-up likelihood as reward (Zhang et al. 2024, "Aligning Language Models Using Follow-up Likelihood as
Reward Signal", arXiv 2409.13948; the follow-up lists in jaxrlhf/rewards/follow_up.py): the paper's entry under
configs/papers/, the same chain as `configs/smollm2_rm_hh.py`'s flr variants (one definition, no copy):

  eval_flr  reward_eval with scorer "follow_up_likelihood": SmolLM2-135M-Instruct scores the held-out 20% of the HH
            harmless-base pairs by the likelihood of 20 positive vs 20 negative follow-up user turns (accuracy with a
            bootstrap 95% interval, beside the trained heads of configs/smollm2_rm_hh.py);
  bon_flr   best-of-n of SmolLM2's samples on the held-out HH prompts, selected by FLR.

Variants: default (= smollm2_rm_hh.py:flr), smoke (= flr_smoke: 4 pairs, 2 prompts x 2 samples).
    python -m experiments.run --config configs/papers/flr.py --workdir runs/flr \\
        --config.data.paths='("../shared/data/hh-rlhf/harmless-base-test.jsonl.gz",)'
"""

from configs import smollm2_rm_hh

VARIANTS = {"default": "flr", "smoke": "flr_smoke"}


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/flr.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  return smollm2_rm_hh.get_config(VARIANTS[variant])


def sweep(add, arg=None):
  """One run: FLR is scored without training, and the best-of-n stage's own seed fixes its pools."""
  del arg
  add()
