"""Decode ms/step = (time(N=Nl) - time(N=Ns)) / (Nl - Ns): prefill and fixed costs cancel.

Usage: PYTHONPATH=<checkout> python decode_step.py tiny|smollm2 B P Ns Nl (random weights; greedy, no end token).
"""
import time, sys, importlib, os
import jax, jax.numpy as jnp, numpy as np
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import init_model
G = importlib.import_module("jaxrlhf.sampling.generate")
model_name, B, P = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
Ns, Nl = int(sys.argv[4]), int(sys.argv[5])
if model_name == "tiny":
  cfg = ModelConfig(family="llama", vocab_size=1024, embed_dim=256, num_layers=4, num_heads=4, num_kv_heads=2,
                    head_dim=64, mlp_dim=512, max_position_embeddings=4096)
else:
  cfg = ModelConfig(family="llama", vocab_size=49152, embed_dim=576, num_layers=30, num_heads=9, num_kv_heads=3,
                    head_dim=64, mlp_dim=1536, max_position_embeddings=8192, tie_word_embeddings=True)
m = init_model(cfg, 0)
ids = jnp.asarray(np.random.RandomState(0).randint(1, cfg.vocab_size, (B, P)), jnp.int32); mask = jnp.ones((B, P), jnp.int32)
def timeit(N):
  f = lambda: G.generate(m, ids, mask, max_new_tokens=N, greedy=True)
  t = time.perf_counter(); jax.block_until_ready(f()); c = time.perf_counter() - t
  ts = []
  for _ in range(3):
    t = time.perf_counter(); jax.block_until_ready(f()); ts.append(time.perf_counter() - t)
  return min(ts), c
(ts_, cs), (tl, cl) = timeit(Ns), timeit(Nl)
print(f"{os.environ.get('PYTHONPATH', '')} {model_name} B={B} P={P}: decode {(tl - ts_) / (Nl - Ns) * 1e3:.2f} ms/step; N={Nl} total {tl:.2f}s (first call {cl:.1f}s)")
