"""LM-head forward + backward on the CPU at SmolLM2-135M's head (D 576, V 49152), fp32: full / chunked / fused
(recompute) / fused (save), median of 7 after 2 warm-ups, interleaved rounds."""
import sys, time, statistics, json
import jax, jax.numpy as jnp, numpy as np
from jaxrlhf.losses import logps as L

N, D, V = int(sys.argv[1]), 576, 49152
chunk = int(sys.argv[2])
rng = np.random.default_rng(0)
h = jnp.asarray(rng.normal(size=(1, N, D)) * 0.5, jnp.float32)
w = jnp.asarray(rng.normal(size=(D, V)) * 0.05, jnp.float32)
t = jnp.asarray(rng.integers(0, V, (1, N)), jnp.int32)
m = jnp.ones((1, N), jnp.float32)

def full(h, w):
  return L.sequence_logps(jnp.einsum("btd,dv->btv", h, w), t, m)[1].sum()
modes = {
  "full": full,
  "chunked": lambda h, w: L.chunked_sequence_logps(h, w, t, m, chunk_size=chunk)[1].sum(),
  "fused_recompute": lambda h, w: L.fused_sequence_logps(h, w, t, m, chunk_size=chunk, save_softmax_grad=False)[1].sum(),
  "fused_save": lambda h, w: L.fused_sequence_logps(h, w, t, m, chunk_size=1024, save_softmax_grad=True)[1].sum(),
}
fns = {k: jax.jit(jax.value_and_grad(f, (0, 1))) for k, f in modes.items()}
for f in fns.values():
  for _ in range(2): jax.block_until_ready(f(h, w))
times = {k: [] for k in fns}
for _ in range(7):
  for k, f in fns.items():
    t0 = time.perf_counter(); jax.block_until_ready(f(h, w)); times[k].append(time.perf_counter() - t0)
print(json.dumps({"N": N, "chunk": chunk, **{k: round(statistics.median(v) * 1e3, 1) for k, v in times.items()}}))
