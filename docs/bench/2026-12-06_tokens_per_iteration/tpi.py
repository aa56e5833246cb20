"""`generate` decoding one step per loop iteration (tokens_per_iteration 1, the default) vs blocks of 8 steps per
iteration (the exit tested once per 8 tokens) on the CPU.

Usage: PYTHONPATH=<checkout> python tpi.py [rounds]
Random weights, greedy, no end token (every row decodes all N tokens), the CPU's cache_bucket rule (128). Per case and
round the two settings run in alternating order; each takes a first call (compilation in round 1) and 5 timed calls
(best and median printed, in ms per generated token step).
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import init_model
from jaxrlhf.sampling.generate import generate

TINY = ModelConfig(family="llama", vocab_size=1024, embed_dim=256, num_layers=4, num_heads=4, num_kv_heads=2,
                   head_dim=64, mlp_dim=512, max_position_embeddings=4096)
CASES = [("tiny", TINY, 1, 32, 256), ("tiny", TINY, 8, 32, 64), ("tiny", TINY, 1, 32, 64), ("tiny", TINY, 8, 32, 256)]
SETTINGS = (1, 8)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}", flush=True)
for name, cfg, B, P, N in CASES:
  model = init_model(cfg, 0)
  ids = jnp.asarray(np.random.RandomState(0).randint(1, cfg.vocab_size, (B, P)), jnp.int32)
  mask = jnp.ones((B, P), jnp.int32)
  tokens = {}
  for r in range(rounds):
    for k in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
      call = lambda: generate(model, ids, mask, max_new_tokens=N, greedy=True, tokens_per_iteration=k)  # noqa: E731
      t = time.perf_counter()
      out = jax.block_until_ready(call())
      first = time.perf_counter() - t
      times = []
      for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t)
      tokens.setdefault(k, np.asarray(out.tokens))
      print(f"{name} {B} x ({P} + {N}) round {r} tokens_per_iteration {k}: first call {first:.2f} s, "
            f"best {1e3 * min(times) / N:.3f} ms/step, median {1e3 * float(np.median(times)) / N:.3f} ms/step",
            flush=True)
  print(f"{name} {B} x ({P} + {N}): same tokens: {np.array_equal(tokens[1], tokens[8])}", flush=True)
