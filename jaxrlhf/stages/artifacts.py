"""What stages save and later stages load: policies (Hugging Face folders), reward models and ensembles
(`<dir>/spec.json` + `<dir>/params.msgpack`; `load_reward_model_any` also loads Hugging Face
sequence-classification reward models), and a loaded ensemble's cheaper equivalent when its members share one
backbone (`shared_backbone_model`).

With several processes, parameters sharded across processes are gathered first (every process takes part) and
process 0 writes; every process returns after the files exist.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Mapping, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError
from jaxrlhf.models import from_pretrained, load_tokenizer, save_pretrained
from jaxrlhf.models.config import ModelConfig, RopeScaling
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.hf_reward import reward_model_from_pretrained
from jaxrlhf.models.reward_model import PER_MEMBER, LoraRewardEnsemble, RewardEnsemble, RewardModel
from jaxrlhf.parallel import distributed
from jaxrlhf.train import state as state_lib


def save_policy(setup: state_lib.StateSetup, state: state_lib.TrainState, out_dir: str, prefix: str = "",
                tokenizer: Any = None, adapter_dir: str | None = None) -> str:
  """Saves the (policy part of the) trained model as a HF folder that `init_from` can load (process 0 writes;
  every process returns after the folder exists). Parameters sharded across processes are gathered first (every
  process takes part). A real checkpoint's `tokenizer` (one with `save_pretrained`; the world's has none and is
  rebuilt from the world config) is written alongside, so later stages and transformers read the folder alone.
  A LoRA policy is saved merged (`CausalLM.merged`), and its adapters alone into `adapter_dir` when given
  (`models.lora.save_adapters`)."""
  params, extra = state.params, state.extra
  if jax.process_count() > 1:
    params, extra = distributed.host_copy((params, extra))
  if distributed.is_primary():
    model = nnx.merge(setup.graphdef, params, extra)
    if prefix:
      model = getattr(model, prefix)
    save_pretrained(model, out_dir)
    if adapter_dir is not None and getattr(model, "lora", None) is not None:
      lora_lib.save_adapters(model, adapter_dir)
    if hasattr(tokenizer, "save_pretrained"):
      tokenizer.save_pretrained(out_dir)
  distributed.barrier(f"save_policy:{out_dir}")
  return out_dir


def _config_dict(config: ModelConfig) -> dict:
  return dataclasses.asdict(config)


def model_config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
  """The ModelConfig of a saved `dataclasses.asdict(config)` (a saved reward model's spec.json "model"; json
  turns tuples into lists and nested dataclasses into dicts)."""
  d = dict(d)
  if d.get("rope_scaling") is not None:
    d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
  if isinstance(d.get("eos_token_id"), list):
    d["eos_token_id"] = tuple(d["eos_token_id"])
  return ModelConfig(**d)


def save_reward_model(out_dir: str, config: ModelConfig, head: Any, num_members: int, state: nnx.State,
                      lora: Any = None, tokenizer: Any = None) -> str:
  """Writes `out_dir/spec.json` and `out_dir/params.msgpack` (the stacked RewardEnsemble state; with `lora`, a
  LoraRewardEnsemble's: the base backbone once + K adapter sets and heads, spec.json's "lora" its LoraConfig), and
  the tokenizer the model was trained with (`tokenizer.json` + `tokenizer_config.json`, its chat template as
  rendered in training: a template file's, with its default arguments) where it is a real one (the synthetic
  world's has no files), so an evaluation scores text rendered as in training (`saved_tokenizer`).

  With several processes, parameters sharded across processes are gathered (every process takes part) and
  process 0 writes; every process returns after the files exist.
  """
  values = distributed.host_copy(nnx.to_pure_dict(state))
  if distributed.is_primary():
    os.makedirs(out_dir, exist_ok=True)
    spec = {"model": _config_dict(config), "head": dataclasses.asdict(head), "num_members": num_members}
    lora = lora_lib.lora_config(lora)
    if lora is not None:  # Only then: a plain reward model's spec.json stays as it was.
      spec["lora"] = dataclasses.asdict(lora)
    with open(os.path.join(out_dir, "spec.json"), "w") as f:
      json.dump(spec, f, indent=2)
    with open(os.path.join(out_dir, "params.msgpack"), "wb") as f:
      f.write(flax.serialization.msgpack_serialize(values))
    if hasattr(tokenizer, "save_pretrained"):
      tokenizer.save_pretrained(out_dir)
  distributed.barrier(f"save_reward_model:{out_dir}")
  return out_dir


def saved_tokenizer(rm_dir: str) -> str:
  """`rm_dir` where that reward model folder holds a tokenizer (a reward stage's since it saves one, a Hugging Face
  sequence-classification folder's `tokenizer.json`), else ""."""
  return rm_dir if rm_dir and os.path.isfile(os.path.join(rm_dir, "tokenizer.json")) else ""


def reward_vocab_size(rm_dir: str) -> int | None:
  """The number of token ids the reward model in `rm_dir` embeds: spec.json's model.vocab_size (a jaxrlhf folder) or
  config.json's vocab_size (a Hugging Face folder); None when the folder holds neither."""
  if os.path.isfile(os.path.join(rm_dir, "spec.json")):
    return reward_model_spec(rm_dir)[0].vocab_size
  path = os.path.join(rm_dir, "config.json")
  if os.path.isfile(path):
    with open(path) as f:
      value = json.load(f).get("vocab_size")
    return value if isinstance(value, int) else None
  return None


def check_reward_tokenizer(rm_dir: str, tokenizer: Any, key: str) -> str:
  """A reward model that scores `tokenizer`'s token ids (a policy's samples, a stage's pairs) must have been trained
  on the same vocabulary. ConfigError naming `key` when the tokenizer saved in `rm_dir` maps tokens to other ids,
  when the model was trained on a real tokenizer's text but this stage's tokens are the synthetic world's, or when
  the stage's ids reach past the model's embedding table (an id past its end names no row of it; the lookup would
  not fail, it would read a wrong value). A different chat template only gets a printed note (the scores are then of
  text rendered otherwise than in training, which may be meant). A folder without a tokenizer (world-trained, older)
  is checked by its embedding size alone; a None tokenizer (a caller with token ids of its own) is not checked.
  Returns `rm_dir`."""
  if tokenizer is None:
    return rm_dir
  size = reward_vocab_size(rm_dir)
  if size is not None and tokenizer.vocab_size > size:
    raise ConfigError(f"{key}: the reward model {rm_dir} embeds {size} token ids but this stage's tokenizer has "
                      f"{tokenizer.vocab_size}; it was trained with another tokenizer")
  path = saved_tokenizer(rm_dir)
  if not path:
    return rm_dir
  own = load_tokenizer(path)
  if not hasattr(tokenizer, "backend"):
    raise ConfigError(f"{key}: the reward model {rm_dir} was trained on text tokenized by its saved tokenizer "
                      f"({own.vocab_size} tokens); this stage's tokens are the synthetic world's")
  if own.backend.get_vocab(with_added_tokens=True) != tokenizer.backend.get_vocab(with_added_tokens=True):
    raise ConfigError(f"{key}: the reward model {rm_dir} was trained with another vocabulary "
                      f"({own.vocab_size} tokens) than this stage's tokenizer ({tokenizer.vocab_size}); it would "
                      "score token ids that mean other text to it")
  if own.chat_template != getattr(tokenizer, "chat_template", None):
    print(f"[{key}] note: the reward model {rm_dir} was trained with another chat template than this stage's "
          "tokenizer renders with; it scores text rendered with this stage's", flush=True)
  return rm_dir

REWARD_ADAPTERS = "reward_adapters.msgpack"


def save_reward_adapters(out_dir: str, config: ModelConfig, head: Any, model: LoraRewardEnsemble) -> str:
  """Writes a LoRA reward model's trained parts alone: `out_dir/spec.json` (as `save_reward_model`'s, with "lora"
  and "adapters_only": true) and `out_dir/reward_adapters.msgpack` (the K adapter sets and K heads, stacked on the
  member axis). The frozen base is not written: a few MB where the base is hundreds; `load_reward_adapters` puts
  them back on the base model they were trained on."""
  values = distributed.host_copy(nnx.to_pure_dict(nnx.state(model, PER_MEMBER)))
  if distributed.is_primary():
    os.makedirs(out_dir, exist_ok=True)
    spec = {"model": _config_dict(config), "head": dataclasses.asdict(head), "num_members": model.num_members,
            "lora": dataclasses.asdict(model.lora_config), "adapters_only": True}
    with open(os.path.join(out_dir, "spec.json"), "w") as f:
      json.dump(spec, f, indent=2)
    with open(os.path.join(out_dir, REWARD_ADAPTERS), "wb") as f:
      f.write(flax.serialization.msgpack_serialize(values))
  distributed.barrier(f"save_reward_adapters:{out_dir}")
  return out_dir


# The fields that fix the base's parameter shapes: adapters fit a base only if these agree.
_BASE_SHAPE_FIELDS = ("vocab_size", "embed_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                      "tie_word_embeddings", "gated_mlp", "qkv_bias", "norm")


def load_reward_adapters(adapter_dir: str, base: str) -> LoraRewardEnsemble:
  """The LoraRewardEnsemble of `save_reward_adapters`' files on the base model `base` (a Hugging Face folder or a
  .gguf, `from_pretrained`; the model the reward stage started from). Rewards (B, K) as any reward model.

  Raises:
    ValueError: naming the file, when `adapter_dir` holds no adapters, or when the base's shape differs from the one
      the adapters were trained on (the differing fields).
  """
  path = os.path.join(adapter_dir, REWARD_ADAPTERS)
  if not os.path.isfile(path):
    raise ValueError(f"{path}: not found; expected the adapters of a LoRA reward model (save_reward_adapters, a "
                     "reward stage's <workdir>/adapters)")
  config, head, num_members = reward_model_spec(adapter_dir)
  lora = reward_model_lora(adapter_dir)
  base_model, base_config = from_pretrained(base, dtype=jnp.dtype(config.param_dtype))
  differ = {k: (getattr(config, k), getattr(base_config, k)) for k in _BASE_SHAPE_FIELDS
            if getattr(config, k) != getattr(base_config, k)}
  if differ:
    raise ValueError(f"{adapter_dir}/spec.json: the adapters were trained on a base with "
                     f"{ {k: a for k, (a, _) in differ.items()} }; "
                     f"{base} has {({k: b for k, (_, b) in differ.items()})}")
  abstract = nnx.eval_shape(lambda: LoraRewardEnsemble(config, head, lora, jax.random.split(jax.random.PRNGKey(0),
                                                                                              num_members)))
  graphdef, trained, frozen = nnx.split(abstract, PER_MEMBER, ...)
  with open(path, "rb") as f:
    pure = flax.serialization.msgpack_restore(f.read())
  expected = nnx.to_pure_dict(trained)
  if jax.tree.structure(pure) != jax.tree.structure(expected) or any(
      tuple(a.shape) != tuple(b.shape) for a, b in zip(jax.tree.leaves(pure), jax.tree.leaves(expected))):
    raise ValueError(f"{path}: its arrays do not match the spec's ensemble ({num_members} members, {lora})")
  nnx.replace_by_pure_dict(trained, jax.tree.map(jnp.asarray, pure))
  base_pure = {k: v for k, v in nnx.to_pure_dict(nnx.state(base_model)).items() if k != "lm_head"}
  frozen_pure = nnx.to_pure_dict(frozen)
  frozen_pure["members"]["backbone"] = {**frozen_pure["members"]["backbone"], **base_pure}
  nnx.replace_by_pure_dict(frozen, jax.tree.map(jnp.asarray, frozen_pure))
  return nnx.merge(graphdef, trained, frozen)


def reward_model_spec(rm_dir: str) -> tuple[ModelConfig, HeadConfig, int]:
  """(backbone config, head config, number of members) of a reward model saved by `save_reward_model`."""
  with open(os.path.join(rm_dir, "spec.json")) as f:
    spec = json.load(f)
  head = dict(spec["head"])
  if head.get("attribute_weights") is not None:
    head["attribute_weights"] = tuple(head["attribute_weights"])
  return model_config_from_dict(spec["model"]), HeadConfig(**head), spec["num_members"]


def reward_model_lora(rm_dir: str) -> lora_lib.LoraConfig | None:
  """The LoraConfig of a saved LoRA reward model (`save_reward_model(..., lora=)`), None for a plain one."""
  with open(os.path.join(rm_dir, "spec.json")) as f:
    lora = json.load(f).get("lora")
  return None if lora is None else lora_lib.LoraConfig(**lora)


def _ensemble_fn(rm_dir: str) -> Callable[[jax.Array], Any]:
  """key -> a fresh RewardEnsemble (or LoraRewardEnsemble) of the saved reward model's shape."""
  config, head, num_members = reward_model_spec(rm_dir)
  lora = reward_model_lora(rm_dir)
  if lora is not None:
    return lambda key: LoraRewardEnsemble(config, head, lora, jax.random.split(key, num_members))
  return lambda key: RewardEnsemble(config, head, num_members, rngs=nnx.Rngs(key))


def load_reward_model(rm_dir: str) -> RewardEnsemble | LoraRewardEnsemble:
  """The saved RewardEnsemble (rewards (B, K)) of `save_reward_model`; a LoraRewardEnsemble (same call, rewards
  (B, K)) where the folder holds a LoRA reward model."""
  make = _ensemble_fn(rm_dir)
  abstract = nnx.eval_shape(lambda: make(jax.random.PRNGKey(0)))
  graphdef, state = nnx.split(abstract)
  with open(os.path.join(rm_dir, "params.msgpack"), "rb") as f:
    pure = flax.serialization.msgpack_restore(f.read())
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  return nnx.merge(graphdef, state)


def reward_model_factory(rm_dir: str) -> Callable[[jax.Array], RewardEnsemble]:
  """key -> a freshly initialized RewardEnsemble of the saved reward model's shape (for building it inside a
  jitted train-state init, with the saved weights written in afterwards)."""
  return _ensemble_fn(rm_dir)


def load_reward_model_any(path: str, dtype: Any = jnp.float32) -> RewardEnsemble:
  """A RewardEnsemble (rewards (B, K)) from a jaxrlhf reward model folder (spec.json + params.msgpack, as
  `load_reward_model`) or a Hugging Face sequence-classification folder (config.json naming a
  *ForSequenceClassification architecture + model.safetensors; jaxrlhf.models.hf_reward), which becomes an
  ensemble of K = 1 stacked on the leading member axis.

  Args:
    path: the folder.
    dtype: parameter and compute dtype of a Hugging Face folder (a jaxrlhf folder keeps its saved dtype).

  Raises:
    ValueError: naming the folder and what was expected, when it is neither kind (or is a causal LM).
  """
  expected = ("expected a jaxrlhf reward model (spec.json + params.msgpack, as a reward stage saves) or a Hugging "
              "Face sequence-classification folder (config.json with a *ForSequenceClassification architecture + "
              "model.safetensors)")
  if not os.path.isdir(path):
    raise ValueError(f"{path}: {'is not a folder' if os.path.exists(path) else 'does not exist'}; {expected}")
  has_spec = os.path.isfile(os.path.join(path, "spec.json"))
  has_params = os.path.isfile(os.path.join(path, "params.msgpack"))
  if has_spec or has_params:
    if not (has_spec and has_params):
      missing = "params.msgpack" if has_spec else "spec.json"
      raise ValueError(f"{path}: has {'spec.json' if has_spec else 'params.msgpack'} but no {missing}; {expected}")
    return load_reward_model(path)
  if os.path.isfile(os.path.join(path, "config.json")):
    return RewardEnsemble.stack([reward_model_from_pretrained(path, dtype=dtype)])
  found = sorted(os.listdir(path))
  listing = f"holds {found[:8]}{' ...' if len(found) > 8 else ''}" if found else "is empty"
  raise ValueError(f"{path}: {listing}; {expected}")


def shared_backbone_model(rm: Any) -> Any:
  """`rm`, or ONE RewardModel with a K-head "multihead" head when the K > 1 members of `rm` hold identical backbone
  weights and scalar "linear" / "mlp" heads (heads trained on a frozen backbone: the `reward_heads` stage).

  Both give rewards (B, K) with member k's head in column k, so a scorer can take either; the RewardModel runs
  the backbone once instead of K times (same values up to float reassociation of the head's matmul). Anything
  that is not a RewardEnsemble is returned as is.
  """
  if not isinstance(rm, RewardEnsemble):
    return rm
  head = rm.members.head.config
  if rm.num_members == 1 or head.kind not in ("linear", "mlp"):
    return rm
  pure = nnx.to_pure_dict(nnx.state(rm))["members"]
  if not all(bool(np.all(np.asarray(x)[1:] == np.asarray(x)[:1])) for x in jax.tree.leaves(pure["backbone"])):
    return rm
  multihead = HeadConfig(kind="multihead", num_outputs=rm.num_members, member_kind=head.form,
                         hidden_dim=head.hidden_dim)
  config = rm.members.config
  graphdef, state = nnx.split(nnx.eval_shape(lambda: RewardModel(config, multihead, rngs=nnx.Rngs(0))))
  # Member k's head has one projection (a leading axis of 1); the multihead stacks the K of them on that axis.
  nnx.replace_by_pure_dict(state, {"backbone": jax.tree.map(lambda x: x[0], pure["backbone"]),
                                   "head": jax.tree.map(lambda x: x[:, 0], pure["head"])})
  return nnx.merge(graphdef, state)


def records_digest(records: Sequence[Any]) -> str:
  """A sha256 of the records' texts (prompt, chosen, rejected), in order: which records a feature cache's row
  indices refer to. Texts only: attribute noise or margins, which the features do not read, leave it unchanged."""
  rows = [[r.prompt, r.chosen, r.rejected] for r in records]
  return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
