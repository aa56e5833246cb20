"""LoRA adapters (Hu et al. 2021, arXiv:2106.09685) on the decoder's projections: y = W x + (alpha / r) B A x.

A (in -> r) starts random, B (r -> out) starts at zero, so a fresh adapter model computes exactly the base model.
Only A and B train; the base weights stay frozen (the stages keep them out of the optimizer as FrozenParams in the
train state's `extra`), and the reference of DPO is the same model with its adapters switched off
(`CausalLM.without_adapters()`), so no second copy of the weights is held.

Why our own implementation and not `flax.nnx.LoRA` / `nnx.LoRALinear` or qwix: the decoder keeps every layer's
weights STACKED on a leading "layers" axis and runs ONE scanned layer body over raw arrays (`decoder._layer`), with
multi-axis kernels ((D, N, H) for q, (N, H, D) for o) that carry logical axis names for sharding. nnx.LoRA wraps a
`Linear` module call with 2-D (in, out) kernels and no logical axes; qwix rewrites module calls / dot_generals by
module path, which the scan body (pure functions of arrays) does not have. Here the adapters are parameters stacked
exactly like the layers ((L, ...) with the "layers" axis), scanned with them, and named with the same logical axes
as the dimension of the kernel they touch ("embed", "heads", "kv_heads", "head_dim", "mlp"), so
`jaxrlhf.parallel` shards them like the layers they wrap; the rank axis is unnamed (replicated: it is small).

Shape letters: L layers, D embed, N query heads, K kv heads, H head dim, F mlp width, r the rank.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.models.config import ModelConfig

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapters.msgpack"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank r, alpha (the update is scaled by alpha / r) and the target projections (names from `TARGETS`; "gate"
  needs a gated MLP)."""
  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = ("q", "k", "v", "o")

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
      raise ValueError(f"rank: expected an int >= 1, got {self.rank!r}")
    if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not self.alpha > 0:
      raise ValueError(f"alpha: expected a number > 0, got {self.alpha!r}")
    bad = [t for t in self.targets if t not in TARGETS]
    if bad or not self.targets or len(set(self.targets)) != len(self.targets):
      raise ValueError(f"targets: {list(self.targets)} must be distinct, non-empty names from {list(TARGETS)}")

  @property
  def scale(self) -> float:
    return float(self.alpha) / self.rank

  def check(self, config: ModelConfig) -> None:
    """ValueError if a target does not exist in `config` ("gate" without a gated MLP)."""
    if "gate" in self.targets and not config.gated_mlp:
      raise ValueError("targets: 'gate' needs a gated MLP (model config gated_mlp=True); this model has none")


def lora_config(value: LoraConfig | Mapping[str, Any] | None) -> LoraConfig | None:
  """A LoraConfig from a config dict (`model.lora`); {} or None -> None (LoRA off)."""
  if value is None or isinstance(value, LoraConfig):
    return value
  if not value:
    return None
  return LoraConfig(**dict(value))


def _in_out(config: ModelConfig, target: str) -> tuple[tuple[int, ...], tuple[str, ...], tuple[int, ...],
                                                           tuple[str, ...]]:
  """(in shape, in axes, out shape, out axes) of a target's kernel (the kernel is (*in, *out))."""
  D, N, K, H, F = config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim, config.mlp_dim
  return {
      "q": ((D,), ("embed",), (N, H), ("heads", "head_dim")),
      "k": ((D,), ("embed",), (K, H), ("kv_heads", "head_dim")),
      "v": ((D,), ("embed",), (K, H), ("kv_heads", "head_dim")),
      "o": ((N, H), ("heads", "head_dim"), (D,), ("embed",)),
      "gate": ((D,), ("embed",), (F,), ("mlp",)),
      "up": ((D,), ("embed",), (F,), ("mlp",)),
      "down": ((F,), ("mlp",), (D,), ("embed",)),
  }[target]


def num_in_dims(config: ModelConfig, target: str) -> int:
  """How many leading kernel axes a target contracts (2 for o's (N, H), else 1)."""
  return len(_in_out(config, target)[0])


def adapter_shapes(config: ModelConfig, lora: LoraConfig) -> dict[str, tuple[tuple[int, ...], tuple[Any, ...]]]:
  """Per-layer {"<target>_a": ((*in, r), axes), "<target>_b": ((r, *out), axes)} (without the layer axis)."""
  out = {}
  for t in lora.targets:
    in_shape, in_axes, out_shape, out_axes = _in_out(config, t)
    out[f"{t}_a"] = ((*in_shape, lora.rank), (*in_axes, None))
    out[f"{t}_b"] = ((lora.rank, *out_shape), (None, *out_axes))
  return out


class LoraStack(nnx.Module):
  """Every layer's adapters, stacked on a leading "layers" axis like `decoder.LayerStack`.

  A ("<target>_a", (L, *in, r)) ~ Normal(0, 1 / fan_in) (fan_in = prod(in), so A x has O(1) entries like a
  default-initialized projection), B ("<target>_b", (L, r, *out)) = 0.
  """

  def __init__(self, config: ModelConfig, lora: LoraConfig, *, rngs: nnx.Rngs):
    lora.check(config)
    L, dtype = config.num_layers, config.params_dtype
    for name, (shape, axes) in adapter_shapes(config, lora).items():
      shape, axes = (L, *shape), ("layers", *axes)
      if name.endswith("_a"):
        fan_in = int(np.prod(shape[1:-1]))
        value = (jax.random.normal(rngs.params(), shape, jnp.float32) / np.sqrt(fan_in)).astype(dtype)
      else:
        value = jnp.zeros(shape, dtype)
      # Logical names, as decoder._make_param: jaxrlhf.parallel maps them to the mesh.
      setattr(self, name, nnx.Param(value, out_sharding=axes, eager_sharding=False))
    self.names = tuple(adapter_shapes(config, lora))

  def arrays(self) -> dict[str, jax.Array]:
    """{"<target>_a": (L, *in, r), "<target>_b": (L, r, *out)} in the storage dtype."""
    return {name: getattr(self, name)[...] for name in self.names}


def merged_layers(config: ModelConfig, lora: LoraConfig, layers: Mapping[str, Any], adapters: Mapping[str, Any]
                  ) -> dict[str, Any]:
  """The layer-stack params with W + (alpha / r) A B folded into each target kernel (computed in float32, stored
  in W's dtype): a plain model that computes what the adapter model does."""
  out = dict(layers)
  for t in lora.targets:
    a, b = jnp.asarray(adapters[f"{t}_a"], jnp.float32), jnp.asarray(adapters[f"{t}_b"], jnp.float32)
    w = out[f"{t}_kernel"]
    # (L, *in, r) x (L, r, *out) -> (L, *in, *out), per layer.
    delta = jax.vmap(lambda a_, b_: jnp.tensordot(a_, b_, axes=1))(a, b)
    out[f"{t}_kernel"] = (jnp.asarray(w, jnp.float32) + lora.scale * delta).astype(jnp.asarray(w).dtype)
  return out


# ------------------------------------------------------------------------------------------------ save / load
def save_adapters(model: Any, out_dir: str) -> str:
  """Writes the adapters alone: `out_dir/adapter_config.json` (rank, alpha, targets and the base model's shape)
  and `out_dir/adapters.msgpack` (the stacked A, B arrays). Small: a few MB where the base is hundreds."""
  if getattr(model, "lora", None) is None:
    raise ValueError("save_adapters: the model has no LoRA adapters (built without lora=)")
  os.makedirs(out_dir, exist_ok=True)
  values = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), nnx.to_pure_dict(nnx.state(model.lora)))
  spec = {**dataclasses.asdict(model.lora_config), "num_layers": model.config.num_layers,
          "embed_dim": model.config.embed_dim}
  with open(os.path.join(out_dir, ADAPTER_CONFIG), "w") as f:
    json.dump(spec, f, indent=2)
  with open(os.path.join(out_dir, ADAPTER_WEIGHTS), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(values))
  return out_dir


def read_adapter_config(adapter_dir: str) -> LoraConfig:
  """The LoraConfig saved by `save_adapters`."""
  with open(os.path.join(adapter_dir, ADAPTER_CONFIG)) as f:
    spec = json.load(f)
  return LoraConfig(rank=spec["rank"], alpha=spec["alpha"], targets=tuple(spec["targets"]))


def load_adapters(model: Any, adapter_dir: str) -> Any:
  """Writes the adapters saved by `save_adapters` into `model` (a CausalLM built with the same LoraConfig on the
  same base shape) in place, and returns it. ValueError naming the file on a mismatch."""
  path = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
  saved = read_adapter_config(adapter_dir)
  if getattr(model, "lora", None) is None or model.lora_config != saved:
    raise ValueError(f"{adapter_dir}/{ADAPTER_CONFIG}: adapters {saved} do not match the model's "
                     f"{getattr(model, 'lora_config', None)}")
  with open(path, "rb") as f:
    pure = flax.serialization.msgpack_restore(f.read())
  state = nnx.state(model.lora)
  current = nnx.to_pure_dict(state)
  if set(pure) != set(current):
    raise ValueError(f"{path}: arrays {sorted(pure)}, expected {sorted(current)}")
  for k in pure:
    if tuple(pure[k].shape) != tuple(current[k].shape):
      raise ValueError(f"{path}: {k} has shape {tuple(pure[k].shape)}, the model expects {tuple(current[k].shape)}")
  nnx.replace_by_pure_dict(state, {k: jnp.asarray(v, current[k].dtype) for k, v in pure.items()})
  nnx.update(model.lora, state)
  return model
