"""`vas_generate` reading the whole KV caches every step (cache_bucket 0) vs decode phases of 128 slots.

Usage: PYTHONPATH=<checkout> python vas_bucket.py [rounds]
A random tiny Llama policy and one random value model of the same shape (top_k 20 candidates per step, beta 1,
no end token). Per round the two settings run in alternating order: a first call (compilation in round 1), then 3
timed calls (best and median printed).
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.models import RewardModel
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import init_model
from jaxrlhf.sampling import vas_generate
from jaxrlhf.sampling.generate import cache_windows

TINY = ModelConfig(family="llama", vocab_size=1024, embed_dim=256, num_layers=4, num_heads=4, num_kv_heads=2,
                   head_dim=64, mlp_dim=512, max_position_embeddings=4096)
B, P, N, K = 16, 64, 320, 20
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
policy = init_model(TINY, 0)
value = RewardModel.from_causal_lm(init_model(TINY, 1), seed=1)
ids = jnp.asarray(np.random.RandomState(0).randint(1, TINY.vocab_size, (B, P)), jnp.int32)
mask = jnp.ones((B, P), jnp.int32)
print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; {B} x ({P} + {N}), top_k {K}", flush=True)
tokens = {}
for r in range(rounds):
  for bucket in ((0, 128) if r % 2 == 0 else (128, 0)):
    call = lambda: vas_generate(policy, [value], ids, mask, beta=1.0, top_k=K, max_new_tokens=N,  # noqa: E731
                                rng=jax.random.PRNGKey(0), cache_bucket=bucket)
    t = time.perf_counter()
    out = jax.block_until_ready(call())
    first = time.perf_counter() - t
    times = []
    for _ in range(3):
      t = time.perf_counter()
      jax.block_until_ready(call())
      times.append(time.perf_counter() - t)
    tokens.setdefault(bucket, np.asarray(out.tokens))
    print(f"round {r} cache_bucket {bucket:3d} (windows {list(cache_windows(P, N + 1, bucket))}): best "
          f"{min(times):.3f} s, median {sorted(times)[1]:.3f} s, first call {first:.1f} s", flush=True)
print(f"same tokens: {bool((tokens[0] == tokens[128]).all())}", flush=True)
