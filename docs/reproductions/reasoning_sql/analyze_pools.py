"""The tables of the Reasoning-SQL section from the saved pools of a `configs/papers/reasoning_sql.py:pools` sweep:

    python docs/reproductions/reasoning_sql/analyze_pools.py runs/papers/reasoning_sql_pools

For every seed=<k>/pools/ run: each term's share of constant groups (all 8 scores equal), its mean score (n = 1) and
best-of-8 value (the run's proxy@1 / proxy@N), and the section's rule: the per-prompt paired difference
constant(execution_accuracy) - constant(reasoning_sql), its mean with a percentile-bootstrap 95% interval over prompts
(10,000 resamples, seed 0; experiments/analysis/pools.py). Pooled over the seeds
(every seed samples the same 64 prompts): the per-prompt difference averaged over the seeds, with the same bootstrap
over prompts (a prompt's seeds resampled together). Prints markdown and writes analysis.json beside this file.
"""

import json
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from experiments.analysis.pools import bootstrap, constant_P, fmt, seed_pools, write_pooled  # noqa: E402

TERMS = ("execution_accuracy", "syntax", "format", "schema_linking", "ngram", "reasoning_sql")


def seed_analysis(run: pathlib.Path) -> dict:
  with np.load(run / "scores.npz") as f:
    s = {k: f[k] for k in f.files}
  metrics = json.loads((run / "results.json").read_text())["metrics"]
  p, n = s["reasoning_sql"].shape
  out = {"prompts": p, "pool_size": n, "terms": {}}
  for t in TERMS:
    out["terms"][t] = {"constant_pools": float(constant_P(s[t]).mean()), "constant_count": int(constant_P(s[t]).sum()),
                       "proxy@1": metrics[f"{t}/proxy@1"], "proxy@N": metrics[f"{t}/proxy@N"]}
  diff_P = constant_P(s["execution_accuracy"]) - constant_P(s["reasoning_sql"])
  out["constant_execution_minus_reasoning_sql"] = bootstrap(diff_P)
  out["prompts_exec_constant_rsql_not"] = int((diff_P > 0).sum())
  out["prompts_rsql_constant_exec_not"] = int((diff_P < 0).sum())
  out["samples_executing"] = int((s["execution_accuracy"] > 0).sum())
  out["samples_with_format"] = int((s["format"] > 0).sum())
  return out


def main(sweep: pathlib.Path) -> None:
  result = {}
  runs = seed_pools(sweep)
  for run in runs:
    seed = run.parent.name
    a = result[seed] = seed_analysis(run)
    print(f"{seed}: {a['prompts']} prompts x {a['pool_size']} samples")
    print("| reward | constant groups | mean score, n = 1 | best of 8 |\n|---|---|---|---|")
    for t, v in a["terms"].items():
      print(f"| {t} | {v['constant_pools']:.3f} ({v['constant_count']} / {a['prompts']}) | {v['proxy@1']:.3f} "
            f"| {v['proxy@N']:.3f} |")
    print(f"constant(execution) - constant(reasoning_sql): {fmt(a['constant_execution_minus_reasoning_sql'])} "
          f"({a['prompts_exec_constant_rsql_not']} prompts one way, {a['prompts_rsql_constant_exec_not']} the other); "
          f"executing samples {a['samples_executing']}, formatted samples {a['samples_with_format']}")
  write_pooled(result, runs, HERE / "analysis.json", "execution_accuracy", "reasoning_sql", a_name="execution")


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]))
