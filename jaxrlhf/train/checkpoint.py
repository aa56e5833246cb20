"""Orbax checkpoints of the train state plus the data-iterator state, keep-N and best-by-metric.

Each checkpoint step holds two items: `state` (the TrainState pytree: model, optimizer, step, RNG; written
asynchronously where orbax supports it) and `data` (the data iterator's `get_state()` as JSON). Restores go
into the abstract, sharded target (`StateSetup.abstract`), so each device reads only its shards.

Multi-process runs: every process constructs the Checkpointer and calls `save` / `restore` / `wait` for the same
steps (orbax synchronizes them through jax.distributed); each process writes the shards its devices own, and
process 0 writes the metadata and the `data` JSON, which is the same on every process because all processes walk
the same global example order (see jaxrlhf/data/pipeline.py). The directory must be shared by all processes.

Integrity (docs/reliability.md): once orbax has finalized a step (its files renamed into place; async saves
included), process 0 writes `<step>/jaxrlhf_manifest.json` with every file's size and sha256. `restore` checks a
step against its manifest before trusting it; a step without one (older code, or a kill between finalize and
manifest) is checked by restoring it. `restore_newest_intact` (the loop's resume) falls back to the newest intact
step, moves the damaged newer ones aside as `<step>.damaged` and logs why; `CheckpointError` when none is intact
or a write fails. A failed write never touches the earlier steps (orbax writes into a temporary folder and
removes old steps only after the new one is finalized).
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

  def _finalize_checkpoint(self, step: int):
    super()._finalize_checkpoint(step)
    step_dir = os.path.join(os.fspath(self.directory), str(step))
    if distributed.is_primary() and os.path.isdir(step_dir):
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
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, best_metric: str | None = None,
               best_mode: str = "min", async_save: bool = True):
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
    self._writing: int | None = None  # The step of the last save started (named if its async write fails).

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
      FileNotFoundError: the directory holds no checkpoint.
      CheckpointError: the step is damaged (the message says how).
    """
    self.wait()
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    state, data_state, problem = self._try_restore(abstract_state, step)
    if problem is not None:
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
        return step, state, data_state
      damaged.append((step, problem))
    listing = "; ".join(f"step {s}: {p}" for s, p in damaged)
    raise CheckpointError(
        f"no checkpoint in {self.directory} is intact and restorable ({listing}). Delete that directory to "
        f"start this stage over, or re-run with --fresh to start fresh")

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


def write_manifest(step_dir: str) -> str:
  """Writes `step_dir/jaxrlhf_manifest.json` (sizes and sha256 of the step's files) atomically; its path."""
  manifest = {"format": _MANIFEST_FORMAT, "files": _manifest_entries(step_dir)}
  path = os.path.join(step_dir, MANIFEST_NAME)
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(manifest, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)  # A torn manifest is never read: it appears whole or not at all.
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
