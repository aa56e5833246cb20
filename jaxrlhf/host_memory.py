"""Host memory reuse for XLA:CPU: keep freed heap memory in the process instead of handing it back to the kernel.

Why: XLA:CPU allocates an executable's temporary buffers (activations, gradients: hundreds of MiB for a train step)
on every call and frees them when the call ends. glibc serves blocks that large with `mmap` or from per-thread arena
heaps that it shrinks on free, so the memory goes back to the kernel and the next step faults every page in again:
on the 2-core AMD EPYC of docs/performance.md a tiny-Llama RM step took 71,000 minor page faults (278 MiB of 4 KiB
pages) and ~110 ms of kernel time per 0.2 s step. Told to keep freed memory (one malloc arena, no `mmap` for large
blocks, no trimming of the heap top), glibc hands the same pages to the next step: no faults, and the CPU train,
GRPO and generation steps run 20-35% faster. The price is a higher peak RSS: freed blocks stay mapped and the one
heap fragments (measured +0-50% on the bench's cases; docs/performance.md, "Host memory").

The setting must be made before JAX starts its CPU threads: a thread takes its own malloc arena on its first
allocation, and arenas that exist stay. So the command-line entry points (`experiments.run`, the bench's case
processes, the test suite's conftest) call `configure()` before any JAX computation; a script or notebook calls it
first thing, before importing or using JAX. The rule (`wanted`): environment variable `JAXRLHF_KEEP_FREED_MEMORY`
"1" always, "0" never, unset or "auto" only where JAX will run on the CPU (JAX_PLATFORMS names cpu first, or no
accelerator plugin is installed): on a GPU or TPU host the big buffers live in device memory.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Mapping

ENV = "JAXRLHF_KEEP_FREED_MEMORY"
# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# Modules that bring a JAX accelerator backend (the PJRT plugins of jax[cuda12] / jax[cuda13] / jax[rocm], libtpu).
ACCELERATOR_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu",
                       "jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13", "jax_plugins.xla_rocm60")


def _module_installed(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):  # a parent package is missing
    return False


def accelerator_plugins() -> list[str]:
  """The installed modules / entry points that give JAX a GPU or TPU backend (without importing them)."""
  found = [name for name in ACCELERATOR_MODULES if _module_installed(name)]
  found += [f"entry point {ep.name}" for ep in importlib.metadata.entry_points(group="jax_plugins")]
  return found


def wanted(env: Mapping[str, str] | None = None) -> bool:
  """Whether `configure` applies the setting: `JAXRLHF_KEEP_FREED_MEMORY` "1" / "0" force it on / off; unset or
  "auto": on when JAX will run on the CPU (JAX_PLATFORMS's first entry is "cpu", or no accelerator plugin is
  installed). ValueError names the variable on any other value."""
  env = os.environ if env is None else env
  value = env.get(ENV, "auto").strip().lower()
  if value not in ("auto", "1", "0"):
    raise ValueError(f"{ENV}={env.get(ENV)!r}: expected 1 (keep freed memory), 0 (glibc's default) or auto "
                     "(on where JAX runs on the CPU)")
  if value != "auto":
    return value == "1"
  platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return platforms[0] == "cpu"
  return not accelerator_plugins()


def keep_freed_memory() -> bool:
  """Tells glibc's malloc to keep freed memory for reuse: one arena (M_ARENA_MAX 1), no mmap-served blocks
  (M_MMAP_MAX 0), no trimming below 2 GiB of free heap top (M_TRIM_THRESHOLD). True if glibc accepted all three;
  False (nothing changed) on other C libraries or systems. Process-wide; affects threads created afterwards."""
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    libc = ctypes.CDLL(None)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in
             ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)))


def jax_backends_started() -> bool:
  """True if JAX has already created its backends (then the setting no longer reaches its threads)."""
  bridge = sys.modules.get("jax._src.xla_bridge")
  check = getattr(bridge, "backends_are_initialized", None)
  return bool(check and check())


def configure(env: Mapping[str, str] | None = None) -> bool:
  """`keep_freed_memory()` where `wanted(env)` says so; call it before JAX's first computation. Returns whether the
  setting is on. RuntimeError if it is wanted but JAX's backends already started (it could no longer take effect)."""
  if not wanted(env):
    return False
  if jax_backends_started():
    raise RuntimeError(f"jaxrlhf.host_memory.configure: JAX's backends are already initialized, so the malloc "
                       f"setting would not reach their threads; call it before the first JAX computation (or set "
                       f"{ENV}=0 to leave glibc's default)")
  return keep_freed_memory()
