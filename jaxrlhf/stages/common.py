"""What every stage starts from: where the weights come from (`ModelSpec`), the mesh, the frozen-parameter
convention for reference and reward models inside a train state, the policy train state, and the stage outputs.

A stage's saved policy is a Hugging Face folder (`artifacts.save_policy`), so "stage:<name>" and a path load the
same way (`resolve_path` turns a reference into the earlier stage's output).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.config import STAGE_PREFIX, ConfigError, field, stage_ref
from jaxrlhf.models import CausalLM, from_pretrained
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardModel
from jaxrlhf.models.config import ModelConfig, RopeScaling
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.parallel import distributed
from jaxrlhf.parallel import make_mesh
from jaxrlhf.parallel.sharding import batch_shards
from jaxrlhf.train import scoring
from jaxrlhf.train import state as state_lib


# ------------------------------------------------------------------------------------------------ weights
@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Where the (policy or backbone) weights come from.

  init_from: "" random init from `config`; "stage:<name>" a previous stage's saved model; otherwise a HF
    folder or a .gguf file.
  config: ModelConfig fields (random init; vocab_size defaults to the tokenizer's) or overrides of a loaded
    model's config (e.g. scan_layers, remat, dtype).
  lora: {} (off: full finetuning) or `models.lora.LoraConfig` fields, e.g. dict(rank=8, alpha=16,
    targets=("q", "k", "v", "o")): only LoRA adapters train, the base weights are frozen (in the train state's
    `extra`, no optimizer state); the saved policy is the merged model, the adapters are saved apart.
  """
  init_from: str = stage_ref("model_dir")
  config: dict = field(default_factory=dict)
  lora: dict = field(default_factory=dict)

  def validate(self, path: str) -> None:
    try:
      lora = lora_lib.lora_config(self.lora)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{path}.lora: {e}; valid keys: rank (int >= 1), alpha (> 0), targets (names from "
                        f"{list(lora_lib.TARGETS)})") from e
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(self.config) - fields)
    if unknown:
      raise ConfigError(f"{path}.config.{unknown[0]}: unknown ModelConfig key; valid keys: "
                        + ", ".join(sorted(fields)))
    if not self.init_from:
      try:
        config = model_config(self, vocab_size=self.config.get("vocab_size", 256))
      except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}.config: {e}") from e
      if lora is not None:
        try:
          lora.check(config)
        except ValueError as e:
          raise ConfigError(f"{path}.lora.{e}") from e


def model_config(spec: ModelSpec, vocab_size: int | None = None, base: ModelConfig | None = None) -> ModelConfig:
  """The ModelConfig of a random init (`spec.config` over the defaults) or `base` with `spec.config` overrides."""
  overrides = dict(spec.config)
  if isinstance(overrides.get("rope_scaling"), Mapping):
    overrides["rope_scaling"] = RopeScaling(**overrides["rope_scaling"])
  if base is not None:
    return base.replace(**overrides)
  if vocab_size is not None:
    overrides.setdefault("vocab_size", vocab_size)
  return ModelConfig(**overrides)


def resolve_path(init_from: str, inputs: Mapping[str, Mapping[str, Any]], key: str = "model_dir") -> str:
  """A path from `init_from`: "stage:<name>" -> that stage's `outputs[key]`; anything else as is."""
  if not init_from.startswith(STAGE_PREFIX):
    return init_from
  name = init_from[len(STAGE_PREFIX):]
  if name not in inputs:
    raise ValueError(f"{init_from!r}: no finished stage {name!r}; finished stages: {sorted(inputs)}")
  if key not in inputs[name]:
    raise ValueError(f"{init_from!r}: stage {name!r} has no {key!r} output (its outputs: "
                     f"{sorted(inputs[name])})")
  return inputs[name][key]


def load_weights(spec: ModelSpec, inputs: Mapping[str, Any], vocab_size: int | None
                 ) -> tuple[ModelConfig, dict | None, str]:
  """(config, pure param dict of the pretrained CausalLM or None, model path or "")."""
  if not spec.init_from:
    return model_config(spec, vocab_size), None, ""
  path = resolve_path(spec.init_from, inputs)
  overrides = dict(spec.config)
  # One dtype for parameters and compute when loading (from_pretrained's contract); overrides may set it.
  dtype = overrides.pop("param_dtype", None) or overrides.pop("dtype", None) or "float32"
  overrides.pop("dtype", None)
  lm, config = from_pretrained(path, dtype=jnp.dtype(dtype), **overrides)
  pure = nnx.to_pure_dict(nnx.state(lm, nnx.Param))
  return config, jax.device_get(pure), path


def overwrite(state: nnx.State, pure: Mapping[str, Any], prefix: Sequence[str] = (), broadcast: int = 0
              ) -> nnx.State:
  """A copy of `state` whose leaves under `prefix` are replaced by `pure` (placed like the old leaves, in their
  dtype).

  broadcast > 0 stacks each new leaf `broadcast` times on a leading axis (an ensemble's shared backbone). The host
  holds one copy of a leaf at a time, never `broadcast` of them: the stack is built on the devices, in the old
  leaf's sharding. A leaf already in the model's dtype is transferred without a host copy.
  """
  target = nnx.to_pure_dict(state)
  node = target
  for key in prefix:
    node = node[key]

  def put(old, new):
    new = np.asarray(new, dtype=old.dtype)  # a copy only when the dtype changes
    shape = (broadcast, *new.shape) if broadcast else new.shape
    if shape != old.shape:
      raise ValueError(f"pretrained weights: shape {shape} does not match the model's {old.shape}")
    if broadcast:
      return _stack_on_devices(new, shape, old.sharding)
    return jax.device_put(new, old.sharding)

  replaced = jax.tree.map(put, {k: node[k] for k in pure}, dict(pure))
  node.update(replaced)
  out = jax.tree.map(lambda x: x, state)
  nnx.replace_by_pure_dict(out, target)
  return out


def _stack_on_devices(leaf: np.ndarray, shape: tuple[int, ...], sharding: Any) -> jax.Array:
  """`shape` = (K, *leaf.shape): K copies of `leaf` made by the devices into `sharding`. The leaf goes over once,
  replicated on the mesh like any device_put of a host value (so also across processes)."""
  if isinstance(sharding, jax.sharding.NamedSharding):
    source = jax.device_put(leaf, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
  else:
    source = jax.device_put(leaf, sharding)
  return _stacker(shape, sharding)(source)


@functools.lru_cache(maxsize=None)
def _stacker(shape: tuple[int, ...], sharding: Any) -> Any:
  """The jitted broadcast into `shape` and `sharding`, one per (shape, sharding): the leaves of unrolled layers
  share a few shapes, so a model's load compiles a handful of these, not one per leaf."""
  return jax.jit(lambda x: jnp.broadcast_to(x, shape), out_shardings=sharding)

# ------------------------------------------------------------------------------------------------ mesh and batch
def make_stage_mesh(mesh_config: Any, num_devices: int):
  """The (data, fsdp, tensor) mesh of a stage over its first `num_devices` devices (0: all).

  Raises:
    ConfigError naming num_devices: more devices than there are (a slice would silently give fewer), or a subset
      in a multi-process run (the first devices are process 0's alone, so the other processes would hold none).
  """
  available = jax.devices()
  if num_devices > len(available):
    raise ConfigError(f"num_devices: {num_devices} devices asked for, but there are {len(available)} "
                      f"({jax.default_backend()}); use 0 (all) or at most {len(available)}")
  if num_devices and num_devices != len(available) and jax.process_count() > 1:
    raise ConfigError(f"num_devices: {num_devices} of the {len(available)} devices of a {jax.process_count()}-process "
                      "run would leave some processes without devices; use 0 (all) and shape the mesh instead")
  return make_mesh(mesh_config, available[:num_devices] if num_devices else available)


def check_batch_divisible(batch_size: int, mesh: Any, path: str) -> None:
  """ValueError naming `path` unless a batch of `batch_size` rows splits evenly over the mesh's batch shards."""
  shards = batch_shards(mesh)
  if batch_size % shards:
    raise ValueError(f"{path}: batch size {batch_size} is not divisible by the {shards} data shards of the mesh")


def check_accumulation(batch_size: int, grad_accum_steps: int, path: str) -> None:
  """ConfigError unless `grad_accum_steps` divides `batch_size` (`path` = the stage's dotted path)."""
  if batch_size % grad_accum_steps:
    raise ConfigError(f"{path}.data.batch_size: {batch_size} is not divisible by "
                      f"{path}.optimizer.grad_accum_steps={grad_accum_steps}")


def check_logps_path(logps_path: str, logps_chunk_size: int, path: str) -> None:
  """ConfigError unless the stage's LM-head log-prob settings go together ("full" takes no chunk size)."""
  if logps_path == "full" and logps_chunk_size:
    raise ConfigError(f"{path}.logps_chunk_size: {logps_chunk_size} with {path}.logps_path='full' (the whole "
                      f"(B, T, V) logits); set it to 0, or logps_path to 'chunked' / 'fused' / 'auto'")


def logps_path(cfg: Any) -> tuple[int, bool]:
  """(chunk_size, fused) of a config's `logps_path` and `logps_chunk_size` (a stage's, or the rl stage's `loss`) on
  this backend (`scoring.resolve_logps_path`), logged once so the run says which path it took."""
  chunk_size, fused = scoring.resolve_logps_path(cfg.logps_path, cfg.logps_chunk_size)
  if fused:
    taken = (f"fused, softmax gradient recomputed per chunk of {chunk_size} tokens" if chunk_size else
             f"fused, softmax gradient stored, chunks of {scoring.DEFAULT_LOGPS_CHUNK} tokens")
  else:
    taken = f"chunked, chunks of {chunk_size} tokens" if chunk_size else "full"
  print(f"[logps] LM-head log-probs: {taken} (logps_path={cfg.logps_path!r}, backend {jax.default_backend()})",
        flush=True)
  return chunk_size, fused


# ------------------------------------------------------------------------------------------------ train states
class FrozenParam(nnx.Variable):
  """A parameter that is not trained: `nnx.split(model, nnx.Param, ...)` puts it in the state's `extra`."""


def frozen(module: nnx.Module) -> nnx.Module:
  """`module` with every nnx.Param turned into a FrozenParam (same values and logical-axis metadata)."""
  graphdef, state = nnx.split(module)
  state = jax.tree.map(
      lambda v: FrozenParam(v.get_value(), **v.get_metadata()) if isinstance(v, nnx.Param) else v, state,
      is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


def frozen_base(module: nnx.Module, trainable: Any = nnx.PathContains("lora")) -> nnx.Module:
  """A LoRA model with every nnx.Param outside its adapters (`module.lora`) turned into a FrozenParam: only the
  adapters train, the base weights sit in the train state's `extra` (one copy, no optimizer state).
  `trainable`: the nnx filter of what stays trainable (a LoRA reward model: its adapters and its head)."""
  graphdef, adapters, rest = nnx.split(module, trainable, ...)
  rest = jax.tree.map(
      lambda v: FrozenParam(v.get_value(), **v.get_metadata()) if isinstance(v, nnx.Param) else v, rest,
      is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, adapters, rest)


def logical_or_replicated(mesh: Any) -> Any:
  """Parameter shardings from logical axes on `mesh` (None: replicated on one device)."""
  return state_lib.logical_shardings(mesh) if mesh is not None else None


def policy_setup(model_config: Any, pretrained: dict | None, optimizer: Any, seed: int, mesh: Any,
                 lora: Any = None) -> state_lib.StateSetup:
  """A CausalLM train state (sharded by logical axes), starting from `pretrained` weights if given.

  `lora` (a ModelSpec's `lora`: {} / None off, else LoraConfig fields): the model carries adapters, its base weights
  are frozen (`frozen_base`: the state's `extra`) and only the adapters are `params` (and have optimizer state).
  """
  lora = lora_lib.lora_config(lora)
  if lora is None:
    model_fn = lambda key: CausalLM(model_config, rngs=nnx.Rngs(key))  # noqa: E731
  else:
    model_fn = lambda key: frozen_base(CausalLM(model_config, rngs=nnx.Rngs(key), lora=lora))  # noqa: E731
  setup = state_lib.init_train_state(model_fn, optimizer, seed, mesh=mesh, shardings=logical_or_replicated(mesh))
  if pretrained is None:
    return setup
  fresh = setup.init

  def init():
    state = fresh()
    if lora is not None:
      return state.replace(extra=overwrite(state.extra, pretrained))
    return state.replace(params=overwrite(state.params, pretrained))

  return setup._replace(init=init)


# ------------------------------------------------------------------------------------------------ outputs
def stage_outputs(results: Mapping[str, Any], **extra: Any) -> dict:
  """The JSON outputs of a stage: the checkpoint dir, final metrics, and `extra` (paths, reports)."""
  return {"checkpoint_dir": results["checkpoint_dir"], "metrics": results["metrics"], **extra}

def write_results(workdir: str, metrics: Mapping[str, Any], **extra: Any) -> str:
  """Writes `workdir/results.json` = {"status": "done", "metrics", **extra} (process 0; atomically) and returns
  its path: the file an evaluation stage leaves for `experiments.tables` and notebooks."""
  path = os.path.join(workdir, "results.json")
  if distributed.is_primary():
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump({"status": "done", "metrics": dict(metrics), **extra}, f, indent=2)
    os.replace(tmp, path)
  return path


def feature_model(model_config: Any, backbone: Mapping[str, Any]) -> RewardModel:
  """A RewardModel of the pretrained `backbone` (a CausalLM's or reward model's pure backbone params, no lm_head)
  whose "attributes" head is the D x D identity: its attribute outputs (`scoring.pair_rewards(...,
  attributes=True)`) are the final-norm hidden states at the reward read positions, exactly (x @ I = x), in either
  pair layout. The reward_heads stage caches these features; the probe stage probes them."""
  d = model_config.embed_dim
  head = HeadConfig(kind="attributes", num_outputs=d)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: RewardModel(model_config, head, rngs=nnx.Rngs(0))))
  dtype = jnp.dtype(model_config.param_dtype)
  nnx.replace_by_pure_dict(state, {
      "backbone": jax.tree.map(jnp.asarray, dict(backbone)),
      "head": {"kernel": jnp.eye(d, dtype=dtype), "bias": jnp.zeros((d,), dtype),
               "attribute_weights": jnp.full((d,), 1.0 / d, jnp.float32)}})
  return nnx.merge(graphdef, state)


def update_reference(state: Any, alpha: float, apply: jax.Array | bool = True) -> Any:
  """TR-DPO's reference update (Gorbatovski et al. 2024, arXiv 2404.09656, Sec. 3; TRL's SyncRefModelCallback):
  ref <- alpha * policy + (1 - alpha) * ref on every reference parameter (in float32, cast back to its dtype); alpha
  = 1 is the hard update, an exact copy. `apply` (a traced bool) keeps the old reference where False. `state`: a
  TrainState whose params hold "policy" and whose extra holds its frozen "reference" of the same structure (the
  rl stage's and the preference stage's resident reference)."""
  params, extra = nnx.to_pure_dict(state.params), nnx.to_pure_dict(state.extra)

  def mix(p, r):
    new = p if alpha == 1.0 else alpha * p.astype(jnp.float32) + (1.0 - alpha) * r.astype(jnp.float32)
    return jnp.where(apply, new.astype(r.dtype), r)

  extra["reference"] = jax.tree.map(mix, params["policy"], extra["reference"])
  out = jax.tree.map(lambda x: x, state.extra)
  nnx.replace_by_pure_dict(out, extra)
  return state.replace(extra=out)
