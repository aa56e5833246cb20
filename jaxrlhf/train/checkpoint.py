"""Orbax checkpoints of the train state plus the data-iterator state, keep-N and best-by-metric.

Each checkpoint step holds two items: `state` (the TrainState pytree: model, optimizer, step, RNG; written
asynchronously where orbax supports it) and `data` (the data iterator's `get_state()` as JSON). Restores go
into the abstract, sharded target (`StateSetup.abstract`), so each device reads only its shards.

Multi-process runs: every process constructs the Checkpointer and calls `save` / `restore` / `wait` for the same
steps (orbax synchronizes them through jax.distributed); each process writes the shards its devices own, and
process 0 writes the metadata and the `data` JSON, which is the same on every process because all processes walk
the same global example order (see jaxrlhf/data/pipeline.py). The directory must be shared by all processes.

Integrity (docs/reliability.md): once orbax has finalized a step (its files renamed into place; async saves
included), process 0 writes `<step>/jaxrlhf_run.json` (the train state's layout: each array's path, dtype and
shape; and the caller's `run_config` if given), then `<step>/jaxrlhf_manifest.json` with every file's size and
sha256. `restore` checks a step against its manifest before trusting it; a step without one (older code, or a kill
between finalize and manifest) is checked by restoring it. `restore_newest_intact` (the loop's resume) falls back
to the newest intact step, moves the damaged newer ones aside as `<step>.damaged` and logs why; `CheckpointError`
when none is intact or a write fails. A failed write never touches the earlier steps (orbax writes into a
temporary folder and removes old steps only after the new one is finalized).

Config changes: a step that cannot be restored into a train state whose layout differs from the one its
jaxrlhf_run.json records (a changed model shape or optimizer) is reported as written under another config, with
what differs, not as damaged; a step that restores although its layout or `run_config` differs (a new learning
rate, a dtype orbax casts) resumes with a warning naming the differences.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from jaxrlhf.parallel import distributed
from jaxrlhf.train import state as state_lib

MANIFEST_NAME = "jaxrlhf_manifest.json"
RUN_RECORD_NAME = "jaxrlhf_run.json"
DAMAGED_SUFFIX = ".damaged"
_MANIFEST_FORMAT = 1
_CHUNK_BYTES = 1 << 20


class CheckpointError(RuntimeError):
  """A checkpoint directory holds no intact step to resume from, or writing a checkpoint failed.

  The message names the directory, each step's problem and what to do (delete the directory, or start fresh).
  """


class _ManifestingManager(ocp.CheckpointManager):
  """A CheckpointManager that writes the step's manifest as soon as orbax has finalized it.

  `_finalize_checkpoint` runs (sync and async saves alike, in orbax's finalize thread for async) after the
  step's files are committed and renamed into place, and before orbax deletes older steps, so the manifest
  describes the finished files and an older step survives until the new one is complete. A test pins this hook.
  """

  # step -> what `Checkpointer.save` records about the run (`run_record`), set before the write starts.
  records: dict[int, dict[str, Any]]

  def _finalize_checkpoint(self, step: int):
    super()._finalize_checkpoint(step)
    step_dir = os.path.join(os.fspath(self.directory), str(step))
    record = self.records.pop(step, None)
    if distributed.is_primary() and os.path.isdir(step_dir):
      if record is not None:  # Before the manifest, which then checksums it too.
        _write_json_atomically(os.path.join(step_dir, RUN_RECORD_NAME), record)
      write_manifest(step_dir)


class Checkpointer:
  """A CheckpointManager keeping the latest `max_to_keep` steps, plus the best by `best_metric` if set.

  Args:
    directory: where step folders go (created).
    max_to_keep: how many of the most recent checkpoints survive.
    best_metric: a metric name passed to `save(metrics=...)` (e.g. "eval/loss"); the best checkpoint by it
      is also kept. Saves without that metric never count as best.
    best_mode: "min" or "max" for `best_metric`.
    async_save: write in a background thread (the loop waits before exiting and before reading back).
    run_config: the stage's settings as a JSON-able dict (optional), recorded with each step: a resume under other
      settings says which changed.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, best_metric: str | None = None,
               best_mode: str = "min", async_save: bool = True, run_config: Mapping[str, Any] | None = None):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep: expected >= 1, got {max_to_keep}")
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode: expected 'min' or 'max', got {best_mode!r}")
    self.directory = os.path.abspath(directory)
    self.best_metric = best_metric
    self.best_mode = best_mode
    policies = [pp.LatestN(n=max_to_keep)]
    if best_metric:
      policies.append(pp.BestN(get_metric_fn=self._rank, reverse=(best_mode == "min"), n=1,
                               keep_checkpoints_without_metrics=False))
    # best_fn as well as the policy: orbax writes per-step metrics (read back after a restart) only then.
    options = ocp.CheckpointManagerOptions(
        best_fn=self._rank if best_metric else None, best_mode=best_mode,
        preservation_policy=pp.AnyPreservationPolicy(policies), enable_async_checkpointing=async_save,
        create=True, cleanup_tmp_directories=True)
    self._manager = _ManifestingManager(self.directory, item_names=("state", "data"), options=options)
    self._manager.records = {}
    self._writing: int | None = None  # The step of the last save started (named if its async write fails).
    self.run_config = _normalized(run_config)

  def _rank(self, metrics: Mapping[str, Any]) -> float:
    """BestN sorts ascending and keeps the tail, so a missing metric ranks worst in both modes."""
    value = (metrics or {}).get(self.best_metric)
    if value is None or not math.isfinite(value):
      return math.inf if self.best_mode == "min" else -math.inf
    return float(value)

  def save(self, step: int, state: state_lib.TrainState, *, data_state: Mapping[str, Any] | None = None,
           metrics: Mapping[str, float] | None = None) -> None:
    """Saves `state` and the JSON `data_state` at `step`; `metrics` (finite floats) rank best checkpoints.

    Raises:
      CheckpointError: this write (sync) or the previous async one failed (e.g. a full disk); the steps
        finalized before it are intact.
    """
    self.wait()  # Surfaces a failed async save as a CheckpointError before the next one starts.
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(_encode_data_state(data_state)))
    clean = {k: float(v) for k, v in (metrics or {}).items() if math.isfinite(float(v))}
    self._writing = int(step)
    self._manager.records[int(step)] = run_record(state, self.run_config)
    try:
      self._manager.save(int(step), args=args, metrics=clean, force=True)
    except Exception as e:  # pylint: disable=broad-exception-caught
      # Tensorstore reports a failed write (full disk, quota, I/O error) as ValueError, Python writes as OSError.
      raise self._write_error(e) from e

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores (state, data_state) at `step` (default: latest) into the sharded abstract target.

    The step is checked first (against its manifest, or by restoring it); there is no fallback here, since a
    caller that names a step (or wants the final one) must not silently get another. Resuming uses
    `restore_newest_intact`.

    Raises:
      FileNotFoundError: the directory holds no checkpoint, or none at `step` (the message lists the steps held).
      CheckpointError: the step is damaged (the message says how).
    """
    self.wait()
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    if int(step) not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint step {step} in {self.directory}; it holds steps {self.all_steps()}")
    state, data_state, problem = self._try_restore(abstract_state, step)
    if problem is not None:
      changed = self._layout_change(abstract_state, [step])
      if changed:
        raise CheckpointError(f"checkpoint step {step} in {self.directory} was written for another train state "
                              f"than this run's ({changed}): {problem}")
      raise CheckpointError(f"checkpoint step {step} in {self.directory} is damaged: {problem}")
    return state, data_state

  def restore_newest_intact(self, abstract_state: Any) -> tuple[int, Any, Any]:
    """(step, state, data_state) of the newest step that passes its check (see `restore`), newest first.

    Damaged steps newer than the one used are moved aside (`<step>.damaged`, so the resumed run can write
    those step numbers again) and each gets a warning line naming the directory, the step, the reason and the
    step used. Every process reaches the same decision (a read error on any process counts for all).

    Raises:
      FileNotFoundError: the directory holds no checkpoint.
      CheckpointError: no step is intact; names each step's problem and the options.
    """
    self.wait()
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    damaged = []
    for step in steps:
      state, data_state, problem = self._try_restore(abstract_state, step)
      if problem is None:
        self._set_aside(damaged, step)
        self._warn_changes(abstract_state, step)
        return step, state, data_state
      damaged.append((step, problem))
    listing = "; ".join(f"step {s}: {p}" for s, p in damaged)
    changed = self._layout_change(abstract_state, steps)
    if changed:
      # Intact checkpoints of another train state: deleting them is not the first thing to suggest.
      raise CheckpointError(
          f"the stage's config changed since the checkpoints in {self.directory} were written ({changed}), so "
          f"they cannot be restored into this run's train state ({listing}). Re-run with the config they were "
          "written with to resume, or delete that directory (or re-run with --fresh) to start this stage over")
    raise CheckpointError(
        f"no checkpoint in {self.directory} is intact and restorable ({listing}). Delete that directory to "
        f"start this stage over, or re-run with --fresh to start fresh")

  def _recorded(self, step: int) -> dict[str, Any] | None:
    """The step's jaxrlhf_run.json, or None (written by older code, or unreadable)."""
    try:
      with open(os.path.join(self._step_dir(step), RUN_RECORD_NAME)) as f:
        record = json.load(f)
    except (OSError, ValueError):
      return None
    return record if isinstance(record, dict) and isinstance(record.get("layout"), dict) else None

  def _layout_change(self, abstract_state: Any, steps: list[int]) -> str | None:
    """How this run's train state differs from the newest of `steps` that records its layout (None: no record,
    or the same layout, so the failure is not a config change)."""
    for step in steps:
      record = self._recorded(step)
      if record is not None:
        return _differences("train state", record["layout"], state_layout(abstract_state))
    return None

  def _warn_changes(self, abstract_state: Any, step: int) -> None:
    """Warns (process 0) when the restored step was written with another layout (a cast dtype) or run_config."""
    record = self._recorded(step)
    if record is None or not distributed.is_primary():
      return
    changes = [_differences("train state", record["layout"], state_layout(abstract_state))]
    if self.run_config is not None and record.get("run_config") is not None:
      changes.append(_differences("run_config", _flat(record["run_config"]), _flat(self.run_config)))
    changes = [c for c in changes if c]
    if changes:
      line = (f"{self.directory}: the stage's config changed since checkpoint step {step} was written "
              f"({'; '.join(changes)}); resuming from it with this run's config")
      logging.warning("%s", line)
      print(f"[checkpoint] WARNING: {line}", flush=True)

  def _try_restore(self, abstract_state: Any, step: int) -> tuple[Any, Any, str | None]:
    """(state, data_state, None), or (None, None, why the step cannot be used), agreed by all processes."""
    problem = verify_step(self._step_dir(step)) if distributed.is_primary() else None
    problem = _agree(problem)
    if problem is not None:
      return None, None, problem
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      state, data_state = restored["state"], _decode_data_state(restored["data"])
    except Exception as e:  # pylint: disable=broad-exception-caught
      # Orbax/tensorstore raise many types for unreadable data (ValueError "ZSTD decompress failed",
      # FileNotFoundError, KeyError, ...); the message is kept for the log line and the error.
      problem = f"restoring it failed ({type(e).__name__}: {_first_line(e)})"
    problem = _agree(problem)
    if problem is not None:
      return None, None, problem
    return state, data_state, None

  def _set_aside(self, damaged: list[tuple[int, str]], used: int) -> None:
    """Renames the damaged steps (all newer than `used`) to `<step>.damaged[.n]`, logging each."""
    if not damaged:
      return
    if distributed.is_primary():
      for step, problem in damaged:
        src = self._step_dir(step)
        dst, n = src + DAMAGED_SUFFIX, 1
        while os.path.exists(dst):
          dst, n = f"{src}{DAMAGED_SUFFIX}.{n}", n + 1
        os.rename(src, dst)
        line = (f"{self.directory}: checkpoint step {step} is damaged ({problem}); moved it to "
                f"{os.path.basename(dst)}; resuming from step {used}")
        logging.warning("%s", line)
        print(f"[checkpoint] WARNING: {line}", flush=True)
    distributed.barrier(f"checkpoint:set_aside:{self.directory}")
    self._manager.reload()

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def _write_error(self, e: BaseException) -> CheckpointError:
    """The CheckpointError for a failed write of step `self._writing` (orbax leaves only a temporary folder)."""
    self._manager.reload()  # Forget a step whose write failed.
    latest = self.latest_step()
    full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or \
        any(m in str(e) for m in ("No space left", "Disk quota", "File too large"))
    then = "free disk space, then re-run" if full else "re-run"
    kept = f"the newest complete checkpoint, step {latest}, is intact; {then} to resume from it" \
        if latest is not None else f"no earlier checkpoint exists; {then} to start over"
    return CheckpointError(f"writing checkpoint step {self._writing} in {self.directory} failed "
                           f"({type(e).__name__}: {_first_line(e)}); {kept}")

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The kept step with the best `best_metric`, or None (no best metric, or none recorded)."""
    if not self.best_metric:
      return None
    self.wait()
    ranked = [(self._rank(self._manager.metrics(s) or {}), s) for s in self.all_steps()]
    ranked = [(v, s) for v, s in ranked if math.isfinite(v)]
    if not ranked:
      return None
    pick = min if self.best_mode == "min" else max
    return pick(ranked)[1]

  def wait(self) -> None:
    """Waits for an async save (and its manifest); raises CheckpointError if that write failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise self._write_error(e) from e

  def close(self) -> None:
    """Waits for the last save (CheckpointError if it failed, reported once) and releases orbax's threads."""
    try:
      self.wait()
    finally:
      self._manager.close()


def _first_line(e: BaseException, limit: int = 600) -> str:
  """The first line of an error message, its middle elided past `limit` characters (tensorstore's messages
  put the cause, e.g. "No space left on device", at the end)."""
  text = str(e).strip()
  line = text.splitlines()[0] if text else "no message"
  return line if len(line) <= limit else f"{line[:limit // 2]} ... {line[-limit // 2:]}"


def _agree(problem: str | None) -> str | None:
  """Multi-process: a problem any process saw holds for all (processes never pick different steps)."""
  if jax.process_count() == 1:
    return problem
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  bad = multihost_utils.process_allgather(np.asarray(problem is not None, np.int32))
  if problem is None and bool(np.any(bad)):
    return "another process could not verify or read it"
  return problem


def _manifest_entries(step_dir: str) -> dict[str, dict[str, Any]]:
  """{relative path: {"size": bytes, "sha256": hex}} of every file under `step_dir` but the manifest."""
  entries = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel == MANIFEST_NAME:
        continue
      entries[rel] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
  return dict(sorted(entries.items()))


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
      digest.update(chunk)
  return digest.hexdigest()


def state_layout(state: Any) -> dict[str, str]:
  """{array path: "dtype[shape]"} of a train state (arrays or ShapeDtypeStructs), e.g.
  {".params['w'].value": "float32[4, 8]", ".opt_state[0].count": "int32[]"}: what a restore must match."""
  return {jax.tree_util.keystr(path): f"{_dtype_name(x.dtype)}{list(x.shape)}"
          for path, x in jax.tree_util.tree_leaves_with_path(state)}


def _dtype_name(dtype: Any) -> str:
  """"float32", ...; a typed PRNG key array (an nnx.Rngs stream in `TrainState.extra`) has no numpy dtype and is
  named as jax prints it, e.g. "key<fry>"."""
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return str(dtype)
  return np.dtype(dtype).name


def run_record(state: Any, run_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """What a step's jaxrlhf_run.json records about the run that wrote it: the state's layout and its run_config."""
  record: dict[str, Any] = {"layout": state_layout(state)}
  if run_config is not None:
    record["run_config"] = run_config
  return record


def _normalized(run_config: Mapping[str, Any] | None) -> dict[str, Any] | None:
  """run_config as it reads back from JSON (tuples as lists; values json cannot write as their str)."""
  if run_config is None:
    return None
  return json.loads(json.dumps(dict(run_config), default=str, sort_keys=True))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"a.b": leaf} of nested dicts."""
  if not isinstance(tree, Mapping):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def _differences(what: str, old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 3) -> str | None:
  """"<what>: key: old -> new; ...; N gone, e.g. key (old); N new, e.g. key (new)": the changed entries (the first
  `limit`, then a count) and the keys only `old` or only `new` has; None if the two are equal."""
  changed = [f"{k}: {old[k]} -> {new[k]}" for k in old if k in new and old[k] != new[k]]
  gone = [k for k in old if k not in new]
  added = [k for k in new if k not in old]
  parts = changed[:limit] + ([f"and {len(changed) - limit} more changed"] if len(changed) > limit else [])
  if gone:
    parts.append(f"{len(gone)} gone, e.g. {gone[0]} ({old[gone[0]]})")
  if added:
    parts.append(f"{len(added)} new, e.g. {added[0]} ({new[added[0]]})")
  return f"{what}: {'; '.join(parts)}" if parts else None


def write_manifest(step_dir: str) -> str:
  """Writes `step_dir/jaxrlhf_manifest.json` (sizes and sha256 of the step's files) atomically; its path."""
  manifest = {"format": _MANIFEST_FORMAT, "files": _manifest_entries(step_dir)}
  return _write_json_atomically(os.path.join(step_dir, MANIFEST_NAME), manifest)


def _write_json_atomically(path: str, obj: Any) -> str:
  """Writes `obj` as JSON to `path` through a temporary file; returns `path`."""
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)  # A torn file is never read: it appears whole or not at all.
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def verify_step(step_dir: str) -> str | None:
  """None if `step_dir` matches its manifest (or has none: the caller then checks it by restoring);
  otherwise what is wrong (missing file, size or checksum mismatch, unreadable manifest)."""
  path = os.path.join(step_dir, MANIFEST_NAME)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      manifest = json.load(f)
    files = manifest["files"]
    expected = {str(rel): (int(e["size"]), str(e["sha256"])) for rel, e in files.items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    return f"its manifest {MANIFEST_NAME} is unreadable ({type(e).__name__}: {_first_line(e)})"
  for rel, (size, _) in expected.items():  # Sizes first: cheap, and they catch truncation and deletion.
    full = os.path.join(step_dir, rel)
    if not os.path.isfile(full):
      return f"file {rel} is missing"
    actual = os.path.getsize(full)
    if actual != size:
      return f"file {rel} has {actual} bytes, its manifest says {size}"
  for rel, (_, digest) in expected.items():
    if _sha256(os.path.join(step_dir, rel)) != digest:
      return f"file {rel} fails its sha256 checksum"
  return None


# grain's DataLoader iterators return their state as JSON bytes; dataset iterators return a dict.
_BYTES_KEY = "__bytes_utf8__"


def _encode_data_state(data_state: Any) -> dict[str, Any]:
  if data_state is None:
    return {}
  if isinstance(data_state, bytes):
    return {_BYTES_KEY: data_state.decode("utf-8")}
  if not isinstance(data_state, Mapping):
    raise ValueError(f"data_state: expected a JSON-able dict or bytes from get_state(), got "
                     f"{type(data_state).__name__}")
  return dict(data_state)


def _decode_data_state(data: Any) -> Any:
  data = dict(data or {})
  if set(data) == {_BYTES_KEY}:
    return data[_BYTES_KEY].encode("utf-8")
  return data


def last_finite_step(checkpointer: Checkpointer, abstract_state: Any) -> int | None:
  """The newest intact checkpoint step whose restored train state is all finite (None if there is none).

  Restores into the sharded abstract target, newest first, skips damaged steps and stops at the first finite one.
  """
  check = jax.jit(state_lib.tree_all_finite)
  for step in reversed(checkpointer.all_steps()):
    try:
      state, _ = checkpointer.restore(abstract_state, step)
    except CheckpointError:
      continue
    if bool(check(state)):
      return step
  return None
