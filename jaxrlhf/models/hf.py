"""Hugging Face interop: transformers-named tensors <-> CausalLM parameters, safetensors read/write.

`model_from_hf_tensors` is the one path every checkpoint format takes (safetensors folders here, GGUF files via
`jaxrlhf.models.gguf.read_gguf`). One table per family lists each transformers tensor, its shape and how it maps
to our stacked (L, ...) parameters, so loading, shape checks and export share one source of truth.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from jaxrlhf.models import errors
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import CausalLM, abstract_model
from jaxrlhf.models.errors import ModelFileError

# Buffers some checkpoints carry that are not parameters (recomputed here from the config).
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.attn\.bias|\.attn\.masked_bias)$")

_ST_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_ST_MAX_HEADER_BYTES = 100_000_000  # The safetensors format's own limit on the JSON header.


class _Tensor(NamedTuple):
  """One transformers tensor: name (with `{i}` for the layer), shape, and our parameter names it feeds.

  to_ours(hf_array) -> tuple of arrays (one per name in `ours`); to_hf(*our_arrays) -> hf_array.
  """
  hf_name: str
  hf_shape: tuple[int, ...]
  ours: tuple[str, ...]
  to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  to_hf: Callable[..., np.ndarray]
  per_layer: bool


def _same(name: str, hf_name: str, shape: tuple[int, ...], per_layer: bool) -> _Tensor:
  return _Tensor(hf_name, shape, (name,), lambda w: (w,), lambda w: w, per_layer)


def _linear(name: str, hf_name: str, in_dim: int, out_shape: tuple[int, ...]) -> _Tensor:
  """torch nn.Linear weight (out, in) -> our kernel (in, *out_shape)."""
  out_dim = int(np.prod(out_shape))
  return _Tensor(hf_name, (out_dim, in_dim), (name,),
                 lambda w: (w.T.reshape(in_dim, *out_shape),), lambda k: k.reshape(in_dim, out_dim).T, True)


def _linear_in(name: str, hf_name: str, in_shape: tuple[int, ...], out_dim: int) -> _Tensor:
  """torch nn.Linear weight (out, in) -> our kernel (*in_shape, out) (attention output projection)."""
  in_dim = int(np.prod(in_shape))
  return _Tensor(hf_name, (out_dim, in_dim), (name,),
                 lambda w: (w.T.reshape(*in_shape, out_dim),), lambda k: k.reshape(in_dim, out_dim).T, True)


def _reshaped(name: str, hf_name: str, our_shape: tuple[int, ...], per_layer: bool = True) -> _Tensor:
  flat = (int(np.prod(our_shape)),)
  return _Tensor(hf_name, flat, (name,), lambda b: (b.reshape(our_shape),), lambda b: b.reshape(flat), per_layer)


def _llama_table(c: ModelConfig) -> list[_Tensor]:
  """Llama / Mistral / Phi-3 / Qwen2 / Qwen3 / Gemma naming (torch nn.Linear layout)."""
  D, N, K, H, F, V = c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim, c.vocab_size
  layer = "model.layers.{i}."
  # Gemma's post_attention_layernorm normalizes the attention output; its pre_feedforward_layernorm feeds the MLP.
  mlp_norm = "pre_feedforward_layernorm.weight" if c.post_norms else "post_attention_layernorm.weight"
  table = [
      _same("embed", "model.embed_tokens.weight", (V, D), False),
      _same("final_norm_scale", "model.norm.weight", (D,), False),
      _same("attn_norm_scale", layer + "input_layernorm.weight", (D,), True),
      _same("mlp_norm_scale", layer + mlp_norm, (D,), True),
      _linear("q_kernel", layer + "self_attn.q_proj.weight", D, (N, H)),
      _linear("k_kernel", layer + "self_attn.k_proj.weight", D, (K, H)),
      _linear("v_kernel", layer + "self_attn.v_proj.weight", D, (K, H)),
      _linear_in("o_kernel", layer + "self_attn.o_proj.weight", (N, H), D),
      _linear("gate_kernel", layer + "mlp.gate_proj.weight", D, (F,)),
      _linear("up_kernel", layer + "mlp.up_proj.weight", D, (F,)),
      _linear_in("down_kernel", layer + "mlp.down_proj.weight", (F,), D),
  ]
  if c.qkv_bias:
    table += [_reshaped("q_bias", layer + "self_attn.q_proj.bias", (N, H)),
              _reshaped("k_bias", layer + "self_attn.k_proj.bias", (K, H)),
              _reshaped("v_bias", layer + "self_attn.v_proj.bias", (K, H))]
  if c.out_bias:
    table.append(_same("o_bias", layer + "self_attn.o_proj.bias", (D,), True))
  if c.mlp_bias:
    table += [_same("gate_bias", layer + "mlp.gate_proj.bias", (F,), True),
              _same("up_bias", layer + "mlp.up_proj.bias", (F,), True),
              _same("down_bias", layer + "mlp.down_proj.bias", (D,), True)]
  if c.qk_norm:
    table += [_same("q_norm_scale", layer + "self_attn.q_norm.weight", (H,), True),
              _same("k_norm_scale", layer + "self_attn.k_norm.weight", (H,), True)]
  if c.post_norms:
    table += [_same("post_attn_norm_scale", layer + "post_attention_layernorm.weight", (D,), True),
              _same("post_mlp_norm_scale", layer + "post_feedforward_layernorm.weight", (D,), True)]
  if not c.tie_word_embeddings:
    table.append(_Tensor("lm_head.weight", (V, D), ("lm_head",), lambda w: (w.T,), lambda k: k.T, False))
  if c.hf_model_type == "phi3":
    table = _fuse_phi3(c, table)
  return table


def _fuse_phi3(c: ModelConfig, table: list[_Tensor]) -> list[_Tensor]:
  """Phi3's layout: q, k, v stacked along the output rows of one qkv_proj (N*H + 2*K*H, D), gate and up of one
  gate_up_proj (2F, D), gate first (transformers' `chunk(2)`)."""
  D, N, K, H, F = c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim
  layer = "model.layers.{i}."
  q_rows, kv_rows = N * H, K * H

  def split_qkv(w):  # (N*H + 2*K*H, D) -> kernels (D, N, H), (D, K, H), (D, K, H)
    q, k, v = np.split(w, [q_rows, q_rows + kv_rows], axis=0)
    return q.T.reshape(D, N, H), k.T.reshape(D, K, H), v.T.reshape(D, K, H)

  def merge_qkv(q, k, v):
    return np.concatenate([q.reshape(D, -1).T, k.reshape(D, -1).T, v.reshape(D, -1).T], axis=0)

  def split_gate_up(w):  # (2F, D) -> kernels (D, F), (D, F)
    gate, up = np.split(w, 2, axis=0)
    return gate.T, up.T

  def merge_gate_up(gate, up):
    return np.concatenate([gate.T, up.T], axis=0)

  fused = {"q_kernel", "k_kernel", "v_kernel", "gate_kernel", "up_kernel"}
  table = [t for t in table if not fused.intersection(t.ours)]
  return table + [
      _Tensor(layer + "self_attn.qkv_proj.weight", (q_rows + 2 * kv_rows, D), ("q_kernel", "k_kernel", "v_kernel"),
              split_qkv, merge_qkv, True),
      _Tensor(layer + "mlp.gate_up_proj.weight", (2 * F, D), ("gate_kernel", "up_kernel"), split_gate_up,
              merge_gate_up, True),
  ]


def _gpt2_table(c: ModelConfig) -> list[_Tensor]:
  """GPT-2 uses Conv1D, whose weights are stored (in, out); c_attn fuses q, k, v along `out`."""
  D, N, H, F, V, P = c.embed_dim, c.num_heads, c.head_dim, c.mlp_dim, c.vocab_size, c.max_position_embeddings
  layer = "transformer.h.{i}."

  def split_qkv(w):  # (..., 3 * N * H) -> three (..., N, H)
    return tuple(part.reshape(*w.shape[:-1], N, H) for part in np.split(w, 3, axis=-1))

  def merge_qkv(*parts):
    return np.concatenate([p.reshape(*p.shape[:-2], N * H) for p in parts], axis=-1)

  qkv = ("q_kernel", "k_kernel", "v_kernel")
  qkv_bias = ("q_bias", "k_bias", "v_bias")
  table = [
      _same("embed", "transformer.wte.weight", (V, D), False),
      _same("pos_embed", "transformer.wpe.weight", (P, D), False),
      _same("final_norm_scale", "transformer.ln_f.weight", (D,), False),
      _same("final_norm_bias", "transformer.ln_f.bias", (D,), False),
      _same("attn_norm_scale", layer + "ln_1.weight", (D,), True),
      _same("attn_norm_bias", layer + "ln_1.bias", (D,), True),
      _same("mlp_norm_scale", layer + "ln_2.weight", (D,), True),
      _same("mlp_norm_bias", layer + "ln_2.bias", (D,), True),
      _Tensor(layer + "attn.c_attn.weight", (D, 3 * N * H), qkv, split_qkv, merge_qkv, True),
      _Tensor(layer + "attn.c_attn.bias", (3 * N * H,), qkv_bias, split_qkv, merge_qkv, True),
      _Tensor(layer + "attn.c_proj.weight", (N * H, D), ("o_kernel",), lambda w: (w.reshape(N, H, D),),
              lambda k: k.reshape(N * H, D), True),
      _same("o_bias", layer + "attn.c_proj.bias", (D,), True),
      _same("up_kernel", layer + "mlp.c_fc.weight", (D, F), True),
      _same("up_bias", layer + "mlp.c_fc.bias", (F,), True),
      _same("down_kernel", layer + "mlp.c_proj.weight", (F, D), True),
      _same("down_bias", layer + "mlp.c_proj.bias", (D,), True),
  ]
  if not c.tie_word_embeddings:
    table.append(_Tensor("lm_head.weight", (V, D), ("lm_head",), lambda w: (w.T,), lambda k: k.T, False))
  return table


def tensor_table(config: ModelConfig) -> list[_Tensor]:
  """The transformers tensors of `config`'s family, in checkpoint naming."""
  return _gpt2_table(config) if config.family == "gpt2" else _llama_table(config)


def expected_hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """{transformers tensor name: shape} for every tensor a checkpoint of `config` must hold."""
  shapes = {}
  for t in tensor_table(config):
    layers = range(config.num_layers) if t.per_layer else [None]
    for i in layers:
      shapes[t.hf_name.format(i=i)] = t.hf_shape
  return shapes


def _canonical_names(config: ModelConfig, names: list[str]) -> dict[str, str]:
  """Maps our canonical names to the checkpoint's names (original GPT-2 files lack the `transformer.` prefix)."""
  mapping = {n: n for n in names}
  if config.family == "gpt2":
    for n in names:
      if not n.startswith("transformer.") and n != "lm_head.weight":
        mapping["transformer." + n] = n
        del mapping[n]
  return mapping


def hf_to_params(config: ModelConfig, tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Converts transformers-named tensors to a pure dict matching `nnx.to_pure_dict(nnx.state(CausalLM))`.

  Layer tensors are stacked on a leading (L,) axis and cast to `config.param_dtype` (numpy, on host).

  Raises:
    ValueError: a missing, unexpected or misshapen tensor, naming it with expected vs actual shape.
  """
  names = _canonical_names(config, list(tensors.keys()))
  dtype = np.dtype(config.params_dtype)
  used: set[str] = set()

  def read(name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in names:
      raise ValueError(
          f"missing tensor {name!r} (expected shape {shape}) for model_type {config.hf_model_type or config.family}")
    array = tensors[names[name]]
    if tuple(array.shape) != shape:
      raise ValueError(f"tensor {name!r} has shape {tuple(array.shape)}, expected {shape}")
    used.add(name)
    return np.asarray(array)

  top: dict[str, Any] = {}
  layers: dict[str, list[np.ndarray]] = {}
  for t in tensor_table(config):
    if not t.per_layer:
      for our, value in zip(t.ours, t.to_ours(read(t.hf_name, t.hf_shape))):
        top[our] = value.astype(dtype)
      continue
    for i in range(config.num_layers):
      for our, value in zip(t.ours, t.to_ours(read(t.hf_name.format(i=i), t.hf_shape))):
        layers.setdefault(our, []).append(value.astype(dtype))

  unexpected = sorted(n for n in names if n not in used and not _IGNORED.search(n))
  if config.tie_word_embeddings and "lm_head.weight" in unexpected:
    unexpected.remove("lm_head.weight")  # some tied checkpoints store the shared matrix twice
  if unexpected:
    raise ValueError(f"unexpected tensors for model_type {config.hf_model_type or config.family}: "
                     f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
  # One parameter kind at a time, its per-layer list dropped once stacked: never the model's layers twice.
  top["layers"] = {name: np.stack(layers.pop(name)) for name in list(layers)}
  return top


def params_to_hf(config: ModelConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Inverse of `hf_to_params`: a pure param dict -> {transformers name: numpy array} (contiguous, the params'
  dtype)."""
  return {name: fetch() for name, _, fetch in lazy_params_to_hf(config, params)}


def lazy_params_to_hf(config: ModelConfig, params: Mapping[str, Any], dtype: Any = None
                      ) -> list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
  """`params_to_hf` one tensor at a time: [(transformers name, shape, () -> numpy array)] in checkpoint order, each
  array contiguous, in `dtype` (None: the params'). Each call copies only its tensor (one layer's slice of a stacked
  parameter) to the host, so a writer that streams the tensors holds one at a time rather than the whole model
  twice."""
  out = []
  for t in tensor_table(config):
    for i in (range(config.num_layers) if t.per_layer else [None]):
      def fetch(t=t, i=i) -> np.ndarray:
        arrays = (params[n] if i is None else params["layers"][n][i] for n in t.ours)
        return np.ascontiguousarray(t.to_hf(*(np.asarray(a, dtype) for a in arrays)))
      out.append((t.hf_name if i is None else t.hf_name.format(i=i), t.hf_shape, fetch))
  return out


def _to_pure(tree: Any) -> Any:
  return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


def model_from_hf_tensors(hf_config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], *,
                          dtype: Any = jnp.float32, shardings: Any = None,
                          **config_overrides: Any) -> tuple[CausalLM, ModelConfig]:
  """Builds a CausalLM from a transformers config dict and transformers-named tensors.

  Args:
    hf_config: config.json contents (model_type llama / mistral / qwen2 / gpt2 / qwen3 / gemma2 / gemma3_text).
    tensors: {transformers tensor name: array} in transformers layout (torch Linear (out, in), GPT-2 Conv1D).
    dtype: parameter and compute dtype.
    shardings: optional pytree matching `nnx.state(model)` (nnx.State or pure dict) of jax Shardings, or a
      callable taking the abstract nnx.State and returning one; each parameter is placed with `device_put`
      straight into its sharding, so no device holds an unsharded copy.
    **config_overrides: extra ModelConfig fields (scan_layers, remat, ...).

  Returns:
    (model, config).
  """
  dtype_name = jnp.dtype(dtype).name
  config = ModelConfig.from_hf(hf_config, dtype=dtype_name, param_dtype=dtype_name, **config_overrides)
  leaves, treedef = jax.tree.flatten(hf_to_params(config, tensors))
  graphdef, abstract_state = nnx.split(abstract_model(config))
  if callable(shardings):
    shardings = shardings(abstract_state)
  targets = [None] * len(leaves) if shardings is None else treedef.flatten_up_to(_to_pure(shardings))
  # Each host array is replaced by its device copy as soon as that exists, so the host holds the model once, not
  # twice, while the parameters move.
  for i, target in enumerate(targets):
    leaves[i] = jnp.asarray(leaves[i]) if target is None else jax.device_put(leaves[i], target)
  nnx.replace_by_pure_dict(abstract_state, jax.tree.unflatten(treedef, leaves))
  return nnx.merge(graphdef, abstract_state), config


# ---------------------------------------------------------------------------------------------- safetensors
class SafetensorsFile(Mapping[str, np.ndarray]):
  """Lazy, memory-mapped reader of one .safetensors file (bfloat16 via ml_dtypes; no torch/jax needed).

  The header is validated when the file is opened (its length against the file size before it is read, then
  every tensor's dtype, shape and byte range against the data section), so reading a tensor cannot fail later.

  Raises:
    ModelFileError: a truncated file, a bogus header length, malformed header JSON or a tensor entry whose
      dtype, shape or byte range is invalid; the message names the file and the tensor.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    file_size = os.path.getsize(self.path)
    if file_size < 8:
      raise ModelFileError(self.path, f"not a safetensors file: {file_size} bytes, shorter than the 8-byte header "
                           "length")
    with open(self.path, "rb") as f:
      header_len = int.from_bytes(f.read(8), "little")
      if header_len > min(file_size - 8, _ST_MAX_HEADER_BYTES):  # Checked before reading (or allocating) it.
        raise ModelFileError(self.path, f"header length {header_len} exceeds the {file_size - 8} bytes after it "
                             f"(or the {_ST_MAX_HEADER_BYTES}-byte limit): truncated or not a safetensors file")
      raw = f.read(header_len)
    with errors.reading(self.path, "safetensors header"):
      header = json.loads(raw.decode("utf-8"))
    if not isinstance(header, dict):
      raise ModelFileError(self.path, f"safetensors header is a JSON {type(header).__name__}, expected an object")
    header.pop("__metadata__", None)
    self._data_start = 8 + header_len
    data_size = file_size - self._data_start
    for name, info in header.items():
      _check_tensor_entry(self.path, name, info, data_size)
    self._header = header

  def __getitem__(self, name: str) -> np.ndarray:
    info = self._header[name]
    if info["dtype"] not in _ST_DTYPES:
      raise ModelFileError(self.path, f"tensor {name!r}: dtype {info['dtype']} unsupported; expected one of "
                           f"{sorted(_ST_DTYPES)}")
    start, end = info["data_offsets"]
    dtype = _ST_DTYPES[info["dtype"]]
    shape = tuple(info["shape"])
    if end == start:
      return np.zeros(shape, dtype)
    return np.memmap(self.path, dtype=dtype, mode="r", offset=self._data_start + start, shape=shape)

  def __iter__(self) -> Iterator[str]:
    return iter(self._header)

  def __len__(self) -> int:
    return len(self._header)


def _check_tensor_entry(path: pathlib.Path, name: str, info: Any, data_size: int) -> None:
  """Raises ModelFileError unless `info` is {"dtype", "shape", "data_offsets"} describing bytes inside the
  `data_size`-byte data section that hold exactly prod(shape) elements of dtype."""
  where = f"tensor {name!r}"
  if not isinstance(info, dict):
    raise ModelFileError(path, f"{where}: header entry is a JSON {type(info).__name__}, expected an object")
  if not isinstance(info.get("dtype"), str):
    raise ModelFileError(path, f"{where}: dtype {info.get('dtype')!r} is not a safetensors dtype name")
  shape, offsets = info.get("shape"), info.get("data_offsets")
  if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
    raise ModelFileError(path, f"{where}: shape {shape!r} is not a list of non-negative integers")
  if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
      or not 0 <= offsets[0] <= offsets[1] <= data_size):
    raise ModelFileError(path, f"{where}: data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end <= "
                         f"{data_size} (the data section's size): truncated or corrupt file")
  if info["dtype"] not in _ST_DTYPES:
    return  # A dtype we cannot read (e.g. F8_E4M3) fails only if that tensor is read (see __getitem__).
  nbytes = math.prod(shape) * _ST_DTYPES[info["dtype"]].itemsize
  if offsets[1] - offsets[0] != nbytes:
    raise ModelFileError(path, f"{where}: data_offsets {offsets} span {offsets[1] - offsets[0]} bytes, but "
                         f"shape {shape} of {info['dtype']} needs {nbytes}")


class ShardedSafetensors(Mapping[str, np.ndarray]):
  """Tensors of a `model.safetensors.index.json` checkpoint, each read lazily from its shard."""

  def __init__(self, index_path: str | os.PathLike):
    index_path = pathlib.Path(index_path)
    with errors.reading(index_path, "safetensors index JSON"):
      index = json.loads(index_path.read_text(encoding="utf-8"))
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
      raise ModelFileError(index_path, "expected a 'weight_map' object mapping tensor names to file names")
    shards = sorted(set(weight_map.values()))
    for shard in shards:  # Shards live next to the index; a name may not point elsewhere.
      if os.path.basename(shard) != shard or not (index_path.parent / shard).is_file():
        raise ModelFileError(index_path, f"weight_map names shard {shard!r}, which is not a file next to the index")
    self._files = {f: SafetensorsFile(index_path.parent / f) for f in shards}
    self._weight_map = weight_map

  def __getitem__(self, name: str) -> np.ndarray:
    return self._files[self._weight_map[name]][name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._weight_map)

  def __len__(self) -> int:
    return len(self._weight_map)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes numpy arrays (incl. ml_dtypes bfloat16) as a .safetensors file (format metadata "pt")."""
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  arrays = {}
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype not in _ST_NAMES:
      raise ValueError(f"tensor {name!r}: dtype {array.dtype} cannot be written to safetensors")
    header[name] = {"dtype": _ST_NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
    arrays[name] = array
  header_bytes = json.dumps(header, separators=(",", ":")).encode()
  header_bytes += b" " * (-len(header_bytes) % 8)  # the data section starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(len(header_bytes).to_bytes(8, "little"))
    f.write(header_bytes)
    for array in arrays.values():
      f.write(array.tobytes())


def read_hf_folder(path: str | os.PathLike) -> tuple[dict[str, Any], Mapping[str, np.ndarray]]:
  """(config.json dict, lazy tensors) of a HF model folder with model.safetensors or a sharded index.

  Raises:
    ModelFileError: config.json or a safetensors file is malformed (the message names the file).
    ValueError: the folder lacks config.json or the weights.
  """
  path = pathlib.Path(path)
  config_path = path / "config.json"
  if not config_path.is_file():
    raise ValueError(f"{path}: expected a Hugging Face model folder with config.json")
  with errors.reading(config_path, "config.json"):
    hf_config = json.loads(config_path.read_text(encoding="utf-8"))
  if not isinstance(hf_config, dict):
    raise ModelFileError(config_path, f"config.json is a JSON {type(hf_config).__name__}, expected an object")
  if (path / "model.safetensors.index.json").is_file():
    return hf_config, ShardedSafetensors(path / "model.safetensors.index.json")
  if (path / "model.safetensors").is_file():
    return hf_config, SafetensorsFile(path / "model.safetensors")
  raise ValueError(f"{path}: expected model.safetensors or model.safetensors.index.json next to config.json")


def save_hf_folder(model: CausalLM, out_dir: str | os.PathLike, config: ModelConfig | None = None) -> None:
  """Writes config.json + model.safetensors that `transformers.AutoModelForCausalLM` loads. A LoRA model is
  exported merged (W + (alpha / r) A B; `CausalLM.merged`): a plain checkpoint that computes its logits."""
  if getattr(model, "lora", None) is not None:
    model = model.merged()
  config = config or model.config
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  # Every variable, not only nnx.Param: a frozen model's weights are FrozenParams; params_to_hf picks by name.
  params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), nnx.to_pure_dict(nnx.state(model)))
  write_safetensors(out_dir / "model.safetensors", params_to_hf(config, params))
  (out_dir / "config.json").write_text(json.dumps(config.to_hf(), indent=2, sort_keys=True))
