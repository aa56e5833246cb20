"""experiments.huge_pages: when the command lines re-execute with glibc's hugetlb tunable, that they do, and its
effect: a jitted train step's temporaries are faulted in as a few huge pages instead of one fault per 4 KiB page."""

import os
import statistics
import subprocess
import sys
import textwrap

import pytest

from experiments import huge_pages

ENV, TUNABLE = huge_pages.ENV, huge_pages.TUNABLE
HOST_SUPPORTS = huge_pages.wanted_env({}, huge_pages.glibc_version(), huge_pages.thp_mode()) is not None
needs_support = pytest.mark.skipif(sys.platform != "linux" or not HOST_SUPPORTS,
                                   reason="needs Linux, glibc >= 2.35 and transparent huge pages not 'never'")


@pytest.mark.parametrize("env, glibc, thp, expected", [
    ({}, (2, 36), "madvise", TUNABLE),
    ({ENV: "1"}, (2, 35), "always", TUNABLE),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 36), "madvise", "glibc.malloc.arena_max=2:" + TUNABLE),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise", None),  # the user's own choice stays
    ({ENV: "0"}, (2, 36), "madvise", None),
    ({}, (2, 34), "madvise", None),  # the tunable does not exist before glibc 2.35
    ({}, None, "madvise", None),  # another C library
    ({}, (2, 36), "never", None),
    ({}, (2, 36), None, None),
])
def test_wanted_env(env, glibc, thp, expected):
  out = huge_pages.wanted_env(env, glibc, thp)
  assert (out and out["GLIBC_TUNABLES"]) == expected
  if out:
    assert {k: v for k, v in out.items() if k != "GLIBC_TUNABLES"} == {k: v for k, v in env.items()
                                                                        if k != "GLIBC_TUNABLES"}


def test_a_bad_value_names_the_variable():
  with pytest.raises(ValueError, match=f"{ENV}='yes': expected 1 .* or 0"):
    huge_pages.wanted_env({ENV: "yes"}, (2, 36), "madvise")


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  setting = tmp_path / "enabled"
  setting.write_text("always [madvise] never\n")
  assert huge_pages.thp_mode(str(setting)) == "madvise"
  assert huge_pages.thp_mode(str(tmp_path / "missing")) is None


@needs_support
def test_the_process_reexecutes_once_with_the_tunable():
  code = ("import os; from experiments import huge_pages; print('start', os.getpid(), flush=True); "
          "huge_pages.reexec_with_huge_pages(); print('tunables', os.environ.get('GLIBC_TUNABLES'))")
  env = {k: v for k, v in os.environ.items() if k not in (ENV, "GLIBC_TUNABLES")}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))).stdout
  lines = out.split("\n")
  # Started twice under one process id (exec), the second time with the tunable, which stops a third start.
  assert lines[0].split()[:2] == lines[1].split()[:2] == ["start", lines[0].split()[1]]
  assert lines[2] == f"tunables {TUNABLE}" and "start" not in "".join(lines[3:])


def test_experiments_run_checks_the_variable_first():
  env = dict(os.environ, **{ENV: "yes"})
  proc = subprocess.run([sys.executable, "-m", "experiments.run", "--config", "configs/quickstart.py",
                         "--show_config"], env=env, capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  assert proc.returncode == 2 and f"config error: {ENV}='yes'" in proc.stderr and not proc.stdout


# A child: a jitted MLP gradient (160 MiB of XLA temporaries) called 10 times; prints the temporaries' size and the
# minor page faults of each call.
_CHILD = textwrap.dedent("""
    import resource
    import jax, jax.numpy as jnp
    ws = [jnp.full((1024, 1024), 1e-3, jnp.float32) for _ in range(4)]
    x = jnp.ones((8192, 1024), jnp.float32)
    def loss(ws, x):
      for w in ws:
        x = jnp.tanh(x @ w)
      return jnp.mean(x ** 2)
    grad = jax.jit(jax.grad(loss))
    jax.block_until_ready(grad(ws, x))
    faults = []
    for _ in range(10):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      jax.block_until_ready(grad(ws, x))
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(grad.lower(ws, x).compile().memory_analysis().temp_size_in_bytes, *faults)
""")


def _faults_per_call(tunables: str | None) -> tuple[int, float]:
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", **({"GLIBC_TUNABLES": tunables} if tunables else {}))
  out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
  temp_bytes, *faults = map(int, out.stdout.split())
  return temp_bytes // 4096, statistics.median(faults)


@needs_support
def test_huge_pages_fault_the_step_buffers_in_far_fewer_pieces():
  temp_pages, default_faults = _faults_per_call(None)
  if default_faults < 0.5 * temp_pages:
    pytest.skip(f"glibc keeps the buffers mapped here by default ({default_faults:.0f} faults per call)")
  _, huge_faults = _faults_per_call(TUNABLE)
  # 4 KiB pages: about one fault per page of temporaries on every call; on 2 MiB pages 10-30x fewer (measured 3.4% of
  # the default's faults on a quiet machine, 9.3% beside the rest of the test suite, where fewer huge pages are free).
  assert huge_faults <= 0.25 * default_faults, (huge_faults, default_faults, temp_pages)
