"""The preference-strength reproduction's Fig. 2 over a sweep's seeds (configs/papers/preference_strength.py):

    python -m experiments.analysis.preference_strength --workdir SWEEP_DIR [--stage strength]

aggregates every finished run's `<stage>/bucket<b>/*` metrics (mean ± std over seeds) into SWEEP_DIR/buckets.md
and SWEEP_DIR/plots/strength_buckets.png.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import numpy as np

from jaxrlhf.evaluation import strength


def sweep_buckets(workdir: str, stage: str = "strength") -> tuple[list[dict[str, str]], list[dict], list[dict]]:
  """Aggregates `<stage>/bucket<b>/*` metrics over a sweep's finished runs.

  Returns (markdown rows "mean ± std", mean rows, std rows) per bucket (sample std over runs, ddof=1).
  """
  per_run = []
  for name in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, name, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        results = json.load(f)
      if results.get("status") == "done":
        per_run.append(results["metrics"])
  prefix = f"{stage}/bucket"
  keys = sorted({k for m in per_run for k in m if k.startswith(prefix)})
  if not keys:
    raise ValueError(f"--workdir: no finished run under {workdir!r} has {prefix}<b>/* metrics")
  buckets = sorted({int(k[len(prefix):].split("/")[0]) for k in keys})
  fields = sorted({k.split("/", 2)[2] for k in keys}, key=["strength_mean", "strength_std", "flip_rate",
                                                           "gold_agreement"].index)
  md, means, stds = [], [], []
  for b in buckets:
    mean_row, std_row, md_row = {"bucket": b}, {"bucket": b}, {"bucket": str(b)}
    for fld in fields:
      v = np.asarray([m[f"{prefix}{b}/{fld}"] for m in per_run if f"{prefix}{b}/{fld}" in m], np.float64)
      mean_row[fld] = float(v.mean())
      std_row[fld] = float(v.std(ddof=1)) if v.size > 1 else 0.0
      md_row[fld] = f"{mean_row[fld]:.3g} ± {std_row[fld]:.2g}"
    md.append(md_row)
    means.append(mean_row)
    stds.append(std_row)
  return md, means, stds


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Bucket table (Fig. 2) of a preference-strength sweep.")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--stage", default="strength")
  args = parser.parse_args(argv)
  md, means, stds = sweep_buckets(args.workdir, args.stage)
  text = strength.bucket_markdown(md)
  with open(os.path.join(args.workdir, "buckets.md"), "w") as f:
    f.write(text)
  strength.plot_buckets(os.path.join(args.workdir, "plots", "strength_buckets.png"), means, stds)
  print(text, end="")


if __name__ == "__main__":
  main()
