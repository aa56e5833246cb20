"""Huge pages for the host heap: the command lines re-execute themselves once with glibc's `glibc.malloc.hugetlb=1`.

Why: XLA:CPU allocates an executable's temporary buffers (activations, gradients: hundreds of MiB for a train step)
on every call and frees them when the call ends; glibc hands blocks that large back to the kernel, so the next call
faults every page in again. On the 2-core AMD EPYC of docs/performance.md a tiny-Llama RM step took 71,000 minor
page faults (278 MiB of 4 KiB pages) and ~110 ms of kernel time per 0.2 s step. With the tunable, glibc asks for
transparent huge pages (`madvise(MADV_HUGEPAGE)`) on the memory it maps, so the same bytes take 2 MiB pages and a few
hundred faults: tiny-model train steps ran 1.08-1.51x faster and the quickstart chain took 1:07 (1:08-1:12 without),
with the same peak RSS (docs/performance.md, "Host memory"). glibc reads tunables only when a process starts, hence the
re-execution (the same process id, arguments and environment plus the tunable), done before any heavy import.

Where it applies (`wanted_env`): Linux with glibc >= 2.35 (the tunable's first release) and transparent huge pages
set to "always" or "madvise"; never where `JAXRLHF_HUGE_PAGES=0` or GLIBC_TUNABLES already sets hugetlb. GPU and
TPU hosts get it too: it only changes how host memory is mapped.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping

ENV = "JAXRLHF_HUGE_PAGES"  # "1" (default): re-execute with the tunable where it helps; "0": never.
TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_SETTING) -> str | None:
  """The kernel's transparent-huge-page mode ("always", "madvise" or "never"), or None where it is not readable."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  for word in text.split():
    if word.startswith("[") and word.endswith("]"):
      return word[1:-1]
  return None


def glibc_version() -> tuple[int, ...] | None:
  """(major, minor) of the running glibc, or None on another C library or system."""
  name, version = platform.libc_ver()
  if name != "glibc" or not version:
    return None
  try:
    return tuple(int(x) for x in version.split(".")[:2])
  except ValueError:
    return None


def wanted_env(env: Mapping[str, str], glibc: tuple[int, ...] | None, thp: str | None) -> dict[str, str] | None:
  """The environment to re-execute with (env plus the tunable), or None to run as is. ValueError names
  `JAXRLHF_HUGE_PAGES` on a value other than 0 or 1."""
  value = env.get(ENV, "1").strip()
  if value not in ("0", "1"):
    raise ValueError(f"{ENV}={env.get(ENV)!r}: expected 1 (huge pages for the host heap where the system allows "
                     "them, the default) or 0 (glibc's default mapping)")
  tunables = env.get("GLIBC_TUNABLES", "")
  if value == "0" or "glibc.malloc.hugetlb" in tunables:
    return None
  if glibc is None or glibc < (2, 35) or thp not in ("always", "madvise"):
    return None
  return {**env, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def reexec_with_huge_pages() -> None:
  """Re-executes this Python process (`sys.orig_argv`) with the tunable where `wanted_env` says so; returns
  otherwise. Call it first thing in a command line's `__main__`, before anything that should not run twice."""
  if sys.platform != "linux":
    return
  env = wanted_env(os.environ, glibc_version(), thp_mode())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def main_hook() -> None:
  """`reexec_with_huge_pages()` for a command line's `__main__`; a bad JAXRLHF_HUGE_PAGES prints one line and exits
  2 (the command lines' config-error status)."""
  try:
    reexec_with_huge_pages()
  except ValueError as e:
    print(f"config error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
