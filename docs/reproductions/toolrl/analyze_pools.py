"""The tables of the ToolRL section from the saved pools of a `configs/papers/toolrl.py:pools` sweep:

    python docs/reproductions/toolrl/analyze_pools.py runs/papers/toolrl_pools
    python docs/reproductions/toolrl/analyze_pools.py runs/papers/toolrl_warm_pools analysis_warm.json

For every seed=<k>/pools/ run: each reward's share of constant groups, the section's rule constant(exact) - constant(toolrl) with its percentile-bootstrap 95% interval over
requests, 10,000 resamples, seed 0, and the best-of-8 cross-table), each reward's mean score (n = 1) and best-of-8
value (the run's proxy@1 / proxy@N), and what the samples contain (decoded as the stage decoded them). Pooled over the
seeds (every seed samples the same 40 requests): the rule's per-request difference averaged over the seeds, with the
same bootstrap over requests (a request's seeds resampled together), and likewise the two granularity-only
differences constant(coarse) - constant(toolrl) (format in both) and constant(exact) - constant(correct) (format in
neither). Prints markdown and writes analysis.json (or the file named second) beside this file.
"""

import json
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from experiments.analysis.pools import bon, bootstrap, constant_P, fmt, seed_pools, write_pooled  # noqa: E402

REWARDS = ("exact", "coarse", "correct", "format", "toolrl")


def toolrl(run: pathlib.Path) -> dict:
  """One seed's tables from its pools: constant groups per reward, the rule's constant(exact) - constant(toolrl) and
  constant(coarse) - constant(toolrl) with bootstrap intervals, and the best-of-8 cross-table of selectors."""
  with np.load(run / "scores.npz") as f:
    s = {k: f[k] for k in f.files}
  p, n = s["toolrl"].shape
  out = {"prompts": p, "pool_size": n, "constant_pools": {k: float(constant_P(v).mean()) for k, v in s.items()}}
  diff = constant_P(s["exact"]) - constant_P(s["toolrl"])
  out["constant_exact_minus_toolrl"] = bootstrap(diff)
  out["constant_coarse_minus_toolrl"] = bootstrap(constant_P(s["coarse"]) - constant_P(s["toolrl"]))
  out["constant_exact_minus_correct"] = bootstrap(constant_P(s["exact"]) - constant_P(s["correct"]))
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
  print(f"constant(exact) - constant(correct): {fmt(out['constant_exact_minus_correct'])}")
  print("| selector | exact call @8 (tool prompts) | R_correct @8 | R_toolrl @8 | format @8 |\n|---|---|---|---|---|")
  for k, v in table.items():
    e = "n/a" if v["exact_call@8"] is None else f"{v['exact_call@8']:.3f}"
    print(f"| {k} | {e} | {v['R_correct@8']:.3f} | {v['R_toolrl@8']:.3f} | {v['format@8']:.3f} |")
  return out


def sample_contents(run: pathlib.Path, tokenizer) -> dict:
  """Counts over the pooled samples: the format's tags, a JSON "name" key, and samples cut at the token cap."""
  from jaxrlhf.data import prompts as prompts_lib  # pylint: disable=g-import-not-at-top
  with np.load(run / "pool.npz") as f:
    tokens, mask, lengths = f["tokens"], f["mask"], f["lengths"]
  p, n, t = tokens.shape
  texts = prompts_lib.decode_completions(tokenizer, tokens.reshape(p * n, t), mask.reshape(p * n, t))
  return {"samples": p * n, "with_think": sum("<think>" in x for x in texts),
          "with_tool_call": sum("<tool_call>" in x for x in texts), "with_name_key": sum('"name"' in x for x in texts),
          "at_token_cap": int((lengths >= t).sum())}


# The pooled differences: the section's rule first, then the two granularity-only comparisons.
POOLED = (("exact", "toolrl"), ("coarse", "toolrl"), ("exact", "correct"))


def main(sweep: pathlib.Path, out_name: str = "analysis.json") -> None:
  from jaxrlhf.models import load_tokenizer  # pylint: disable=g-import-not-at-top
  from configs import _sections  # pylint: disable=g-import-not-at-top
  tokenizer = load_tokenizer(_sections.smollm2_gguf())
  result = {}
  runs = seed_pools(sweep)
  for run in runs:
    seed = run.parent.name
    print(f"## {seed}")
    a = result[seed] = toolrl(run)
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    a["proxy"] = {r: {"proxy@1": metrics[f"{r}/proxy@1"], "proxy@N": metrics[f"{r}/proxy@N"]} for r in REWARDS}
    a["contents"] = sample_contents(run, tokenizer)
    print(f"mean score / best of 8: {a['proxy']}\nsamples: {a['contents']}")
  write_pooled(result, runs, HERE / out_name, *POOLED[0], also=POOLED[1:])


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]), *sys.argv[2:3])
