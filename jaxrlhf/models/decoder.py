"""One Flax NNX decoder for the Llama (Mistral, SmolLM2), Qwen2, Qwen3, Gemma 2, Gemma 3 (text) and GPT-2 families.

Layer parameters are stacked on a leading "layers" axis and run with `jax.lax.scan` (optionally under
`jax.checkpoint`), so an L-layer model compiles one layer body. Each family is a set of `ModelConfig` switches:
norm type, RoPE vs learned positions, gated vs plain MLP, biases, tied embeddings, q/k norms, Gemma's (1 + w)
sandwich norms, scaled embeddings and soft-capping. Layers that differ (Gemma's local sliding-window vs global
layers, with their own RoPE bases) differ only by data: a per-layer flag scanned with the parameters selects the
layer's attention mask and RoPE tables, so the scan still compiles one body.

Shape letters: B batch, T new tokens, S key/value slots (T without a cache, max_len with one), D embed,
N query heads, K kv heads, G = N / K, H head dim, F mlp width, V vocab, L layers.

With a KV cache the layers only READ the cache: each layer attends over its cached slots and over the T new
tokens as two blocks of one softmax, and returns the new tokens' keys and values; one `dynamic_update_slice` after
the last layer writes all L layers' new entries into the cache; `KVCache.read_len` limits the slots read to the
filled ones. Writing inside the layer loop (into a slots-before-heads cache) made XLA:CPU transpose, slice and
write back each layer's whole cache every step: a 4-layer decode step at 64 rows x 519 slots took 48.8 ms, 14.5 ms
now (docs/performance.md, "Decode with a long cache").
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.models.config import ModelConfig, attention_scale
from jaxrlhf.models import lora as lora_lib

Array = jax.Array

_REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class ParamSpec(NamedTuple):
  """Shape (without the layer axis), logical axis names and initializer kind of one parameter."""
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  init: str  # "normal", "ones" or "zeros"


def layer_param_specs(config: ModelConfig) -> dict[str, ParamSpec]:
  """Per-layer parameters (stacked over "layers" in the model) for this config's switches."""
  c = config
  D, N, K, H, F = c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim
  norm_init = "zeros" if c.norm_plus_one else "ones"  # (1 + w) norms start at w = 0
  specs = {
      "attn_norm_scale": ParamSpec((D,), ("embed",), norm_init),
      "q_kernel": ParamSpec((D, N, H), ("embed", "heads", "head_dim"), "normal"),
      "k_kernel": ParamSpec((D, K, H), ("embed", "kv_heads", "head_dim"), "normal"),
      "v_kernel": ParamSpec((D, K, H), ("embed", "kv_heads", "head_dim"), "normal"),
      "o_kernel": ParamSpec((N, H, D), ("heads", "head_dim", "embed"), "normal"),
      "mlp_norm_scale": ParamSpec((D,), ("embed",), norm_init),
      "up_kernel": ParamSpec((D, F), ("embed", "mlp"), "normal"),
      "down_kernel": ParamSpec((F, D), ("mlp", "embed"), "normal"),
  }
  if c.norm == "layernorm":
    specs["attn_norm_bias"] = ParamSpec((D,), ("embed",), "zeros")
    specs["mlp_norm_bias"] = ParamSpec((D,), ("embed",), "zeros")
  if c.qkv_bias:
    specs["q_bias"] = ParamSpec((N, H), ("heads", "head_dim"), "zeros")
    specs["k_bias"] = ParamSpec((K, H), ("kv_heads", "head_dim"), "zeros")
    specs["v_bias"] = ParamSpec((K, H), ("kv_heads", "head_dim"), "zeros")
  if c.out_bias:
    specs["o_bias"] = ParamSpec((D,), ("embed",), "zeros")
  if c.gated_mlp:
    specs["gate_kernel"] = ParamSpec((D, F), ("embed", "mlp"), "normal")
  if c.mlp_bias:
    specs["up_bias"] = ParamSpec((F,), ("mlp",), "zeros")
    specs["down_bias"] = ParamSpec((D,), ("embed",), "zeros")
    if c.gated_mlp:
      specs["gate_bias"] = ParamSpec((F,), ("mlp",), "zeros")
  if c.qk_norm:
    specs["q_norm_scale"] = ParamSpec((H,), ("head_dim",), norm_init)
    specs["k_norm_scale"] = ParamSpec((H,), ("head_dim",), norm_init)
  if c.post_norms:
    specs["post_attn_norm_scale"] = ParamSpec((D,), ("embed",), norm_init)
    specs["post_mlp_norm_scale"] = ParamSpec((D,), ("embed",), norm_init)
  return specs


def model_param_specs(config: ModelConfig) -> dict[str, ParamSpec]:
  """Parameters outside the layer stack."""
  c = config
  specs = {
      "embed": ParamSpec((c.vocab_size, c.embed_dim), ("vocab", "embed"), "normal"),
      "final_norm_scale": ParamSpec((c.embed_dim,), ("embed",), "zeros" if c.norm_plus_one else "ones"),
  }
  if c.position == "learned":
    specs["pos_embed"] = ParamSpec((c.max_position_embeddings, c.embed_dim), ("positions", "embed"), "normal")
  if c.norm == "layernorm":
    specs["final_norm_bias"] = ParamSpec((c.embed_dim,), ("embed",), "zeros")
  if not c.tie_word_embeddings:
    specs["lm_head"] = ParamSpec((c.embed_dim, c.vocab_size), ("embed", "vocab"), "normal")
  return specs


def _make_param(spec: ParamSpec, key: Array, config: ModelConfig, num_layers: int | None = None) -> nnx.Param:
  shape, axes = spec.shape, spec.axes
  if num_layers is not None:
    shape, axes = (num_layers, *shape), ("layers", *axes)
  dtype = config.params_dtype
  if spec.init == "ones":
    value = jnp.ones(shape, dtype)
  elif spec.init == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    value = (config.initializer_range * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
  # eager_sharding=False: the names are logical; jaxrlhf.parallel maps them to a mesh with one rules table.
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


@flax.struct.dataclass
class KVCache:
  """Static-shape key/value cache for incremental decoding.

  Attributes:
    keys, values: (L, B, K, S, H) rotated keys and values, slot s holds the token fed at call offset s. Heads
      before slots, so that a decode step's attention reads each head's slots as one contiguous (S, H) matrix.
    mask: (B, S) bool, True on slots that hold a real (non-pad) token.
    index: () int32, the next slot to write. Callers keep index + T <= S (under jit the write position is
      clamped, not checked); generation left-pads prompts so every row shares one index.
    read_len: static; the attention reads only slots [0, read_len) (None: all S). A caller that knows the cache is
      filled only up to some slot sets it (`replace(read_len=...)`, index <= read_len; not checked under jit) so
      that a step does not attend over empty slots; one compiled program per value. `sampling.generate` decodes in
      phases of growing read_len (`cache_bucket`): the cache is allocated once, never copied or grown.
  """
  keys: Array
  values: Array
  mask: Array
  index: Array
  read_len: int | None = flax.struct.field(pytree_node=False, default=None)

  @property
  def max_len(self) -> int:
    return self.keys.shape[3]

  @property
  def readable(self) -> int:
    """The slots the attention reads: read_len, or all of them."""
    return self.max_len if self.read_len is None else min(self.read_len, self.max_len)


class LayerStack(nnx.Module):
  """All decoder layers' parameters, each stacked on a leading "layers" axis of size L."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    for name, spec in layer_param_specs(config).items():
      setattr(self, name, _make_param(spec, rngs.params(), config, num_layers=config.num_layers))

  def arrays(self, config: ModelConfig) -> dict[str, Array]:
    """Parameter values as a dict of (L, ...) arrays in the storage dtype."""
    return {name: getattr(self, name)[...] for name in layer_param_specs(config)}


# ------------------------------------------------------------------------------------------ pure layer math
def _norm(config: ModelConfig, x_BxTxD: Array, scale_D: Array, bias_D: Array | None) -> Array:
  """RMSNorm or LayerNorm over the last axis, statistics in float32 (as transformers), output in x's dtype."""
  x = x_BxTxD.astype(jnp.float32)
  if config.norm == "rmsnorm":
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + config.norm_eps)
  else:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + config.norm_eps)
  if config.norm_plus_one:
    # Gemma: scale by (1 + w) in float32, then cast (transformers' Gemma RMSNorm; Llama casts before scaling).
    return (y * (1.0 + scale_D.astype(jnp.float32))).astype(x_BxTxD.dtype)
  y = y.astype(x_BxTxD.dtype) * scale_D
  return y if bias_D is None else y + bias_D


def _activation(config: ModelConfig, x: Array) -> Array:
  if config.activation == "silu":
    return jax.nn.silu(x)
  if config.activation == "relu":
    return jax.nn.relu(x)
  return jax.nn.gelu(x, approximate=config.activation == "gelu_tanh")


def rope_inv_freq(config: ModelConfig, local: bool = False, long: bool = False) -> np.ndarray:
  """(R/2,) float32 RoPE inverse frequencies, after rope_scaling (matches transformers' rope init functions); R is
  `config.rope_dim`, the rotated head dimensions.

  `local=True`: those of the sliding-window layers, base `local_rope_theta` and no scaling (Gemma 3).
  `long=True`: LongRoPE's frequencies past its original context (`long_factor`); otherwise `short_factor`'s.
  """
  R = config.rope_dim
  theta, scaling = (config.local_rope_theta, None) if local else (config.rope_theta, config.rope_scaling)
  wavelength_scale = np.float32(theta) ** (np.arange(0, R, 2, dtype=np.float32) / np.float32(R))
  inv_freq = 1.0 / wavelength_scale
  if scaling is None or scaling.rope_type == "default":
    return inv_freq.astype(np.float32)
  if scaling.rope_type == "linear":
    return (inv_freq / scaling.factor).astype(np.float32)
  if scaling.rope_type == "longrope":
    factors = np.asarray(scaling.long_factor if long else scaling.short_factor, np.float32)
    # 1 / (factor * theta^(2i/R)), the product in float32 as transformers forms it.
    return (1.0 / (factors * wavelength_scale)).astype(np.float32)
  # llama3: keep high frequencies, divide low ones by `factor`, interpolate the band in between.
  old_len = scaling.original_max_position_embeddings
  low_wavelen = old_len / scaling.low_freq_factor
  high_wavelen = old_len / scaling.high_freq_factor
  wavelen = 2 * np.pi / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def _rope_tables(config: ModelConfig, positions_BxT: Array, local: bool = False) -> tuple[Array, Array]:
  """cos, sin tables (B, T, R) in the compute dtype (half-split "rotate_half" layout as transformers; R is
  `config.rope_dim`).

  LongRoPE picks its long factors when this call's largest position reaches the original context (transformers
  decides it per forward from max(position_ids) + 1, over the whole batch) and scales both tables by its
  attention factor.
  """
  scale = 1.0
  if config.longrope and not local:
    scaling = config.rope_scaling
    beyond = jnp.max(positions_BxT) + 1 > scaling.original_max_position_embeddings
    inv_freq = jnp.where(beyond, jnp.asarray(rope_inv_freq(config, long=True)), jnp.asarray(rope_inv_freq(config)))
    scale = scaling.attention_factor
  else:
    inv_freq = jnp.asarray(rope_inv_freq(config, local))
  freqs_BxTxR2 = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
  emb_BxTxR = jnp.concatenate([freqs_BxTxR2, freqs_BxTxR2], axis=-1)
  cos, sin = jnp.cos(emb_BxTxR), jnp.sin(emb_BxTxR)
  if scale != 1.0:
    cos, sin = cos * scale, sin * scale
  return cos.astype(config.compute_dtype), sin.astype(config.compute_dtype)


def _apply_rope(x_BxTxNxH: Array, cos_BxTxR: Array, sin_BxTxR: Array) -> Array:
  """Rotates the first R = cos.shape[-1] dimensions of each head (all H unless the model rotates part)."""
  R = cos_BxTxR.shape[-1]
  if R < x_BxTxNxH.shape[-1]:
    rotated = _apply_rope(x_BxTxNxH[..., :R], cos_BxTxR, sin_BxTxR)
    return jnp.concatenate([rotated, x_BxTxNxH[..., R:]], axis=-1)
  x1, x2 = jnp.split(x_BxTxNxH, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x_BxTxNxH * cos_BxTxR[:, :, None] + rotated * sin_BxTxR[:, :, None]


def _attention(config: ModelConfig, q_BxTxNxH: Array, k_BxSxKxH: Array, v_BxSxKxH: Array,
               allowed_BxTxS: Array | None) -> Array:
  """Grouped-query attention; scores and softmax in float32. Rows with no allowed key (pad queries) stay finite.

  `allowed_BxTxS=None` means plain causal attention over unpadded sequences (the fused kernel's fast path).
  """
  if config.attention == "cudnn":
    # Without a cache every allowed mask is causal (padding, packing, shared prompts only remove more keys), so
    # the kernel may skip the blocks above the diagonal; the mask (turned into a bias by jax) does the rest.
    mask = None if allowed_BxTxS is None else allowed_BxTxS[:, None]
    return jax.nn.dot_product_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask=mask, is_causal=True,
                                        scale=attention_scale(config), implementation="cudnn")
  B, T, N, H = q_BxTxNxH.shape
  K = k_BxSxKxH.shape[2]
  if allowed_BxTxS is None:
    allowed_BxTxS = jnp.tril(jnp.ones((T, k_BxSxKxH.shape[1]), bool))[None]
  q_BxTxKxGxH = q_BxTxNxH.reshape(B, T, K, N // K, H)
  scores = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH, preferred_element_type=jnp.float32)
  scores = scores * attention_scale(config)
  if config.attn_logit_softcap is not None:
    scores = _softcap(scores, config.attn_logit_softcap)
  scores = jnp.where(allowed_BxTxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxKxH.dtype)
  out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", probs, v_BxSxKxH)
  return out_BxTxKxGxH.reshape(B, T, N, H)


def _cached_attention(config: ModelConfig, q_BxTxNxH: Array, k_BxTxKxH: Array, v_BxTxKxH: Array,
                      cache_k_BxKxSxH: Array, cache_v_BxKxSxH: Array, allowed_cache_BxTxS: Array,
                      allowed_new_BxTxT: Array) -> Array:
  """Attention of T new queries over a layer's cached slots and the T new keys, one softmax over both blocks.

  The cache is only read (its (S, H) matrix per batch row and kv head is the right operand of both matmuls, so no
  transpose or copy of it is made); scores and softmax in float32 as in `_attention`. A query with no allowed key
  gets uniform weights and stays finite, as there.
  """
  B, T, N, H = q_BxTxNxH.shape
  K = k_BxTxKxH.shape[2]
  G = N // K
  # Query rows ordered (g, t) per kv head: (B, K, G*T, H).
  q_BxKxQxH = q_BxTxNxH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)
  k_BxKxTxH, v_BxKxTxH = k_BxTxKxH.transpose(0, 2, 1, 3), v_BxTxKxH.transpose(0, 2, 1, 3)
  neg = jnp.finfo(jnp.float32).min

  def scores(keys_BxKxSxH, allowed_BxTxS):
    keys_BxKxSxH = keys_BxKxSxH.astype(q_BxKxQxH.dtype)
    if jax.default_backend() == "cpu":
      # Keys as the left operand, (S, H) @ (H, G*T), then the small result transposed: XLA:CPU runs this ~3x
      # faster than (G*T, H) @ (S, H)^T (a batch-64, 511-slot decode step: 3.9 -> 1.3 ms per layer). The
      # barrier keeps XLA from folding the transpose back into the dot. GPUs' GEMMs take either form.
      s = jnp.einsum("bksh,bkqh->bksq", keys_BxKxSxH, q_BxKxQxH, preferred_element_type=jnp.float32)
      s = jax.lax.optimization_barrier(s).swapaxes(-1, -2)
    else:
      s = jnp.einsum("bkqh,bksh->bkqs", q_BxKxQxH, keys_BxKxSxH, preferred_element_type=jnp.float32)
    s = s * attention_scale(config)
    if config.attn_logit_softcap is not None:
      s = _softcap(s, config.attn_logit_softcap)
    s = s.reshape(B, K, G, T, -1)
    return jnp.where(allowed_BxTxS[:, None, None], s, neg)

  cache_scores = scores(cache_k_BxKxSxH, allowed_cache_BxTxS)
  new_scores = scores(k_BxKxTxH, allowed_new_BxTxT)
  top = jnp.maximum(jnp.max(cache_scores, axis=-1, keepdims=True), jnp.max(new_scores, axis=-1, keepdims=True))
  cache_e, new_e = jnp.exp(cache_scores - top), jnp.exp(new_scores - top)
  denom = jnp.sum(cache_e, axis=-1, keepdims=True) + jnp.sum(new_e, axis=-1, keepdims=True)
  dtype = v_BxTxKxH.dtype

  def weighted(e, values_BxKxSxH):
    p = (e / denom).astype(dtype).reshape(B, K, G * T, -1)
    return jnp.einsum("bkqs,bksh->bkqh", p, values_BxKxSxH.astype(dtype), preferred_element_type=jnp.float32)

  out_BxKxQxH = weighted(cache_e, cache_v_BxKxSxH) + weighted(new_e, v_BxKxTxH)
  out = out_BxKxQxH.astype(dtype).reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4)
  return out.reshape(B, T, N, H)


def _softcap(x: Array, cap: float) -> Array:
  """cap * tanh(x / cap): Gemma 2's soft-capping of attention scores and final logits (bounded by +-cap)."""
  return jnp.tanh(x / cap) * cap


def _dense(x: Array, w: Array, num_in_dims: int = 1) -> Array:
  """x (..., *in) @ w (*in, *out) -> (..., *out): a dot contracting x's last `num_in_dims` axes with w's first.

  On CPU it runs as ONE 2-D matmul over the flattened tokens: XLA:CPU's backward of a 2-D dot is ~1.6x faster
  than that of a dot whose weight gradient contracts over several batch-like axes (B and T). Accelerators keep
  the multi-axis dot (measured on an H200: the flattened form cost ~3 MFU points in the DPO step).
  """
  if jax.default_backend() != "cpu":
    return jnp.tensordot(x, w, axes=num_in_dims)
  in_shape, out_shape = w.shape[:num_in_dims], w.shape[num_in_dims:]
  lead = x.shape[:x.ndim - num_in_dims]
  y = jnp.dot(x.reshape(-1, math.prod(in_shape)), w.reshape(math.prod(in_shape), -1))
  return y.reshape(*lead, *out_shape)


def _project(p: dict[str, Array], target: str, x: Array, num_in_dims: int = 1, lora_scale: float | None = None
             ) -> Array:
  """x @ W_target, plus (alpha / r) (x @ A) @ B when `p` holds the target's LoRA adapters ("lora_<t>_a/b")."""
  y = _dense(x, p[f"{target}_kernel"], num_in_dims)
  a = p.get(f"lora_{target}_a")
  if a is None:
    return y
  return y + _dense(_dense(x, a, num_in_dims), p[f"lora_{target}_b"]) * jnp.asarray(lora_scale, y.dtype)


def _layer(config: ModelConfig, p: dict[str, Array], x_BxTxD: Array, rope: tuple[Array, Array] | None,
           allowed: Array | tuple[Array, Array], kv: tuple[Array, Array] | None,
           lora_scale: float | None = None, prefill_dtype: Any = None
           ) -> tuple[Array, tuple[Array, Array] | None]:
  """One pre-norm decoder layer.

  Without a cache `allowed` is the (B, T, S = T) mask (or None: plain causal). With `kv` (this layer's cached
  (B, K, S, H) keys and values, read only) `allowed` is the pair (cache (B, T, S), new tokens (B, T, T)) and the
  layer returns, beside the hidden states, the new tokens' (B, K, T, H) keys and values for the caller to write;
  `prefill_dtype` (without a cache) returns them too, in that dtype, for a cache that starts with these tokens.
  LoRA adapters in `p` ("lora_<target>_a/b", models.lora) add (lora_scale) x A B to their projection."""
  h = _norm(config, x_BxTxD, p["attn_norm_scale"], p.get("attn_norm_bias"))
  q = _project(p, "q", h, lora_scale=lora_scale)
  k = _project(p, "k", h, lora_scale=lora_scale)
  v = _project(p, "v", h, lora_scale=lora_scale)
  if config.qkv_bias:
    q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
  if config.qk_norm:  # per head, over head_dim, before RoPE (Qwen3, Gemma 3)
    q, k = _norm(config, q, p["q_norm_scale"], None), _norm(config, k, p["k_norm_scale"], None)
  if rope is not None:
    q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
  new_kv = None
  cache_dtype = kv[0].dtype if kv is not None else prefill_dtype
  if cache_dtype is not None:
    # Rounded to the cache's dtype first, so that these tokens are attended to now as they will be when cached.
    k, v = k.astype(cache_dtype).astype(q.dtype), v.astype(cache_dtype).astype(q.dtype)
    new_kv = (k.transpose(0, 2, 1, 3).astype(cache_dtype), v.transpose(0, 2, 1, 3).astype(cache_dtype))
  if kv is not None:
    attn = _cached_attention(config, q, k, v, kv[0], kv[1], *allowed)
  else:
    attn = _attention(config, q, k, v, allowed)
  out = _project(p, "o", attn, num_in_dims=2, lora_scale=lora_scale)
  if config.out_bias:
    out = out + p["o_bias"]
  if config.post_norms:
    out = _norm(config, out, p["post_attn_norm_scale"], None)
  x_BxTxD = x_BxTxD + out

  h = _norm(config, x_BxTxD, p["mlp_norm_scale"], p.get("mlp_norm_bias"))
  up = _project(p, "up", h, lora_scale=lora_scale)
  if config.mlp_bias:
    up = up + p["up_bias"]
  if config.gated_mlp:
    gate = _project(p, "gate", h, lora_scale=lora_scale)
    if config.mlp_bias:
      gate = gate + p["gate_bias"]
    up = _activation(config, gate) * up
  else:
    up = _activation(config, up)
  down = _project(p, "down", up, lora_scale=lora_scale)
  if config.mlp_bias:
    down = down + p["down_bias"]
  if config.post_norms:
    down = _norm(config, down, p["post_mlp_norm_scale"], None)
  return x_BxTxD + down, new_kv


def default_positions(attention_mask_BxT: Array, offset_B: Array | None = None) -> Array:
  """Position ids: number of real tokens before each token (cumsum(mask) - 1, clipped at 0), plus offset."""
  positions = jnp.cumsum(attention_mask_BxT.astype(jnp.int32), axis=-1) - 1
  if offset_B is not None:
    positions = positions + offset_B[:, None]
  return jnp.maximum(positions, 0)


def _allowed_mask(config: ModelConfig, q_slots_T: Array, kv_slots_S: Array, kv_valid_BxS: Array,
                  positions_BxT: Array | None = None, *, windowed: bool = True) -> Array:
  """(B, T, S) bool: key slot is real, not in the future, and inside the sliding window if any.

  The window is measured in slots, or in `positions_BxT` when given (T == S, no cache): rows whose segments
  restart or share a prefix (packing, shared prompts) have slot distances larger than token distances.
  `windowed=False` gives the mask of the "full_attention" layers (no window).
  """
  causal_TxS = kv_slots_S[None, :] <= q_slots_T[:, None]
  allowed_BxTxS = causal_TxS[None] & kv_valid_BxS[:, None, :]
  window = config.sliding_window if windowed else None
  if window is not None:
    if positions_BxT is None:
      allowed_BxTxS &= (kv_slots_S[None, :] > q_slots_T[:, None] - window)[None]
    else:
      allowed_BxTxS &= positions_BxT[:, None, :] > positions_BxT[:, :, None] - window
  return allowed_BxTxS


# ----------------------------------------------------------------------------------------------- the module
class CausalLM(nnx.Module):
  """Decoder-only language model; `config` switches select the family.

  Call: `model(input_ids_BxT, attention_mask_BxT=None, positions_BxT=None, *, cache=None, return_hidden=False)`
    -> logits (B, T, V) float32; with `return_hidden` -> (logits, hidden_BxTxD); with `cache` the new KVCache is
    appended to the output: (logits, cache) or (logits, hidden, cache).

  `lora` (a `models.lora.LoraConfig`, or a dict of its fields) adds LoRA adapters (`self.lora`, a LoraStack stacked
  like the layers) to its target projections of every layer; the base parameters are created first, from the same
  keys as without adapters. `without_adapters()` is the base model (a view sharing the weights), `merged()` a
  plain CausalLM with the adapters folded into the kernels.
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, lora: Any = None):
    self.config = config
    for name, spec in model_param_specs(config).items():
      setattr(self, name, _make_param(spec, rngs.params(), config))
    self.layers = LayerStack(config, rngs=rngs)
    self.lora_config = lora_lib.lora_config(lora)
    self.lora = None if self.lora_config is None else lora_lib.LoraStack(config, self.lora_config, rngs=rngs)

  # ---- LoRA
  def without_adapters(self) -> "CausalLM":
    """This model with its LoRA adapters switched off: the base model, sharing (not copying) its weights, e.g. the
    DPO / RL reference of a LoRA policy. A model without adapters returns itself."""
    return self if self.lora is None else _AdaptersOff(self)

  def merged(self) -> "CausalLM":
    """A plain CausalLM (no adapters; every parameter an nnx.Param) whose kernels are W + (alpha / r) A B: it
    computes this model's logits (up to float rounding) and exports with `save_pretrained` like any model."""
    pure = nnx.to_pure_dict(nnx.state(self))  # Params and frozen base parameters alike.
    adapters = pure.pop("lora", None)
    if self.lora_config is not None:
      pure["layers"] = lora_lib.merged_layers(self.config, self.lora_config, pure["layers"], adapters)
    graphdef, state = nnx.split(abstract_model(self.config))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    return nnx.merge(graphdef, state)

  # ---- public API
  def __call__(self, input_ids: Array, attention_mask: Array | None = None, positions: Array | None = None, *,
               cache: KVCache | None = None, return_hidden: bool = False, segment_ids: Array | None = None,
               shared_mask: Array | None = None):
    hidden_BxTxD, new_cache = self.backbone(input_ids, attention_mask, positions, cache, segment_ids=segment_ids,
                                            shared_mask=shared_mask)
    logits_BxTxV = self.unembed(hidden_BxTxD)
    out = (logits_BxTxV, hidden_BxTxD) if return_hidden else (logits_BxTxV,)
    if cache is not None:
      out = (*out, new_cache)
    return out if len(out) > 1 else out[0]

  def hidden_states(self, input_ids: Array, attention_mask: Array | None = None,
                    positions: Array | None = None, *, segment_ids: Array | None = None,
                    shared_mask: Array | None = None) -> Array:
    """Final-norm hidden states (B, T, D) in the compute dtype, without the LM head."""
    return self.backbone(input_ids, attention_mask, positions, None, segment_ids=segment_ids,
                         shared_mask=shared_mask)[0]

  def output_embedding(self) -> Array:
    """(D, V) LM-head matrix in the compute dtype (the transposed token embedding when tied).

    Raises for a `final_logit_softcap` model: logits are not hidden @ this matrix there (use `output_projection`,
    which also returns the cap, or `unembed`).
    """
    if self.config.final_logit_softcap is not None:
      raise ValueError(
          f"final_logit_softcap={self.config.final_logit_softcap}: the logits are cap * tanh((hidden @ W) / cap), "
          "so a projection by output_embedding() alone would skip the cap; use model.output_projection() (the "
          "matrix and the cap, as chunked log-probs take them) or model.unembed(hidden)")
    return self.output_projection()[0]

  def output_projection(self) -> tuple[Array, float | None]:
    """(W (D, V) in the compute dtype, final_logit_softcap or None): logits = cap * tanh((hidden @ W) / cap), or
    hidden @ W without a cap (`losses.logps.chunked_sequence_logps(..., logit_softcap=cap)` takes both)."""
    if self.config.tie_word_embeddings:
      return self.embed[...].astype(self.config.compute_dtype).T, self.config.final_logit_softcap
    return self.lm_head[...].astype(self.config.compute_dtype), self.config.final_logit_softcap

  def unembed(self, hidden_BxTxD: Array) -> Array:
    """Logits (B, T, V), accumulated and returned in float32 (soft-capped when final_logit_softcap is set)."""
    c = self.config
    if c.tie_word_embeddings:
      logits_BxTxV = jnp.einsum("btd,vd->btv", hidden_BxTxD, self.embed[...].astype(c.compute_dtype),
                                preferred_element_type=jnp.float32)
    else:
      logits_BxTxV = jnp.einsum("btd,dv->btv", hidden_BxTxD, self.lm_head[...].astype(c.compute_dtype),
                                preferred_element_type=jnp.float32)
    if c.final_logit_softcap is not None:
      logits_BxTxV = _softcap(logits_BxTxV, c.final_logit_softcap)
    return logits_BxTxV

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """Empty cache for `batch` sequences of up to `max_len` tokens (prompt + generated); dtype defaults to the
    compute dtype."""
    c = self.config
    shape = (c.num_layers, batch, c.num_kv_heads, max_len, c.head_dim)
    dtype = jnp.dtype(dtype or c.compute_dtype)
    return KVCache(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype),
                   mask=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))

  def prefill(self, input_ids_BxT: Array, attention_mask: Array | None, max_len: int, dtype: Any = None
              ) -> tuple[Array, KVCache]:
    """Final-norm hidden states (B, T, D) of a first chunk and a new cache of `max_len` slots holding it.

    The same as `backbone(ids, mask, None, init_cache(B, max_len, dtype))`, but the chunk attends only to itself
    (the cache-free attention, fused kernel included), not also to the empty slots of the cache.
    """
    T = input_ids_BxT.shape[-1]
    if T > max_len:
      raise ValueError(f"prefill of {T} tokens into a cache of max_len {max_len}")
    dtype = jnp.dtype(dtype or self.config.compute_dtype)
    hidden_BxTxD, new_kv, mask_BxT = self._forward(input_ids_BxT, attention_mask, None, None, prefill_dtype=dtype)
    pad = [(0, 0)] * 3 + [(0, max_len - T), (0, 0)]
    keys, values = (jnp.pad(a, pad) for a in new_kv)
    cache = KVCache(keys=keys, values=values, mask=jnp.pad(mask_BxT, [(0, 0), (0, max_len - T)]),
                    index=jnp.asarray(T, jnp.int32))
    return hidden_BxTxD, cache

  def backbone(self, input_ids_BxT: Array, attention_mask: Array | None = None, positions: Array | None = None,
               cache: KVCache | None = None, *, segment_ids: Array | None = None, shared_mask: Array | None = None
               ) -> tuple[Array, KVCache | None]:
    """Final-norm hidden states (B, T, D) and the updated cache (None without one), without the LM head.

    The cache-aware form of `hidden_states`: sampling prefills a prompt with it and unembeds only the last position.
    Token ids outside [0, V) are clamped (a pad id of -1 must not embed as NaN, which masking cannot undo).
    `segment_ids` (B, T) (1, 2, ... per packed example, 0 on padding) keeps packed examples from attending to
    each other; pass each example's own `positions` with it. Not supported with a cache.
    `shared_mask` (B, T) bool (with `segment_ids`) marks tokens every later segment of the row may attend to: a
    prompt shared by the responses packed after it (models.shared_prompt), still causal.
    """
    hidden_BxTxD, new_kv, mask_BxT = self._forward(input_ids_BxT, attention_mask, positions, cache,
                                                   segment_ids=segment_ids, shared_mask=shared_mask)
    new_cache = None
    if cache is not None:
      # One in-place write of every layer's new (L, B, K, T, H) entries at slot `index`.
      keys, values = (jax.lax.dynamic_update_slice(old, new, (0, 0, 0, cache.index, 0))
                      for old, new in zip((cache.keys, cache.values), new_kv))
      new_cache = cache.replace(keys=keys, values=values, index=cache.index + input_ids_BxT.shape[1],
                                mask=jax.lax.dynamic_update_slice(cache.mask, mask_BxT, (0, cache.index)))
    return hidden_BxTxD, new_cache

  # ---- internals
  def _forward(self, input_ids_BxT: Array, attention_mask: Array | None, positions: Array | None,
               cache: KVCache | None, *, segment_ids: Array | None = None, shared_mask: Array | None = None,
               prefill_dtype: Any = None) -> tuple[Array, tuple[Array, Array] | None, Array]:
    """(hidden (B, T, D), the new tokens' (L, B, K, T, H) keys and values or None, the (B, T) bool mask)."""
    c = self.config
    if input_ids_BxT.ndim != 2:
      raise ValueError(f"input_ids must be (B, T), got shape {input_ids_BxT.shape}")
    B, T = input_ids_BxT.shape
    mask_BxT = (jnp.ones((B, T), bool) if attention_mask is None else attention_mask.astype(bool))
    if mask_BxT.shape != (B, T):
      raise ValueError(f"attention_mask must have shape {(B, T)}, got {mask_BxT.shape}")

    if cache is None:
      q_slots_T = jnp.arange(T)
      kv_valid_BxS, kv_slots_S, index = mask_BxT, q_slots_T, None
      offset_B = None
    else:
      if cache.keys.shape[1] != B or T > cache.max_len:
        raise ValueError(
            f"cache holds batch {cache.keys.shape[1]} x max_len {cache.max_len}; got input_ids {(B, T)}")
      index = cache.index
      offset_B = jnp.sum(cache.mask, axis=-1, dtype=jnp.int32)
      # The cached block: slots filled by earlier calls (cache.mask is False on every slot >= index), the first
      # `readable` of them.
      kv_valid_BxS, kv_slots_S = cache.mask[:, :cache.readable], jnp.arange(cache.readable)
      q_slots_T = index + jnp.arange(T)
    if positions is None:
      positions = default_positions(mask_BxT, offset_B)
    if segment_ids is not None and (cache is not None or segment_ids.shape != (B, T)):
      raise ValueError(f"segment_ids must be (B, T) = {(B, T)} and used without a cache; got "
                       f"{segment_ids.shape}{' with a cache' if cache is not None else ''}")
    allowed_BxTxS = _allowed_mask(c, q_slots_T, kv_slots_S, kv_valid_BxS,  # built once, shared by all layers
                                  positions if segment_ids is not None else None)
    # With per-layer types the "full_attention" layers get a second mask without the window.
    full_allowed_BxTxS = None
    if c.layer_types is not None:
      full_allowed_BxTxS = _allowed_mask(c, q_slots_T, kv_slots_S, kv_valid_BxS, windowed=False)
    if cache is not None:
      # The new tokens' block: causal among themselves (slots index .. index + T - 1), their own mask.
      allowed_BxTxS = (allowed_BxTxS, _allowed_mask(c, q_slots_T, q_slots_T, mask_BxT))
      if full_allowed_BxTxS is not None:
        full_allowed_BxTxS = (full_allowed_BxTxS, _allowed_mask(c, q_slots_T, q_slots_T, mask_BxT, windowed=False))
    if segment_ids is not None:
      same_segment_BxTxS = segment_ids[:, :, None] == segment_ids[:, None, :]
      if shared_mask is not None:
        same_segment_BxTxS |= shared_mask.astype(bool)[:, None, :]
      allowed_BxTxS &= same_segment_BxTxS
      if full_allowed_BxTxS is not None:
        full_allowed_BxTxS &= same_segment_BxTxS
    elif shared_mask is not None:
      raise ValueError("shared_mask needs segment_ids (the segments that share the masked tokens)")
    elif (c.attention == "cudnn" and attention_mask is None and cache is None and c.sliding_window is None
          and c.layer_types is None):
      allowed_BxTxS = None  # unpadded causal: the fused kernel masks by itself, no (B, T, S) mask needed

    x_BxTxD = jnp.take(self.embed[...], input_ids_BxT, axis=0, mode="clip").astype(c.compute_dtype)
    if c.scale_embeddings:
      # sqrt(D) rounded to the parameter dtype first, as transformers' Gemma scaled embedding does.
      scale = jnp.asarray(np.float32(math.sqrt(c.embed_dim))).astype(c.params_dtype).astype(c.compute_dtype)
      x_BxTxD = x_BxTxD * scale
    rope = local_rope = None
    if c.position == "learned":
      x_BxTxD = x_BxTxD + jnp.take(self.pos_embed[...], positions, axis=0, mode="clip").astype(c.compute_dtype)
    else:
      rope = _rope_tables(c, positions)
      if c.local_rope_theta is not None:
        local_rope = _rope_tables(c, positions, local=True)

    kv = None if cache is None else (cache.keys, cache.values)
    x_BxTxD, new_kv = self._run_layers(x_BxTxD, rope, allowed_BxTxS, kv, local_rope, full_allowed_BxTxS,
                                       prefill_dtype, None if cache is None else cache.readable)
    hidden_BxTxD = _norm(c, x_BxTxD, self.final_norm_scale[...].astype(c.compute_dtype),
                         None if c.norm == "rmsnorm" else self.final_norm_bias[...].astype(c.compute_dtype))
    return hidden_BxTxD, new_kv, mask_BxT

  def _run_layers(self, x_BxTxD: Array, rope, allowed, kv_LxBxKxSxH: tuple[Array, Array] | None,
                  local_rope=None, full_allowed=None, prefill_dtype: Any = None, read_len: int | None = None
                  ) -> tuple[Array, tuple[Array, Array] | None]:
    """Applies the L layers: a scan over the stacked params (or an unrolled loop).

    With a cache (`kv_LxBxKxSxH`, read only; each layer reads its first `read_len` slots) each layer's slice is
    scanned with its parameters and the layers' new (B, K, T, H) keys and values come back stacked,
    (L, B, K, T, H), for one write by the caller; with `prefill_dtype` (no cache) too, in that dtype.
    With `config.layer_types`, each layer's "sliding" flag is scanned with its parameters and selects its mask
    (`allowed` windowed, `full_allowed` not; pairs of masks with a cache) and RoPE tables (`local_rope` when set,
    else `rope`).
    """
    c = self.config
    params = self.layers.arrays(c)
    lora_scale = None
    if self.lora is not None:  # Scanned with the layer weights: adapters are stacked on the same "layers" axis.
      params = {**params, **{f"lora_{name}": value for name, value in self.lora.arrays().items()}}
      lora_scale = self.lora_config.scale
    sliding_L = None if c.sliding_layers is None else np.asarray(c.sliding_layers)

    def body(x, xs):
      p, kv_layer, sliding = xs
      if kv_layer is not None and read_len is not None and read_len < kv_layer[0].shape[2]:
        # Sliced per layer, where the layer's (B, K, S, H) cache is taken from the stack: XLA:CPU copies only
        # these slots out of it (one slice of the whole stack would copy all L layers' slots every step).
        kv_layer = tuple(a[:, :, :read_len] for a in kv_layer)
      # Cast one layer at a time: mixed precision never holds a second full copy of the weights.
      p = {name: value.astype(c.compute_dtype) for name, value in p.items()}
      layer_rope, layer_allowed = rope, allowed
      if sliding is not None:
        layer_allowed = jax.tree.map(lambda a, b: jnp.where(sliding, a, b), allowed, full_allowed)
        if local_rope is not None:
          layer_rope = tuple(jnp.where(sliding, a, b) for a, b in zip(local_rope, rope))
      return _layer(c, p, x, layer_rope, layer_allowed, kv_layer, lora_scale, prefill_dtype)

    scan = c.uses_scan()
    if c.remat != "none":
      body = jax.checkpoint(body, policy=_REMAT_POLICIES[c.remat], prevent_cse=not scan)
    if scan:
      xs_sliding = None if sliding_L is None else jnp.asarray(sliding_L)
      return jax.lax.scan(body, x_BxTxD, (params, kv_LxBxKxSxH, xs_sliding))
    new_kv = []
    for layer in range(c.num_layers):
      sliding = None if sliding_L is None else bool(sliding_L[layer])
      layer_params, layer_cache = jax.tree.map(lambda a, i=layer: a[i], (params, kv_LxBxKxSxH))
      x_BxTxD, layer_kv = body(x_BxTxD, (layer_params, layer_cache, sliding))
      new_kv.append(layer_kv)
    if new_kv[0] is None:
      return x_BxTxD, None
    return x_BxTxD, tuple(jnp.stack(parts) for parts in zip(*new_kv))


class _AdaptersOff:
  """A LoRA CausalLM seen without its adapters: CausalLM's methods run on the wrapped model's attributes (the same
  variables, no copy) with `lora` = None. Not an nnx.Module: a read-only view for forward passes."""
  lora = None
  lora_config = None

  def __init__(self, model: CausalLM):
    self._model = model

  def __getattr__(self, name: str) -> Any:
    return getattr(self._model, name)

  __call__ = CausalLM.__call__
  backbone = CausalLM.backbone
  prefill = CausalLM.prefill
  _forward = CausalLM._forward
  hidden_states = CausalLM.hidden_states
  output_embedding = CausalLM.output_embedding
  output_projection = CausalLM.output_projection
  unembed = CausalLM.unembed
  init_cache = CausalLM.init_cache
  _run_layers = CausalLM._run_layers

  def without_adapters(self) -> "_AdaptersOff":
    return self


def abstract_model(config: ModelConfig, rngs_seed: int = 0) -> CausalLM:
  """CausalLM with jax.ShapeDtypeStruct leaves (no memory): the target for sharded init or checkpoint load."""
  return nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(rngs_seed)))


def init_model(config: ModelConfig, seed: int = 0, shardings: Any = None) -> CausalLM:
  """Random init under jit; with `shardings` (a pytree matching `nnx.state(model)`, e.g. NamedShardings from the
  logical axes) every parameter is created directly in its sharded layout, never whole on one device."""
  graphdef = nnx.graphdef(abstract_model(config, seed))
  init = jax.jit(lambda key: nnx.state(CausalLM(config, rngs=nnx.Rngs(key))), out_shardings=shardings)
  return nnx.merge(graphdef, init(jax.random.key(seed)))
