"""The tables of docs/reproductions/bmasdemo/section.md from the saved pools of two best_of_n runs:

    python docs/reproductions/bmasdemo/analyze_pools.py toolrl runs/toolrl_pools/pools
    python docs/reproductions/bmasdemo/analyze_pools.py mixed_r1 runs/mixed_r1/pools

Reads scores.npz ({selector: (P, N) score of every pooled sample}) and, for mixed_r1, pool.npz (the samples, decoded
again with SmolLM2's tokenizer for the off-topic and shuffled-reference checks). Intervals: percentile bootstrap over
prompts (10,000 resamples, seed 0) of a per-prompt paired difference. Best-of-n values use the unbiased estimator
(`jaxrlhf.sampling.best_of_n.unbiased_best_of_n`: ties in the selector share the selection). Prints markdown and
writes <name>_analysis.json beside this file.
"""

import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from jaxrlhf.sampling.best_of_n import unbiased_best_of_n  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def bootstrap(values_P: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
  """(mean, lo, hi): the mean of per-prompt values and its 95% percentile-bootstrap interval over prompts."""
  values_P = np.asarray(values_P, np.float64)
  idx = np.random.default_rng(seed).integers(0, len(values_P), size=(resamples, len(values_P)))
  means = values_P[idx].mean(1)
  return float(values_P.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def constant_P(scores_PxN: np.ndarray) -> np.ndarray:
  return np.all(scores_PxN == scores_PxN[:, :1], axis=1).astype(np.float64)


def pooled_constant_difference(runs: list, a: str, b: str) -> tuple[int, tuple[float, float, float]]:
  """(seeds, bootstrap) of constant(a) - constant(b) per prompt, averaged over the seeds' pools `runs` (each a
  seed=<k>/pools dir with scores.npz and pool.npz); every seed must have sampled the same prompts (a prompt's seeds
  are resampled together)."""
  diffs, prompt_ids = [], None
  for run in runs:
    with np.load(run / "scores.npz") as f:
      diffs.append(constant_P(f[a]) - constant_P(f[b]))
    with np.load(run / "pool.npz") as f:
      ids = f["prompt_ids"]
    if prompt_ids is not None and not np.array_equal(ids, prompt_ids):
      raise ValueError(f"{run}: its prompts differ from the first seed's; the pooled bootstrap pairs prompts")
    prompt_ids = ids
  return len(diffs), bootstrap(np.mean(diffs, axis=0))


def write_pooled(result: dict, runs: list, out_path: pathlib.Path, a: str, b: str, a_name: str = "") -> None:
  """Adds the pooled constant(a) - constant(b) over the seeds' pools `runs` to `result["pooled"]` (key
  "constant_<a_name or a>_minus_<b>"), prints it and writes `result` to out_path as JSON."""
  a_name = a_name or a
  seeds, pooled = pooled_constant_difference(runs, a, b)
  result["pooled"] = {"seeds": seeds, f"constant_{a_name}_minus_{b}": pooled}
  print(f"pooled over {seeds} seeds: constant({a_name}) - constant({b}): {fmt(pooled)}")
  with open(out_path, "w") as f:
    json.dump(result, f, indent=1)


def bon(selector_PxN: np.ndarray, value_PxN: np.ndarray, n: int) -> np.ndarray:
  """(P,) expected value of the best-of-n sample chosen by `selector` (n = 1: the pool mean)."""
  return unbiased_best_of_n(selector_PxN, value_PxN, np.asarray([n]))[:, 0]


def fmt(t: tuple[float, float, float]) -> str:
  return f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"


def toolrl(run: pathlib.Path) -> dict:
  with np.load(run / "scores.npz") as f:
    s = {k: f[k] for k in f.files}
  p, n = s["toolrl"].shape
  out = {"prompts": p, "pool_size": n, "constant_pools": {k: float(constant_P(v).mean()) for k, v in s.items()}}
  diff = constant_P(s["exact"]) - constant_P(s["toolrl"])
  out["constant_exact_minus_toolrl"] = bootstrap(diff)
  out["constant_coarse_minus_toolrl"] = bootstrap(constant_P(s["coarse"]) - constant_P(s["toolrl"]))
  # Requests with gold calls: the exact-match correctness is +-3 there, 0 on every sample of a small-talk request.
  tool_rows = np.any(s["exact"] != 0.0, axis=1)
  out["tool_call_prompts"] = int(tool_rows.sum())
  exact_ok = (s["exact"] == 3.0).astype(np.float64)
  table = {}
  for sel in ("toolrl", "coarse", "exact", "correct", "format"):
    table[sel] = {"exact_call@8": float(bon(s[sel], exact_ok, n)[tool_rows].mean()) if tool_rows.any() else None,
                  "R_correct@8": float(bon(s[sel], s["correct"], n).mean()),
                  "R_toolrl@8": float(bon(s[sel], s["toolrl"], n).mean()),
                  "format@8": float(bon(s[sel], s["format"], n).mean())}
  table["random (n = 1)"] = {"exact_call@8": float(exact_ok[tool_rows].mean()) if tool_rows.any() else None,
                             "R_correct@8": float(s["correct"].mean()), "R_toolrl@8": float(s["toolrl"].mean()),
                             "format@8": float(s["format"].mean())}
  out["best_of_8"] = table
  if tool_rows.any():
    out["exact_call_toolrl_minus_random"] = bootstrap(bon(s["toolrl"], exact_ok, n)[tool_rows]
                                                      - exact_ok[tool_rows].mean(1))
  print(f"ToolRL pools: {p} prompts x {n} samples; {out['tool_call_prompts']} prompts with gold calls")
  print("| reward | constant pools |\n|---|---|")
  for k, v in out["constant_pools"].items():
    print(f"| {k} | {v:.3f} |")
  print(f"constant(exact) - constant(toolrl): {fmt(out['constant_exact_minus_toolrl'])}")
  print(f"constant(coarse) - constant(toolrl): {fmt(out['constant_coarse_minus_toolrl'])}")
  print("| selector | exact call @8 (tool prompts) | R_correct @8 | R_toolrl @8 | format @8 |\n|---|---|---|---|---|")
  for k, v in table.items():
    e = "n/a" if v["exact_call@8"] is None else f"{v['exact_call@8']:.3f}"
    print(f"| {k} | {e} | {v['R_correct@8']:.3f} | {v['R_toolrl@8']:.3f} | {v['format@8']:.3f} |")
  return out


def mixed_r1(run: pathlib.Path) -> dict:
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
  name, run_dir = sys.argv[1], pathlib.Path(sys.argv[2])
  result = {"toolrl": toolrl, "mixed_r1": mixed_r1}[name](run_dir)
  with open(HERE / f"{name}_analysis.json", "w") as f:
    json.dump(result, f, indent=1)
