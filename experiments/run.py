"""Runs one experiment: `python -m experiments.run --config configs/x.py[:variant] --workdir DIR
[--config.a.b=value ...]`.

A config is either one stage (a top-level `kind` plus that kind's keys) or a chain: `config.stages` is an
ordered list of section names, each section has a `kind`. A chain's top-level `config.seed` (optional)
replaces the `seed` of every stage that has one, so a sweep over seeds (`add(seed=s)`) reseeds the whole
chain (the synthetic world's own seed, `data.world.seed`, is not touched: seeds vary training, not the
environment). Every stage's section is converted and validated (jaxrlhf.config.from_config) before the
first one runs, and every stage reference ("stage:<name>" in a `config.stage_ref` field) is checked against the
earlier stages of the chain and the outputs their kinds produce: a typo fails before any compute, naming the key.
`--show_config` prints every stage's expanded, validated config (every key, defaults included) and exits.
Stage kinds come from the literal table jaxrlhf.stages.kinds.KINDS; `--extra_kinds module:NAME` adds a user's
table (a dict of name -> jaxrlhf.stages.kinds.StageKind, e.g. a research prototype's stage). Each stage runs in
DIR/<stage>; a finished stage
writes DIR/<stage>/DONE.json with its outputs and is skipped on re-run, so a failing stage leaves the
earlier ones intact. DONE.json also records what produced the outputs: a hash of the stage's expanded config and of
the earlier stages' hashes (its inputs), the expanded config itself, and the code commit (and whether the checkout was
dirty). A re-run whose config for a finished stage differs is refused (a config error, exit 2, naming the stage and
the changed keys): finished outputs are never passed off as another config's. The same config at another commit is
skipped with a warning (a resume after a code change), and DIR/results.json, which collects the outputs when all
stages are done with their provenance (the code commit, whether the checkout was dirty, a hash of the expanded config),
lists every stage's own commit (`provenance.stages`), so experiments.tables sees a run built by several commits.
Stages finished by older code (DONE.json without a hash) are skipped with a warning. A failure writes its traceback
to DIR/error.txt.

One run per workdir: process 0 holds DIR/.jaxrlhf.lock while it runs (jaxrlhf.train.workdir_lock); a second
`experiments.run` on the same DIR fails at once naming the holder, and a lock left by a dead process on this host
is taken over. `--fresh` clears DIR (every stage, checkpoint and result) before running. A failure's traceback goes
to DIR/error.txt and DIR/<stage>/error.txt; known failures (config, data file, model file, checkpoint, non-finite
loss, lock) print one line naming the stage and the error, whose message carries the remedy, and exit 1 (a lock
held by another run exits 3, a config error 2, a finished stage whose config changed 2, a bad `--config.a.b`
value 2). Guarantees: docs/reliability.md.

Multi-process runs (one process per host or per GPU, see docs/multihost.md): `main` calls
`jax.distributed.initialize` once, after validating the config and before any JAX computation, with the
settings of the stages' `mesh` sections or the environment (`jaxrlhf.parallel.distributed`). Every process runs
every stage; only process 0 writes DONE.json, results.json, summary.md and error.txt (other processes write
error.process<N>.txt), and all processes meet at a barrier after each stage so that the next stage (in any
process) reads complete files.
"""

from __future__ import annotations

if __name__ == "__main__":  # Before the heavy imports: run once more with huge pages for the host heap.
  from experiments import huge_pages  # pylint: disable=g-import-not-at-top
  huge_pages.main_hook()

import dataclasses
import difflib
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import traceback
from typing import Any, Mapping, NamedTuple

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from experiments import summary
from jaxrlhf import config as config_lib
from jaxrlhf.data.errors import DataFileError
from jaxrlhf.data.synthetic import WorldConfig
from jaxrlhf.models.errors import ModelFileError
from jaxrlhf.parallel import distributed
from jaxrlhf.rewards.calling import RewardFunctionError
from jaxrlhf.stages.kinds import KINDS, StageKind
from jaxrlhf.train.checkpoint import CheckpointError
from jaxrlhf.train.loop import NonFiniteError
from jaxrlhf.train import workdir_lock

# Failures whose message already says what went wrong and what to do: the command line prints one line (the
# stage, the error, where the traceback is) instead of a traceback. Anything else keeps its traceback.
KNOWN_ERRORS = (config_lib.ConfigError, DataFileError, ModelFileError, CheckpointError, NonFiniteError,
                workdir_lock.LockError, RewardFunctionError)

# Top-level keys of a config that belong to no stage.
RESERVED_KEYS = ("kind", "stages", "tables", "plots")
DONE_FILE = "DONE.json"
DONE_RECORD = "_provenance"  # DONE.json's key for what made the stage (check_finished); not an output, never passed on.


class PlannedStage(NamedTuple):
  """One stage of a planned chain: its section name, its kind, and its validated config dataclass."""
  name: str
  kind: StageKind
  config: Any


def plan(config: ml_collections.ConfigDict, kinds: Mapping[str, StageKind] = KINDS) -> list[PlannedStage]:
  """Every stage in order, each section converted and validated, every stage reference checked; raises
  ConfigError naming the key."""
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
                                   + ", ".join(repr(k) for k in sorted(kinds)))
    if section.kind not in kinds:
      raise config_lib.ConfigError(f"{path}.kind: {section.kind!r} is not a stage kind; valid choices: "
                                   + ", ".join(repr(k) for k in sorted(kinds)))
    kind = kinds[section.kind]
    reserved = RESERVED_KEYS if path == "config" else ("kind",)
    items = {k: section[k] for k in section.keys() if k not in reserved}
    if path != "config" and "seed" in config and "seed" in items:
      items["seed"] = config.seed
    stage_config = config_lib.from_config(items, kind.config_type, path=path)
    check_references(stage_config, path, stages)
    stages.append(PlannedStage(name, kind, stage_config))
  return stages


def check_references(stage_config: Any, path: str, earlier: list[PlannedStage]) -> None:
  """ConfigError unless every "stage:<name>" reference of `stage_config` names an earlier stage whose kind
  produces the output the field needs (e.g. a `model_dir` from an sft, preference or rl stage)."""
  by_name = {s.name: s for s in earlier}
  for key, value, output in config_lib.stage_refs(stage_config, path):
    name = value[len(config_lib.STAGE_PREFIX):]
    if name not in by_name:
      close = difflib.get_close_matches(name, list(by_name), n=1)
      hint = f" (did you mean '{config_lib.STAGE_PREFIX}{close[0]}'?)" if close else ""
      raise config_lib.ConfigError(
          f"{key}: {value!r} names no earlier stage{hint}; earlier stages: "
          + (", ".join(by_name) if by_name else "none (a stage can only use the outputs of stages before it)"))
    producer = by_name[name]
    if output not in producer.kind.outputs:
      makers = [s.name for s in earlier if output in s.kind.outputs]
      raise config_lib.ConfigError(
          f"{key}: stage {name!r} is a {producer.kind.name!r} stage, which produces no {output!r} (it produces: "
          f"{', '.join(producer.kind.outputs) or 'no referable outputs'}); earlier stages that produce one: "
          f"{', '.join(makers) or 'none'}")


def show(stages: list[PlannedStage]) -> str:
  """Every stage's expanded, validated config as `--config.<key>=<value>` lines (the override each key takes)."""
  lines = []
  for stage in stages:
    prefix = "" if stage.name == "main" else f"{stage.name}."
    lines.append(f"# {stage.name}: kind {stage.kind.name!r} ({stage.kind.config_type.__module__}."
                 f"{stage.kind.config_type.__name__})")
    if prefix:
      lines.append(f"{prefix}kind = {stage.kind.name!r}")
    for key, value in config_lib.flatten(stage.config):
      lines.append(f"{prefix}{key} = {value!r}")
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str, kinds: Mapping[str, StageKind] = KINDS
        ) -> dict[str, Any]:
  """Validates every stage and checks the finished ones against this config (ConfigError, before any compute, if a
  finished stage's config changed), then runs the unfinished ones in order; returns {stage: outputs}."""
  stages = plan(config, kinds)
  os.makedirs(workdir, exist_ok=True)
  version = code_version()
  finished = check_finished(stages, workdir, version)
  outputs: dict[str, dict[str, Any]] = {}
  records: dict[str, dict[str, Any]] = {}  # Per stage: what produced it (commit, dirty, config hash).
  for name, kind, stage_config in stages:
    stage_dir = workdir if name == "main" else os.path.join(workdir, name)
    done = os.path.join(stage_dir, DONE_FILE)
    if name in finished.outputs:
      outputs[name] = finished.outputs[name]
      records[name] = finished.records[name]
      print(f"[run] stage {name!r} already finished; skipping", flush=True)
      continue
    print(f"[run] stage {name!r} ({kind.name}) -> {stage_dir}", flush=True)
    try:
      result = kind.run(stage_config, stage_dir, dict(outputs))
    except Exception as e:
      e.jaxrlhf_stage = (name, stage_dir)  # For the command line's one-line report and the stage's error.txt.
      raise
    outputs[name] = json.loads(json.dumps(result))  # JSON-able by contract; fail here, not on re-read.
    record = finished.records[name]
    records[name] = record
    if distributed.is_primary():
      _write_json(done, {**outputs[name], DONE_RECORD: record})
    distributed.barrier(f"run:stage:{name}")
  metrics = {}
  for name, out in outputs.items():
    for k, v in (out.get("metrics") or {}).items():
      metrics[k if name == "main" else f"{name}/{k}"] = v
  if distributed.is_primary():
    _write_json(os.path.join(workdir, "results.json"),
                {"status": "done", "metrics": metrics, "stages": outputs,
                 "provenance": provenance(stages, version, records)})
    table = summary.write_summary(workdir, [(name, kind.name, cfg) for name, kind, cfg in stages], outputs)
    if table:
      print(f"[run] summary ({os.path.join(workdir, 'summary.md')}):\n{table}", flush=True)
  distributed.barrier("run:done")
  return outputs


class CodeVersion(NamedTuple):
  """The code a stage ran with: the commit (`git rev-parse HEAD` of this checkout, else the JAXRLHF_COMMIT
  environment variable, else "unknown") and whether tracked files differed from it (None when unknown)."""
  commit: str
  dirty: bool | None

  def label(self) -> str:
    return self.commit + (" (dirty)" if self.dirty else " (clean)" if self.dirty is False else "")


def code_version() -> CodeVersion:
  """This checkout's CodeVersion."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def git(*args: str) -> str | None:
    try:
      out = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
      return None
    return out.stdout.strip()

  commit = git("rev-parse", "HEAD")
  status = git("status", "--porcelain", "--untracked-files=no") if commit else None
  return CodeVersion(commit or os.environ.get("JAXRLHF_COMMIT", "unknown"), None if status is None else bool(status))


def _digest(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]


def stage_record(stage: PlannedStage, inputs: Mapping[str, str | None], version: CodeVersion) -> dict[str, Any]:
  """What a finished stage's DONE.json records about its making: its kind and expanded config (every key, as repr),
  the config hashes of the earlier stages (its inputs: a stage is handed every earlier stage's outputs), a hash of
  those three (`config_hash`), and the code version."""
  config = {key: repr(value) for key, value in config_lib.flatten(stage.config)}
  inputs = dict(inputs)
  return {"config_hash": _digest([stage.kind.name, list(config.items()), list(inputs.items())]),
          "commit": version.commit, "dirty": version.dirty, "kind": stage.kind.name, "inputs": inputs,
          "config": config}


class Finished(NamedTuple):
  """check_finished's answer: the finished stages' outputs, and every stage's record (the recorded one for a
  finished stage, a new one for a stage still to run)."""
  outputs: dict[str, dict[str, Any]]
  records: dict[str, dict[str, Any]]


def check_finished(stages: list[PlannedStage], workdir: str, version: CodeVersion) -> Finished:
  """Reads every finished stage's DONE.json and checks that it was made by this config.

  A finished stage is reused when its recorded config hash equals this run's (a warning when another code version
  made it), or when the configs differ only in keys that one code version has and the other lacks (a field added or
  removed by a code change: a warning naming them). DONE.json from older code (no record) is reused with a warning.

  Raises:
    ConfigError: a finished stage's kind, a key of its expanded config, or its earlier stages differ from this run's;
      names the stage, its DONE.json and the changes, and says how to go on (the old config, --fresh, another workdir).
  """
  outputs: dict[str, dict[str, Any]] = {}
  records: dict[str, dict[str, Any]] = {}
  identity: dict[str, str | None] = {}  # Stage -> the config hash later stages record as their input.
  for stage in stages:
    current = stage_record(stage, identity, version)
    stage_dir = workdir if stage.name == "main" else os.path.join(workdir, stage.name)
    done = os.path.join(stage_dir, DONE_FILE)
    if not os.path.exists(done):
      records[stage.name], identity[stage.name] = current, current["config_hash"]
      continue
    with open(done) as f:
      stored = json.load(f)
    recorded = stored.pop(DONE_RECORD, None)
    outputs[stage.name] = stored
    if recorded is None:
      print(f"[run] WARNING: stage {stage.name!r} was finished by older code ({done} records no config hash): its "
            "config cannot be checked against this run's; reusing it", flush=True)
      records[stage.name] = {"config_hash": None, "commit": "unknown", "dirty": None}
      identity[stage.name] = None
      continue
    _compare(stage.name, done, recorded, current)
    records[stage.name], identity[stage.name] = recorded, recorded["config_hash"]
    then = CodeVersion(recorded.get("commit", "unknown"), recorded.get("dirty"))
    if then != version:
      print(f"[run] WARNING: stage {stage.name!r} was finished at commit {then.label()}, this run is at "
            f"{version.label()}; reusing it (same config; results.json lists each stage's commit)", flush=True)
  return Finished(outputs, records)


def _compare(name: str, done: str, recorded: Mapping[str, Any], current: Mapping[str, Any]) -> None:
  """ConfigError unless the finished stage `name` (record `recorded`, from `done`) matches this run's `current`."""
  if recorded.get("config_hash") == current["config_hash"]:
    return
  prefix = "config." if name == "main" else f"config.{name}."
  changes = []
  if recorded.get("kind") != current["kind"]:
    changes.append(f"{prefix}kind: {recorded.get('kind')!r} -> {current['kind']!r}")
  old, new = recorded.get("config") or {}, current["config"]
  changes += [f"{prefix}{key}: {old[key]} -> {value}" for key, value in new.items() if key in old and old[key] != value]
  old_inputs, new_inputs = recorded.get("inputs") or {}, current["inputs"]
  for stage in dict.fromkeys([*old_inputs, *new_inputs]):
    if stage not in new_inputs:
      changes.append(f"earlier stage {stage!r} is no longer in the chain")
    elif stage not in old_inputs:
      changes.append(f"earlier stage {stage!r} is new in the chain")
    elif old_inputs[stage] != new_inputs[stage]:
      changes.append(f"earlier stage {stage!r} ran under another config since")
  if not changes:  # Only keys one code version has and the other lacks: the same settings, as far as both know.
    added = [key for key in new if key not in old]
    removed = [key for key in old if key not in new]
    print(f"[run] WARNING: stage {name!r} was finished by code with other config keys (new here: "
          f"{', '.join(added) or 'none'}; gone here: {', '.join(removed) or 'none'}); every key both have is "
          "unchanged; reusing it", flush=True)
    return
  shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
  raise config_lib.ConfigError(
      f"stage {name!r} already finished under another config ({done}): {shown}. Its outputs belong to that config: "
      "re-run with the config it finished under, or pass --fresh (or use another --workdir) to run this one")


def provenance(stages: list[PlannedStage], version: CodeVersion | None = None,
               records: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
  """What produced a run's results: the code version that wrote them (`commit`, `dirty`, see CodeVersion), a hash of
  every stage's expanded, validated config (same hash = same experiment), and, with `records`, each stage's own
  commit, dirty flag and config hash (`stages`; a stage finished earlier may come from another commit)."""
  version = version or code_version()
  expanded = [[s.name, s.kind.name, [[k, repr(v)] for k, v in config_lib.flatten(s.config)]] for s in stages]
  out = {"commit": version.commit, "dirty": version.dirty, "config_hash": _digest(expanded)}
  if records is not None:
    out["stages"] = {name: {k: records[name].get(k) for k in ("commit", "dirty", "config_hash")} for name in records}
  return out


def init_distributed(stages: list[PlannedStage]) -> bool:
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


def load_kinds(spec: str) -> dict[str, StageKind]:
  """KINDS plus the table named by `--extra_kinds`: "package.module:NAME" or "path/to/file.py:NAME", a dict of
  name -> StageKind (NAME defaults to KINDS)."""
  if not spec:
    return dict(KINDS)
  if ".py:" in spec or spec.endswith(".py"):  # A file path (split at its ".py").
    stem, _, attr = spec.partition(".py")
    module_name, attr = stem + ".py", attr.lstrip(":")
  else:
    module_name, _, attr = spec.partition(":")
  try:
    if module_name.endswith(".py"):
      module = config_lib.load_module_file(module_name)
    else:
      module = importlib.import_module(module_name)
    extra = getattr(module, attr or "KINDS")
  except (ImportError, AttributeError, OSError) as e:
    raise config_lib.ConfigError(f"--extra_kinds: cannot load {spec!r}: {e}") from e
  if not isinstance(extra, Mapping) or not all(isinstance(k, StageKind) for k in extra.values()):
    raise config_lib.ConfigError(f"--extra_kinds: {spec!r} is not a dict of name -> StageKind")
  clash = sorted(set(extra) & set(KINDS))
  if clash:
    raise config_lib.ConfigError(f"--extra_kinds: {spec!r} redefines built-in stage kinds {clash}")
  return {**KINDS, **extra}


# Dict-valued config fields whose keys are known up front: an override reaching into one lists them.
DICT_FIELD_KEYS = {"world": tuple(f.name for f in dataclasses.fields(WorldConfig))}


def precheck_argv(argv: list[str]) -> None:
  """Fails before flag parsing on a missing config file or an unknown `--config.a.b` key.

  absl's own errors for these are a deferred object or a bare AttributeError; this names the dotted key
  and the valid keys of its section.
  """
  spec, keys = config_lib.overrides_from_argv(argv)
  if spec is None:
    raise config_lib.ConfigError("--config: required (configs/<x>.py[:variant])")
  config = config_lib.load_config(spec)
  # The typed values, for the message's example when a key reaches into a dict-valued field (`world`, `columns`).
  values = dict(arg[len("--config."):].split("=", 1) for arg in argv if arg.startswith("--config.") and "=" in arg)
  for key in keys:
    config_lib.check_override(config, key, value=values.get(key), dict_keys=DICT_FIELD_KEYS)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS["config"].value
  workdir = flags.FLAGS["workdir"].value
  if not workdir and not flags.FLAGS["show_config"].value:
    raise app.UsageError("--workdir is required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO.
  try:
    kinds = load_kinds(flags.FLAGS["extra_kinds"].value)
    stages = plan(config, kinds)  # Every stage's config and reference is validated before any compute.
    if flags.FLAGS["show_config"].value:
      print(show(stages), flush=True)
      return
    init_distributed(stages)  # Before any JAX computation.
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  lock = None
  try:
    lock = workdir_lock.acquire(workdir) if distributed.is_primary() else None
    if flags.FLAGS["fresh"].value and distributed.is_primary():
      clear_workdir(workdir)
    distributed.barrier("run:start")
    run_and_report(config, workdir, kinds)
  except workdir_lock.LockError as e:
    print(f"[run] {e}", file=sys.stderr, flush=True)
    sys.exit(3)
  finally:
    if lock is not None:
      lock.release()


def run_and_report(config: ml_collections.ConfigDict, workdir: str, kinds: Mapping[str, StageKind]) -> None:
  """`run`, writing a failure's traceback to DIR/error.txt (sweeps read it) and to the failed stage's error.txt;
  a known error (KNOWN_ERRORS) then prints one line and exits 1 (2 for a ConfigError raised before any stage ran: a
  finished stage whose config changed), anything else re-raises with its traceback."""
  error_file = _error_file(workdir)
  try:
    run(config, workdir, kinds)
  except Exception as e:  # pylint: disable=broad-except
    text = traceback.format_exc()
    stage, stage_dir = getattr(e, "jaxrlhf_stage", (None, workdir))
    files = [error_file] + ([os.path.join(stage_dir, os.path.basename(error_file))] if stage_dir != workdir else [])
    for path in files:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "w") as f:
        f.write(text)
    if not isinstance(e, KNOWN_ERRORS):
      raise
    if isinstance(e, config_lib.ConfigError) and not stage:  # The config against the workdir, before any stage ran.
      print(f"config error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)
    where = f"stage {stage!r}" if stage else "run"
    print(f"[run] {where} failed: {type(e).__name__}: {e}\n[run] traceback: {files[-1]}", file=sys.stderr,
          flush=True)
    sys.exit(1)
  if os.path.exists(error_file):
    os.remove(error_file)


def clear_workdir(workdir: str) -> None:
  """`--fresh`: removes everything a previous run left in `workdir` (stage outputs, checkpoints, metrics, results)
  except the lock this run holds."""
  if not os.path.isdir(workdir):
    return
  for entry in os.listdir(workdir):
    if entry == workdir_lock.LOCK_NAME:
      continue
    path = os.path.join(workdir, entry)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  print(f"[run] --fresh: cleared {workdir}", flush=True)


def cli() -> None:
  """The command line entry point (flags are defined here so that importing this module defines none)."""
  config_flags.DEFINE_config_file("config", None, "Config file, `path.py[:variant]`.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (resumed if it exists).")
  flags.DEFINE_bool("show_config", False, "Print every stage's expanded, validated config and exit.")
  flags.DEFINE_bool("fresh", False, "Start over: clear the workdir's previous stages, checkpoints and results.")
  flags.DEFINE_string("extra_kinds", "", "Extra stage kinds: 'package.module:NAME', a dict of name -> StageKind.")
  try:
    precheck_argv(sys.argv[1:])
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  app.run(main, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, except that a `--config.a.b=value` absl cannot read (`beta=abc` for a float) is a config
  error naming the key (exit 2) instead of absl's "FATAL Flags parsing error" (exit 1). Other flags keep absl's
  message and exit code."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    # absl names the flag as typed: "flag --config.a.b=abc: <why>" or "Missing value for flag --config.a.b".
    key = next((arg[2:].split("=", 1)[0] for arg in argv[1:] if arg.startswith("--config.")
                and (f"flag {arg}:" in message or message.endswith(f"flag {arg}"))), None)
    if key is None:
      print(f"FATAL Flags parsing error: {message}\nPass --helpshort or --helpfull to see help on flags.",
            file=sys.stderr, flush=True)
      sys.exit(1)
    why = message.split(": ", 1)[1] if message.startswith("flag ") and ": " in message else message
    print(f"config error: {key}: cannot read the value given ({why})", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  cli()
