"""The tables of the Mixed-R1 BMAS section of docs/reproductions.md from the saved pools of a
`configs/papers/mixed_r1.py` run (one seed):

    python docs/reproductions/mixed_r1/analyze_pools.py runs/papers/mixed_r1/seed=0/pools

Reads scores.npz ({selector: (P, N) score of every pooled sample}) and pool.npz (the samples, decoded again with
SmolLM2's tokenizer for the off-topic and shuffled-reference checks); the statistics are experiments/analysis/pools.py's
(percentile bootstrap over prompts, unbiased best-of-n). Prints markdown and writes analysis.json beside this file.
"""

import json
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from experiments.analysis.pools import bon, bootstrap, constant_P, fmt  # noqa: E402


def mixed_r1(run: pathlib.Path) -> dict:
  """The section's rules (A)-(C) and check (D) from one run's pools; the texts are decoded again from pool.npz with
  the run's tokenizer and the held-out prompts' chosen turns read as the run read them."""
  from jaxrlhf import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxrlhf.data import prompts as prompts_lib  # pylint: disable=g-import-not-at-top
  from jaxrlhf.rewards import bleu as bleu_lib, bmas as bmas_lib  # pylint: disable=g-import-not-at-top
  from jaxrlhf.rewards.calling import call_reward_function  # pylint: disable=g-import-not-at-top
  from jaxrlhf.stages import inputs as inputs_lib  # pylint: disable=g-import-not-at-top
  from experiments import run as run_lib  # pylint: disable=g-import-not-at-top

  with np.load(run / "scores.npz") as f:
    s = {k: f[k] for k in f.files}
  with np.load(run / "pool.npz") as f:
    tokens, mask, lengths = f["tokens"], f["mask"], f["lengths"]
  p, n = s["bmas"].shape
  out = {"prompts": p, "pool_size": n, "constant_pools": {k: float(constant_P(v).mean()) for k, v in s.items()}}
  out["constant_exact_minus_bmas"] = bootstrap(constant_P(s["exact_match"]) - constant_P(s["bmas"]))
  # Claim B: BLEU against the reference of BMAS's best-of-8 minus a random sample's (the pool mean).
  bleu_gain = bon(s["bmas"], s["bleu"], n) - s["bleu"].mean(1)
  out["bleu@8_bmas_minus_random"] = bootstrap(bleu_gain)
  lens = lengths.astype(np.float64)
  out["best_of_8"] = {sel: {"bleu@8": float(bon(s[sel], s["bleu"], n).mean()),
                            "bmas@8": float(bon(s[sel], s["bmas"], n).mean()),
                            "length@8": float(bon(s[sel], lens, n).mean())} for sel in ("bmas", "exact_match", "bleu")}
  out["best_of_8"]["random (n = 1)"] = {"bleu@8": float(s["bleu"].mean()), "bmas@8": float(s["bmas"].mean()),
                                        "length@8": float(lens.mean())}
  out["length@8_bmas_minus_random"] = bootstrap(bon(s["bmas"], lens, n) - lens.mean(1))
  # Claims C / D need the texts: the held-out prompts' chosen turns (as the run read them) and the decoded samples.
  config = config_lib.load_config(f"{ROOT / 'configs' / 'papers' / 'mixed_r1.py'}")
  cfg = run_lib.plan(config)[0][2]
  source = inputs_lib.open_prompts(cfg.prompts, cfg.policy)
  refs = list(source.split("eval", cfg.num_prompts, cfg.max_prompt_length).table.columns["chosen"])
  tok = source.tokenizer
  # Decoded as the stage decoded them for its text rewards.
  flat_texts = prompts_lib.decode_completions(tok, tokens.reshape(p * n, -1), mask.reshape(p * n, -1))
  texts = [flat_texts[i * n:(i + 1) * n] for i in range(p)]
  fn = bmas_lib.bmas_reward(column="chosen", model=cfg.policy, empty=-1.0)

  def score(refs_P):
    flat = call_reward_function(fn, [""] * (p * n), [t for row in texts for t in row],
                                {"chosen": [r for r in refs_P for _ in range(n)]})
    return np.asarray(flat, np.float64).reshape(p, n)

  own = score(refs)
  out["recomputed_bmas_max_abs_diff"] = float(np.max(np.abs(own - s["bmas"])))
  other = score(refs[1:] + refs[:1])  # Each prompt's samples against the NEXT prompt's chosen turn.
  out["own_above_other_share"] = bootstrap(np.mean(own > other, axis=1) + 0.5 * np.mean(own == other, axis=1))
  rng = np.random.default_rng(0)
  shuffled = [" ".join(rng.permutation(r.split())) for r in refs]
  bm_shuf = np.asarray(call_reward_function(fn, [""] * p, shuffled, {"chosen": refs}), np.float64)
  bl = bleu_lib.bleu_reward(column="chosen")
  bleu_shuf = np.asarray(call_reward_function(bl, [""] * p, shuffled, {"chosen": refs}), np.float64)
  out["shuffled_reference"] = {"bmas": float(bm_shuf.mean()), "bleu": float(bleu_shuf.mean()),
                               "bmas_of_samples": float(s["bmas"].mean()), "bleu_of_samples": float(s["bleu"].mean())}
  print(f"Mixed-R1 BMAS pools: {p} prompts x {n} samples")
  print("| reward | constant pools |\n|---|---|")
  for k, v in out["constant_pools"].items():
    print(f"| {k} | {v:.3f} |")
  print(f"constant(exact_match) - constant(bmas): {fmt(out['constant_exact_minus_bmas'])}")
  print("| selector | BLEU @8 | BMAS @8 | length @8 |\n|---|---|---|---|")
  for k, v in out["best_of_8"].items():
    print(f"| {k} | {v['bleu@8']:.4f} | {v['bmas@8']:.4f} | {v['length@8']:.1f} |")
  print(f"BLEU@8 (BMAS) - BLEU (random): {fmt(out['bleu@8_bmas_minus_random'])}")
  print(f"length@8 (BMAS) - length (random): {fmt(out['length@8_bmas_minus_random'])}")
  print(f"own reference above the next prompt's: {fmt(out['own_above_other_share'])}")
  print(f"recomputed BMAS vs the run's: max |diff| {out['recomputed_bmas_max_abs_diff']:.2e}")
  print(f"shuffled reference: {out['shuffled_reference']}")
  return out


if __name__ == "__main__":
  result = mixed_r1(pathlib.Path(sys.argv[1]))
  with open(HERE / "analysis.json", "w") as f:
    json.dump(result, f, indent=1)
