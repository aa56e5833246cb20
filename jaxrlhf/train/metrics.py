"""Step metrics that average correctly, and the writers (metrics.jsonl + TensorBoard).

A step function returns `metrics: dict[str, value]` where each value is one of
  - a scalar array: a per-step mean; a window reports the unweighted mean over steps;
  - `Avg(total, count)`: a weighted sum and its weight (e.g. loss summed over examples and the number of
    examples/tokens); micro-batches and windows add totals and counts, and report total / count (tunix style);
  - `Sum(value)`: a counter (tokens, examples); a window reports the sum.
`Avg`/`Sum` are pytrees, so they cross `jax.jit` and `lax.scan` boundaries.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Avg:
  """A weighted mean kept as (total, count) so it can be merged exactly: value = total / count."""
  total: jax.Array
  count: jax.Array


@flax.struct.dataclass
class Sum:
  """A counter (tokens, examples) that windows add up."""
  value: jax.Array


def _is_metric(x: Any) -> bool:
  return isinstance(x, (Avg, Sum))


def merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
  """Merges two metric dicts of the same structure (e.g. two micro-batches); works traced or on host.

  Plain scalars become `Avg(a + b, 2)` so that the merged result still reports the mean.
  """
  if a.keys() != b.keys():
    raise ValueError(f"metrics: key sets differ: {sorted(a)} vs {sorted(b)}")
  out = {}
  for k in a:
    x, y = as_avg(a[k]), as_avg(b[k])
    if isinstance(x, Sum):
      out[k] = Sum(x.value + y.value)
    else:
      out[k] = Avg(x.total + y.total, x.count + y.count)
  return out


def as_avg(x: Any) -> Avg | Sum:
  """A plain scalar -> Avg(x, 1); Avg/Sum unchanged."""
  if _is_metric(x):
    return x
  return Avg(x, jnp.ones_like(x) if isinstance(x, jax.Array) else np.ones_like(x))


def stack_reduce(metrics_stacked: Mapping[str, Any]) -> dict[str, Any]:
  """Reduces metrics stacked on a leading micro-batch axis (the output of `lax.scan`) to one step's."""
  out = {}
  for k, v in metrics_stacked.items():
    if isinstance(v, Sum):
      out[k] = Sum(jnp.sum(v.value, axis=0))
    elif isinstance(v, Avg):
      out[k] = Avg(jnp.sum(v.total, axis=0), jnp.sum(v.count, axis=0))
    else:
      out[k] = Avg(jnp.sum(v, axis=0), jnp.asarray(v.shape[0], v.dtype))
  return out


def compute(metrics: Mapping[str, Any], *, drop_empty: bool = False) -> dict[str, float]:
  """Host floats: Avg -> total / count, Sum -> value, scalar -> itself.

  An empty Avg (count 0: nothing contributed, e.g. a per-subset mean over a batch without that subset) has no
  value: NaN, or left out with `drop_empty` (the loop's NaN guard and logging windows, so that an empty mean
  neither stops a run as non-finite nor logs NaN).
  """
  metrics = jax.device_get(dict(metrics))
  out = {}
  for k, v in metrics.items():
    if isinstance(v, Avg):
      count = float(v.count)
      if not count and drop_empty:
        continue
      out[k] = float(v.total) / count if count else float("nan")
    elif isinstance(v, Sum):
      out[k] = float(v.value)
    else:
      out[k] = float(v)
  return out


def first_non_finite(values: Mapping[str, float]) -> str | None:
  """A metric name whose host value is NaN/inf (losses first: they name the cause best), or None."""
  bad = [k for k, v in values.items() if not math.isfinite(v)]
  bad.sort(key=lambda k: (k != "loss" and not k.endswith("/loss"), k))
  return bad[0] if bad else None


class Window:
  """Accumulates host-side step metrics over a logging window (sums and counts, no device sync)."""

  def __init__(self):
    self._acc: dict[str, Any] = {}
    self.steps = 0

  def add(self, metrics: Mapping[str, Any]) -> None:
    host = {k: jax.tree.map(np.asarray, as_avg(v)) for k, v in jax.device_get(dict(metrics)).items()}
    self._acc = host if not self._acc else merge(self._acc, host)
    self.steps += 1

  def result(self) -> dict[str, float]:
    """The window's values; an Avg that stayed empty over the whole window is left out (see `compute`)."""
    return compute(self._acc, drop_empty=True) if self._acc else {}

  def reset(self) -> None:
    self._acc = {}
    self.steps = 0


class MetricsWriter:
  """Writes {"step": s, **metrics} lines to workdir/metrics.jsonl and scalars to TensorBoard event files.

  In a multi-process run only the primary process (process 0, the default) writes; on the others every method
  is a no-op, so each line is logged once. `path` is readable from every process (shared workdir).
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, primary: bool | None = None):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.primary = jax.process_index() == 0 if primary is None else primary
    self._tb = None
    if tensorboard and self.primary:
      import tensorboardX  # Imported lazily: only the writer needs it.
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def reset(self) -> None:
    """Deletes metrics.jsonl (a run starting from step 0)."""
    if self.primary and os.path.exists(self.path):
      os.remove(self.path)

  def truncate_after(self, step: int) -> None:
    """Drops lines logged after `step` (a run killed after its last checkpoint re-logs those steps).

    A torn last line (a kill or a full disk in the middle of an append) is dropped with a warning; an unreadable
    line before the last one raises ValueError naming the file and line. The file is replaced atomically, so a
    kill during the rewrite leaves the old one.
    """
    if not self.primary or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      raw = f.readlines()
    numbered = [(i, l) for i, l in enumerate(raw, 1) if l.strip()]
    lines = []
    for n, (i, l) in enumerate(numbered):
      try:
        record = json.loads(l)
        line_step = record["step"]
      except (ValueError, KeyError, TypeError) as e:
        if n == len(numbered) - 1 and not l.endswith("\n"):
          print(f"[metrics] WARNING: {self.path}:{i}: dropping a torn last line ({l.strip()[:80]!r})", flush=True)
          continue
        raise ValueError(f"{self.path}:{i}: expected a JSON object with a \"step\" key, got {l.strip()[:80]!r} "
                         f"({type(e).__name__}: {e})") from e
      if line_step <= step:
        lines.append(l if l.endswith("\n") else l + "\n")
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(lines)
    os.replace(tmp, self.path)

  def write(self, step: int, values: Mapping[str, float]) -> None:
    if not self.primary:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n")
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, float(v), int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict[str, float]]:
  """Reads a metrics.jsonl file back into a list of dicts."""
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]
