"""experiments/trace_summary.py: which trace events count as ops, the busy / idle / gap arithmetic against hand
counts, and a real jax.profiler trace of a loop whose op counts the compiled program fixes."""

import pathlib
import re
import sys
from types import SimpleNamespace as NS

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import trace_summary as ts  # noqa: E402


def _ev(name, start, dur, **stats):
  return NS(name=name, start_ns=start, duration_ns=dur, stats=list(stats.items()))


def _op(name, start, dur, line="t0"):
  return ts.OpEvent("/host:CPU", line, name, name, float(start), float(dur))


def test_device_stream_lines_are_the_ops_when_the_trace_has_them():
  gpu = NS(name="/device:GPU:0", lines=[
      NS(name="Stream #7(Compute)", events=[_ev("gemv_kernel", 0, 10), _ev("loop_fusion", 12, 3)]),
      NS(name="XLA Ops", events=[_ev("dot.1", 0, 10)]),  # a derived line: the same time again
      NS(name="Stream #8(MemcpyD2H)", events=[_ev("MemcpyD2H", 20, 2)])])
  host = NS(name="/host:CPU", lines=[NS(name="tf_XLA", events=[_ev("while.1", 0, 30, hlo_op="while.1")])])
  events = ts.op_events([host, gpu])
  assert [(e.line, e.name) for e in events] == [
      ("Stream #7(Compute)", "gemv_kernel"), ("Stream #7(Compute)", "loop_fusion"),
      ("Stream #8(MemcpyD2H)", "MemcpyD2H")]
  # Without a device plane (XLA:CPU): the host events that name an HLO op, not the Python thread's.
  host = NS(name="/host:CPU", lines=[
      NS(name="python", events=[_ev("PjitFunction(f)", 0, 50)]),
      NS(name="tf_XLA", events=[_ev("fusion.2", 5, 4, hlo_op="fusion.2", hlo_module="m")])])
  assert [(e.name, e.hlo_op, e.start_ns, e.duration_ns) for e in ts.op_events([host])] == [
      ("fusion.2", "fusion.2", 5.0, 4.0)]


def test_busy_idle_gaps_and_top_ops_against_hand_counts():
  events = [
      _op("while.1", 0, 100),  # contains the next three on its line: busy time, not an op
      _op("dot", 0, 30), _op("tanh", 40, 10), _op("dot", 60, 30),
      _op("copy", 95, 9, line="t1"),  # overlaps the while on another thread
      _op("dot", 150, 30), _op("add", 205, 5),
  ]
  s = ts.summarize(events, top=2)
  # Busy: [0, 104) + [150, 180) + [205, 210) = 139 of a 210 span; gaps 46 (104 -> 150) and 25 (180 -> 205).
  assert s["ops"] == 6 and s["busy_ns"] == 139.0 and s["span_ns"] == 210.0 and s["planes"] == ["/host:CPU"]
  assert s["idle_fraction"] == pytest.approx(71 / 210)
  assert s["gaps"] == dict(count=2, total_ns=71.0, median_ns=35.5, max_ns=46.0, long_count=0, long_total_ns=0.0)
  assert s["top_ops"] == [dict(name="dot", hlo_op="dot", count=3, total_us=0.1, mean_us=0.03),
                          dict(name="tanh", hlo_op="tanh", count=1, total_us=0.0, mean_us=0.01)]
  assert ts.busy_intervals(events).tolist() == [[0, 104], [150, 180], [205, 210]]
  long = ts.summarize([_op("a", 0, 10), _op("b", 10 + ts.LONG_GAP_NS + 5, 10)])
  assert long["gaps"]["long_count"] == 1 and long["gaps"]["long_total_ns"] == ts.LONG_GAP_NS + 5
  assert ts.summarize([])["ops"] == 0


def test_per_step_is_the_difference_over_the_steps():
  def fake(ops, busy, span, gaps, long_count, long_total):
    return dict(ops=ops, busy_ns=busy, span_ns=span, gaps=dict(count=gaps, long_count=long_count,
                                                               long_total_ns=long_total), planes=["p"], top_ops=["x"])
  got = ts.per_step(fake(100, 5e5, 6e5, 10, 1, 3e4), fake(1100, 2.5e6, 4.6e6, 510, 101, 2.03e6), steps=10)
  assert got == dict(steps=10, ops_per_step=100.0, busy_us_per_step=200.0, span_us_per_step=400.0,
                     idle_fraction=0.5, gaps_per_step=50.0, long_gaps_per_step=10.0, long_gap_us_per_step=200.0,
                     planes=["p"], top_ops=["x"])
  with pytest.raises(ValueError, match="steps"):
    ts.per_step(got, got, 0)


_NOT_EXECUTED = ("parameter", "constant", "get-tuple-element", "tuple", "bitcast")


def _loop_ops(hlo: str) -> tuple[int, str]:
  """From the compiled HLO text: how many instructions the while loop's condition and body execute per iteration
  (everything but parameters, constants, tuples and bitcasts) and the name of the body's tanh."""
  cond, body = re.search(r"while\(.*condition=%([\w.-]+), body=%([\w.-]+)", hlo).groups()
  executed, tanh = 0, None
  for name in (cond, body):
    block = re.search(r"^%" + re.escape(name) + r" .*?\{\n(.*?)^\}", hlo, re.M | re.S).group(1)
    for inst, opcode, rest in re.findall(r"^\s*(?:ROOT )?%([\w.-]+) = \S+ ([\w-]+)\((.*)$", block, re.M):
      executed += opcode not in _NOT_EXECUTED
      tanh = inst if 'while/body/tanh"' in rest else tanh
  return executed, tanh


def test_a_real_trace_counts_each_loop_iteration_of_the_compiled_program(tmp_path):
  """A while loop with a traced trip count, traced at 2 and at 9 iterations of the same compiled program: per
  iteration the trace holds exactly the ops the compiled HLO's condition and body execute (the independent
  reference), and the body's tanh runs once per iteration."""
  w = jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)), jnp.float32) / 8

  @jax.jit
  def loop(x, n):
    return jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, jnp.tanh(c[1] @ w)), (0, x))[1]

  x = jnp.ones((8, 64), jnp.float32)
  loop(x, 2).block_until_ready()
  per_iteration, tanh = _loop_ops(loop.lower(x, 2).compile().as_text())
  assert per_iteration >= 3 and tanh
  traces = {}
  for n in (2, 9):
    events = ts.trace_call(lambda n=n: loop(x, n).block_until_ready(), str(tmp_path / f"n{n}"))
    assert sum(e.hlo_op == tanh for e in events) == n, (tanh, sorted({e.hlo_op for e in events}))
    traces[n] = ts.summarize(events)
    assert traces[n]["planes"] == ["/host:CPU"]  # XLA:CPU: the thunks, no device plane
  step = ts.per_step(traces[2], traces[9], 7)
  assert step["ops_per_step"] == per_iteration and traces[9]["busy_ns"] > traces[9]["ops"]  # > 1 ns per op
  with pytest.raises(ValueError, match="new or empty"):
    ts.trace_call(lambda: None, str(tmp_path / "n2"))
  with pytest.raises(ValueError, match="expected one"):
    ts.read_trace(str(tmp_path))
