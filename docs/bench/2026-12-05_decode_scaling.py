"""Where a tiny model's decode token goes on XLA:CPU (issue 19's "per-step overhead" item; a record, not a test).

    python docs/bench/2026-12-05_decode_scaling.py     # ~1 min on 2 cores; output: 2026-12-05_decode_scaling.txt

1. The library's `generate` (greedy, bench_lib's tiny shape: 8 x (32 + 64)) against the same loop decoding k tokens
   per `while_loop` iteration (k = 1, 2, 4, 8; identical tokens): does the loop's per-iteration cost matter?
2. The per-token decode time at 0.5x, 1x and 2x the tiny model's width (the same ops, other weight bytes).
"""
import functools
import importlib
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from experiments import bench_lib  # noqa: E402
from jaxrlhf.models import ModelConfig, init_model  # noqa: E402

G = importlib.import_module("jaxrlhf.sampling.generate")


@functools.partial(jax.jit, static_argnames=("graphdef", "N", "k"))
def generate_k(graphdef, state, ids, mask, keys, *, N, k):
  """Greedy decoding as the library's loop, k decode steps per while_loop iteration (N rounded up, then cut)."""
  model = nnx.merge(graphdef, state)
  B, P = ids.shape
  n_pad = -(-N // k) * k
  cache = model.init_cache(B, P + max(n_pad - 1, 0))
  hidden, cache = model.backbone(ids, mask.astype(bool), None, cache)
  step = functools.partial(G._sample_step, temperature=1.0, top_k=None, top_p=None, greedy=True)

  def emit(t, logits, done, out):
    tok, _, model_logp = step(logits, jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t))
    live = ~done
    cols = dict(tokens=tok, mask=live.astype(jnp.int32), model_logps=model_logp)
    out = {c: jax.lax.dynamic_update_index_in_dim(out[c], v.astype(out[c].dtype), t, axis=1) for c, v in cols.items()}
    return tok, live, done, out

  out = dict(tokens=jnp.zeros((B, n_pad + 1), jnp.int32), mask=jnp.zeros((B, n_pad + 1), jnp.int32),
             model_logps=jnp.zeros((B, n_pad + 1)))
  carry = (jnp.asarray(1, jnp.int32), *emit(0, model.unembed(hidden[:, -1:])[:, 0], jnp.zeros((B,), bool), out))
  carry = (carry[0], carry[1], carry[2], carry[3], cache, carry[4])

  def body(c):
    t, tok, live, done, cache, out = c
    for _ in range(k):
      logits, cache = model(jnp.where(live, tok, 0)[:, None], live[:, None], cache=cache)
      tok, live, done, out = emit(t, logits[:, 0], done, out)
      t = t + 1
    return t, tok, live, done, cache, out

  *_, out = jax.lax.while_loop(lambda c: (c[0] < n_pad) & ~jnp.all(c[3]), body, carry)
  return out["tokens"][:, :N]


def median_s(fn, repeats=7):
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main():
  shape = bench_lib.SHAPES["tiny"]
  n = shape.gen_new
  ids = jnp.asarray(np.random.default_rng(0).integers(2, 8192, (shape.gen_batch, shape.gen_prompt)), jnp.int32)
  mask = jnp.ones_like(ids)
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, tiny shape {shape.gen_batch} x "
        f"({shape.gen_prompt} + {n})")
  model = init_model(ModelConfig(**bench_lib.TINY_CONFIG, eos_token_id=1, pad_token_id=0), seed=0)
  graphdef, state = nnx.split(model)
  keys = G._row_keys(jax.random.key(0), ids.shape[0])
  library = lambda: jax.block_until_ready(
      G.generate(model, ids, mask, max_new_tokens=n, greedy=True, eos_ids=()).tokens)
  ref = np.asarray(library())
  print(f"1. library generate: {1e3 * median_s(library) / n:.3f} ms/token")
  for k in (1, 2, 4, 8):
    fn = lambda k=k: jax.block_until_ready(generate_k(graphdef, state, ids, mask, keys, N=n, k=k))
    same = np.array_equal(np.asarray(fn()), ref)
    print(f"   k = {k} tokens per iteration: {1e3 * median_s(fn) / n:.3f} ms/token (tokens equal: {same})")
  for scale in (0.5, 1, 2):
    cfg = dict(bench_lib.TINY_CONFIG, embed_dim=int(256 * scale), head_dim=int(64 * scale), mlp_dim=int(768 * scale))
    model = init_model(ModelConfig(**cfg, eos_token_id=1, pad_token_id=0), seed=0)
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    full = median_s(lambda: jax.block_until_ready(
        G.generate(model, ids, mask, max_new_tokens=n, greedy=True, eos_ids=()).tokens))
    first = median_s(lambda: jax.block_until_ready(
        G.generate(model, ids, mask, max_new_tokens=1, greedy=True, eos_ids=()).tokens))
    per_token = (full - first) / (n - 1)
    print(f"2. width x{scale}: weights {nbytes / 1e6:.1f} MB fp32, decode {1e3 * per_token:.3f} ms/token = "
          f"{nbytes / per_token / 1e9:.1f} GB/s of weights")
  x = jnp.ones((64 * 2**20,), jnp.float32)
  total = jax.jit(jnp.sum)
  print(f"   a jitted sum reads {x.nbytes / median_s(lambda: total(x).block_until_ready()) / 1e9:.0f} GB/s (256 MB)")


if __name__ == "__main__":
  main()
