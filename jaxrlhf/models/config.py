"""ModelConfig: one frozen description of every supported decoder family.

The families differ only by switches (norm type, position encoding, MLP type, biases, tying, q/k norms, Gemma's
sandwich norms and soft-capping, per-layer sliding windows), so a single decoder implementation
(`jaxrlhf.models.decoder.CausalLM`) covers Llama 2/3.x, Mistral, SmolLM2, Phi-3 / Phi-4-mini (transformers' Phi3:
the Llama family with fused checkpoint tensors, partial rotation and LongRoPE), Qwen2, Qwen3, Gemma 1 / 2 / 3 (text)
and GPT-2. `ModelConfig.from_hf` / `ModelConfig.to_hf` convert to and from a transformers `config.json` dict.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

FAMILIES = ("llama", "qwen2", "gpt2", "qwen3", "gemma", "gemma2", "gemma3")
# transformers model_type -> our family. Mistral and SmolLM2 are Llama-family checkpoints; "gemma3_text" is the
# text-only Gemma 3 (Gemma3ForCausalLM).
HF_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "phi3": "llama", "qwen2": "qwen2", "gpt2": "gpt2",
                  "qwen3": "qwen3", "gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3"}
HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
# family -> the model_type `to_hf` writes when `hf_model_type` is unset.
_DEFAULT_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "gpt2": "gpt2", "qwen3": "qwen3", "gemma": "gemma",
                        "gemma2": "gemma2", "gemma3": "gemma3_text"}
LAYER_TYPES = ("full_attention", "sliding_attention")
NORMS = ("rmsnorm", "layernorm")
ACTIVATIONS = ("silu", "gelu_tanh", "gelu", "relu")
POSITION_KINDS = ("rope", "learned")
ROPE_TYPES = ("default", "linear", "llama3", "longrope")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("xla", "cudnn")

# transformers activation names -> ours. "gelu_new" is GPT-2's tanh approximation.
_HF_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}
_ACTIVATION_TO_HF = {"silu": "silu", "gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}

# What each transformers config class assumes for a key its config.json omits (the dataclass defaults of LlamaConfig,
# MistralConfig, Qwen2Config, Qwen3Config, Gemma2Config, Gemma3TextConfig in transformers 5). They differ by class:
# official Gemma config.json files omit tie_word_embeddings (tied), Qwen3 / Gemma fix head_dim instead of deriving
# it. None means derived: head_dim = hidden_size // num_attention_heads, num_key_value_heads = num_attention_heads.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(tie_word_embeddings=False, head_dim=None, num_key_value_heads=None, max_position_embeddings=2048,
                  sliding_window=None),
    "mistral": dict(tie_word_embeddings=False, head_dim=None, num_key_value_heads=8,
                    max_position_embeddings=131072, sliding_window=4096),
    "phi3": dict(tie_word_embeddings=False, head_dim=None, num_key_value_heads=None, max_position_embeddings=4096,
                 sliding_window=None),
    "qwen2": dict(tie_word_embeddings=False, head_dim=None, num_key_value_heads=32, max_position_embeddings=32768,
                  sliding_window=4096),
    "qwen3": dict(tie_word_embeddings=False, head_dim=128, num_key_value_heads=32, max_position_embeddings=32768,
                  sliding_window=4096),
    "gemma": dict(tie_word_embeddings=True, head_dim=256, num_key_value_heads=16, max_position_embeddings=8192,
                  sliding_window=None),
    "gemma2": dict(tie_word_embeddings=True, head_dim=256, num_key_value_heads=4, max_position_embeddings=8192,
                   sliding_window=4096),
    "gemma3_text": dict(tie_word_embeddings=True, head_dim=256, num_key_value_heads=4, max_position_embeddings=131072,
                        sliding_window=4096),
}

# Switches each transformers architecture fixes: `from_hf` sets them, `to_hf` refuses a config that differs (the
# exported checkpoint would compute something else in transformers). The switches absent from a family's entry
# must keep their defaults there (`_SWITCH_DEFAULTS`).
_SWITCH_DEFAULTS = dict(qk_norm=False, norm_plus_one=False, post_norms=False, scale_embeddings=False,
                        query_pre_attn_scalar=None, attn_logit_softcap=None, final_logit_softcap=None,
                        layer_types=None, local_rope_theta=None)
_GEMMA_SWITCHES = dict(norm="rmsnorm", position="rope", gated_mlp=True, mlp_bias=False, norm_plus_one=True,
                       post_norms=True, scale_embeddings=True)
_FAMILY_SWITCHES: dict[str, dict[str, Any]] = {
    "qwen3": dict(norm="rmsnorm", position="rope", gated_mlp=True, mlp_bias=False, qk_norm=True),
    # Gemma 1: Gemma's embedding scale and 1 + w norms, but one norm per sublayer (no post-norms), no soft-caps.
    "gemma": dict(_GEMMA_SWITCHES, post_norms=False),
    "gemma2": dict(_GEMMA_SWITCHES, qk_norm=False, local_rope_theta=None),
    "gemma3": dict(_GEMMA_SWITCHES, qk_norm=True, attn_logit_softcap=None),
}
# Settings each transformers architecture hard-codes, by model_type (verified in transformers 5's modeling code):
# Llama / Mistral / Qwen2 use RMSNorm, RoPE and a gated MLP and have no per-layer window (Mistral's window covers
# every layer; Qwen2 is exported with use_sliding_window=False); Mistral has no biases at all; Qwen2 has q/k/v
# biases only; GPT-2 has LayerNorm, learned positions, a plain MLP and biases everywhere.
_RMS_ROPE_GATED = dict(norm="rmsnorm", position="rope", gated_mlp=True)
_MODEL_TYPE_FIXED: dict[str, dict[str, Any]] = {
    "llama": dict(_RMS_ROPE_GATED, sliding_window=None),
    "mistral": dict(_RMS_ROPE_GATED, qkv_bias=False, out_bias=False, mlp_bias=False),
    # Phi-3 / Phi-4-mini: fused qkv_proj and gate_up_proj without biases, a window on every layer if any.
    "phi3": dict(_RMS_ROPE_GATED, qkv_bias=False, out_bias=False, mlp_bias=False),
    "qwen2": dict(_RMS_ROPE_GATED, qkv_bias=True, out_bias=False, mlp_bias=False, sliding_window=None),
    "gpt2": dict(norm="layernorm", position="learned", gated_mlp=False, qkv_bias=True, out_bias=True, mlp_bias=True,
                 sliding_window=None),
    "gemma": dict(sliding_window=None),  # GemmaAttention has no window
}
# Switches a family may set freely (read from and written to its config.json).
_FAMILY_FREE = {
    "qwen3": ("layer_types",),
    "gemma2": ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap", "layer_types"),
    "gemma3": ("query_pre_attn_scalar", "final_logit_softcap", "layer_types", "local_rope_theta"),
}


def _choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not supported; expected one of {list(choices)}")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling (transformers' `rope_scaling` / `rope_parameters`).

  rope_type "linear" divides every frequency by `factor`; "llama3" divides low frequencies by `factor`, keeps
  high frequencies and interpolates in between (Llama 3.1 recipe, wavelengths measured against
  `original_max_position_embeddings` tokens). "longrope" (Phi-3 128k, Phi-3.5, Phi-4-mini) divides frequency i by
  `short_factor[i]`, or by `long_factor[i]` in a forward pass whose largest position reaches
  `original_max_position_embeddings` (as transformers decides it, per call, over the whole batch), and scales
  cos and sin by `attention_factor`. A KV-cache generation that crosses that length keeps the keys it cached with
  the short factors and rotates the new ones with the long factors; transformers' Phi3 `generate` instead
  recomputes the whole cache with the long factors at the crossing step (a generation entirely on one side
  decodes the same tokens; tests/models/test_phi3.py).
  """
  rope_type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192
  short_factor: tuple[float, ...] | None = None
  long_factor: tuple[float, ...] | None = None
  attention_factor: float = 1.0

  def __post_init__(self):
    _choice("rope_scaling.rope_type", self.rope_type, ROPE_TYPES)
    if self.factor <= 0:
      raise ValueError(f"rope_scaling.factor must be > 0, got {self.factor}")
    for name in ("short_factor", "long_factor"):  # lists from JSON: tuples keep the config hashable
      value = getattr(self, name)
      if value is not None:
        object.__setattr__(self, name, tuple(float(v) for v in value))
    if self.rope_type == "longrope":
      if self.short_factor is None or self.long_factor is None or len(self.short_factor) != len(self.long_factor):
        raise ValueError("rope_scaling: rope_type 'longrope' needs short_factor and long_factor of equal length "
                         f"(one per rotated frequency), got {self.short_factor!r} and {self.long_factor!r}")
      if not all(v > 0 for v in self.short_factor + self.long_factor) or not self.attention_factor > 0:
        raise ValueError("rope_scaling: longrope factors and attention_factor must be > 0")
    elif self.short_factor is not None or self.long_factor is not None or self.attention_factor != 1.0:
      raise ValueError(f"rope_scaling: short_factor, long_factor and attention_factor belong to rope_type "
                       f"'longrope', not {self.rope_type!r}")
    if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
      raise ValueError(
          "rope_scaling.high_freq_factor must exceed low_freq_factor for rope_type 'llama3', got "
          f"{self.high_freq_factor} <= {self.low_freq_factor}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and numerics of a decoder-only LM.

  Attributes:
    family: "llama" (also Mistral, SmolLM2, Phi-3), "qwen2", "gpt2", "qwen3", "gemma" (Gemma 1), "gemma2" or "gemma3"
      (text-only Gemma 3).
    vocab_size, embed_dim, num_layers, num_heads, num_kv_heads, head_dim, mlp_dim: sizes (V, D, L, N, K, H, F).
    max_position_embeddings: length of the learned position table (GPT-2) / nominal context.
    norm: "rmsnorm" or "layernorm"; norm_eps its epsilon.
    activation: MLP nonlinearity; gated_mlp=True is SwiGLU-style down(act(gate(x)) * up(x)), False is
      fc -> act -> proj (GPT-2).
    position: "rope" or "learned".
    rope_theta, rope_scaling: RoPE base and optional frequency scaling.
    rotary_dim: how many leading dimensions of each head RoPE rotates (transformers' partial_rotary_factor *
      head_dim; Phi-4-mini rotates 96 of 128); None: all of them.
    qkv_bias, out_bias, mlp_bias: biases on q/k/v projections, attention output, and MLP projections.
    tie_word_embeddings: LM head reuses the token embedding matrix.
    sliding_window: Mistral-style window in tokens (keys more than `sliding_window - 1` slots back are masked).
    layer_types: None (every layer alike: windowed iff `sliding_window` is set) or one entry per layer,
      "full_attention" or "sliding_attention" (Gemma 2 alternates them, Gemma 3 has one global layer in six).
    local_rope_theta: RoPE base of the "sliding_attention" layers, which then use no rope_scaling (Gemma 3);
      rope_theta / rope_scaling apply to the "full_attention" layers. None: every layer uses rope_theta.
    qk_norm: RMSNorm over head_dim on each query and key head, before RoPE (Qwen3, Gemma 3).
    norm_plus_one: RMSNorm scales by (1 + weight) in float32 before casting back (Gemma); the stored weights are
      transformers' (zero at init).
    post_norms: Gemma's sandwich norms: the attention output and the MLP output are normalized before their
      residual adds (post_attn_norm_scale, post_mlp_norm_scale); mlp_norm_scale is the pre-feedforward norm.
    scale_embeddings: token embeddings are multiplied by sqrt(embed_dim) (rounded to param_dtype) (Gemma).
    query_pre_attn_scalar: attention scores are scaled by query_pre_attn_scalar ** -0.5 instead of
      head_dim ** -0.5 (Gemma).
    attn_logit_softcap, final_logit_softcap: cap * tanh(x / cap) on the scaled attention scores (before the
      mask) and on the LM logits (Gemma 2); None: no capping.
    dtype: computation dtype; param_dtype: storage dtype of the parameters.
    scan_layers: run the stacked layers with `jax.lax.scan` (True: one compiled layer body) or a Python loop (False:
      the layers unrolled into one program); None (the default) picks per backend when the model is traced
      (`uses_scan`): unrolled on GPUs, where it measured faster and leaner (H200, 1.24B bf16: reward-model step
      0.465 -> 0.383 s, peak 99.9 -> 53.5 GiB, compile 11.5 -> 13.4 s), scanned elsewhere (XLA:CPU: SmolLM2-135M
      reward-model step 2.40 s scanned vs 8.56 s unrolled, decode 2.4x slower unrolled; TPU: not measured, scan
      keeps compile time flat in depth). docs/performance.md has the runs.
    remat: "none", "full" (recompute the whole layer), "dots" or "dots_no_batch" (save matmul outputs).
    attention: "xla" (einsum with fp32 scores; every backend) or "cudnn" (`jax.nn.dot_product_attention`'s fused
      cuDNN flash attention; NVIDIA GPUs, bf16/fp16 compute). The KV-cache path always uses "xla".
    hf_model_type: transformers model_type written back by `to_hf` ("mistral" for Mistral checkpoints).
    bos_token_id, eos_token_id, pad_token_id: kept for a faithful `to_hf` round trip.
  """
  family: str = "llama"
  vocab_size: int = 256
  embed_dim: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 4
  head_dim: int = 16
  mlp_dim: int = 128
  max_position_embeddings: int = 2048
  norm: str = "rmsnorm"
  norm_eps: float = 1e-6
  activation: str = "silu"
  gated_mlp: bool = True
  position: str = "rope"
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rotary_dim: int | None = None
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  tie_word_embeddings: bool = False
  sliding_window: int | None = None
  layer_types: tuple[str, ...] | None = None
  local_rope_theta: float | None = None
  qk_norm: bool = False
  norm_plus_one: bool = False
  post_norms: bool = False
  scale_embeddings: bool = False
  query_pre_attn_scalar: float | None = None
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  initializer_range: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool | None = None
  remat: str = "none"
  attention: str = "xla"
  hf_model_type: str | None = None
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None

  def __post_init__(self):
    _choice("family", self.family, FAMILIES)
    _choice("norm", self.norm, NORMS)
    _choice("activation", self.activation, ACTIVATIONS)
    _choice("position", self.position, POSITION_KINDS)
    _choice("remat", self.remat, REMAT_POLICIES)
    _choice("attention", self.attention, ATTENTION_IMPLS)
    _choice("dtype", self.dtype, DTYPES)
    _choice("param_dtype", self.param_dtype, DTYPES)
    for name in ("vocab_size", "embed_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                 "max_position_embeddings"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    if self.position == "rope" and self.head_dim % 2:
      raise ValueError(f"head_dim must be even for rope, got {self.head_dim}")
    if self.rotary_dim is not None and (self.position != "rope" or self.rotary_dim % 2
                                        or not 0 < self.rotary_dim <= self.head_dim):
      raise ValueError(f"rotary_dim={self.rotary_dim}: expected an even number in (0, head_dim={self.head_dim}] "
                       "with position='rope', or None")
    if self.longrope and 2 * len(self.rope_scaling.short_factor) != self.rope_dim:
      raise ValueError(f"rope_scaling: longrope has {len(self.rope_scaling.short_factor)} factors; expected one per "
                       f"rotated frequency, {self.rope_dim // 2} (rotary_dim or head_dim over 2)")
    if self.sliding_window is not None and self.sliding_window <= 0:
      raise ValueError(f"sliding_window must be > 0 or None, got {self.sliding_window}")
    if self.hf_model_type is not None and HF_MODEL_TYPES.get(self.hf_model_type) != self.family:
      raise ValueError(
          f"hf_model_type={self.hf_model_type!r} does not belong to family={self.family!r}; expected one of "
          f"{[k for k, v in HF_MODEL_TYPES.items() if v == self.family]}")
    if self.scan_layers is not None and not isinstance(self.scan_layers, bool):
      raise ValueError(f"scan_layers must be True, False or None (the backend's default), got {self.scan_layers!r}")
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    self._check_family_switches()

  def _check_family_switches(self) -> None:
    """Validates the Qwen3 / Gemma switches (layer types, norms, soft-caps, attention scale)."""
    if self.layer_types is not None:
      object.__setattr__(self, "layer_types", tuple(self.layer_types))
      if len(self.layer_types) != self.num_layers:
        raise ValueError(f"layer_types has {len(self.layer_types)} entries; expected num_layers={self.num_layers}")
      for layer_type in self.layer_types:
        _choice("layer_types[]", layer_type, LAYER_TYPES)
      if "sliding_attention" in self.layer_types and self.sliding_window is None:
        raise ValueError("layer_types has 'sliding_attention' layers but sliding_window is None")
    if self.local_rope_theta is not None:
      if self.layer_types is None or self.position != "rope":
        raise ValueError("local_rope_theta needs position='rope' and layer_types (it applies to the "
                         "'sliding_attention' layers)")
      if self.local_rope_theta <= 0:
        raise ValueError(f"local_rope_theta must be > 0, got {self.local_rope_theta}")
    for name in ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0 or None, got {value}")
    if (self.qk_norm or self.norm_plus_one) and self.norm != "rmsnorm":
      raise ValueError(f"qk_norm and norm_plus_one need norm='rmsnorm', got norm={self.norm!r}")
    if self.attn_logit_softcap is not None and self.attention == "cudnn":
      raise ValueError("attn_logit_softcap is not supported with attention='cudnn' (the fused kernel has no "
                       "soft-cap); expected attention='xla'")

  def uses_scan(self, backend: str | None = None) -> bool:
    """Whether the layers run as a `jax.lax.scan`: `scan_layers`, or for None the backend's rule (False on "gpu",
    True on "cpu" / "tpu"); `backend` defaults to `jax.default_backend()`."""
    if self.scan_layers is not None:
      return bool(self.scan_layers)
    return (backend or jax.default_backend()) != "gpu"

  @property
  def rope_dim(self) -> int:
    """The head dimensions RoPE rotates (`rotary_dim`, or all of head_dim)."""
    return self.head_dim if self.rotary_dim is None else self.rotary_dim

  @property
  def longrope(self) -> bool:
    """Whether RoPE is scaled by LongRoPE (Phi-3's per-frequency short and long factors)."""
    return self.rope_scaling is not None and self.rope_scaling.rope_type == "longrope"

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def sliding_layers(self) -> tuple[bool, ...] | None:
    """Per-layer flags, True where the layer attends within `sliding_window`; None when every layer is alike."""
    if self.layer_types is None:
      return None
    return tuple(layer_type == "sliding_attention" for layer_type in self.layer_types)

  @property
  def num_groups(self) -> int:
    """Query heads per key/value head (G = N / K)."""
    return self.num_heads // self.num_kv_heads

  def replace(self, **changes: Any) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  # --------------------------------------------------------------------------------------------- HF conversion
  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """Builds a ModelConfig from a transformers config dict (LlamaConfig, MistralConfig, Qwen2Config, GPT2Config,
    Qwen3Config, Gemma2Config, Gemma3TextConfig).

    Args:
      hf: the parsed `config.json`.
      **overrides: ModelConfig fields to set on top (e.g. dtype="bfloat16", scan_layers=False).

    Raises:
      ValueError: naming the field, for an unsupported model_type, architecture, rope type, activation or
        attention variant.
    """
    model_type = hf.get("model_type")
    _choice("model_type", model_type, tuple(HF_MODEL_TYPES))
    architectures = hf.get("architectures") or []
    supported_archs = tuple(HF_ARCHITECTURES.values())
    for arch in architectures:
      _choice("architectures", arch, supported_archs)
    family = HF_MODEL_TYPES[model_type]
    if family == "gpt2":
      fields = _gpt2_fields(hf)
    elif family in _FAMILY_SWITCHES:
      fields = _switched_family_fields(hf, family)
    else:
      fields = _llama_like_fields(hf, model_type)
    fields.update(
        family=family,
        hf_model_type=model_type,
        initializer_range=float(hf.get("initializer_range", 0.02)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
    )
    fields.update(overrides)
    return cls(**fields)

  def to_hf(self) -> dict[str, Any]:
    """Returns a transformers config dict (loadable by AutoConfig / AutoModelForCausalLM)."""
    model_type = self.hf_model_type or _DEFAULT_MODEL_TYPES[self.family]
    self._check_exportable()
    eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
    out: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [HF_ARCHITECTURES[model_type]],
        "vocab_size": self.vocab_size,
        "initializer_range": self.initializer_range,
        "tie_word_embeddings": self.tie_word_embeddings,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": self.pad_token_id,
        "dtype": self.param_dtype,
    }
    if self.family == "gpt2":
      if self.head_dim * self.num_heads != self.embed_dim or self.num_kv_heads != self.num_heads:
        raise ValueError("gpt2 requires head_dim * num_heads == embed_dim and num_kv_heads == num_heads")
      out.update(
          n_embd=self.embed_dim, n_layer=self.num_layers, n_head=self.num_heads, n_inner=self.mlp_dim,
          n_positions=self.max_position_embeddings, layer_norm_epsilon=self.norm_eps,
          activation_function=_ACTIVATION_TO_HF[self.activation],
          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
      return out
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling is not None and self.rope_scaling.rope_type != "default":
      rope.update(rope_type=self.rope_scaling.rope_type, factor=self.rope_scaling.factor)
      if self.rope_scaling.rope_type == "llama3":
        rope.update(
            low_freq_factor=self.rope_scaling.low_freq_factor,
            high_freq_factor=self.rope_scaling.high_freq_factor,
            original_max_position_embeddings=self.rope_scaling.original_max_position_embeddings)
      elif self.rope_scaling.rope_type == "longrope":
        rope.update(
            short_factor=list(self.rope_scaling.short_factor), long_factor=list(self.rope_scaling.long_factor),
            attention_factor=self.rope_scaling.attention_factor,
            original_max_position_embeddings=self.rope_scaling.original_max_position_embeddings)
    if self.rotary_dim is not None:
      rope["partial_rotary_factor"] = self.rotary_dim / self.head_dim
    out.update(
        hidden_size=self.embed_dim, intermediate_size=self.mlp_dim, num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim,
        hidden_act=_ACTIVATION_TO_HF[self.activation], max_position_embeddings=self.max_position_embeddings,
        rms_norm_eps=self.norm_eps, rope_parameters=rope, attention_dropout=0.0)
    if model_type == "llama":
      out.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
    elif model_type == "mistral":
      out.update(sliding_window=self.sliding_window)
    elif model_type == "qwen2":
      out.update(use_sliding_window=False, sliding_window=None)
    elif model_type == "phi3":
      # Phi3Config prefers its own top-level original_max_position_embeddings over rope_parameters'.
      original = self.rope_scaling.original_max_position_embeddings if "original_max_position_embeddings" in rope \
          else self.max_position_embeddings
      out.update(sliding_window=self.sliding_window, original_max_position_embeddings=original,
                 resid_pdrop=0.0, embd_pdrop=0.0)
    elif self.family in _FAMILY_SWITCHES:
      _switched_family_to_hf(self, out, rope)
    return out

  def _check_exportable(self) -> None:
    """Raises unless transformers' class for this family (and `hf_model_type`) computes what this config computes:
    every setting that class hard-codes must have its value here, as the exported config.json cannot carry it."""
    model_type = self.hf_model_type or _DEFAULT_MODEL_TYPES[self.family]
    fixed = dict(_SWITCH_DEFAULTS)
    for name in _FAMILY_FREE.get(self.family, ()):
      del fixed[name]
    fixed.update(_FAMILY_SWITCHES.get(self.family, {}))
    fixed.update(_MODEL_TYPE_FIXED.get(model_type, {}))
    target = (f"family {self.family!r}" if model_type == _DEFAULT_MODEL_TYPES[self.family]
              else f"hf_model_type {model_type!r}")
    for name, value in fixed.items():
      if getattr(self, name) != value:
        raise ValueError(f"{name}={getattr(self, name)!r} cannot be exported as {target} "
                         f"(transformers' {HF_ARCHITECTURES[model_type]} fixes {value!r})")
    # Partial rotation and LongRoPE: transformers' Phi3 applies them; its Llama-like classes would not.
    if model_type != "phi3" and self.rotary_dim is not None and self.rotary_dim != self.head_dim:
      raise ValueError(f"rotary_dim={self.rotary_dim} cannot be exported as {target} (transformers' "
                       f"{HF_ARCHITECTURES[model_type]} rotates all of head_dim); hf_model_type 'phi3' does")
    if model_type != "phi3" and self.longrope:
      raise ValueError(f"rope_scaling 'longrope' cannot be exported as {target}; hf_model_type 'phi3' has it")
    if model_type == "phi3" and self.rope_scaling is not None and self.rope_scaling.rope_type not in (
        "default", "longrope"):
      raise ValueError(f"rope_scaling {self.rope_scaling.rope_type!r} cannot be exported as {target} (Phi3Config "
                       "reads 'default' and 'longrope')")
    # Where the biases are not fixed, one attention_bias key sets q/k/v and o alike.
    if "qkv_bias" not in fixed and self.qkv_bias != self.out_bias:
      raise ValueError(f"qkv_bias={self.qkv_bias} and out_bias={self.out_bias} must be equal for {target} "
                       "(transformers' attention_bias sets both)")


def _rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
  """Reads RoPE theta and scaling from transformers 5 `rope_parameters` or legacy `rope_theta`/`rope_scaling`."""
  params = dict(hf.get("rope_parameters") or {})
  legacy = hf.get("rope_scaling") or {}
  if not params:
    params = dict(legacy)
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
  rope_type = params.get("rope_type", params.get("type", "default"))
  if hf.get("model_type") == "phi3" and rope_type in ("su", "yarn"):
    rope_type = "longrope"  # Phi3Config's reading of the early Phi-3 files' names for it
  _choice("rope_scaling.rope_type", rope_type, ROPE_TYPES)
  if rope_type == "longrope":
    if hf.get("model_type") != "phi3":
      raise ValueError(f"rope_scaling.rope_type='longrope' is supported for model_type 'phi3', not "
                       f"{hf.get('model_type')!r}")
    return theta, _longrope_from_hf(hf, params)
  if rope_type == "default":
    return theta, None
  kwargs = {"rope_type": rope_type, "factor": float(params["factor"])}
  if rope_type == "llama3":
    kwargs.update(
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]))
  return theta, RopeScaling(**kwargs)


def _longrope_from_hf(hf: Mapping[str, Any], params: Mapping[str, Any]) -> RopeScaling:
  """Phi-3's LongRoPE as transformers 5 reads it: Phi3Config's top-level original_max_position_embeddings (4096 by
  default) wins over the one in rope_parameters; `factor` defaults to max over original positions and the
  attention factor to sqrt(1 + ln(factor) / ln(original)) (1 when factor <= 1)."""
  for key in ("short_factor", "long_factor"):
    if not isinstance(params.get(key), (list, tuple)):
      raise ValueError(f"rope_scaling.{key}: rope_type 'longrope' needs a list of numbers, got {params.get(key)!r}")
  original = int(hf.get("original_max_position_embeddings", params.get("original_max_position_embeddings", 4096)))
  max_positions = int(hf.get("max_position_embeddings", _HF_DEFAULTS["phi3"]["max_position_embeddings"]))
  factor = float(params.get("factor") or max_positions / original)
  attention_factor = params.get("attention_factor")
  if attention_factor is None:
    attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
  return RopeScaling(rope_type="longrope", factor=factor, original_max_position_embeddings=original,
                     short_factor=params["short_factor"], long_factor=params["long_factor"],
                     attention_factor=float(attention_factor))


def _rotary_dim_from_hf(hf: Mapping[str, Any], head_dim: int) -> int | None:
  """transformers' partial_rotary_factor as a count of rotated head dimensions (Phi3's modeling alone applies it
  among our classes; the others would fail in transformers itself)."""
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  partial = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
  if partial == 1.0:
    return None
  if hf.get("model_type") != "phi3":
    raise ValueError(f"partial_rotary_factor={partial} is supported for model_type 'phi3', not "
                     f"{hf.get('model_type')!r}; expected 1.0")
  rotary_dim = int(head_dim * partial)  # transformers truncates the same way
  if not 0 < rotary_dim <= head_dim or rotary_dim % 2:
    raise ValueError(f"partial_rotary_factor={partial}: head_dim {head_dim} * factor = {rotary_dim}; expected an "
                     "even number of rotated dimensions in (0, head_dim]")
  return rotary_dim


def _activation_from_hf(name: str, value: Any) -> str:
  _choice(name, value, tuple(_HF_ACTIVATIONS))
  return _HF_ACTIVATIONS[value]


def _llama_like_fields(hf: Mapping[str, Any], model_type: str) -> dict[str, Any]:
  defaults = _HF_DEFAULTS[model_type]
  num_heads = int(hf["num_attention_heads"])
  embed_dim = int(hf["hidden_size"])
  # None (an explicit null, or a class that derives it): hidden_size // num_attention_heads.
  head_dim = hf.get("head_dim", defaults["head_dim"]) or embed_dim // num_heads
  theta, scaling = _rope_from_hf(hf)
  fields = dict(
      vocab_size=int(hf["vocab_size"]),
      embed_dim=embed_dim,
      num_layers=int(hf["num_hidden_layers"]),
      num_heads=num_heads,
      num_kv_heads=int(hf.get("num_key_value_heads", defaults["num_key_value_heads"]) or num_heads),
      head_dim=int(head_dim),
      mlp_dim=int(hf["intermediate_size"]),
      max_position_embeddings=int(hf.get("max_position_embeddings", defaults["max_position_embeddings"])),
      norm="rmsnorm",
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      activation=_activation_from_hf("hidden_act", hf.get("hidden_act", "silu")),
      gated_mlp=True,
      position="rope",
      rope_theta=theta,
      rope_scaling=scaling,
      rotary_dim=_rotary_dim_from_hf(hf, int(head_dim)),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", defaults["tie_word_embeddings"])),
  )
  if model_type == "qwen2":
    if hf.get("use_sliding_window", False):
      raise ValueError("use_sliding_window=True is not supported for qwen2; expected False")
    fields.update(qkv_bias=True, out_bias=False, mlp_bias=False)
  else:
    attention_bias = bool(hf.get("attention_bias", False))
    fields.update(qkv_bias=attention_bias, out_bias=attention_bias, mlp_bias=bool(hf.get("mlp_bias", False)))
  window = hf.get("sliding_window", defaults["sliding_window"])
  if model_type in ("mistral", "phi3") and window is not None:  # every layer windowed (Mistral: 4096 if omitted)
    fields["sliding_window"] = int(window)
  if model_type == "phi3":  # Phi3's fused projections have no biases, whatever the file says
    fields.update(qkv_bias=False, out_bias=False, mlp_bias=False)
  return fields


def _switched_family_fields(hf: Mapping[str, Any], family: str) -> dict[str, Any]:
  """Qwen3 / Gemma / Gemma 2 / Gemma 3 (text): the Llama-like fields plus the family's fixed switches and its own
  keys."""
  if hf.get("use_bidirectional_attention"):
    raise ValueError(f"use_bidirectional_attention=True is not supported for {family}; expected False")
  fields = _llama_like_fields(hf, hf["model_type"])
  fields.update(_FAMILY_SWITCHES[family])
  num_layers = fields["num_layers"]
  if family == "qwen3":
    # transformers drops the window unless use_sliding_window; then layers from max_window_layers on slide.
    window = hf.get("sliding_window", _HF_DEFAULTS["qwen3"]["sliding_window"])
    if hf.get("use_sliding_window", False) and window is not None:
      layer_types = hf.get("layer_types") or [
          "sliding_attention" if i >= int(hf.get("max_window_layers", 28)) else "full_attention"
          for i in range(num_layers)]
      if "sliding_attention" in layer_types:
        # Every layer windowed is the uniform (Mistral-style) case: no per-layer types needed.
        uniform = "full_attention" not in layer_types
        fields.update(sliding_window=int(window), layer_types=None if uniform else tuple(layer_types))
    return fields

  if family == "gemma":
    # GemmaConfig reads "gelu", the official files' legacy value, as the tanh approximation it always meant.
    act = hf.get("hidden_act", "gelu_pytorch_tanh")
    fields["activation"] = _activation_from_hf("hidden_act", "gelu_pytorch_tanh" if act == "gelu" else act)
    return fields
  activation_key = "hidden_activation" if hf.get("hidden_activation") is not None else "hidden_act"
  fields["activation"] = _activation_from_hf(activation_key, hf.get(activation_key, "gelu_pytorch_tanh"))
  fields["query_pre_attn_scalar"] = float(hf.get("query_pre_attn_scalar", 256))
  # Gemma 2 alternates local and global layers (local first); Gemma 3 makes every `sliding_window_pattern`-th
  # layer global (transformers' defaults when config.json lists no layer_types).
  pattern = 2 if family == "gemma2" else int(hf.get("sliding_window_pattern", 6))
  layer_types = hf.get("layer_types") or [
      "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)]
  sliding_window = hf.get("sliding_window", _HF_DEFAULTS[hf["model_type"]]["sliding_window"])
  fields.update(layer_types=tuple(layer_types), sliding_window=None if sliding_window is None else int(sliding_window))
  default_final_cap = 30.0 if family == "gemma2" else None
  fields["final_logit_softcap"] = _optional_float(hf.get("final_logit_softcapping", default_final_cap))
  if family == "gemma2":
    fields["attn_logit_softcap"] = _optional_float(hf.get("attn_logit_softcapping", 50.0))
  else:
    # transformers' Gemma3Attention never applies attn_logit_softcapping (Gemma 3 dropped it), so neither do we.
    fields["rope_theta"], fields["rope_scaling"], fields["local_rope_theta"] = _gemma3_rope_from_hf(hf)
  return fields


def _optional_float(value: Any) -> float | None:
  return None if value is None else float(value)


def _gemma3_rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None, float | None]:
  """(global theta, global scaling, local theta) from per-layer-type `rope_parameters` (transformers 5) or the
  legacy `rope_theta` / `rope_scaling` (global layers) and `rope_local_base_freq` (local layers)."""
  params = dict(hf.get("rope_parameters") or {})
  if "full_attention" in params or "sliding_attention" in params:
    full = dict(params.get("full_attention") or {})
    local = dict(params.get("sliding_attention") or {})
  else:
    full = params or dict(hf.get("rope_scaling") or {})
    local = {}
  full.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
  local.setdefault("rope_theta", hf.get("rope_local_base_freq", 10_000.0))
  theta, scaling = _rope_from_hf({"rope_parameters": full})
  if local == full:  # one RoPE for every layer (what `to_hf` writes for local_rope_theta=None)
    return theta, scaling, None
  local_type = local.get("rope_type", local.get("type", "default"))
  if local_type != "default":
    raise ValueError(f"rope_parameters.sliding_attention.rope_type={local_type!r} is not supported unless it "
                     "equals rope_parameters.full_attention; expected 'default'")
  return theta, scaling, float(local["rope_theta"])


def _switched_family_to_hf(config: ModelConfig, out: dict[str, Any], rope: dict[str, Any]) -> None:
  """Adds the Qwen3 / Gemma keys of `config` to the Llama-like `out` (in place)."""
  c = config
  if c.family == "gemma":
    out.update(attention_bias=c.qkv_bias,
               hidden_act="gelu_pytorch_tanh" if c.activation == "gelu_tanh" else _ACTIVATION_TO_HF[c.activation])
    return
  layer_types = list(c.layer_types or (["sliding_attention" if c.sliding_window else "full_attention"]
                                       * c.num_layers))
  out.update(attention_bias=c.qkv_bias, layer_types=layer_types, sliding_window=c.sliding_window)
  if c.family == "qwen3":
    out["use_sliding_window"] = c.sliding_window is not None
    return
  scalar = c.query_pre_attn_scalar if c.query_pre_attn_scalar is not None else c.head_dim
  if not float(scalar).is_integer():
    raise ValueError(f"query_pre_attn_scalar={scalar} cannot be exported: transformers' {c.family} config "
                     "expects an int")
  out.pop("hidden_act")
  out.update(hidden_activation="gelu_pytorch_tanh" if c.activation == "gelu_tanh" else _ACTIVATION_TO_HF[c.activation],
             query_pre_attn_scalar=int(scalar),
             final_logit_softcapping=c.final_logit_softcap, attn_logit_softcapping=c.attn_logit_softcap,
             use_bidirectional_attention=False)
  if c.family == "gemma3":
    local = rope if c.local_rope_theta is None else {"rope_type": "default", "rope_theta": c.local_rope_theta}
    out["rope_parameters"] = {"full_attention": rope, "sliding_attention": local}


def _gpt2_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
  for key, default in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                       ("add_cross_attention", False)):
    if hf.get(key, default) != default:
      raise ValueError(f"{key}={hf.get(key)!r} is not supported for gpt2; expected {default}")
  embed_dim = int(hf["n_embd"])
  num_heads = int(hf["n_head"])
  if embed_dim % num_heads:
    raise ValueError(f"n_embd={embed_dim} must be divisible by n_head={num_heads}")
  return dict(
      vocab_size=int(hf["vocab_size"]),
      embed_dim=embed_dim,
      num_layers=int(hf["n_layer"]),
      num_heads=num_heads,
      num_kv_heads=num_heads,
      head_dim=embed_dim // num_heads,
      mlp_dim=int(hf.get("n_inner") or 4 * embed_dim),
      max_position_embeddings=int(hf.get("n_positions", 1024)),
      norm="layernorm",
      norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
      activation=_activation_from_hf("activation_function", hf.get("activation_function", "gelu_new")),
      gated_mlp=False,
      position="learned",
      qkv_bias=True,
      out_bias=True,
      mlp_bias=True,
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
  )


def attention_scale(config: ModelConfig) -> float:
  """Softmax temperature: 1/sqrt(H), or query_pre_attn_scalar ** -0.5 where set (Gemma)."""
  if config.query_pre_attn_scalar is not None:
    return config.query_pre_attn_scalar ** -0.5
  return 1.0 / math.sqrt(config.head_dim)
