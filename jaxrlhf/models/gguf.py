"""GGUF import: a llama.cpp checkpoint as a transformers-style config and state dict.

`read_gguf` turns a `.gguf` file into `(hf_config, tensors)` in the naming and layout of a transformers checkpoint
(`LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `Gemma2ForCausalLM`, `Gemma3ForCausalLM`), so the one HF
loading path (`jaxrlhf.models.hf`) builds the model. Tensors are dequantized to float32 with the `gguf` package, and
what llama.cpp's converter (convert_hf_to_gguf.py) changed is undone: the q/k row permutation of "llama" files (so
that GGML's interleaved RoPE matches HF's rotate-half RoPE; Qwen2 / 3 and Gemma use rotate-half RoPE in GGML too, so
their rows are stored as is), the +1 added to every Gemma RMSNorm weight (GGML scales by the weight, Gemma by 1 + w),
and llama3 RoPE scaling (Llama 3.1 / 3.2), which the converter stores as per-frequency divisors in `rope_freqs.weight`
and which is read back as transformers' `rope_scaling` (`llama3_scaling_of`).
Settings GGUF does not store are llama.cpp's: Gemma's attention scale (head_dim, or hidden / heads for the 27B
models), Gemma 2's alternating windows, Gemma 3's one global layer in six and its local RoPE base 10000.
"""

from __future__ import annotations

import dataclasses
import mmap
import math
import os
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import gguf
import numpy as np

from jaxrlhf.models import errors
from jaxrlhf.models.config import ModelConfig, RopeScaling
from jaxrlhf.models.decoder import rope_inv_freq
from jaxrlhf.models.errors import ModelFileError

# Quantization types we dequantize (with `gguf`), each checked against hand-decoded blocks in the tests: the float
# types, the legacy 32-value blocks, the K-quants (Q2_K ... Q6_K, what the *_K_S / *_K_M / *_K_L files are made of)
# and the 4-bit non-uniform IQ4_NL / IQ4_XS. Others (the 1- to 3-bit IQ*, TQ*) would also dequantize with `gguf`, but
# they are unchecked here, so a file using them fails loudly instead of silently trusting an unchecked path.
SUPPORTED_TENSOR_TYPES = frozenset({
    gguf.GGMLQuantizationType.F32,
    gguf.GGMLQuantizationType.F16,
    gguf.GGMLQuantizationType.BF16,
    gguf.GGMLQuantizationType.Q8_0,
    gguf.GGMLQuantizationType.Q4_0,
    gguf.GGMLQuantizationType.Q4_1,
    gguf.GGMLQuantizationType.Q5_0,
    gguf.GGMLQuantizationType.Q5_1,
    gguf.GGMLQuantizationType.Q2_K,
    gguf.GGMLQuantizationType.Q3_K,
    gguf.GGMLQuantizationType.Q4_K,
    gguf.GGMLQuantizationType.Q5_K,
    gguf.GGMLQuantizationType.Q6_K,
    gguf.GGMLQuantizationType.IQ4_NL,
    gguf.GGMLQuantizationType.IQ4_XS,
})
SUPPORTED_ARCHITECTURES = ("llama", "phi3", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")
_GEMMA = ("gemma2", "gemma3")  # Gemma 2 / 3: sandwich norms, soft-caps, local layers
# Gemma files store every norm weight as 1 + w (llama.cpp's RMSNorm multiplies by the stored weight).
NORM_PLUS_ONE = ("gemma", "gemma2", "gemma3")
_HF_CLASSES = {"llama": ("llama", "LlamaForCausalLM"), "phi3": ("phi3", "Phi3ForCausalLM"),
               "qwen2": ("qwen2", "Qwen2ForCausalLM"),
               "qwen3": ("qwen3", "Qwen3ForCausalLM"),
               "gemma": ("gemma", "GemmaForCausalLM"), "gemma2": ("gemma2", "Gemma2ForCausalLM"),
               "gemma3": ("gemma3_text", "Gemma3ForCausalLM")}

# GGUF tensor name -> transformers name. `{i}` is the layer index.
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Phi-3's fused projections, kept fused by llama.cpp's converter (ffn_up holds gate then up, as its SwiGLU splits it).
_PHI3_TENSORS = {
    "attn_qkv.weight": "self_attn.qkv_proj.weight",
    "ffn_up.weight": "mlp.gate_up_proj.weight",
}
_PHI3_SPLIT = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "ffn_gate.weight")
# Phi-3's LongRoPE factors (one per rotated frequency), stored once as F32 vectors.
ROPE_FACTORS = {"long_factor": "rope_factors_long.weight", "short_factor": "rope_factors_short.weight"}
# Qwen2's q/k/v projection biases.
_QKV_BIAS_TENSORS = {
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
}
_QK_NORM_TENSORS = {
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
}
# Gemma's sandwich norms: llama.cpp's ffn_norm is the pre-feedforward norm there.
_GEMMA_NORM_TENSORS = {
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}


@errors.reads_file("GGUF file")
def read_gguf(path: str | os.PathLike) -> tuple[dict[str, Any], "GGUFTensors"]:
  """Reads a GGUF file of architecture llama, phi3, qwen2, qwen3, gemma, gemma2 or gemma3.

  Args:
    path: a `.gguf` file.

  Returns:
    `(hf_config, tensors)`: `hf_config` is a transformers config dict (config.json keys) of the matching class
    (`LlamaConfig`, `Phi3Config`, `Qwen3Config`, `Gemma2Config`, `Gemma3TextConfig`);
    `tensors` maps transformers parameter names (`model.embed_tokens.weight`,
    `model.layers.{i}.self_attn.q_proj.weight`, ...) to float32 arrays in torch `nn.Linear` layout
    (out_features, in_features), each read and dequantized when it is looked up (`GGUFTensors`).
    `lm_head.weight` is present only when the embeddings are untied.

  Raises:
    ModelFileError (a ValueError): a truncated or malformed file (checked against the file size before
      anything is read), unsupported `general.architecture`, unsupported quantization type, a missing,
      unexpected or misshapen tensor, or a missing metadata field; the message names the file and the field
      or tensor. All of it is checked here, before any tensor is dequantized.
  """
  header, hf_config = _header_and_config(path)
  gguf_tensors, arch = header.tensors, header.metadata["general.architecture"]
  expected_shapes = _expected_shapes(hf_config, arch)
  name_map = _hf_names(hf_config["num_hidden_layers"], arch)
  infos = {}
  for gguf_name, hf_name in name_map.items():
    if gguf_name not in gguf_tensors:
      if hf_name == "lm_head.weight":
        continue  # Tied embeddings: no separate output matrix.
      raise ValueError(f"GGUF file {os.fspath(path)!r} is missing tensor {gguf_name!r} ({hf_name})")
    info = gguf_tensors[gguf_name]
    if info.shape != expected_shapes[hf_name]:
      raise ValueError(
          f"GGUF tensor {gguf_name!r} ({hf_name}) has shape {info.shape}, expected {expected_shapes[hf_name]}")
    _check_tensor_type(info)
    infos[hf_name] = info
  return hf_config, GGUFTensors(path, infos, arch, hf_config)


class GGUFTensors(Mapping[str, np.ndarray]):
  """A GGUF file's model tensors by transformers name, read when looked up: each lookup memory-maps the tensor's
  bytes, dequantizes them to float32 and undoes what llama.cpp's converter changed (the q/k row permutation of
  llama files, Gemma's 1 + w norms). Nothing is cached, so building a model holds one dequantized tensor at a time
  beside the parameters (a Q4 file's float32 weights are ~8x its size; holding them all at once needed that much
  host memory). `read_gguf` has validated every name, shape and type, so a lookup fails only on I/O."""

  def __init__(self, path: str | os.PathLike, infos: dict[str, TensorInfo], arch: str, hf_config: dict[str, Any]):
    self.path, self._infos, self._arch = path, infos, arch
    self._num_heads, self._num_kv_heads = hf_config["num_attention_heads"], hf_config["num_key_value_heads"]

  def __getitem__(self, hf_name: str) -> np.ndarray:
    info = self._infos[hf_name]
    with errors.reading(self.path, f"GGUF tensor {info.name!r}"):
      weight = read_tensor(self.path, info)
    if self._arch == "llama" and hf_name.endswith("q_proj.weight"):
      weight = reverse_permute_qk(weight, self._num_heads)
    elif self._arch == "llama" and hf_name.endswith("k_proj.weight"):
      weight = reverse_permute_qk(weight, self._num_kv_heads)
    elif self._arch in NORM_PLUS_ONE and hf_name.endswith("norm.weight"):
      weight = weight - np.float32(1.0)  # llama.cpp stored 1 + w (exact for stored values in [0.5, 2])
    return weight

  def __iter__(self) -> Iterator[str]:
    return iter(self._infos)

  def __len__(self) -> int:
    return len(self._infos)


ROPE_FREQS = "rope_freqs.weight"
# The llama3 parameters every Llama 3.1 / 3.2 checkpoint uses (and llama.cpp's converter defaults to).
_LLAMA3_DEFAULTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def llama3_rope_factors(head_dim: int, theta: float, scaling: dict[str, Any]) -> np.ndarray:
  """float64 (head_dim / 2,) divisors of each RoPE frequency under llama3 scaling, as llama.cpp's converter writes
  them into `rope_freqs.weight` (GGML divides frequency i by factor i): 1 for wavelengths shorter than
  original_max_position_embeddings / high_freq_factor, `factor` beyond original / low_freq_factor, and
  1 / ((1 - s) / factor + s) in between, s = (original / wavelength - low) / (high - low): the model's own
  unscaled over scaled frequencies (`decoder.rope_inv_freq`, float32)."""
  base = ModelConfig(head_dim=head_dim, rope_theta=theta)
  scaled = base.replace(rope_scaling=RopeScaling(**{"rope_type": "llama3", **scaling}))
  return rope_inv_freq(base).astype(np.float64) / rope_inv_freq(scaled)


def llama3_scaling_of(factors: np.ndarray, head_dim: int, theta: float) -> dict[str, Any] | None:
  """The transformers `rope_scaling` (rope_type "llama3") whose `llama3_rope_factors` equal `factors` (float
  (head_dim / 2,), a file's `rope_freqs.weight`) to float32 precision; {} where every factor is 1 (no scaling); None
  where no llama3 parameters reproduce them.

  llama.cpp stores the factors, not the parameters. The factors depend only on `factor` and the two wavelength
  bounds H = original / high and L = original / low, so Llama 3's own parameters (low 1, high 4, original 8192) are
  tried first, then H and L recovered from the factors (low = 1 where an integer original length then reproduces
  them): a file converted with other parameters loads as equivalent ones (the same RoPE frequencies, so the same
  model)."""
  f = np.asarray(factors, np.float64)
  if np.all(f == 1.0):
    return {}
  factor = float(np.float32(f.max()))
  candidates = [dict(_LLAMA3_DEFAULTS)]
  bounds = _llama3_wavelength_bounds(f, factor, head_dim, theta)
  if bounds is not None:
    high_wl, low_wl = (float(x) for x in bounds)
    # original_max_position_embeddings is an integer (transformers and ModelConfig read it so): round numbers with
    # low = 1 first, where they still reproduce the factors; else low = original / L keeps the bounds exact.
    old_len = max(1, round(low_wl))
    candidates += [{"low_freq_factor": 1.0, "high_freq_factor": high, "original_max_position_embeddings": old_len}
                   for high in (round(old_len / high_wl, 6), old_len / high_wl)]
    candidates.append({"low_freq_factor": old_len / low_wl, "high_freq_factor": old_len / high_wl,
                       "original_max_position_embeddings": old_len})
  for params in candidates:
    scaling = {"rope_type": "llama3", "factor": factor, **params}
    if scaling["high_freq_factor"] > scaling["low_freq_factor"] and np.allclose(
        llama3_rope_factors(head_dim, theta, scaling), f, rtol=1e-5, atol=0):
      return scaling
  return None


def _llama3_wavelength_bounds(f: np.ndarray, factor: float, head_dim: int,
                              theta: float) -> tuple[float, float] | None:
  """(H, L): wavelength bounds of llama3 scaling that put each frequency in the region its factor says (1 below H,
  `factor` above L, the interpolated band between) and give the band's factors; None where the factors are not of
  that shape. In the band 1 / wavelength = s / H + (1 - s) / L with s = (1 / f - 1 / factor) / (1 - 1 / factor):
  two or more band frequencies fix H and L (a line through them); one fixes a curve of (H, L) pairs, searched for a
  pair inside the gaps; none leaves any H < L inside the gap between the last 1 and the first `factor`."""
  inv_freq = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
  wavelen = 2 * np.pi / inv_freq.astype(np.float64)  # increasing with the index
  ones, full = np.isclose(f, 1.0, rtol=1e-6), np.isclose(f, factor, rtol=1e-6)
  band = ~ones & ~full
  region = np.where(ones, 0, np.where(band, 1, 2))
  if factor <= 1.0 or np.any(np.diff(region) < 0):
    return None
  below = wavelen[ones].max() if ones.any() else 0.0  # H must exceed it
  above = wavelen[full].min() if full.any() else np.inf  # L must stay under it
  if band.sum() >= 2:
    smooth = (1.0 / f[band] - 1.0 / factor) / (1.0 - 1.0 / factor)
    # 1 / wl = (1 / H - 1 / L) s + 1 / L: a line in s.
    slope, intercept = np.polyfit(smooth, 1.0 / wavelen[band], 1)
    if intercept <= 0 or slope + intercept <= 0:
      return None
    return 1.0 / (slope + intercept), 1.0 / intercept
  if band.sum() == 1:
    wl, s = wavelen[band][0], (1.0 / f[band][0] - 1.0 / factor) / (1.0 - 1.0 / factor)
    top = above if np.isfinite(above) else 4 * wl
    for low_wl in np.geomspace(wl, top, 66)[1:-1]:
      denominator = 1.0 / wl - (1.0 - s) / low_wl
      if denominator > 0 and below < s / denominator <= wl:
        return s / denominator, low_wl
    return None
  if not (below > 0 and np.isfinite(above)):
    return None
  ratio = above / below
  return below * ratio ** (1 / 3), below * ratio ** (2 / 3)


def _read_rope_freqs(path: str | os.PathLike, hf_config: dict[str, Any], info: Any, arch: str) -> None:
  """Sets `hf_config["rope_scaling"]` from a llama file's `rope_freqs.weight` (llama.cpp's precomputed llama3 RoPE
  factors); a file whose factors are not llama3 scaling is refused: ignoring them would change every attention
  score."""
  if arch != "llama":
    raise ModelFileError(path, f"tensor {ROPE_FREQS!r} in a {arch} file: llama.cpp writes it for llama files only")
  if "rope_scaling" in hf_config:
    raise ModelFileError(path, f"tensor {ROPE_FREQS!r} and {arch}.rope.scaling.type "
                         f"{hf_config['rope_scaling']['rope_type']!r} both scale RoPE; expected one")
  half = hf_config["head_dim"] // 2
  if info.shape != (half,):
    raise ModelFileError(path, f"tensor {ROPE_FREQS!r} has shape {info.shape}, expected ({half},) (one factor per "
                         "RoPE frequency)")
  factors = read_tensor(path, info)
  scaling = llama3_scaling_of(factors, hf_config["head_dim"], hf_config["rope_theta"])
  if scaling is None:
    raise ModelFileError(path, f"tensor {ROPE_FREQS!r} holds RoPE factors that follow no llama3 scaling (factor, "
                         "low / high frequency factors, original context length); other per-frequency factors are "
                         f"not supported (first values {np.round(factors[:4], 4).tolist()})")
  if scaling:
    hf_config["rope_scaling"] = scaling


@errors.reads_file("GGUF file")
def read_gguf_config(path: str | os.PathLike) -> dict[str, Any]:
  """`read_gguf`'s transformers config dict alone (the header and, for llama3 scaling, the small rope_freqs tensor
  are read; no weights)."""
  return _header_and_config(path)[1]


def _header_and_config(path: str | os.PathLike) -> tuple[Header, dict[str, Any]]:
  """The header and the transformers config it describes; ValueError for tensors the architecture has no place
  for."""
  header = read_header(path)
  metadata, gguf_tensors = header.metadata, header.tensors
  hf_config = gguf_hf_config(metadata, tensor_names=set(gguf_tensors))
  _check_layer_count(path, hf_config["num_hidden_layers"], len(gguf_tensors))
  arch = metadata["general.architecture"]
  unexpected = sorted(set(gguf_tensors) - set(_hf_names(hf_config["num_hidden_layers"], arch)) - {ROPE_FREQS}
                      - set(ROPE_FACTORS.values()))
  if ROPE_FREQS in gguf_tensors:
    _read_rope_freqs(path, hf_config, gguf_tensors[ROPE_FREQS], arch)
  _read_longrope_factors(path, hf_config, header)
  if unexpected:
    raise ValueError(f"unexpected GGUF tensors for a {arch} model: {unexpected}")
  return header, hf_config


def reverse_permute_qk(weight_OxI: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's `permute` of q_proj / k_proj rows.

  llama.cpp's converter reorders each head's rows from HF's [first half | second half] rotary layout to
  GGML's interleaved pairs: `w.reshape(N, 2, H/2, I).swapaxes(1, 2)`. This is its inverse.

  Args:
    weight_OxI: (num_heads * head_dim, in_features) projection weight as stored in the GGUF.
    num_heads: attention heads for q_proj, key/value heads for k_proj.

  Returns:
    The weight in transformers layout, same shape.
  """
  out_features = weight_OxI.shape[0]
  if out_features % (2 * num_heads):
    raise ValueError(f"weight rows {out_features} are not divisible by 2 * num_heads = {2 * num_heads}")
  half_head_dim = out_features // num_heads // 2
  w = weight_OxI.reshape(num_heads, half_head_dim, 2, *weight_OxI.shape[1:])
  return np.ascontiguousarray(w.swapaxes(1, 2).reshape(weight_OxI.shape))


def gguf_hf_config(metadata: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
  """Builds a transformers config dict from GGUF metadata.

  Args:
    metadata: GGUF key -> value (as returned by `read_metadata`).
    tensor_names: names of the tensors in the file (decides `tie_word_embeddings`).

  Returns:
    A config.json-style dict with `model_type` "llama", "qwen2", "qwen3", "gemma", "gemma2" or "gemma3_text".
  """
  arch = metadata.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(
        f"unsupported GGUF general.architecture {arch!r}; supported: {list(SUPPORTED_ARCHITECTURES)}")

  def field(key: str, kind: type = int, default: Any = _REQUIRED) -> Any:
    return _number(metadata, f"{arch}.{key}", kind, default)

  hidden_size = field("embedding_length")
  num_heads = field("attention.head_count")
  if num_heads < 1:
    raise ValueError(f"GGUF metadata field '{arch}.attention.head_count' is {num_heads}, expected a positive count")
  num_kv_heads = field("attention.head_count_kv", default=num_heads)
  rope_dims = field("rope.dimension_count", default=None)
  # Phi-3's heads always split the embedding (llama.cpp's n_embd / n_head); its rope.dimension_count is the part
  # of each head that rotates (Phi-4-mini: 96 of 128).
  head_default = hidden_size // num_heads if rope_dims is None or arch == "phi3" else rope_dims
  head_dim = field("attention.key_length", default=head_default)
  if rope_dims is not None and rope_dims != head_dim and arch != "phi3":
    # RoPE on only part of each head (llama.cpp's n_rot < head size; it refuses that for llama files). Loading it
    # as full rotary would change every attention score.
    raise ValueError(f"GGUF {arch}.rope.dimension_count {rope_dims} differs from the head size {head_dim} "
                     f"({arch}.attention.key_length): partial rotary embeddings are not supported")
  vocab_size = field("vocab_size", default=None)
  if vocab_size is None:
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
      raise ValueError(f"GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    vocab_size = len(tokens)

  model_type, architecture = _HF_CLASSES[arch]
  config = {
      "architectures": [architecture],
      "model_type": model_type,
      "vocab_size": vocab_size,
      "hidden_size": hidden_size,
      "intermediate_size": field("feed_forward_length"),
      "num_hidden_layers": field("block_count"),
      "num_attention_heads": num_heads,
      "num_key_value_heads": num_kv_heads,
      "head_dim": head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": field("context_length"),
      "rms_norm_eps": field("attention.layer_norm_rms_epsilon", float),
      "rope_theta": field("rope.freq_base", float, 10000.0),
      "attention_bias": False,
      "mlp_bias": False,
      "tie_word_embeddings": "output.weight" not in tensor_names,
      "torch_dtype": "float32",
  }
  for hf_key, gguf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                           ("pad_token_id", "padding_token_id")):
    if f"tokenizer.ggml.{gguf_key}" in metadata:
      config[hf_key] = _number(metadata, f"tokenizer.ggml.{gguf_key}")
  rope_scaling = _rope_scaling(metadata, arch)
  if rope_scaling is not None:
    config["rope_scaling"] = rope_scaling
  if arch == "qwen3":
    del config["mlp_bias"]
    config["use_sliding_window"] = False
  elif arch == "qwen2":  # q/k/v biases always (Qwen2Config has no switch), no window (llama.cpp has none)
    del config["mlp_bias"], config["attention_bias"]
    config["use_sliding_window"] = False
  elif arch == "phi3":
    _phi3_config(config, metadata, head_dim, rope_dims)
  elif arch == "gemma":  # Gemma 1: GELU (tanh), no window, no soft-caps, attention scaled by head_dim ** -0.5
    del config["mlp_bias"]
    config["hidden_act"] = "gelu_pytorch_tanh"
  elif arch in _GEMMA:
    _gemma_config(config, metadata, arch)
  _check_attention_scale(config, metadata, arch)
  return config


def _phi3_config(config: dict[str, Any], metadata: dict[str, Any], head_dim: int, rope_dims: int | None) -> None:
  """Phi3Config's keys from llama.cpp's phi3 metadata: no biases (Phi3 has no switch), the window (0: none; llama.cpp
  itself currently runs Phi-3 without it, transformers with it: we follow the checkpoint, as transformers), the
  rotated part of each head, and LongRoPE's original context (its factors are tensors, read with its attention
  factor by `_read_longrope_factors`)."""
  del config["mlp_bias"], config["attention_bias"]
  window = _number(metadata, "phi3.attention.sliding_window", default=0)
  if window:
    config["sliding_window"] = window
  if rope_dims is not None and rope_dims != head_dim:
    if not 0 < rope_dims < head_dim or rope_dims % 2:
      raise ValueError(f"GGUF phi3.rope.dimension_count {rope_dims}: expected an even number of rotated dimensions "
                       f"up to the head size {head_dim}")
    config["partial_rotary_factor"] = rope_dims / head_dim
  original = _number(metadata, "phi3.rope.scaling.original_context_length", default=None)
  if original is not None:
    config["original_max_position_embeddings"] = original


def _read_longrope_factors(path: str | os.PathLike, hf_config: dict[str, Any], header: Header) -> None:
  """Sets Phi-3's LongRoPE `rope_parameters` from `rope_factors_long` / `rope_factors_short` (both or neither) and
  `phi3.rope.scaling.attn_factor`."""
  gguf_tensors, arch = header.tensors, header.metadata["general.architecture"]
  attention_factor = _number(header.metadata, "phi3.rope.scaling.attn_factor", float, default=None)
  present = [name for name in ROPE_FACTORS.values() if name in gguf_tensors]
  if not present:
    if attention_factor is not None and not math.isclose(attention_factor, 1.0, rel_tol=1e-6):
      raise ModelFileError(path, f"GGUF metadata field 'phi3.rope.scaling.attn_factor' is {attention_factor!r} "
                           f"without LongRoPE factors ({sorted(ROPE_FACTORS.values())}); expected 1.0")
    return
  if arch != "phi3":
    raise ModelFileError(path, f"tensor {present[0]!r} in a {arch} file: llama.cpp reads LongRoPE factors of phi3 "
                         "files here")
  if len(present) != 2:
    raise ModelFileError(path, f"tensor {present[0]!r} without its pair: LongRoPE needs "
                         f"{sorted(ROPE_FACTORS.values())}")
  rotated = int(hf_config["head_dim"] * hf_config.get("partial_rotary_factor", 1.0))
  rope = {"rope_type": "longrope", "rope_theta": hf_config["rope_theta"]}
  for key, name in ROPE_FACTORS.items():
    info = gguf_tensors[name]
    if info.shape != (rotated // 2,):
      raise ModelFileError(path, f"tensor {name!r} has shape {info.shape}, expected ({rotated // 2},) (one factor "
                           "per rotated frequency)")
    rope[key] = [float(v) for v in read_tensor(path, info)]
  if attention_factor is not None:
    rope["attention_factor"] = attention_factor
  if "partial_rotary_factor" in hf_config:
    rope["partial_rotary_factor"] = hf_config["partial_rotary_factor"]
  hf_config["rope_parameters"] = rope


def _check_attention_scale(config: dict[str, Any], metadata: dict[str, Any], arch: str) -> None:
  """ValueError naming the key when the file sets an attention-logit scale the converted model would not use.

  llama.cpp multiplies q.k by `{arch}.attention.scale` when it is set (instead of 1 / sqrt(head_dim), or Gemma's
  query_pre_attn_scalar ** -0.5) and scales RoPE'd queries and keys by `{arch}.rope.scaling.attn_factor` (logits
  by its square); transformers' configs of these families have no such fields, so such a file would load as a
  different model."""
  scalar = config.get("query_pre_attn_scalar") or config["head_dim"]
  scale_key = f"{arch}.attention.scale"
  if scale_key in metadata:
    scale = _number(metadata, scale_key, float)
    if scale and not math.isclose(scale, scalar ** -0.5, rel_tol=1e-5):
      raise ValueError(f"GGUF metadata field {scale_key!r} is {scale!r}, but this model family scales attention "
                       f"logits by {scalar ** -0.5:.6g} (1 / sqrt({scalar:g})); a model with another scale is not "
                       "supported")
  factor_key = f"{arch}.rope.scaling.attn_factor"
  if factor_key in metadata and arch != "phi3":  # Phi-3's is LongRoPE's attention factor (_read_longrope_factors)
    factor = _number(metadata, factor_key, float)
    if not math.isclose(factor, 1.0, rel_tol=1e-6):
      raise ValueError(f"GGUF metadata field {factor_key!r} is {factor!r}; only 1.0 is supported (it scales the "
                       "rotated queries and keys)")


def _gemma_config(config: dict[str, Any], metadata: dict[str, Any], arch: str) -> None:
  """Turns the Llama-style `config` into a Gemma 2 / Gemma 3 one (in place), with llama.cpp's fixed settings."""
  num_layers = config["num_hidden_layers"]
  del config["mlp_bias"], config["hidden_act"]
  config["hidden_activation"] = "gelu_pytorch_tanh"
  # GGUF stores no query_pre_attn_scalar; llama.cpp scales by head_dim ** -0.5, except for the 27B models
  # (Gemma 2: 46 layers, Gemma 3: 62), which use (hidden / heads) ** -0.5 (gemma_pytorch's config).
  is_27b = num_layers == (46 if arch == "gemma2" else 62)
  config["query_pre_attn_scalar"] = (config["hidden_size"] // config["num_attention_heads"] if is_27b
                                     else config["head_dim"])
  window_key = f"{arch}.attention.sliding_window"
  if arch == "gemma3" and window_key not in metadata:
    raise ValueError(f"GGUF metadata field {window_key!r} is missing")
  config["sliding_window"] = _number(metadata, window_key, int, 4096)
  pattern = metadata.get(f"{arch}.attention.sliding_window_pattern", 2 if arch == "gemma2" else 6)
  if isinstance(pattern, (list, tuple)):  # one flag per layer, True where the layer slides
    if len(pattern) != num_layers:
      raise ValueError(f"GGUF {arch}.attention.sliding_window_pattern has {len(pattern)} entries; expected "
                       f"{num_layers} (block_count)")
    sliding = [bool(flag) for flag in pattern]
  else:  # every pattern-th layer is global (Gemma 2: 2, Gemma 3: 6)
    pattern = _number(metadata, f"{arch}.attention.sliding_window_pattern", int, pattern)
    if pattern < 1:
      raise ValueError(f"GGUF {arch}.attention.sliding_window_pattern {pattern} is not a positive layer period")
    sliding = [bool((i + 1) % pattern) for i in range(num_layers)]
  config["layer_types"] = ["sliding_attention" if flag else "full_attention" for flag in sliding]
  config["final_logit_softcapping"] = _number(metadata, f"{arch}.final_logit_softcapping", float,
                                              30.0 if arch == "gemma2" else None)
  if arch == "gemma2":
    config["attn_logit_softcapping"] = _number(metadata, f"{arch}.attn_logit_softcapping", float, 50.0)
    return
  # Gemma 3: rope_theta and rope_scaling are the global layers'; the local layers use base 10000, unscaled.
  full = {"rope_type": "default", **config.pop("rope_scaling", {}), "rope_theta": config.pop("rope_theta")}
  local = {"rope_type": "default", "rope_theta": _number(metadata, f"{arch}.rope.freq_base_swa", float, 10000.0)}
  config["rope_parameters"] = {"full_attention": full, "sliding_attention": local}


_REQUIRED = object()


def _number(metadata: dict[str, Any], key: str, kind: type = int, default: Any = _REQUIRED) -> Any:
  """`metadata[key]` as `kind` (int: an integer; float: any number), `default` when absent (no default: required).

  Raises:
    ValueError naming the key: it is missing, or of another type (a string, a per-layer array, a bool).
  """
  if key not in metadata:
    if default is _REQUIRED:
      raise ValueError(f"GGUF metadata field {key!r} is missing")
    return default
  value = metadata[key]
  if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
    expected = "an integer" if kind is int else "a number"
    raise ValueError(f"GGUF metadata field {key!r} is {value!r}, expected {expected}")
  return kind(value)


@errors.reads_file("GGUF file")
def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  """All GGUF key/value metadata of a file as Python values (arrays as lists, strings decoded).

  Raises:
    ModelFileError: a truncated or malformed file (see `read_header`).
  """
  return read_header(path).metadata


def _rope_scaling(metadata: dict[str, Any], arch: str) -> dict[str, Any] | None:
  """transformers `rope_scaling` from llama.cpp's `{arch}.rope.scaling.*` keys, or None."""
  rope_type = metadata.get(f"{arch}.rope.scaling.type")
  if rope_type in (None, "none"):
    return None
  if rope_type not in ("linear", "yarn"):
    raise ValueError(f"unsupported GGUF {arch}.rope.scaling.type {rope_type!r}; supported: linear, yarn")
  factor_key = f"{arch}.rope.scaling.factor"
  if factor_key not in metadata:
    raise ValueError(f"GGUF metadata field {factor_key!r} is missing for rope scaling {rope_type!r}")
  scaling = {"rope_type": rope_type, "factor": _number(metadata, factor_key, float)}
  original_key = f"{arch}.rope.scaling.original_context_length"
  if original_key in metadata:
    scaling["original_max_position_embeddings"] = _number(metadata, original_key)
  return scaling


def _layer_tensors(arch: str) -> dict[str, str]:
  """GGUF layer tensor suffix -> transformers suffix for `arch`."""
  names = dict(_LAYER_TENSORS)
  if arch in _GEMMA:
    names.update(_GEMMA_NORM_TENSORS)
  if arch in ("qwen3", "gemma3"):
    names.update(_QK_NORM_TENSORS)
  if arch == "qwen2":
    names.update(_QKV_BIAS_TENSORS)
  if arch == "phi3":
    for split in _PHI3_SPLIT:
      del names[split]
    names.update(_PHI3_TENSORS)
  return names


def _hf_names(num_layers: int, arch: str = "llama") -> dict[str, str]:
  """GGUF tensor name -> transformers name for every tensor a model of `arch` may hold."""
  names = dict(_GLOBAL_TENSORS)
  for i in range(num_layers):
    for gguf_suffix, hf_suffix in _layer_tensors(arch).items():
      names[f"blk.{i}.{gguf_suffix}"] = f"model.layers.{i}.{hf_suffix}"
  return names


def _expected_shapes(config: dict[str, Any], arch: str = "llama") -> dict[str, tuple[int, ...]]:
  """transformers name -> expected (torch layout) shape."""
  d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
  q_dim = config["num_attention_heads"] * config["head_dim"]
  kv_dim = config["num_key_value_heads"] * config["head_dim"]
  shapes = {
      "model.embed_tokens.weight": (v, d),
      "model.norm.weight": (d,),
      "lm_head.weight": (v, d),
  }
  layer_shapes = {
      "input_layernorm.weight": (d,),
      "self_attn.q_proj.weight": (q_dim, d),
      "self_attn.k_proj.weight": (kv_dim, d),
      "self_attn.v_proj.weight": (kv_dim, d),
      "self_attn.o_proj.weight": (d, q_dim),
      "post_attention_layernorm.weight": (d,),
      "mlp.gate_proj.weight": (f, d),
      "mlp.up_proj.weight": (f, d),
      "mlp.down_proj.weight": (d, f),
      "self_attn.q_norm.weight": (config["head_dim"],),
      "self_attn.k_norm.weight": (config["head_dim"],),
      "self_attn.q_proj.bias": (q_dim,),
      "self_attn.k_proj.bias": (kv_dim,),
      "self_attn.v_proj.bias": (kv_dim,),
      "self_attn.qkv_proj.weight": (q_dim + 2 * kv_dim, d),
      "mlp.gate_up_proj.weight": (2 * f, d),
  }
  layer_shapes.update({hf_suffix: (d,) for hf_suffix in _GEMMA_NORM_TENSORS.values()})
  layer_shapes = {suffix: layer_shapes[suffix] for suffix in _layer_tensors(arch).values()}
  for i in range(config["num_hidden_layers"]):
    for suffix, shape in layer_shapes.items():
      shapes[f"model.layers.{i}.{suffix}"] = shape
  return shapes


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """One tensor's description in a GGUF header.

  dims: GGUF order (innermost first); `shape` is numpy's. offset: the first byte of its data in the file (absolute);
  nbytes: its data's size in bytes. byte_order: the file's, "<" or ">" (a big-endian file stores F32 / F16 tensors
  byte-swapped; quantized blocks are byte arrays, stored as they are).
  """
  name: str
  qtype: gguf.GGMLQuantizationType
  dims: tuple[int, ...]
  offset: int
  nbytes: int
  byte_order: str = "<"

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(reversed(self.dims))


@dataclasses.dataclass(frozen=True)
class Header:
  """A GGUF file's header: `metadata` maps each key to its Python value (arrays as lists, strings decoded; plus the
  gguf package's pseudo-keys GGUF.version / GGUF.tensor_count / GGUF.kv_count), `tensors` each name to its
  TensorInfo, in file order."""
  metadata: dict[str, Any]
  tensors: dict[str, TensorInfo]


def _check_tensor_type(info: TensorInfo) -> None:
  if info.qtype not in SUPPORTED_TENSOR_TYPES:
    supported = sorted(t.name for t in SUPPORTED_TENSOR_TYPES)
    raise ValueError(
        f"GGUF tensor {info.name!r} has unsupported quantization type {info.qtype.name}; supported: {supported}")


def read_tensor(path: str | os.PathLike, info: TensorInfo) -> np.ndarray:
  """A tensor of the file at `path` (described by `read_header`) dequantized to float32, in numpy order."""
  _check_tensor_type(info)
  raw = np.memmap(path, dtype=np.uint8, mode="r", offset=info.offset, shape=(info.nbytes,))
  if info.qtype in _FLOAT_DTYPES:  # plain floats in the file's byte order
    values = raw.view(np.dtype(_FLOAT_DTYPES[info.qtype]).newbyteorder(info.byte_order))
  else:
    values = gguf.dequantize(raw, info.qtype)
  return np.ascontiguousarray(values, dtype=np.float32).reshape(info.shape)


# ---------------------------------------------------------------------------------------------- the header
# The header is read here rather than by the gguf package's GGUFReader, for two reasons. Safety: the reader trusts
# the file's counts (an array length of 2**40 loops for ever on reads past the end, a wrong length gives an
# IndexError deep inside); every count and length here is bounded by the bytes that are really there. Speed: the
# reader builds numpy views element by element (~4 s for SmolLM2's 49k-token vocabulary and 48k merges, on every
# load); here fixed-size arrays are one np.frombuffer and strings one loop.
_SCALAR_FORMATS = {
    gguf.GGUFValueType.UINT8: "B", gguf.GGUFValueType.INT8: "b", gguf.GGUFValueType.BOOL: "?",
    gguf.GGUFValueType.UINT16: "H", gguf.GGUFValueType.INT16: "h",
    gguf.GGUFValueType.UINT32: "I", gguf.GGUFValueType.INT32: "i", gguf.GGUFValueType.FLOAT32: "f",
    gguf.GGUFValueType.UINT64: "Q", gguf.GGUFValueType.INT64: "q", gguf.GGUFValueType.FLOAT64: "d",
}
_SCALAR_BYTES = {t: struct.calcsize("<" + f) for t, f in _SCALAR_FORMATS.items()}
_SCALAR_DTYPES = {t: np.dtype("bool" if f == "?" else f) for t, f in _SCALAR_FORMATS.items()}
_FLOAT_DTYPES = {gguf.GGMLQuantizationType.F32: "f4", gguf.GGMLQuantizationType.F16: "f2"}
_SUPPORTED_VERSIONS = (2, 3)
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NESTING = 8  # Arrays of arrays; real files use none.
_MIN_KV_BYTES = 8 + 4 + 1  # Key length, value type, at least one value byte.
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # Name length, n_dims, one dim, type, offset.


class _Cursor:
  """Bounds-checked little/big-endian reads from a byte buffer; every read names what it reads."""

  def __init__(self, path: str | os.PathLike, buf: Any, order: str):
    self.path, self.buf, self.order, self.pos, self.size = path, buf, order, 0, len(buf)

  def take(self, n: int, what: str) -> int:
    if n > self.size - self.pos:
      raise ModelFileError(self.path, f"GGUF {what} at byte {self.pos} needs {n} bytes, but the file ends at byte "
                           f"{self.size} (truncated or corrupt)")
    start, self.pos = self.pos, self.pos + n
    return start

  def uint(self, nbytes: int, what: str) -> int:
    start = self.take(nbytes, what)
    return struct.unpack_from(self.order + {4: "I", 8: "Q"}[nbytes], self.buf, start)[0]

  def string(self, what: str) -> str:
    n = self.uint(8, f"{what} length")
    start = self.take(n, what)
    try:
      return str(self.buf[start:start + n], "utf-8")
    except UnicodeDecodeError as e:
      raise ModelFileError(self.path, f"GGUF {what} at byte {start} is not UTF-8 ({e})") from e

  def strings(self, n: int, what: str) -> list[str]:
    """n consecutive strings (an array's items): `string` unrolled, as vocabularies hold ~10^5 of them."""
    buf, size, pos, unpack = self.buf, self.size, self.pos, struct.Struct(self.order + "Q").unpack_from
    out = []
    for i in range(n):
      if size - pos < 8:
        self.pos = pos
        self.take(8, f"{what}[{i}] length")
      length = unpack(buf, pos)[0]
      pos += 8
      if length > size - pos:
        self.pos = pos
        self.take(length, f"{what}[{i}]")
      try:
        out.append(str(buf[pos:pos + length], "utf-8"))
      except UnicodeDecodeError as e:
        raise ModelFileError(self.path, f"GGUF {what}[{i}] at byte {pos} is not UTF-8 ({e})") from e
      pos += length
    self.pos = pos
    return out

  def count(self, n: int, min_bytes: int, what: str) -> None:
    """Rejects a count of items that cannot fit in the bytes left (before looping over them)."""
    if n * min_bytes > self.size - self.pos:
      raise ModelFileError(self.path, f"GGUF {what} {n} cannot fit in the {self.size - self.pos} bytes left at "
                           f"byte {self.pos} (corrupt header)")


def read_header(path: str | os.PathLike) -> Header:
  """Reads and validates a GGUF file's header against the file's size, trusting no count in it.

  Walks the magic, version, counts, every metadata key and value, and every tensor description; checks that each
  length, count and tensor byte range fits inside the file, that value and tensor types are known, keys and tensor
  names unique, strings UTF-8, and nesting and dimensions bounded. No tensor data is read.

  Raises:
    ModelFileError: what is wrong and where (byte offset, key or tensor name).
  """
  size = os.path.getsize(path)
  if size < 24:
    raise ModelFileError(path, f"not a GGUF file: {size} bytes, shorter than the 24-byte GGUF header")
  with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
    if buf[:4] != b"GGUF":
      raise ModelFileError(path, f"not a GGUF file: it starts with {bytes(buf[:4])!r}, expected b'GGUF'")
    version = struct.unpack_from("<I", buf, 4)[0]
    order = "<"
    if version & 0xFFFF == 0:  # Written on a big-endian machine (the gguf package reads those too).
      order, version = ">", struct.unpack_from(">I", buf, 4)[0]
    if version not in _SUPPORTED_VERSIONS:
      raise ModelFileError(path, f"GGUF version {version} unsupported; supported: {list(_SUPPORTED_VERSIONS)}")
    cur = _Cursor(path, buf, order)
    cur.pos = 8
    tensor_count, kv_count = cur.uint(8, "tensor count"), cur.uint(8, "metadata count")
    if tensor_count * _MIN_TENSOR_INFO_BYTES + kv_count * _MIN_KV_BYTES > size - cur.pos:
      raise ModelFileError(path, f"GGUF header claims {tensor_count} tensors and {kv_count} metadata entries, more "
                           f"than its {size} bytes can hold (corrupt header)")
    metadata: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": tensor_count,
                                "GGUF.kv_count": kv_count}
    alignment = gguf.GGUF_DEFAULT_ALIGNMENT
    for i in range(kv_count):
      key = cur.string(f"metadata key #{i}")
      if key in metadata:
        raise ModelFileError(path, f"GGUF metadata key {key!r} appears twice (second at byte {cur.pos})")
      value_type = cur.uint(4, f"type of metadata {key!r}")
      metadata[key] = _read_value(cur, value_type, f"metadata {key!r}", depth=0)
      if key == "general.alignment":
        value = metadata[key]
        if value_type != gguf.GGUFValueType.UINT32 or value <= 0 or value & (value - 1):
          raise ModelFileError(path, f"GGUF general.alignment {value!r} is not a power of two (uint32)")
        alignment = value
    described = []
    for i in range(tensor_count):
      name = cur.string(f"tensor name #{i}")
      n_dims = cur.uint(4, f"tensor {name!r} dimension count")
      if not 1 <= n_dims <= _MAX_DIMS:
        raise ModelFileError(path, f"GGUF tensor {name!r} has {n_dims} dimensions; expected 1 to {_MAX_DIMS}")
      dims = tuple(cur.uint(8, f"tensor {name!r} dimension") for _ in range(n_dims))
      raw_type = cur.uint(4, f"tensor {name!r} type")
      try:
        qtype = gguf.GGMLQuantizationType(raw_type)
        block, type_bytes = gguf.GGML_QUANT_SIZES[qtype]
      except (ValueError, KeyError):
        raise ModelFileError(path, f"GGUF tensor {name!r} has unknown type {raw_type}") from None
      offset = cur.uint(8, f"tensor {name!r} data offset")
      if dims[0] % block:
        raise ModelFileError(path, f"GGUF tensor {name!r} ({qtype.name}): its first dimension {dims[0]} is not a "
                             f"multiple of the block size {block}")
      described.append((name, qtype, dims, offset, int(np.prod(dims, dtype=object)) // block * type_bytes))
    data_start = -(-cur.pos // alignment) * alignment
    tensors = {}
    for name, qtype, dims, offset, nbytes in described:
      end = data_start + offset + nbytes
      if end > size:
        raise ModelFileError(path, f"GGUF tensor {name!r} ({qtype.name}, dims {list(dims)}) needs bytes up to {end}, "
                             f"but the file has {size} bytes (truncated or corrupt)")
      if name in tensors:
        raise ModelFileError(path, f"GGUF tensor {name!r} is described twice")
      tensors[name] = TensorInfo(name, qtype, dims, data_start + offset, nbytes, order)
  return Header(metadata, tensors)


def _read_value(cur: _Cursor, value_type: int, what: str, depth: int) -> Any:
  """One metadata value of `value_type` as a Python value (bool / int / float / str, arrays as lists)."""
  if value_type in _SCALAR_FORMATS:
    start = cur.take(_SCALAR_BYTES[value_type], what)
    return struct.unpack_from(cur.order + _SCALAR_FORMATS[value_type], cur.buf, start)[0]
  if value_type == gguf.GGUFValueType.STRING:
    return cur.string(what)
  if value_type != gguf.GGUFValueType.ARRAY:
    raise ModelFileError(cur.path, f"GGUF {what} has unknown value type {value_type}")
  if depth >= _MAX_NESTING:
    raise ModelFileError(cur.path, f"GGUF {what} nests arrays deeper than {_MAX_NESTING}")
  item_type = cur.uint(4, f"{what} item type")
  n = cur.uint(8, f"{what} length")
  if item_type in _SCALAR_FORMATS:  # Fixed-size items: one bounds check, one read.
    start = cur.take(n * _SCALAR_BYTES[item_type], f"{what} ({n} items)")
    dtype = _SCALAR_DTYPES[item_type].newbyteorder(cur.order)
    if item_type == gguf.GGUFValueType.BOOL:  # any non-zero byte is true, as struct's "?" reads it
      return (np.frombuffer(cur.buf, np.uint8, n, start) != 0).tolist()
    return np.frombuffer(cur.buf, dtype, n, start).tolist()
  cur.count(n, 8 if item_type == gguf.GGUFValueType.STRING else 12, f"{what} length")
  if item_type == gguf.GGUFValueType.STRING:
    return cur.strings(n, what)
  if item_type != gguf.GGUFValueType.ARRAY:
    raise ModelFileError(cur.path, f"GGUF {what} has unknown item type {item_type}")
  return [_read_value(cur, item_type, f"{what}[{i}]", depth + 1) for i in range(n)]


def _check_layer_count(path: str | os.PathLike, num_layers: int, num_tensors: int) -> None:
  """A block count larger than the tensors present is a corrupt header (and would loop over absent layers)."""
  if not 0 <= num_layers <= num_tensors:
    raise ModelFileError(path, f"GGUF block_count {num_layers} does not fit the {num_tensors} tensors in the file")
