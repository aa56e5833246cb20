"""Runs a config's sweep grid: `python -m experiments.sweep --config configs/x.py[:variant] --workdir DIR
[--workers N]`.

The config file defines `sweep(add)` (or `sweep(add, arg)` to see the variant), big_vision style:
    def sweep(add):
      for seed in (0, 1):
        add(seed=seed, **{"optimizer.learning_rate": 1e-3})
Each `add(...)` is one run: `experiments.run` in a subprocess with those `--config.key=value` overrides,
in DIR/<name> where the name is built from the overrides (`optimizer.learning_rate=0.001,seed=0`).
A run whose DIR/<name>/status.json says "done" is skipped on re-run; a failing run gets status "failed"
and its traceback (error.txt, log.txt) in its directory, and the other runs continue. DIR/sweep.json
lists the runs and their status; the exit code is 1 if any run failed. `--extra_kinds module:NAME` is passed to
every run (a user's own stage kinds, see experiments.run).

A run's name says only its overrides, so status.json also records the config it ran (`config`: the file and
variant as given, `config_hash`: a hash of that config before the overrides, see `config_hash`). A re-run into a
workdir whose run of the same name was made from another config (another variant, another file, an edited file) is
refused before anything runs (a config error, exit 2, naming the run directories): its results would be skipped as
"done" and tabled as this config's. Use a new --workdir, or delete those run directories. A status.json from older
code, without the record, is trusted as before, with a warning.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags

from jaxrlhf import config as config_lib


STATUS_FILE = "status.json"


def collect(spec: str) -> list[dict[str, Any]]:
  """The list of override dicts the config's sweep(add[, arg]) adds, in order."""
  path, arg = config_lib.split_config_arg(spec)
  config = config_lib.load_config(spec)  # First: an unknown variant is named before sweep(add, arg) sees it.
  module = config_lib.load_config_module(path)
  sweep_fn = getattr(module, "sweep", None)
  if not callable(sweep_fn):
    raise config_lib.ConfigError(f"--config: {path!r} defines no sweep(add) function")
  runs: list[dict[str, Any]] = []
  add = lambda **kw: runs.append(dict(kw))
  if len(inspect.signature(sweep_fn).parameters) >= 2:
    sweep_fn(add, arg)
  else:
    sweep_fn(add)
  if not runs:
    raise config_lib.ConfigError(f"--config: {path}.sweep(add) added no runs")
  for overrides in runs:
    for key in overrides:
      config_lib.check_override(config, key)
  return runs


def run_name(overrides: dict[str, Any]) -> str:
  """A stable, readable, filesystem-safe directory name: keys sorted, `key=value` joined by commas."""
  parts = [f"{k}={_format(v)}" for k, v in sorted(overrides.items())]
  name = ",".join(parts) or "default"
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)[:200]


def _format(value: Any) -> str:
  """How a value is spelled in a run's name (`(sigmoid,sft)`): readable; run names of existing sweeps depend on it."""
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(_format(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def flag_value(value: Any) -> str:
  """How a value is spelled on the command line for ml_collections config_flags: a bare word for a top-level value
  (a string flag takes it as typed), a Python literal for a sequence, whose items it parses with literal_eval (so a
  string item is quoted: `('sigmoid','sft')`; unquoted it would be read as the one string '(sigmoid,sft)')."""
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def _literal(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return flag_value(value)
  return repr(value)


def command(spec: str, workdir: str, overrides: dict[str, Any], extra_kinds: str = "") -> list[str]:
  """The `experiments.run` command line of one sweep member."""
  return [sys.executable, "-m", "experiments.run", f"--config={spec}", f"--workdir={workdir}",
          *([f"--extra_kinds={extra_kinds}"] if extra_kinds else []),
          *[f"--config.{k}={flag_value(v)}" for k, v in overrides.items()]]


# Top-level config keys that only say how results are shown (experiments.tables), not what a run computes: a metric
# added to a table after a sweep must not make its finished runs "another config".
PRESENTATION_KEYS = ("tables",)


def config_hash(spec: str) -> str:
  """A hash of the ConfigDict that `spec` (file[:variant]) gives, before any override: every value that a run
  computes from (all but PRESENTATION_KEYS), whatever the file or variant it came from (the same hash for two
  spellings of one file)."""
  config = {k: v for k, v in config_lib.load_config(spec).to_dict().items() if k not in PRESENTATION_KEYS}
  return hashlib.sha256(json.dumps(config, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def check_resume(spec: str, workdir: str, names: list[str], runs: list[dict[str, Any]], spec_hash: str) -> None:
  """ConfigError naming every run directory of `workdir` (among `names`) that holds a run of another config than
  `spec` (its status.json's config hash differs, or its overrides.json differs from this run's overrides: two
  override sets can share a sanitized name). A status.json without a hash (older code) gives a warning."""
  clashes = []
  for name, overrides in zip(names, runs):
    run_dir = os.path.join(workdir, name)
    previous = _status(run_dir)
    if previous is None:
      continue
    if "config_hash" not in previous:
      print(f"[sweep] WARNING: {run_dir}/{STATUS_FILE} was written by older code and records no config: it cannot "
            f"be checked against {spec}; reusing it", flush=True)
    elif previous["config_hash"] != spec_hash:
      clashes.append(f"{run_dir} (ran {previous.get('config')!r}, config hash {previous['config_hash']}; this sweep: "
                     f"{spec!r}, {spec_hash})")
      continue
    recorded = os.path.join(run_dir, "overrides.json")
    if os.path.exists(recorded):
      with open(recorded) as f:
        if json.load(f) != json.loads(json.dumps(overrides)):
          clashes.append(f"{run_dir} (ran other overrides, {recorded})")
  if clashes:
    raise config_lib.ConfigError(
        f"--workdir: {len(clashes)} run director{'y holds a run' if len(clashes) == 1 else 'ies hold runs'} of "
        f"another config: {'; '.join(clashes[:5])}{' ...' if len(clashes) > 5 else ''}. Their results would be "
        "skipped as done and tabled as this config's: use a new --workdir, or delete those run directories")


def _status(run_dir: str) -> dict[str, Any] | None:
  path = os.path.join(run_dir, STATUS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def run_one(spec: str, run_dir: str, overrides: dict[str, Any], extra_kinds: str = "",
            spec_hash: str | None = None) -> dict[str, Any]:
  """Runs one member in a subprocess (output in run_dir/log.txt) and writes run_dir/status.json (with the config
  spec and `spec_hash`, its config_hash)."""
  os.makedirs(run_dir, exist_ok=True)
  _write_json(os.path.join(run_dir, "overrides.json"), overrides)
  start = time.time()
  cmd = command(spec, run_dir, overrides, extra_kinds)
  # The child must import `experiments` and `configs` even when the package is not pip-installed.
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p))
  with open(os.path.join(run_dir, "log.txt"), "w") as log:
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
  status = {"status": "done" if rc == 0 else "failed", "returncode": rc, "wall_s": time.time() - start,
            "command": cmd, "config": spec, "config_hash": spec_hash or config_hash(spec)}
  if rc != 0:
    error = os.path.join(run_dir, "error.txt")
    if os.path.exists(error):
      with open(error) as f:
        status["error"] = f.read()[-4000:]
    else:
      with open(os.path.join(run_dir, "log.txt")) as f:
        status["error"] = f.read()[-4000:]
  _write_json(os.path.join(run_dir, STATUS_FILE), status)
  return status


def sweep(spec: str, workdir: str, workers: int = 1, extra_kinds: str = "") -> dict[str, dict[str, Any]]:
  """Runs every unfinished member (up to `workers` at a time); returns {run name: status}."""
  if workers < 1:
    raise ValueError(f"workers: expected >= 1, got {workers}")
  runs = collect(spec)
  names = [run_name(o) for o in runs]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise config_lib.ConfigError(f"sweep(add): runs with identical overrides: {dupes}")
  spec_hash = config_hash(spec)
  check_resume(spec, workdir, names, runs, spec_hash)  # Before anything runs or sweep.json is rewritten.
  os.makedirs(workdir, exist_ok=True)
  results: dict[str, dict[str, Any]] = {}
  todo = []
  for name, overrides in zip(names, runs):
    previous = _status(os.path.join(workdir, name))
    if previous and previous["status"] == "done":
      print(f"[sweep] {name}: already done; skipping", flush=True)
      results[name] = previous
    else:
      todo.append((name, overrides))

  def summary() -> None:
    listed = [{"name": n, "overrides": o, "status": results.get(n, {}).get("status", "pending")}
              for n, o in zip(names, runs)]
    _write_json(os.path.join(workdir, "sweep.json"), {"config": spec, "config_hash": spec_hash, "runs": listed})

  summary()
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    futures = {pool.submit(run_one, spec, os.path.join(workdir, name), o, extra_kinds, spec_hash): name
               for name, o in todo}
    for future in concurrent.futures.as_completed(futures):
      name = futures[future]
      results[name] = future.result()
      print(f"[sweep] {name}: {results[name]['status']} ({results[name]['wall_s']:.1f}s)", flush=True)
      summary()
  failed = [n for n in names if results[n]["status"] != "done"]
  print(f"[sweep] {len(names) - len(failed)}/{len(names)} runs done" +
        (f"; failed: {', '.join(failed)} (see <run>/error.txt)" if failed else ""), flush=True)
  return results


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["config"].value or not flags.FLAGS["workdir"].value:
    raise app.UsageError("--config and --workdir are required")
  try:
    results = sweep(flags.FLAGS["config"].value, flags.FLAGS["workdir"].value,
                    flags.FLAGS["workers"].value, flags.FLAGS["extra_kinds"].value)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  if any(r["status"] != "done" for r in results.values()):
    sys.exit(1)


def cli() -> None:
  """The command line entry point (flags are defined here so that importing this module defines none)."""
  flags.DEFINE_string("config", None, "Config file with a sweep(add) function, `path.py[:variant]`.")
  flags.DEFINE_string("workdir", None, "Sweep directory; one sub-directory per run.")
  flags.DEFINE_integer("workers", 1, "Runs executed in parallel (subprocesses).")
  flags.DEFINE_string("extra_kinds", "", "Extra stage kinds for every run ('package.module:NAME').")
  app.run(main)


if __name__ == "__main__":
  cli()
