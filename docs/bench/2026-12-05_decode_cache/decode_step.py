"""Decode ms/step = (time(N=Nl) - time(N=Ns)) / (Nl - Ns): prefill and fixed costs cancel.

Usage: PYTHONPATH=<checkout> python decode_step.py tiny|smollm2 B P Ns Nl (random weights; greedy, no end token).
"""
import importlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import init_model

G = importlib.import_module("jaxrlhf.sampling.generate")
model_name, B, P = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
Ns, Nl = int(sys.argv[4]), int(sys.argv[5])
if model_name == "tiny":
  cfg = ModelConfig(family="llama", vocab_size=1024, embed_dim=256, num_layers=4, num_heads=4, num_kv_heads=2,
                    head_dim=64, mlp_dim=512, max_position_embeddings=4096)
else:  # SmolLM2-135M's shape
  cfg = ModelConfig(family="llama", vocab_size=49152, embed_dim=576, num_layers=30, num_heads=9, num_kv_heads=3,
                    head_dim=64, mlp_dim=1536, max_position_embeddings=8192, tie_word_embeddings=True)
m = init_model(cfg, 0)
ids = jnp.asarray(np.random.RandomState(0).randint(1, cfg.vocab_size, (B, P)), jnp.int32)
mask = jnp.ones((B, P), jnp.int32)


def timeit(N):
  """(fastest of 3 timed calls, first call with compilation) in seconds."""
  f = lambda: G.generate(m, ids, mask, max_new_tokens=N, greedy=True)  # noqa: E731
  t = time.perf_counter()
  jax.block_until_ready(f())
  first = time.perf_counter() - t
  times = []
  for _ in range(3):
    t = time.perf_counter()
    jax.block_until_ready(f())
    times.append(time.perf_counter() - t)
  return min(times), first


(short_s, _), (long_s, long_first_s) = timeit(Ns), timeit(Nl)
print(f"{os.environ.get('PYTHONPATH', '')} {model_name} B={B} P={P}: decode {(long_s - short_s) / (Nl - Ns) * 1e3:.2f} "
      f"ms/step; N={Nl} total {long_s:.2f}s (first call {long_first_s:.1f}s)")
