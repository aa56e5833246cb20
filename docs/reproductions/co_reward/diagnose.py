"""What a Co-Reward sweep's policies answer: one sample (T = 1, key 0) for each of the first 64 held-out prompts.

    python docs/reproductions/co_reward/diagnose.py runs/papers/co_reward/seed=0 sft rl_self rl_co

Prints per policy its most common answers, the share equal to the ground truth, and the share of problems whose two
forms (original, rephrased) got the same answer.
"""

import collections
import json
import sys

import jax
import numpy as np

from configs import _sections as S
from jaxrlhf.data import padding
from jaxrlhf.models import from_pretrained, load_tokenizer
from jaxrlhf.sampling.generate import generate


def main(run_dir: str, stages: list[str]) -> None:
  tok = load_tokenizer(S.smollm2_gguf())
  rows = [json.loads(line) for line in open(S.REPO_ROOT / "data" / "tasks" / "coreward" / "eval.jsonl")][:64]
  ids, mask = padding.encode_prompts(tok, [r["prompt"] for r in rows], 40)
  for stage in stages:
    model, _ = from_pretrained(f"{run_dir}/{stage}/model")
    gen = generate(model, ids, mask, max_new_tokens=4, rng=jax.random.PRNGKey(0), temperature=1.0,
                   eos_ids=(tok.eos_id,), pad_id=tok.pad_id, num_samples=1)
    outs = [tok.decode([t for t, m in zip(ts, ms) if m and t != tok.eos_id]).strip()
            for ts, ms in zip(np.asarray(gen.tokens), np.asarray(gen.mask))]
    correct = np.mean([o == r["answer"] for o, r in zip(outs, rows)])
    agree = np.mean([outs[i] == outs[i + 1] for i in range(0, len(outs), 2)])
    print(f"{stage}: {collections.Counter(outs).most_common(6)} correct {correct:.3f} pairs agreeing {agree:.3f}")


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:])
