"""Exploratory (chosen after the main table; no verdict): gold of the SFT, GRPO and GRPO-S policies of a
configs/papers/dr_irl.py sweep on the TRAIN prompts, split at the median of GRPO-S's per-prompt data hardness delta
(grpo_s/prompt_hardness.json: hard = delta above the median). Four samples per prompt per policy, the same keys for
every policy.

    python docs/reproductions/dr_irl/hard_easy.py runs/papers/dr_irl
"""

import glob
import json
import os
import sys

import jax
import numpy as np

from jaxrlhf.models import from_pretrained
from jaxrlhf.sampling.generate import generate
from jaxrlhf.stages import inputs as inputs_lib


def main(root: str) -> None:
  source = inputs_lib.open_prompts(inputs_lib.PromptSpec(), "")
  world, tok = source.world, source.tokenizer
  train = source.split("train", 256, 8)  # the rl stages' num_prompts / max_prompt_length
  out = {}
  for seed_dir in sorted(glob.glob(os.path.join(root, "seed=*"))):
    with open(os.path.join(seed_dir, "grpo_s", "prompt_hardness.json")) as f:
      delta = np.asarray(json.load(f)["delta"])
    hard = delta > np.median(delta)
    row = {}
    for arm in ("sft", "grpo", "grpo_s"):
      policy, _ = from_pretrained(os.path.join(seed_dir, arm, "model"))
      gen = generate(policy, train.ids, train.mask, max_new_tokens=16, rng=jax.random.PRNGKey(7), temperature=1.0,
                     eos_ids=(tok.eos_id,), pad_id=tok.pad_id, num_samples=4)
      gold = world.gold_reward_np(np.repeat(train.ids, 4, 0), np.repeat(train.mask, 4, 0), np.asarray(gen.tokens),
                                  np.asarray(gen.mask)).reshape(-1, 4).mean(1)
      row[arm] = {"hard": float(gold[hard].mean()), "easy": float(gold[~hard].mean())}
    out[os.path.basename(seed_dir)] = row
    print(os.path.basename(seed_dir), json.dumps(row), flush=True)
  for split in ("hard", "easy"):
    d = [r["grpo_s"][split] - r["grpo"][split] for r in out.values()]
    gain = [r["grpo"][split] - r["sft"][split] for r in out.values()]
    print(f"{split}: GRPO-S - GRPO per seed {np.round(d, 4).tolist()} mean {np.mean(d):+.4f}; "
          f"GRPO - SFT mean {np.mean(gain):+.4f}")


if __name__ == "__main__":
  main(sys.argv[1])
