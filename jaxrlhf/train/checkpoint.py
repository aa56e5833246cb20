"""Orbax checkpoints of the train state plus the data-iterator state, keep-N and best-by-metric.

Each checkpoint step holds two items: `state` (the TrainState pytree: model, optimizer, step, RNG; written
asynchronously where orbax supports it) and `data` (the data iterator's `get_state()` as JSON). Restores go
into the abstract, sharded target (`StateSetup.abstract`), so each device reads only its shards.

Multi-process runs: every process constructs the Checkpointer and calls `save` / `restore` / `wait` for the same
steps (orbax synchronizes them through jax.distributed); each process writes the shards its devices own, and
process 0 writes the metadata and the `data` JSON, which is the same on every process because all processes walk
the same global example order (see jaxrlhf/data/pipeline.py). The directory must be shared by all processes.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from jaxrlhf.train import state as state_lib


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
    self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "data"), options=options)

  def _rank(self, metrics: Mapping[str, Any]) -> float:
    """BestN sorts ascending and keeps the tail, so a missing metric ranks worst in both modes."""
    value = (metrics or {}).get(self.best_metric)
    if value is None or not math.isfinite(value):
      return math.inf if self.best_mode == "min" else -math.inf
    return float(value)

  def save(self, step: int, state: state_lib.TrainState, *, data_state: Mapping[str, Any] | None = None,
           metrics: Mapping[str, float] | None = None) -> None:
    """Saves `state` and the JSON `data_state` at `step`; `metrics` (finite floats) rank best checkpoints."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(_encode_data_state(data_state)))
    clean = {k: float(v) for k, v in (metrics or {}).items() if math.isfinite(float(v))}
    self._manager.save(int(step), args=args, metrics=clean, force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores (state, data_state) at `step` (default: latest) into the sharded abstract target."""
    self.wait()
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], _decode_data_state(restored["data"])

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
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


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
  """The newest checkpoint step whose restored train state is all finite (None if there is none).

  Restores into the sharded abstract target, newest first, and stops at the first finite one.
  """
  check = jax.jit(state_lib.tree_all_finite)
  for step in reversed(checkpointer.all_steps()):
    state, _ = checkpointer.restore(abstract_state, step)
    if bool(check(state)):
      return step
  return None
