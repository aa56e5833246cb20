"""Helpers behind docs/reproductions.md and notebooks/reproductions.ipynb: run the paper configs' sweeps,
collect their tables and best-of-N curves, and draw the figures from saved results.

Layout of a saved reproduction (what `experiments.sweep` + `experiments.tables` leave, copied without
checkpoints to docs/reproductions/<paper>/):
    <paper>/results.csv          one row per swept setting: keys, seeds, "<metric> mean", "<metric> std"
    <paper>/results.md           the same table in markdown
    <paper>/results_runs.csv     one row per run (per seed): its keys, commit and every metric
    <paper>/curves.json          (best-of-N papers) {stage/selector: {n, kl, gold_mean, gold_std, proxy_mean,
                                 proxy_std, seeds}} averaged over the sweep's seeds (`collect_curves`)

    python -m experiments.repro --paper ensembles --workdir runs/papers   # sweep + tables + copy to docs/

A variant (`--variant ppo`) runs in its own directory, <workdir>/<paper>_<variant>, and is saved to
docs/reproductions/<paper>/<variant>/: each variant is its own sweep, never resumed from or tabled with another's.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPERS_DIR = os.path.join(REPO_ROOT, "configs", "papers")
DOCS_DIR = os.path.join(REPO_ROOT, "docs", "reproductions")


def paper_names() -> list[str]:
  """The paper configs in configs/papers/ (file stems, sorted), e.g. ["attributes_vs_bt", "ensembles", ...]."""
  return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(PAPERS_DIR, "*.py"))
                if not os.path.basename(p).startswith("_"))


def _env() -> dict[str, str]:
  return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p))


def output_dir(workdir: str, paper: str, variant: str | None = None) -> str:
  """The command line's sweep directory for a paper: workdir/<paper>, or workdir/<paper>_<variant> for a variant (a
  sweep's run names hold only its overrides: two variants in one directory would collide, and experiments.sweep
  refuses the second)."""
  return os.path.join(workdir, f"{paper}_{variant}" if variant else paper)


def run_sweep(paper: str, workdir: str, variant: str | None = None, workers: int = 1, out: str | None = None) -> str:
  """Runs configs/papers/<paper>.py[:variant]'s sweep and its tables into `out` (default workdir/<paper>, where
  notebooks/reproductions.ipynb reads its smoke sweeps; the command line passes output_dir's per-variant directory);
  returns that dir.

  Raises:
    ValueError: `paper` names no config in configs/papers/.
    RuntimeError: the sweep or the tables failed (the message carries the tail of their output).
  """
  if paper not in paper_names():
    raise ValueError(f"paper: {paper!r} is not a config in configs/papers/; valid: {', '.join(paper_names())}")
  spec = os.path.join("configs", "papers", f"{paper}.py") + (f":{variant}" if variant else "")
  out = out or os.path.join(workdir, paper)
  for module, args in (("experiments.sweep", [f"--config={spec}", f"--workdir={out}", f"--workers={workers}"]),
                       ("experiments.tables", [f"--workdir={out}"])):
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=_env(), capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"{module} --config={spec} failed (exit {proc.returncode}):\n"
                         f"{(proc.stdout + proc.stderr)[-3000:]}")
  collect_curves(out)
  return out


def read_table(paper_dir: str) -> tuple[list[str], list[str], list[dict[str, Any]]]:
  """Reads <paper_dir>/results.csv (from experiments.tables).

  Returns:
    (swept keys, metric names, rows) with rows = [{"key": {k: str}, "seeds": int, "mean": {m: float},
    "std": {m: float}}].
  Raises:
    FileNotFoundError: no results.csv in paper_dir.
  """
  path = os.path.join(paper_dir, "results.csv")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: missing (run `python -m experiments.tables --workdir <sweep dir>` first)")
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader)
    body = list(reader)
  seeds_at = header.index("seeds")
  keys = header[:seeds_at]
  metrics = [c[:-len(" mean")] for c in header[seeds_at + 1:] if c.endswith(" mean")]
  rows = []
  for line_no, cells in enumerate(body, start=2):
    if len(cells) != len(header):
      raise ValueError(f"{path}:{line_no}: expected {len(header)} cells, got {len(cells)}")
    rec = dict(zip(header, cells))
    rows.append({"key": {k: rec[k] for k in keys}, "seeds": int(rec["seeds"]),
                 "mean": {m: float(rec[f"{m} mean"]) for m in metrics},
                 "std": {m: float(rec[f"{m} std"]) for m in metrics}})
  return keys, metrics, rows


def collect_curves(sweep_dir: str) -> dict[str, dict[str, list[float]]]:
  """Averages every best_of_n stage's curves over the sweep's runs (seeds) and writes sweep_dir/curves.json.

  Curves of runs that differ in swept keys other than `seed` are kept apart: the curve name is
  "<swept keys without seed>/<stage>/<selector>" ("<stage>/<selector>" when seed is the only key).
  Returns {} (and writes nothing) when no run has a best_of_n stage with the gold reward (the world's). With a
  sweep_dir/sweep.json, only the runs it lists count (as in experiments.tables: not an earlier grid's).
  """
  listed = None
  if os.path.exists(os.path.join(sweep_dir, "sweep.json")):
    with open(os.path.join(sweep_dir, "sweep.json")) as f:
      listed = {r["name"] for r in json.load(f).get("runs", [])}
  groups: dict[str, list[dict[str, Any]]] = {}
  for path in sorted(glob.glob(os.path.join(sweep_dir, "*", "*", "results.json"))):
    if listed is not None and os.path.basename(os.path.dirname(os.path.dirname(path))) not in listed:
      continue
    with open(path) as f:
      result = json.load(f)
    if "curves" not in result:
      continue
    run_dir = os.path.dirname(os.path.dirname(path))
    overrides = {}
    if os.path.exists(os.path.join(run_dir, "overrides.json")):
      with open(os.path.join(run_dir, "overrides.json")) as f:
        overrides = json.load(f)
    setting = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()) if k != "seed")
    stage = os.path.basename(os.path.dirname(path))
    for selector, curve in result["curves"].items():
      if "gold" not in curve:  # Prompt files (HH, tasks) have no gold reward: nothing to plot against the proxy.
        continue
      name = "/".join(p for p in (setting, stage, selector) if p)
      groups.setdefault(name, []).append(curve)
  out = {}
  for name, curves in groups.items():
    length = min(len(c["n"]) for c in curves)
    stack = lambda k: np.asarray([c[k][:length] for c in curves], np.float64)  # pylint: disable=cell-var-from-loop
    gold, proxy = stack("gold"), stack("proxy")
    out[name] = {"n": curves[0]["n"][:length], "kl": curves[0]["kl"][:length], "seeds": len(curves),
                 "gold_mean": gold.mean(0).tolist(), "gold_std": gold.std(0, ddof=1).tolist() if len(curves) > 1
                 else [0.0] * length,
                 "proxy_mean": proxy.mean(0).tolist(), "proxy_std": proxy.std(0, ddof=1).tolist()
                 if len(curves) > 1 else [0.0] * length}
  if out:
    with open(os.path.join(sweep_dir, "curves.json"), "w") as f:
      json.dump(out, f, indent=1)
  return out


def plot_table(ax: Any, keys: list[str], rows: list[dict[str, Any]], metric: str) -> None:
  """A bar per row (label: its swept keys) of `metric`, mean with a std error bar (over seeds)."""
  labels = [",".join(f"{k.split('.')[-1]}={r['key'][k]}" for k in keys) or "all" for r in rows]
  ax.bar(range(len(rows)), [r["mean"][metric] for r in rows], yerr=[r["std"][metric] for r in rows], capsize=3,
         color="tab:blue", alpha=0.8)
  ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
  ax.set_title(metric, fontsize=9)
  ax.axhline(0.0, color="black", linewidth=0.5)


def plot_curves(ax_gold: Any, ax_proxy: Any, curves: dict[str, dict[str, list[float]]],
                names: list[str] | None = None) -> None:
  """Best-of-N gold (ax_gold) and proxy (ax_proxy) reward against KL = log n - (n-1)/n, one line per curve,
  mean over seeds with a +- std band."""
  for name in names or sorted(curves):
    c = curves[name]
    kl = np.asarray(c["kl"])
    for ax, key in ((ax_gold, "gold"), (ax_proxy, "proxy")):
      if ax is None:
        continue
      mean, std = np.asarray(c[f"{key}_mean"]), np.asarray(c[f"{key}_std"])
      ax.plot(kl, mean, label=name)
      ax.fill_between(kl, mean - std, mean + std, alpha=0.15)
  for ax, key in ((ax_gold, "gold"), (ax_proxy, "proxy")):
    if ax is not None:
      ax.set_xlabel("KL of best-of-n (nats)")
      ax.set_ylabel(f"{key} reward")


def headline_figure(curves: dict[str, dict[str, list[float]]], path: str, names: list[str] | None = None,
                    title: str = "Best-of-N: gold vs proxy reward") -> str:
  """Two panels (gold, proxy) of best-of-N reward against KL for `names` (default: all curves); writes PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_gold, ax_proxy) = plt.subplots(1, 2, figsize=(10, 3.8))
  plot_curves(ax_gold, ax_proxy, curves, names)
  ax_gold.set_title("gold reward (true)")
  ax_proxy.set_title("proxy reward (what is optimized)")
  ax_proxy.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def save_to_docs(sweep_dir: str, paper: str, docs_dir: str = DOCS_DIR) -> str:
  """Copies the sweep's small outputs (results.md/.csv, the per-run results_runs.csv the docs cite, curves.json,
  plots/*.png) to docs_dir/<paper>/ (`paper` may be "<paper>/<variant>")."""
  import shutil  # pylint: disable=g-import-not-at-top
  dest = os.path.join(docs_dir, paper)
  os.makedirs(dest, exist_ok=True)
  for name in ("results.md", "results.csv", "results_runs.csv", "curves.json"):
    if os.path.exists(os.path.join(sweep_dir, name)):
      shutil.copy(os.path.join(sweep_dir, name), dest)
  for png in glob.glob(os.path.join(sweep_dir, "plots", "*.png")):
    os.makedirs(os.path.join(dest, "plots"), exist_ok=True)
    shutil.copy(png, os.path.join(dest, "plots"))
  return dest


def main(argv: list[str]) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--paper", required=True, choices=paper_names())
  parser.add_argument("--workdir", default="runs/papers")
  parser.add_argument("--variant", default=None)
  parser.add_argument("--workers", type=int, default=1)
  parser.add_argument("--no-docs", action="store_true", help="do not copy the results into docs/reproductions/")
  args = parser.parse_args(argv)
  out = run_sweep(args.paper, args.workdir, args.variant, args.workers, out=output_dir(args.workdir, args.paper,
                                                                                       args.variant))
  if not args.no_docs:
    print(f"saved to {save_to_docs(out, os.path.join(args.paper, args.variant) if args.variant else args.paper)}")
  with open(os.path.join(out, "results.md")) as f:
    print(f.read(), end="")


if __name__ == "__main__":
  main(sys.argv[1:])
