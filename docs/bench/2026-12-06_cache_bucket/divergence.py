"""Where the greedy tokens of cache_bucket 0 and 128 part in the tiny 64 x (256 + 512) case of cache_bucket.py:
log-prob differences before the split (float rounding) and the log-prob of the split token (a near-tie).

Usage: PYTHONPATH=<checkout> python divergence.py   (output in divergence.txt)
"""
import jax.numpy as jnp
import numpy as np
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import init_model
from jaxrlhf.sampling.generate import generate
cfg = ModelConfig(family="llama", vocab_size=1024, embed_dim=256, num_layers=4, num_heads=4, num_kv_heads=2,
                  head_dim=64, mlp_dim=512, max_position_embeddings=4096)
m = init_model(cfg, 0)
B, P, N = 64, 256, 512
ids = jnp.asarray(np.random.RandomState(0).randint(1, cfg.vocab_size, (B, P)), jnp.int32)
mask = jnp.ones((B, P), jnp.int32)
a = generate(m, ids, mask, max_new_tokens=N, greedy=True, cache_bucket=0)
b = generate(m, ids, mask, max_new_tokens=N, greedy=True, cache_bucket=128)
ta, tb = np.asarray(a.tokens), np.asarray(b.tokens)
diff_rows = np.flatnonzero((ta != tb).any(1))
print("rows differing", len(diff_rows), "of", B)
firsts = [int(np.flatnonzero(ta[r] != tb[r])[0]) for r in diff_rows]
print("first divergence steps", sorted(firsts))
la, lb = np.asarray(a.model_logps), np.asarray(b.model_logps)
for r, f in zip(diff_rows[:5], firsts[:5]):
  print(r, f, "max |dlogp| before divergence", np.abs(la[r, :f] - lb[r, :f]).max(), "logps at div", la[r, f], lb[r, f])
print("max |dlogp| on rows that never diverge", np.abs(la - lb)[~np.isin(np.arange(B), diff_rows)].max())
