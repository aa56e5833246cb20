"""The per-seed table and verdict of the Beyond Monolithic Rewards section (docs/reproductions.md) from a sweep:
    python docs/reproductions/monolithic/table.py runs/papers/monolithic docs/reproductions/monolithic
(writes results.json and prints the markdown table; the rule is the section's, stated before the run)."""

import json
import pathlib
import sys

import numpy as np
from scipy import stats

SELECTORS = ("gold", "model", "rule", "hybrid")


def main(sweep_dir: str, out_dir: str) -> None:
  runs = sorted(pathlib.Path(sweep_dir).glob("seed=*/bon/results.json"), key=lambda p: int(p.parts[-3][5:]))
  per_seed = {}
  for path in runs:
    m = json.loads(path.read_text())["metrics"]
    per_seed[path.parts[-3]] = {f"{s}/{k}": m[f"{s}/{k}"] for s in SELECTORS for k in ("gold@1", "gold@N", "length@N")}
  diff = np.asarray([v["hybrid/gold@N"] - v["model/gold@N"] for v in per_seed.values()])
  half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
  ci = (float(diff.mean() - half), float(diff.mean() + half))
  every, excludes = bool(np.all(diff > 0)), ci[0] > 0
  verdict = "reproduced" if every and excludes else "partly" if diff.mean() > 0 else "not reproduced"
  commits = {json.loads((p.parents[1] / "results.json").read_text())["provenance"]["commit"] for p in runs}
  if len(commits) != 1:
    raise ValueError(f"{sweep_dir}: the runs come from several commits {sorted(commits)}; expected one")
  (commit,) = commits
  out = {"commit": commit, "per_seed": per_seed, "hybrid_minus_model_gold@N": diff.tolist(),
         "mean_diff": float(diff.mean()), "ci95": ci, "verdict": verdict}
  pathlib.Path(out_dir, "results.json").write_text(json.dumps(out, indent=1) + "\n")
  print("| seed | " + " | ".join(f"{s} gold@N (len)" for s in SELECTORS) + " | hybrid - model |")
  print("|---" * (len(SELECTORS) + 2) + "|")
  for (seed, v), d in zip(per_seed.items(), diff):
    cells = " | ".join(f"{v[f'{s}/gold@N']:.3f} ({v[f'{s}/length@N']:.1f})" for s in SELECTORS)
    print(f"| {seed[5:]} | {cells} | {d:+.3f} |")
  means = " | ".join(f"{np.mean([v[f'{s}/gold@N'] for v in per_seed.values()]):.3f} "
                     f"({np.mean([v[f'{s}/length@N'] for v in per_seed.values()]):.1f})" for s in SELECTORS)
  print(f"| mean | {means} | {diff.mean():+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] |")
  print(f"gold@1 (every selector, n = 1): {np.mean([v['gold/gold@1'] for v in per_seed.values()]):.3f}; "
        f"verdict: {verdict}")


if __name__ == "__main__":
  main(*sys.argv[1:3])
