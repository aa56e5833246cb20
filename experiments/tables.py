"""Aggregates a sweep: `python -m experiments.tables --workdir DIR [--config configs/x.py[:variant]]`.

Reads every finished run's DIR/<run>/results.json ("metrics") and overrides.json, groups runs by all swept
keys except `seed`, and writes mean ± std over seeds (sample std, ddof=1; 0 for a single seed) as
DIR/results.md (also printed) and DIR/results.csv, and every run's own values (one row per run, e.g. per seed) as
DIR/results_runs.csv. When DIR/sweep.json exists only the runs it lists are read (the last sweep's grid; other run
directories, e.g. of an earlier grid, are ignored and counted on stderr). Runs from different code commits
(results.json "provenance", each stage's commit included: a run resumed after a code change counts as mixed) are not
pooled unless --allow_mixed_commits is given; results.md ends with the commit(s) the numbers came from. Runs of one
row whose configs differ (status.json "config_hash", from experiments.sweep) are never pooled. The config (from --config
or DIR/sweep.json) may ask for
  config.tables.metrics = ("eval/loss", ...)      which metric columns (default: all)
  config.plots = [ConfigDict(name=, x=, y=, group_by=)]   one PNG per entry in DIR/plots/<name>.png:
      y (a metric) against x (a swept key), one line per value of group_by ("" for one line), error bars = std.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from typing import Any

from absl import app
from absl import flags
import numpy as np

from jaxrlhf import config as config_lib


SEED_KEY = "seed"


def load_runs(workdir: str) -> list[dict[str, Any]]:
  """[{name, overrides, metrics, commit, dirty, versions, config_hash}] for every finished run, sorted by name: the
  runs DIR/sweep.json lists when it exists (the others are counted on stderr), else every sub-directory with a
  results.json. `versions` maps each code version ("<commit> (clean|dirty)") the run's stages came from to the
  stages (results.json provenance.stages; the run's own commit for results from older code)."""
  names = sorted(name for name in os.listdir(workdir) if os.path.exists(os.path.join(workdir, name, "results.json")))
  sweep_json = os.path.join(workdir, "sweep.json")
  if os.path.exists(sweep_json):
    with open(sweep_json) as f:
      listed = {r["name"] for r in json.load(f).get("runs", [])}
    ignored = [name for name in names if name not in listed]
    if ignored:
      print(f"[tables] {len(ignored)} run director{'y' if len(ignored) == 1 else 'ies'} not in {sweep_json} ignored "
            f"(not the last sweep's grid): {', '.join(ignored[:10])}{' ...' if len(ignored) > 10 else ''}",
            file=sys.stderr, flush=True)
    names = [name for name in names if name in listed]
  runs = []
  for name in names:
    run_dir = os.path.join(workdir, name)
    with open(os.path.join(run_dir, "results.json")) as f:
      results = json.load(f)
    if results.get("status") != "done":
      continue
    overrides = {}
    if os.path.exists(os.path.join(run_dir, "overrides.json")):
      with open(os.path.join(run_dir, "overrides.json")) as f:
        overrides = json.load(f)
    status = {}
    if os.path.exists(os.path.join(run_dir, "status.json")):
      with open(os.path.join(run_dir, "status.json")) as f:
        status = json.load(f)
    prov = results.get("provenance") or {}
    stages = prov.get("stages") or {"": {"commit": prov.get("commit", "unknown"), "dirty": prov.get("dirty")}}
    made_by = {stage: (record.get("commit") or "unknown", record.get("dirty")) for stage, record in stages.items()}
    versions: dict[str, list[str]] = {}
    for stage, (commit, dirty) in made_by.items():
      versions.setdefault(_label(commit, dirty), []).append(stage)
    # One version: the stages' own (a run resumed after a code change without re-running anything is that code's).
    commit, dirty = next(iter(made_by.values())) if len(versions) == 1 else ("+".join(sorted(versions)), None)
    runs.append({"name": name, "overrides": overrides, "metrics": results.get("metrics", {}), "commit": commit,
                 "dirty": dirty, "versions": versions, "config_hash": status.get("config_hash")})
  return runs


def _label(commit: str, dirty: bool | None) -> str:
  return commit + (" (dirty)" if dirty else " (clean)" if dirty is False else "")


def check_commits(runs: list[dict[str, Any]], allow_mixed: bool = False) -> str:
  """The provenance line of a table ("code commit: <sha> (clean)"); ValueError when the runs come from several
  commits (or a dirty checkout among others), counting each stage of a run (a run whose stages were made by two
  commits is mixed on its own) and `allow_mixed` is False, naming the runs (and stages) of each commit."""
  by_commit: dict[str, list[str]] = {}
  for r in runs:
    versions = r.get("versions") or {}
    if len(versions) <= 1:  # The run's own commit (as callers may set it).
      versions = {_label(r["commit"], r["dirty"]): [""]}
    for label, stages in versions.items():
      shown = r["name"] if len(versions) == 1 else f"{r['name']} (stages {', '.join(stages)})"
      by_commit.setdefault(label, []).append(shown)
  if len(by_commit) > 1 and not allow_mixed:
    listing = "; ".join(f"{c}: {', '.join(names)}" for c, names in sorted(by_commit.items()))
    raise ValueError(f"--workdir: runs come from {len(by_commit)} code versions ({listing}); re-run them at one "
                     "commit, or pass --allow_mixed_commits to pool them anyway")
  return "code commit" + ("s: " if len(by_commit) > 1 else ": ") + "; ".join(
      f"{c} ({len(names)} runs)" for c, names in sorted(by_commit.items()))


def write_runs_csv(path: str, runs: list[dict[str, Any]], metrics: list[str]) -> None:
  """One row per run: its swept keys (seed included), commit and every metric."""
  keys = sorted({k for r in runs for k in r["overrides"]})
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["run", *keys, "commit", *metrics])
    for r in runs:
      w.writerow([r["name"], *[r["overrides"].get(k, "") for k in keys], r["commit"],
                  *[r["metrics"].get(m, "") for m in metrics]])


def group(runs: list[dict[str, Any]], metrics: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
  """Groups runs by every swept key except seed; ValueError when one group's runs record different config hashes.

  Returns:
    (group keys, rows) where each row is {"key": {k: v}, "n": seeds, "mean": {m: float}, "std": {m: float}}.
  """
  keys = sorted({k for r in runs for k in r["overrides"] if k != SEED_KEY})
  buckets: dict[str, list[dict[str, Any]]] = {}
  for r in runs:
    key = json.dumps([r["overrides"].get(k) for k in keys])
    buckets.setdefault(key, []).append(r)
  rows = []
  for key, members in buckets.items():
    hashes: dict[str, list[str]] = {}
    for r in members:
      if r.get("config_hash"):  # Runs from older code record none: nothing to compare.
        hashes.setdefault(r["config_hash"], []).append(r["name"])
    if len(hashes) > 1:  # Same overrides, different configs (another variant or an edited file): not one setting.
      raise ValueError(f"--workdir: runs with the same swept keys {dict(zip(keys, json.loads(key)))} come from "
                       f"{len(hashes)} configs (status.json config_hash: "
                       + "; ".join(f"{h}: {', '.join(names)}" for h, names in sorted(hashes.items()))
                       + "); table each config's sweep from its own workdir")
    row = {"key": dict(zip(keys, json.loads(key))), "n": len(members), "mean": {}, "std": {}}
    for m in metrics:
      values = np.asarray([r["metrics"][m] for r in members if m in r["metrics"]], np.float64)
      row["mean"][m] = float(values.mean()) if values.size else math.nan
      row["std"][m] = float(values.std(ddof=1)) if values.size > 1 else 0.0
    rows.append(row)
  rows.sort(key=lambda r: [_sort_key(r["key"][k]) for k in keys])
  return keys, rows


def _sort_key(v: Any) -> tuple:
  return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def _fmt(x: float) -> str:
  return f"{x:.4g}"


def markdown(keys: list[str], rows: list[dict[str, Any]], metrics: list[str]) -> str:
  header = [*keys, "seeds", *metrics]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [str(r["key"][k]) for k in keys] + [str(r["n"])]
    cells += [f"{_fmt(r['mean'][m])} ± {_fmt(r['std'][m])}" for m in metrics]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_csv(path: str, keys: list[str], rows: list[dict[str, Any]], metrics: list[str]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([*keys, "seeds", *[c for m in metrics for c in (f"{m} mean", f"{m} std")]])
    for r in rows:
      w.writerow([r["key"][k] for k in keys] + [r["n"]] +
                 [x for m in metrics for x in (r["mean"][m], r["std"][m])])


def plot(path: str, spec: Any, keys: list[str], rows: list[dict[str, Any]]) -> None:
  """y mean ± std against x, one line per group_by value; raises ValueError naming a bad x/y/group_by."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  x, y, by = spec["x"], spec["y"], spec.get("group_by", "") or ""
  for name, value in (("x", x), ("group_by", by)):
    if value and value not in keys:
      raise ValueError(f"config.plots[{spec['name']!r}].{name}: {value!r} is not a swept key; swept: {keys}")
  if rows and y not in rows[0]["mean"]:
    raise ValueError(f"config.plots[{spec['name']!r}].y: {y!r} is not a metric; metrics: "
                     f"{sorted(rows[0]['mean'])}")
  lines: dict[Any, list[dict[str, Any]]] = {}
  for r in rows:
    lines.setdefault(r["key"].get(by) if by else "", []).append(r)
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for label, members in lines.items():
    members = sorted(members, key=lambda r: _sort_key(r["key"][x]))
    ax.errorbar([r["key"][x] for r in members], [r["mean"][y] for r in members],
                yerr=[r["std"][y] for r in members], marker="o", capsize=3,
                label=f"{by}={label}" if by else None)
  ax.set_xlabel(x)
  ax.set_ylabel(y)
  if by:
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _config_spec(workdir: str, spec: str | None) -> str | None:
  if spec:
    return spec
  sweep_json = os.path.join(workdir, "sweep.json")
  if os.path.exists(sweep_json):
    with open(sweep_json) as f:
      return json.load(f).get("config")
  return None


def tables(workdir: str, spec: str | None = None, allow_mixed_commits: bool = False) -> str:
  """Writes results.md, results.csv, results_runs.csv and the configured plots for `workdir`; returns the
  markdown. Raises ValueError for runs from several code commits unless `allow_mixed_commits`."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir: not a directory: {workdir!r}")
  runs = load_runs(workdir)
  if not runs:
    raise FileNotFoundError(f"--workdir: no finished runs (<run>/results.json) under {workdir!r}")
  commits = check_commits(runs, allow_mixed_commits)
  spec = _config_spec(workdir, spec)
  config = config_lib.load_config(spec) if spec else None
  metrics = sorted({m for r in runs for m in r["metrics"]})
  if config is not None and "tables" in config and "metrics" in config.tables:
    wanted = list(config.tables.metrics)
    missing = [m for m in wanted if m not in metrics]
    if missing:
      raise ValueError(f"config.tables.metrics: {missing} not found in results; available: {metrics}")
    metrics = wanted
  keys, rows = group(runs, metrics)
  md = markdown(keys, rows, metrics) + f"\n{commits}\n"
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(md)
  write_csv(os.path.join(workdir, "results.csv"), keys, rows, metrics)
  write_runs_csv(os.path.join(workdir, "results_runs.csv"), runs, metrics)
  if config is not None and "plots" in config:
    plots_dir = os.path.join(workdir, "plots")
    os.makedirs(plots_dir, exist_ok=True)
    for spec_i in config.plots:
      plot(os.path.join(plots_dir, f"{spec_i['name']}.png"), spec_i, keys, rows)
  return md


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["workdir"].value:
    raise app.UsageError("--workdir is required")
  try:
    print(tables(flags.FLAGS["workdir"].value, flags.FLAGS["config"].value,
                 flags.FLAGS["allow_mixed_commits"].value), end="")
  except (config_lib.ConfigError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def cli() -> None:
  """The command line entry point (flags are defined here so that importing this module defines none)."""
  flags.DEFINE_string("workdir", None, "Sweep directory (from experiments.sweep).")
  flags.DEFINE_string("config", None, "Config file for tables/plots (default: from sweep.json).")
  flags.DEFINE_bool("allow_mixed_commits", False, "Pool runs from different code commits into one table.")
  app.run(main)


if __name__ == "__main__":
  cli()
