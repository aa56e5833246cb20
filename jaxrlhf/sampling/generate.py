"""Jitted KV-cache generation for every CausalLM family.

One compiled program per (model graph, batch, prompt width, max_new_tokens, sampling switches): the prompt is
prefilled in one call, then a `jax.lax.while_loop` feeds one token at a time into a static-shape KV cache, so the
decode loop never recompiles and stops early once every row has emitted an end token. A long generation decodes in
phases (one while_loop each) that read `cache_bucket` more of the cache's slots each, so that a step does not
attend over hundreds of still-empty slots; `tokens_per_iteration` > 1 runs blocks of that many steps per loop
iteration, testing for the end once per block.

Conventions:
  * Prompts are LEFT-padded (B, P) with a mask (1 = real token); `jaxrlhf.data.padding.pad_prompts` builds such
    arrays from token lists with bucketed widths so that a run compiles a handful of programs.
  * Row b's randomness comes only from its own key: `rng` is one key (row b uses fold_in(rng, b)) or a (B,)
    array of keys; sample s of row b (num_samples > 1) uses fold_in(row_key, s) and step t of it
    fold_in(sample_key, t). A row's samples therefore never depend on the other rows of the batch.
  * An end token (eos_ids) is part of the response (mask 1), as in the data pipeline's "text + eos"; every slot
    after it is `pad_id` with mask 0.

Shape letters: B batch (prompts), S samples per prompt, R = B * S rows, P prompt width, N new tokens, V vocab.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrlhf.parallel.sharding import auto_axes, batch_axes, batch_shards

Array = jax.Array

_NUCLEUS_HEAD = 256  # top-p sorts this many largest logits first (see _truncate)
# Each decode phase reads this many more cache slots (`cache_windows`): a step reads at most 127 empty slots, and a
# generation of up to 129 tokens keeps one phase (one compiled decode step).
DEFAULT_CACHE_BUCKET = 128


@flax.struct.dataclass
class Generation:
  """Sampled continuations of left-padded prompts.

  Rows are prompt-major: row b * num_samples + s is sample s of prompt b.

  Attributes:
    tokens: int32 (R, N) generated ids; `pad_id` after a row ended.
    logps: float32 (R, N) log-probability of each token under the distribution it was drawn from
      (temperature, top-k, top-p applied; 0 for greedy, which is a point mass); 0 on masked slots.
    model_logps: float32 (R, N) log-probability under the unmodified model (temperature 1, no truncation);
      0 on masked slots.
    mask: int32 (R, N), 1 on response tokens (the end token included), 0 after it.
    lengths: int32 (R,) number of response tokens (= mask.sum(-1)).
  """
  tokens: Array
  logps: Array
  model_logps: Array
  mask: Array
  lengths: Array


def content_lengths(tokens_RxN: Array, mask_RxN: Array, eos_ids: Sequence[int]) -> Array:
  """int32 (R,): response tokens before the end token (a row's masked tokens that are not one of `eos_ids`).

  `Generation.lengths` counts the end token too; a reward defined on the tokens before it (the synthetic world's
  gold and its optimum length L*, most text rewards) counts these.
  """
  tokens_RxN = jnp.asarray(tokens_RxN)  # numpy int64 ids become jax's int32 here, not in a requested dtype (a warning)
  is_end = jnp.isin(tokens_RxN, jnp.asarray(tuple(eos_ids), dtype=tokens_RxN.dtype)) if eos_ids else \
      jnp.zeros(tokens_RxN.shape, bool)
  return jnp.sum((mask_RxN > 0) & ~is_end, axis=-1, dtype=jnp.int32)


# ------------------------------------------------------------------------------------- sampling primitives
def _truncate(logits_RxV: Array, top_k: int | None, top_p: float | None) -> Array:
  """Sets logits outside the top-k / nucleus (top-p) set to -inf. Temperature is applied by the caller.

  Nucleus (Holtzman et al. 2020), as transformers' TopPLogitsWarper: keep the smallest set of most likely
  tokens whose probability mass reaches top_p (the most likely token is always kept). The cut is a logit
  threshold, so tokens tied with the last kept one are kept too.
  """
  neg_inf = jnp.finfo(jnp.float32).min
  if top_k is not None and top_k < logits_RxV.shape[-1]:
    kth_R1 = jax.lax.top_k(logits_RxV, top_k)[0][:, -1:]
    logits_RxV = jnp.where(logits_RxV >= kth_R1, logits_RxV, neg_inf)
  if top_p is not None and top_p < 1.0:
    logits_RxV = jnp.where(logits_RxV >= _nucleus_threshold(logits_RxV, top_p), logits_RxV, neg_inf)
  return logits_RxV


def _nucleus_threshold(logits_RxV: Array, top_p: float) -> Array:
  """(R, 1) the largest logit t with P(logit >= t) >= top_p: the nucleus is {v : logit_v >= t}.

  A full sort of a large vocabulary every step is slow on CPUs, so the sorted top `_NUCLEUS_HEAD` logits are
  used when the nucleus lies inside them (the usual case) and an exact bisection over logit values otherwise.
  """
  lse_R1 = jax.nn.logsumexp(logits_RxV, axis=-1, keepdims=True)
  probs_RxV = jnp.exp(logits_RxV - lse_R1)

  head_RxC = jax.lax.top_k(logits_RxV, min(_NUCLEUS_HEAD, logits_RxV.shape[-1]))[0]
  head_probs_RxC = jnp.exp(head_RxC - lse_R1)
  mass_before_RxC = jnp.cumsum(head_probs_RxC, axis=-1) - head_probs_RxC
  num_kept_R = jnp.maximum(jnp.sum(mass_before_RxC < top_p, axis=-1), 1)
  head_threshold_R1 = jnp.take_along_axis(head_RxC, num_kept_R[:, None] - 1, axis=-1)
  inside = jnp.all(jnp.sum(head_probs_RxC, axis=-1) >= top_p)

  def bisect():
    # Invariant: mass(logits >= lo) >= top_p > mass(logits >= hi). Logits more than 100 below the maximum
    # carry < V * e^-100 of the mass, so lo may start there; 64 halvings then reach adjacent floats.
    def body(_, bounds):
      lo, hi = bounds
      mid = 0.5 * (lo + hi)
      enough = jnp.sum(jnp.where(logits_RxV >= mid, probs_RxV, 0.0), axis=-1, keepdims=True) >= top_p
      return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    top_R1 = jnp.max(logits_RxV, axis=-1, keepdims=True)
    lo = jnp.maximum(jnp.min(logits_RxV, axis=-1, keepdims=True), top_R1 - 100.0)
    hi = top_R1 + 1.0
    lo, _ = jax.lax.fori_loop(0, 64, body, (lo, hi))
    return jnp.min(jnp.where(logits_RxV >= lo, logits_RxV, jnp.inf), axis=-1, keepdims=True)  # snap to a logit

  return jax.lax.cond(inside, lambda: head_threshold_R1, bisect)


def _categorical(keys_R: Array, logits_RxV: Array) -> Array:
  """One draw per row from softmax(logits) by inverting the CDF with one uniform per row (a Gumbel-max draw
  needs V random numbers per row, which dominates a step on CPUs for large vocabularies). -inf logits are
  never drawn."""
  cdf_RxV = jnp.cumsum(jax.nn.softmax(logits_RxV, axis=-1), axis=-1)
  u_R = jax.vmap(jax.random.uniform)(keys_R) * cdf_RxV[:, -1]
  return jnp.minimum(jnp.sum(cdf_RxV <= u_R[:, None], axis=-1), logits_RxV.shape[-1] - 1).astype(jnp.int32)


def _sample_step(logits_RxV: Array, keys_R: Array, *, temperature: float, top_k: int | None,
                 top_p: float | None, greedy: bool) -> tuple[Array, Array, Array]:
  """One token per row -> (tokens (R,), sampling logps (R,), model logps (R,))."""
  logits_RxV = logits_RxV.astype(jnp.float32)
  model_logp_RxV = jax.nn.log_softmax(logits_RxV, axis=-1)
  if greedy:
    tokens_R = jnp.argmax(logits_RxV, axis=-1).astype(jnp.int32)
    sample_logp_R = jnp.zeros(tokens_R.shape, jnp.float32)
  else:
    scaled_RxV = _truncate(logits_RxV / temperature, top_k, top_p)
    tokens_R = _categorical(keys_R, scaled_RxV)
    sample_logp_R = jnp.take_along_axis(jax.nn.log_softmax(scaled_RxV, axis=-1), tokens_R[:, None], -1)[:, 0]
  model_logp_R = jnp.take_along_axis(model_logp_RxV, tokens_R[:, None], axis=-1)[:, 0]
  return tokens_R, sample_logp_R, model_logp_R


def _row_keys(rng: Array, num_rows: int) -> Array:
  """(B,) keys: one per row, from a single key (fold_in the row index) or passed through."""
  rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    single = rng.ndim == 0
  else:  # raw uint32 keys: (2,) is one key, (B, 2) a batch
    single = rng.ndim == 1
  if single:
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(num_rows))
  if rng.shape[0] != num_rows:
    raise ValueError(f"rng holds {rng.shape[0]} row keys for {num_rows} prompts; pass one key or one per prompt")
  return rng


# ----------------------------------------------------------------------------------------- the KV cache
def default_cache_bucket(backend: str | None = None) -> int:
  """`generate`'s cache_bucket when none is given: DEFAULT_CACHE_BUCKET (128) on the CPU, 0 (every step reads the
  whole cache) on other backends until measured there.

  On the CPU, reading only the filled slots decodes 64 rows x (64 + 448) or (256 + 512) tokens of a 4-layer model
  1.2-1.6x faster (docs/performance.md, "Decode in phases"). On a GPU the phase's slice of each layer's cache may
  cost a copy before the attention's matmuls; `experiments/bench_gpu.py --only gen:b=256,gen:b=256:bucket=128`
  decides.
  """
  backend = backend or jax.default_backend()
  return DEFAULT_CACHE_BUCKET if backend == "cpu" else 0


def resolve_cache_bucket(cache_bucket: Any) -> int:
  """A `cache_bucket` argument as an int: None -> `default_cache_bucket()`; ValueError unless an int >= 0."""
  if cache_bucket is None:
    return default_cache_bucket()
  if not isinstance(cache_bucket, (int, np.integer)) or isinstance(cache_bucket, bool) or cache_bucket < 0:
    raise ValueError(f"cache_bucket must be an int >= 0 (0: every step reads the whole cache), got "
                     f"{cache_bucket!r}")
  return int(cache_bucket)


def cache_windows(prompt_width: int, max_new_tokens: int, cache_bucket: int) -> tuple[int, ...]:
  """The KV cache slots each decode phase reads: prompt_width + k * cache_bucket, then all of them.

  Decoding needs prompt_width + max_new_tokens - 1 slots by its last step (the last token is never fed back), and
  the cache has that many from the start. With `cache_bucket` 0 every step reads every slot, filled or not.
  With a bucket b the loop runs in phases: phase k's steps attend over the first P + k * b slots (the last phase
  over all), so a step reads at most b - 1 empty slots, at the cost of one compiled decode step per phase. The
  cache is allocated once at its full length (`KVCache.read_len` marks the slots read): no copy, no extra memory.
  """
  total = prompt_width + max(max_new_tokens - 1, 0)
  if not cache_bucket:
    return (total,)
  return (*range(prompt_width + cache_bucket, total, cache_bucket), total)


# -------------------------------------------------------------------------------------------- the program
def _constrain_batch(x: Array, mesh: Mesh | None, axis: int = 0) -> Array:
  if mesh is None:
    return x
  spec = [None] * x.ndim
  spec[axis] = batch_axes(mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


def decode_loop(carry: Any, body: Callable[[Any], Any], *, progress: Callable[[Any], tuple[Array, Array]],
                open_phase: Callable[[Any, int], Any], windows: tuple[int, ...], num_steps: int, prompt_width: int,
                tokens_per_iteration: int = 1) -> Any:
  """Runs decode steps t = 1 .. num_steps - 1 in phases of the cache, stopping once every row has ended.

  Step t (`body`) feeds token t - 1 at cache slot prompt_width + t - 1, reads the slots before it and emits token t
  (token 0 comes from the prefill). Phase `window` (one per entry of `windows`, from `cache_windows`) runs the
  steps whose slots all lie within the first `window`, i.e. while prompt_width + t <= window; `open_phase(carry,
  window)` tells the carry's caches to read only those slots. With tokens_per_iteration = k > 1 a phase first runs
  whole blocks of k steps (an inner loop of static trip count k, the exit tested once per block), then its last
  (< k) steps one at a time: the same steps in the same order as k = 1, plus up to k - 1 steps after every row has
  ended, which the body must make harmless (ended rows write pads).

  Args:
    carry: the loop state after token 0; `progress(carry)` reads its step t (int32 scalar, starting at 1) and
      (R,) bool "row has ended" flags.
    body: one decode step, carry -> carry (advances t by 1).
    open_phase: (carry, window) -> carry, entering the phase that reads `window` cache slots.
    windows: the phases' slot counts, increasing; num_steps: N, the tokens to emit; prompt_width: P.
    tokens_per_iteration: k >= 1.

  Returns:
    the final carry.
  """
  k = tokens_per_iteration

  def fits(carry, window, steps):
    t, done_R = progress(carry)
    last = t + steps - 1  # the block's last step must fit the output and the phase (cond of a single step)
    return (last < num_steps) & (prompt_width + last <= window) & ~jnp.all(done_R)

  def block(carry):
    # A loop with a static trip count: XLA knows it, so on a GPU no predicate goes back to the host between these
    # k steps (and a CUDA graph may hold all k); the block loop around it tests the exit once per k tokens.
    return jax.lax.fori_loop(0, k, lambda _, c: body(c), carry)

  for window in windows:
    carry = open_phase(carry, window)
    if k > 1:
      carry = jax.lax.while_loop(functools.partial(fits, window=window, steps=k), block, carry)
    carry = jax.lax.while_loop(functools.partial(fits, window=window, steps=1), body, carry)
  return carry


@functools.partial(jax.jit, static_argnames=(
    "graphdef", "max_new_tokens", "num_samples", "temperature", "top_k", "top_p", "greedy", "eos_ids", "pad_id",
    "mesh", "windows", "tokens_per_iteration"))
def _generate_jit(graphdef, state, prompt_ids_BxP, prompt_mask_BxP, row_keys_B, *, max_new_tokens: int,
                  num_samples: int, temperature: float, top_k: int | None, top_p: float | None, greedy: bool,
                  eos_ids: tuple[int, ...], pad_id: int, mesh: Mesh | None, windows: tuple[int, ...],
                  tokens_per_iteration: int = 1) -> Generation:
  model = nnx.merge(graphdef, state)
  B, P = prompt_ids_BxP.shape
  S, N = num_samples, max_new_tokens
  R = B * S
  sample_keys_R = jax.vmap(lambda k: jax.vmap(lambda s: jax.random.fold_in(k, s))(jnp.arange(S)))(row_keys_B)
  sample_keys_R = sample_keys_R.reshape(R, *sample_keys_R.shape[2:])

  # Prefill each prompt once, then copy its cache for the S samples. Only the last position's logits are
  # needed, so the LM head runs on it alone (never a (B, P, V) array): `prefill` returns hidden states. The last
  # generated token is never fed back, so P + N - 1 slots suffice.
  # Pad slots get id 0: an out-of-range pad id (e.g. -1) would embed as NaN, and masked NaN values still
  # poison attention (0 * NaN).
  prompt_ids_BxP = jnp.where(prompt_mask_BxP > 0, prompt_ids_BxP, 0).astype(jnp.int32)
  hidden_BxPxD, cache = model.prefill(prompt_ids_BxP, prompt_mask_BxP.astype(bool), windows[-1])
  first_logits_RxV = jnp.repeat(model.unembed(hidden_BxPxD[:, -1:])[:, 0], S, axis=0)
  cache = cache.replace(keys=_constrain_batch(jnp.repeat(cache.keys, S, axis=1), mesh, 1),
                        values=_constrain_batch(jnp.repeat(cache.values, S, axis=1), mesh, 1),
                        mask=_constrain_batch(jnp.repeat(cache.mask, S, axis=0), mesh))
  eos_V = jnp.asarray(eos_ids, jnp.int32) if eos_ids else jnp.full((1,), -1, jnp.int32)
  step = functools.partial(_sample_step, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)

  def emit(t, logits_RxV, done_R, out):
    """Draws token t from logits_RxV and writes it (pad after the row's end) into the output buffers."""
    keys_R = jax.vmap(jax.random.fold_in, in_axes=(0, None))(sample_keys_R, t)
    tok_R, logp_R, model_logp_R = step(logits_RxV, keys_R)
    live_R = ~done_R
    tok_R = jnp.where(live_R, tok_R, pad_id)
    cols = dict(tokens=tok_R, logps=jnp.where(live_R, logp_R, 0.0), model_logps=jnp.where(live_R, model_logp_R, 0.0),
                mask=live_R.astype(jnp.int32))
    out = {k: jax.lax.dynamic_update_index_in_dim(out[k], v.astype(out[k].dtype), t, axis=1)
           for k, v in cols.items()}
    done_R = done_R | jnp.isin(tok_R, eos_V)
    return tok_R, live_R, done_R, out

  out = dict(tokens=jnp.full((R, N), pad_id, jnp.int32), logps=jnp.zeros((R, N), jnp.float32),
             model_logps=jnp.zeros((R, N), jnp.float32), mask=jnp.zeros((R, N), jnp.int32))
  out = {k: _constrain_batch(v, mesh) for k, v in out.items()}
  tok_R, live_R, done_R, out = emit(0, _constrain_batch(first_logits_RxV, mesh), jnp.zeros((R,), bool), out)

  def body(carry):
    t, tok_R, live_R, done_R, cache, out = carry
    # A row that already ended feeds a masked pad: its cache slot is never attended to.
    feed_R = jnp.where(live_R, tok_R, 0)  # never embed pad_id (it may be out of range)
    logits_Rx1xV, cache = model(feed_R[:, None], live_R[:, None], cache=cache)
    tok_R, live_R, done_R, out = emit(t, logits_Rx1xV[:, 0], done_R, out)
    return t + 1, tok_R, live_R, done_R, cache, out

  def open_phase(carry, window):  # phase `window`: slots >= window are still empty, so steps read the first `window`
    t, tok_R, live_R, done_R, cache, out = carry
    return t, tok_R, live_R, done_R, cache.replace(read_len=window), out

  carry = decode_loop((jnp.asarray(1, jnp.int32), tok_R, live_R, done_R, cache, out), body,
                      progress=lambda c: (c[0], c[3]), open_phase=open_phase, windows=windows, num_steps=N,
                      prompt_width=P, tokens_per_iteration=tokens_per_iteration)
  out = carry[-1]
  return Generation(tokens=out["tokens"], logps=out["logps"], model_logps=out["model_logps"], mask=out["mask"],
                    lengths=jnp.sum(out["mask"], axis=-1, dtype=jnp.int32))


def _check_prompts(prompt_ids_BxP, prompt_mask_BxP) -> None:
  if prompt_ids_BxP.ndim != 2 or prompt_mask_BxP.shape != prompt_ids_BxP.shape:
    raise ValueError(f"prompt_ids_BxP and prompt_mask_BxP must be (B, P) of equal shape; got "
                     f"{prompt_ids_BxP.shape} and {prompt_mask_BxP.shape}")
  try:
    mask = np.asarray(prompt_mask_BxP) > 0
  except jax.errors.TracerArrayConversionError:
    return  # traced inside a caller's jit: the layout cannot be checked here
  if not mask[:, -1].all():
    rows = np.flatnonzero(~mask[:, -1]).tolist()
    raise ValueError(f"prompt_mask_BxP: prompts must be left-padded and non-empty (last column real); rows {rows} "
                     "end in padding")
  if (np.diff(mask.astype(np.int8), axis=1) < 0).any():
    raise ValueError("prompt_mask_BxP: prompts must be left-padded (zeros only before the first real token)")


def _check_tokens_per_iteration(tokens_per_iteration: Any) -> None:
  if (not isinstance(tokens_per_iteration, (int, np.integer)) or isinstance(tokens_per_iteration, bool)
      or tokens_per_iteration < 1):
    raise ValueError(f"tokens_per_iteration must be an int >= 1, got {tokens_per_iteration!r}")


def _warn_if_longrope_crosses(config: Any, prompt_width: int, max_new_tokens: int) -> None:
  """Logs a warning when a LongRoPE model's decoding may cross its original context: the prefill (positions below
  `prompt_width`) rotates with the short factors and the decode steps fed from position `original` on with the long
  ones, while the cached keys keep the short rotation (transformers' Phi3 `generate` recomputes the cache there)."""
  if not getattr(config, "longrope", False):
    return
  scaling = config.rope_scaling
  original = scaling.original_max_position_embeddings
  # The last decode call feeds position prompt_width + max_new_tokens - 2 (the last sampled token is not fed back).
  if prompt_width <= original < prompt_width + max_new_tokens - 1:
    logging.getLogger(__name__).warning(
        "LongRoPE: prompts of width %d plus %d new tokens may cross original_max_position_embeddings=%d; the keys "
        "cached before it keep the short factors (transformers' Phi3 generate recomputes them with the long ones, "
        "so its tokens may differ past that point)", prompt_width, max_new_tokens, original)


def generate(model, prompt_ids_BxP, prompt_mask_BxP, *, max_new_tokens: int, rng: Any = None,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
             eos_ids: Sequence[int] | int | None = (), pad_id: int = 0, num_samples: int = 1,
             mesh: Mesh | None = None, cache_bucket: int | None = None,
             tokens_per_iteration: int = 1) -> Generation:
  """Samples `max_new_tokens` continuations of left-padded prompts with a KV cache (one jitted program).

  Args:
    model: a CausalLM (any family).
    prompt_ids_BxP, prompt_mask_BxP: left-padded prompts (int, 1 = real token); every row non-empty.
    max_new_tokens: N, the number of decode steps (static).
    rng: a PRNG key (row b uses fold_in(rng, b)) or (B,) per-prompt keys; required unless greedy.
    temperature: divides the logits (> 0) before truncation and sampling.
    top_k: keep the k most likely tokens (k >= 1), or None.
    top_p: nucleus mass in (0, 1], or None.
    greedy: argmax decoding (ignores temperature/top_k/top_p and rng).
    eos_ids: end tokens: a row ends after emitting one (it is kept, mask 1); later slots are pad, mask 0.
    pad_id: the id written after a row ended.
    num_samples: S completions per prompt (the prompt is repeated; sample s uses fold_in(row_key, s)).
    mesh: optional mesh; the rows (and the KV cache) are then sharded over its ("data", "fsdp") axes, and
      R = B * S must divide by their size. Inputs already sharded this way propagate without it.
    cache_bucket: each decode phase reads this many more slots of the KV cache (`cache_windows`), so a step
      attends over at most cache_bucket - 1 empty slots; 0: every step reads all P + N - 1 slots (one phase).
      Each phase compiles its own decode step. The memory does not depend on it (one cache of P + N - 1 slots),
      and the log-probs only by float rounding (~1e-6: the masked slots add exact zeros, but reductions of other
      lengths round differently), so a greedy near-tie may break the other way. None: `default_cache_bucket()`,
      the backend's rule.
    tokens_per_iteration: k, decode steps per iteration of the decode loop (an inner loop of static trip count
      k): the loop tests its exit (every row ended, the phase's slots full) once per k tokens. On a GPU each test
      copies a flag to the host and waits for it, so k > 1 trades that wait for up to k - 1 steps decoded after
      every row has ended (they write pads: the tokens and log-probs equal k = 1's). A phase's last steps that
      do not fill a block run one at a time (a second compiled decode step per phase). 1: one loop, as before.

  Returns:
    Generation with (R, N) tokens / logps / model_logps / mask and (R,) lengths, R = B * num_samples,
    prompt-major rows.
  """
  prompt_ids_BxP, prompt_mask_BxP = jnp.asarray(prompt_ids_BxP), jnp.asarray(prompt_mask_BxP)
  _check_prompts(prompt_ids_BxP, prompt_mask_BxP)
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
  if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
    raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
  cache_bucket = resolve_cache_bucket(cache_bucket)
  _check_tokens_per_iteration(tokens_per_iteration)
  if not greedy:
    if not temperature > 0:
      raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
    if top_k is not None and not (isinstance(top_k, (int, np.integer)) and top_k >= 1):
      raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    if rng is None:
      raise ValueError("rng is required for sampling (greedy=False)")
  if rng is None:
    rng = jax.random.key(0)  # unused by greedy decoding, but keeps one program signature
  eos_ids = (eos_ids,) if isinstance(eos_ids, (int, np.integer)) else tuple(int(e) for e in (eos_ids or ()))
  _warn_if_longrope_crosses(getattr(model, "config", None), prompt_ids_BxP.shape[1], int(max_new_tokens))
  B = prompt_ids_BxP.shape[0]
  if mesh is not None:
    mesh = auto_axes(mesh)
    size = batch_shards(mesh)
    if (B * num_samples) % size:
      raise ValueError(f"B * num_samples = {B * num_samples} rows must divide by the mesh batch size {size}")
  graphdef, state = nnx.split(model)
  return _generate_jit(
      graphdef, state, prompt_ids_BxP, prompt_mask_BxP, _row_keys(rng, B), max_new_tokens=int(max_new_tokens),
      num_samples=int(num_samples), temperature=1.0 if greedy else float(temperature),
      top_k=None if greedy or top_k is None else int(top_k), top_p=None if greedy or top_p is None else float(top_p),
      greedy=bool(greedy), eos_ids=eos_ids, pad_id=int(pad_id), mesh=mesh,
      windows=cache_windows(prompt_ids_BxP.shape[1], int(max_new_tokens), cache_bucket),
      tokens_per_iteration=int(tokens_per_iteration))
