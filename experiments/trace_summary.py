"""Where a step's time goes, from a `jax.profiler` trace: executed ops (GPU kernels, or XLA:CPU thunks), the time the
device is busy, the gaps between ops, and the ops that take the time.

`bench_gpu.py`'s `gen:...:profile` case traces a prefill-only call and a full generation and reports the difference
per decode step, so that a decode step can be called kernel-bound (the device busy nearly all the step: the kernels
themselves are slow) or launch-bound (the device idle between short kernels: fewer, larger kernels or CUDA graphs
would help).

Only jax is needed (`jax.profiler.ProfileData` reads the trace's xplane file): the GPU image runs this module.
Which events count as ops: on a device plane (`/device:GPU:0`, ...) every event of a stream line ("Stream #7(...)",
one line per CUDA stream); without device planes (XLA:CPU) every event of a host line that carries an `hlo_op`
stat (the thunk executor's), where an op that contains others on its line (a while loop around its body) is busy
time but not counted as an op.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Callable, Iterable, Sequence

import numpy as np

# A gap between two ops longer than this is reported apart: on a GPU it is the host catching up (a while loop's
# condition copied back to the host, kernels launched slower than they run), not the ~1-3 us between queued kernels.
LONG_GAP_NS = 20_000


@dataclasses.dataclass(frozen=True)
class OpEvent:
  """One executed op: where it ran (plane, line), its name (a kernel name on a GPU, an HLO op on XLA:CPU), the HLO
  op it came from where the trace says ("" if not), and its start and duration in nanoseconds."""
  plane: str
  line: str
  name: str
  hlo_op: str
  start_ns: float
  duration_ns: float

  @property
  def end_ns(self) -> float:
    return self.start_ns + self.duration_ns


def _is_device_op_line(plane_name: str, line_name: str) -> bool:
  return plane_name.startswith("/device:") and line_name.startswith("Stream")


def op_events(planes: Iterable) -> list[OpEvent]:
  """The ops of a trace's planes (`ProfileData.planes`, or objects with the same `name` / `lines` / `events` /
  `stats` attributes): the device planes' stream events if the trace has any, else the XLA:CPU thunks."""
  planes = list(planes)
  device = any(_is_device_op_line(p.name, line.name) for p in planes for line in p.lines)
  events = []
  for plane in planes:
    for line in plane.lines:
      if device and not _is_device_op_line(plane.name, line.name):
        continue
      for event in line.events:
        stats = dict(event.stats)
        if not device and "hlo_op" not in stats:
          continue
        events.append(OpEvent(plane.name, line.name, event.name, str(stats.get("hlo_op", "")),
                              float(event.start_ns), float(event.duration_ns)))
  return events


def read_trace(trace_dir: str) -> list[OpEvent]:
  """The ops of the one `*.xplane.pb` file under `trace_dir` (as `jax.profiler.trace(trace_dir)` writes it)."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
  if len(files) != 1:
    raise ValueError(f"{trace_dir}: expected one *.xplane.pb trace file, found {len(files)}: {files}")
  return op_events(ProfileData.from_file(files[0]).planes)


def _leaves(events: Sequence[OpEvent]) -> list[OpEvent]:
  """Events that contain no other event of their line (a loop's or a call's thunk contains its body's)."""
  leaves = []
  by_line: dict[tuple[str, str], list[OpEvent]] = {}
  for e in events:
    by_line.setdefault((e.plane, e.line), []).append(e)
  for line_events in by_line.values():
    line_events.sort(key=lambda e: (e.start_ns, -e.duration_ns))
    for i, e in enumerate(line_events):
      nxt = line_events[i + 1] if i + 1 < len(line_events) else None
      if nxt is None or nxt.start_ns >= e.end_ns:
        leaves.append(e)
  return leaves


def busy_intervals(events: Sequence[OpEvent]) -> np.ndarray:
  """float64 (M, 2): the union of the events' [start, end) intervals over every line, sorted and disjoint (ns)."""
  if not events:
    return np.zeros((0, 2))
  spans = sorted((e.start_ns, e.end_ns) for e in events)
  merged = [list(spans[0])]
  for start, end in spans[1:]:
    if start <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], end)
    else:
      merged.append([start, end])
  return np.asarray(merged, np.float64)


def summarize(events: Sequence[OpEvent], *, top: int = 12) -> dict:
  """Totals of one trace: `ops` (leaf events), `planes` (where they ran: "/device:GPU:0", or "/host:CPU" when
  the trace has no device events, e.g. XLA:CPU, or a GPU traced without CUPTI), `busy_ns` (union of all events), `span_ns` (first start to last
  end), `idle_fraction` = 1 - busy / span, the gaps between busy intervals (count, total, median, max, and those
  over LONG_GAP_NS: count and total), and the `top` ops by total time: name, HLO op, count, total and mean (us)."""
  leaves = _leaves(events)
  busy = busy_intervals(events)
  planes = sorted({e.plane for e in events})
  if not len(busy):
    return dict(ops=0, planes=planes, busy_ns=0.0, span_ns=0.0, idle_fraction=0.0, gaps=dict(count=0, total_ns=0.0),
                top_ops=[])
  span = float(busy[-1, 1] - busy[0, 0])
  busy_ns = float(np.sum(busy[:, 1] - busy[:, 0]))
  gaps = busy[1:, 0] - busy[:-1, 1]
  long_gaps = gaps[gaps > LONG_GAP_NS]
  by_name: dict[tuple[str, str], list[float]] = {}
  for e in leaves:
    by_name.setdefault((e.name, e.hlo_op), []).append(e.duration_ns)
  ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
  return dict(
      ops=len(leaves), planes=planes, busy_ns=busy_ns, span_ns=span, idle_fraction=1.0 - busy_ns / span if span > 0 else 0.0,
      gaps=dict(count=int(gaps.size), total_ns=float(gaps.sum()),
                median_ns=float(np.median(gaps)) if gaps.size else 0.0, max_ns=float(gaps.max()) if gaps.size else 0.0,
                long_count=int(long_gaps.size), long_total_ns=float(long_gaps.sum())),
      top_ops=[dict(name=name, hlo_op=hlo_op, count=len(d), total_us=round(sum(d) / 1e3, 1),
                    mean_us=round(sum(d) / len(d) / 1e3, 2)) for (name, hlo_op), d in ranked])


def per_step(short: dict, long: dict, steps: int) -> dict:
  """What `steps` more steps of a loop add: (long - short) / steps of two `summarize` results (ops, busy, span and
  gaps), with the idle fraction of that difference and the long trace's top ops. The two traces differ only in the
  loop's trip count (a prefill-only and a full generation), so what they share (prefill, compile-free setup) cancels.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  d = lambda f: (f(long) - f(short)) / steps  # noqa: E731
  span = d(lambda s: s["span_ns"])
  busy = d(lambda s: s["busy_ns"])
  return dict(steps=steps, ops_per_step=round(d(lambda s: s["ops"]), 2), busy_us_per_step=round(busy / 1e3, 2),
              span_us_per_step=round(span / 1e3, 2), idle_fraction=round(1.0 - busy / span, 4) if span > 0 else 0.0,
              gaps_per_step=round(d(lambda s: s["gaps"]["count"]), 2),
              long_gaps_per_step=round(d(lambda s: s["gaps"].get("long_count", 0)), 3),
              long_gap_us_per_step=round(d(lambda s: s["gaps"].get("long_total_ns", 0.0)) / 1e3, 2),
              planes=long.get("planes", []), top_ops=long["top_ops"])


def trace_call(fn: Callable[[], object], trace_dir: str) -> list[OpEvent]:
  """Runs `fn` (which must block until its results are ready) under `jax.profiler.trace` into a new, empty
  `trace_dir`, and returns the trace's ops."""
  import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  if os.path.exists(trace_dir) and os.listdir(trace_dir):
    raise ValueError(f"{trace_dir}: the trace directory must be new or empty")
  with jax.profiler.trace(trace_dir):
    fn()
  return read_trace(trace_dir)
