"""Runs one experiment: `python -m experiments.run --config configs/x.py[:variant] --workdir DIR
[--config.a.b=value ...]`.

A config is either one stage (a top-level `kind` plus that kind's keys) or a chain: `config.stages` is an
ordered list of section names, each section has a `kind`. A chain's top-level `config.seed` (optional)
replaces the `seed` of every stage that has one, so a sweep over seeds (`add(seed=s)`) reseeds the whole
chain (the synthetic world's own seed, `data.world.seed`, is not touched: seeds vary training, not the
environment). Every stage's section is converted and validated (jaxrlhf.config.from_config) before the
first one runs. Each stage runs in DIR/<stage>; a finished stage
writes DIR/<stage>/DONE.json with its outputs and is skipped on re-run, so a failing stage leaves the
earlier ones intact. DIR/results.json collects the outputs when all stages are done; a failure writes its
traceback to DIR/error.txt.

Multi-process runs (one process per host or per GPU, see docs/_drafts/multihost.md): `main` calls
`jax.distributed.initialize` once, after validating the config and before any JAX computation, with the
settings of the stages' `mesh` sections or the environment (`jaxrlhf.parallel.distributed`). Every process runs
every stage; only process 0 writes DONE.json, results.json, summary.md and error.txt (other processes write
error.process<N>.txt), and all processes meet at a barrier after each stage so that the next stage (in any
process) reads complete files.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

import experiments
from experiments import summary
import experiments.stages  # noqa: F401  (registers the real stage kinds: sft, reward, preference, ...)
from jaxrlhf import config as config_lib
from jaxrlhf.parallel import distributed

# Top-level keys of a config that belong to no stage.
RESERVED_KEYS = ("kind", "stages", "tables", "plots")
DONE_FILE = "DONE.json"


def plan(config: ml_collections.ConfigDict) -> list[tuple[str, experiments.StageKind, Any]]:
  """[(stage name, kind, validated stage config)] for every stage, in order; raises ConfigError."""
  if "stages" in config:
    names = list(config.stages)
    if not names:
      raise config_lib.ConfigError("config.stages: expected at least one stage name")
    sections = []
    for name in names:
      if not isinstance(name, str) or name not in config:
        raise config_lib.ConfigError(f"config.stages: {name!r} has no section config.{name}; sections: "
                                     + ", ".join(k for k in config.keys() if k not in (*RESERVED_KEYS, "seed")))
      sections.append((name, config[name], f"config.{name}"))
  elif "kind" in config:
    sections = [("main", config, "config")]
  else:
    raise config_lib.ConfigError("config: needs a `kind` (one stage) or `stages` (a list of section names)")
  stages = []
  for name, section, path in sections:
    if not isinstance(section, ml_collections.ConfigDict) or "kind" not in section:
      raise config_lib.ConfigError(f"{path}.kind: required key is missing; valid choices: "
                                   + ", ".join(repr(k) for k in experiments.registered_kinds()))
    kind = experiments.get_stage(section.kind, f"{path}.kind")
    reserved = RESERVED_KEYS if path == "config" else ("kind",)
    items = {k: section[k] for k in section.keys() if k not in reserved}
    if path != "config" and "seed" in config and "seed" in items:
      items["seed"] = config.seed
    stages.append((name, kind, config_lib.from_config(items, kind.config_type, path=path)))
  return stages


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Validates every stage, then runs the unfinished ones in order; returns {stage: outputs}."""
  stages = plan(config)
  os.makedirs(workdir, exist_ok=True)
  outputs: dict[str, dict[str, Any]] = {}
  for name, kind, stage_config in stages:
    stage_dir = workdir if name == "main" else os.path.join(workdir, name)
    done = os.path.join(stage_dir, DONE_FILE)
    if os.path.exists(done):
      with open(done) as f:
        outputs[name] = json.load(f)
      print(f"[run] stage {name!r} already finished; skipping", flush=True)
      continue
    print(f"[run] stage {name!r} ({kind.name}) -> {stage_dir}", flush=True)
    result = kind.run(stage_config, stage_dir, dict(outputs))
    outputs[name] = json.loads(json.dumps(result))  # JSON-able by contract; fail here, not on re-read.
    if distributed.is_primary():
      _write_json(done, outputs[name])
    distributed.barrier(f"run:stage:{name}")
  metrics = {}
  for name, out in outputs.items():
    for k, v in (out.get("metrics") or {}).items():
      metrics[k if name == "main" else f"{name}/{k}"] = v
  if distributed.is_primary():
    _write_json(os.path.join(workdir, "results.json"),
                {"status": "done", "metrics": metrics, "stages": outputs})
    table = summary.write_summary(workdir, [(name, kind.name, cfg) for name, kind, cfg in stages], outputs)
    if table:
      print(f"[run] summary ({os.path.join(workdir, 'summary.md')}):\n{table}", flush=True)
  distributed.barrier("run:done")
  return outputs


def init_distributed(stages: list[tuple[str, experiments.StageKind, Any]]) -> bool:
  """`jax.distributed.initialize` from the stages' `mesh` sections or the environment (no-op for one
  process); must run before any JAX computation. Raises ConfigError on bad multi-process settings."""
  meshes = [cfg.mesh for _, _, cfg in stages if hasattr(cfg, "mesh")]
  try:
    settings = distributed.resolve(meshes)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  return distributed.initialize(settings)


def _error_file(workdir: str) -> str:
  """error.txt on process 0, error.process<N>.txt on the others (so no process overwrites another's)."""
  import jax  # pylint: disable=g-import-not-at-top
  name = "error.txt" if jax.process_index() == 0 else f"error.process{jax.process_index()}.txt"
  return os.path.join(workdir, name)


def _write_json(path: str, obj: Any) -> None:
  """Writes atomically, so a crash never leaves a half-written done-file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def precheck_argv(argv: list[str]) -> None:
  """Fails before flag parsing on a missing config file or an unknown `--config.a.b` key.

  absl's own errors for these are a deferred object or a bare AttributeError; this names the dotted key
  and the valid keys of its section.
  """
  spec, keys = config_lib.overrides_from_argv(argv)
  if spec is None:
    raise config_lib.ConfigError("--config: required (configs/<x>.py[:variant])")
  config = config_lib.load_config(spec)
  for key in keys:
    config_lib.check_override(config, key)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS["config"].value
  workdir = flags.FLAGS["workdir"].value
  if not workdir:
    raise app.UsageError("--workdir is required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO.
  try:
    stages = plan(config)  # Every stage's config is validated before any compute.
    init_distributed(stages)  # Before any JAX computation.
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  error_file = _error_file(workdir)
  try:
    run(config, workdir)
  except Exception:  # Record the traceback in the run dir (sweeps read it), then fail loudly.
    os.makedirs(workdir, exist_ok=True)
    with open(error_file, "w") as f:
      f.write(traceback.format_exc())
    raise
  if os.path.exists(error_file):
    os.remove(error_file)


def cli() -> None:
  """The command line entry point (flags are defined here so that importing this module defines none)."""
  config_flags.DEFINE_config_file("config", None, "Config file, `path.py[:variant]`.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (resumed if it exists).")
  try:
    precheck_argv(sys.argv[1:])
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  app.run(main)


if __name__ == "__main__":
  cli()
