"""The machine's matmul roofline: `python -m experiments.roofline [--size 2048] [--threads 2]`.

The CPU ratios of experiments.bench (jaxrlhf vs TRL / transformers) only mean something next to what the
machine can do at all: a training step cannot run faster than its FLOPs divided by the peak matmul rate. This
measures that rate for square-ish f32 and bf16 matmuls (M x K @ K x N, default 2048 x 1024 @ 1024 x 4096) in
XLA:CPU (jax.jit) and in PyTorch (oneDNN; when installed), as GFLOP/s = 2 M K N / seconds (best of `repeats`).

On CPUs with AMX (Intel Sapphire Rapids and later) PyTorch's bf16 matmul uses the tile units and is several
times faster than f32; XLA:CPU (jaxlib 0.10) has no AMX path, so bf16 there runs at about the f32 rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable


DEFAULT_SHAPE = (2048, 1024, 4096)  # (M, K, N): the GEMM of the roofline and of experiments.bench's MFU.


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
  fn()  # Compile / warm the caches.
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def jax_matmul_gflops(m: int, k: int, n: int, dtype: str, repeats: int = 5) -> float:
  """GFLOP/s of a jitted (m, k) @ (k, n) matmul in `dtype` ("float32" | "bfloat16") on the default device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.ones((m, k), dtype)
  b = jnp.ones((k, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  seconds = _best_seconds(lambda: matmul(a, b).block_until_ready(), repeats)
  return 2.0 * m * k * n / seconds / 1e9


def torch_matmul_gflops(m: int, k: int, n: int, dtype: str, threads: int, repeats: int = 5) -> float | None:
  """GFLOP/s of the same matmul in PyTorch with `threads` intra-op threads, or None without torch."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(threads)
  a = torch.ones(m, k, dtype=getattr(torch, dtype))
  b = torch.ones(k, n, dtype=getattr(torch, dtype))
  seconds = _best_seconds(lambda: a @ b, repeats)
  return 2.0 * m * k * n / seconds / 1e9


def measure(m: int = DEFAULT_SHAPE[0], k: int = DEFAULT_SHAPE[1], n: int = DEFAULT_SHAPE[2], threads: int = 2,
            repeats: int = 5) -> dict:
  """{"jax": {dtype: GFLOP/s}, "torch": {dtype: GFLOP/s or None}, "shape": [m, k, n]}."""
  if min(m, k, n) < 1:
    raise ValueError(f"matmul shape: expected positive sizes, got {(m, k, n)}")
  dtypes = ("float32", "bfloat16")
  return {"shape": [m, k, n], "threads": threads,
          "jax": {d: jax_matmul_gflops(m, k, n, d, repeats) for d in dtypes},
          "torch": {d: torch_matmul_gflops(m, k, n, d, threads, repeats) for d in dtypes}}


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--m", type=int, default=2048)
  parser.add_argument("--k", type=int, default=1024)
  parser.add_argument("--n", type=int, default=4096)
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (jax uses every core)")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  result = measure(args.m, args.k, args.n, args.threads, args.repeats)
  fmt = lambda x: "n/a" if x is None else f"{x:.0f}"
  print(f"matmul {args.m}x{args.k} @ {args.k}x{args.n}, GFLOP/s (best of {args.repeats}):")
  print("| library | float32 | bfloat16 |\n|---|---|---|")
  for lib in ("jax", "torch"):
    print(f"| {lib} | {fmt(result[lib]['float32'])} | {fmt(result[lib]['bfloat16'])} |")
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
