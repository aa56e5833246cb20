"""`generate` reading the whole KV cache every step (cache_bucket 0) vs decode phases that read 128 more slots
each (the CPU default).

Usage: PYTHONPATH=<checkout> python cache_bucket.py [rounds]
Random weights, greedy, no end token (every row decodes all N tokens). Per case and round the two settings run in
alternating order; each takes a first call (compilation in round 1) and 3 timed calls (best and median printed).
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import init_model
from jaxrlhf.sampling.generate import cache_windows, generate

TINY = ModelConfig(family="llama", vocab_size=1024, embed_dim=256, num_layers=4, num_heads=4, num_kv_heads=2,
                   head_dim=64, mlp_dim=512, max_position_embeddings=4096)
SMOLLM2 = ModelConfig(family="llama", vocab_size=49152, embed_dim=576, num_layers=30, num_heads=9, num_kv_heads=3,
                      head_dim=64, mlp_dim=1536, max_position_embeddings=8192, tie_word_embeddings=True)
CASES = [("tiny", TINY, 64, 64, 448), ("tiny", TINY, 64, 256, 512), ("smollm2-shape", SMOLLM2, 16, 64, 256)]
BUCKETS = (0, 128)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}", flush=True)
for name, cfg, B, P, N in CASES:
  model = init_model(cfg, 0)
  ids = jnp.asarray(np.random.RandomState(0).randint(1, cfg.vocab_size, (B, P)), jnp.int32)
  mask = jnp.ones((B, P), jnp.int32)
  tokens = {}
  for r in range(rounds):
    for bucket in (BUCKETS if r % 2 == 0 else BUCKETS[::-1]):
      call = lambda: generate(model, ids, mask, max_new_tokens=N, greedy=True, cache_bucket=bucket)  # noqa: E731
      t = time.perf_counter()
      out = jax.block_until_ready(call())
      first = time.perf_counter() - t
      times = []
      for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t)
      tokens.setdefault(bucket, np.asarray(out.tokens))
      print(f"{name} {B} x ({P} + {N}) round {r} cache_bucket {bucket:3d} (windows "
            f"{list(cache_windows(P, N, bucket))}): best {min(times):.3f} s, median {sorted(times)[1]:.3f} s, "
            f"first call {first:.1f} s", flush=True)
  same = all((tokens[b] == tokens[0]).all() for b in BUCKETS)
  print(f"{name} {B} x ({P} + {N}): same tokens for every bucket: {same}", flush=True)
