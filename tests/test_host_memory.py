"""jaxrlhf.host_memory: the rule that decides the malloc setting, its refusal once JAX runs, and its effect: a jitted
train step's buffers stay mapped between calls instead of being faulted in again on every call."""

import os
import platform
import statistics
import subprocess
import sys
import textwrap

import pytest

from jaxrlhf import host_memory

ENV = host_memory.ENV


@pytest.mark.parametrize("env, expected", [
    ({}, True),  # no accelerator plugin in the test venv: JAX runs on the CPU
    ({ENV: "auto"}, True),
    ({ENV: "0"}, False),
    ({ENV: "1", "JAX_PLATFORMS": "cuda"}, True),
    ({"JAX_PLATFORMS": "cpu"}, True),
    ({"JAX_PLATFORMS": "cuda,cpu"}, False),
    ({"JAX_PLATFORMS": " tpu "}, False),
    ({ENV: " AUTO ", "JAX_PLATFORMS": "cpu"}, True),
])
def test_wanted_follows_the_variable_then_the_platform(env, expected):
  assert not host_memory.accelerator_plugins()  # the premise of the {} case
  assert host_memory.wanted(env) is expected


def test_a_bad_value_names_the_variable_and_the_choices():
  with pytest.raises(ValueError, match=f"{ENV}='yes'.*expected 1.*0.*auto"):
    host_memory.wanted({ENV: "yes"})


def test_configure_refuses_once_jax_runs_and_leaves_glibc_alone_when_off():
  import jax  # pylint: disable=g-import-not-at-top
  jax.numpy.zeros(1).block_until_ready()  # the backends of this test process are up
  with pytest.raises(RuntimeError, match="already initialized.*before the first JAX computation"):
    host_memory.configure({ENV: "1"})
  assert host_memory.configure({ENV: "0"}) is False


# A child process: configure() as the CLIs do, then a jitted MLP gradient (160 MiB of XLA temporaries) called 10
# times; prints the minor page faults of each call.
_CHILD = textwrap.dedent("""
    import resource
    from jaxrlhf import host_memory
    host_memory.configure()
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


def _faults_per_call(setting: str) -> tuple[int, float]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{ENV: setting})
  out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
  temp_bytes, *faults = map(int, out.stdout.split())
  return temp_bytes // 4096, statistics.median(faults)


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_step_buffers_stay_mapped_between_calls():
  temp_pages, default_faults = _faults_per_call("0")
  if default_faults < 0.5 * temp_pages:
    pytest.skip(f"this glibc keeps the buffers by default ({default_faults:.0f} faults per call)")
  temp_pages, kept_faults = _faults_per_call("1")
  # glibc's default faults the temporaries in on every call; kept, the median call faults (almost) nothing.
  assert kept_faults <= 0.05 * temp_pages, (kept_faults, default_faults, temp_pages)
