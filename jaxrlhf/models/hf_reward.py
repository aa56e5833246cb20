"""Reward models in the Hugging Face sequence-classification format, both ways.

The format (`LlamaForSequenceClassification`, `MistralForSequenceClassification`, `Phi3ForSequenceClassification`,
`Qwen2ForSequenceClassification`, `Qwen3ForSequenceClassification`, `GemmaForSequenceClassification`,
`Gemma2ForSequenceClassification`, `Gemma3TextForSequenceClassification`, `GPT2ForSequenceClassification`):
config.json with that architecture, `id2label` (num_labels entries) and `pad_token_id`; model.safetensors with the
decoder's tensors (no LM head) and `score.weight` (num_labels, hidden), a bias-free linear layer applied to the final
hidden state of every position.

Where the reward is read:
  transformers reads the logits at the rightmost position whose token is not `config.pad_token_id` (index 0 for
  a row of pads only; the last position when pad_token_id is None, and then it refuses batches of more than one
  row). It positions tokens 0..T-1 whatever the padding when no position_ids are passed (TRL passes none).
  jaxrlhf's RewardModel reads at the last position where attention_mask is 1, and positions tokens by
  cumsum(attention_mask) - 1.
  The two agree, on right- and left-padded batches alike, when every pad slot holds pad_token_id and the last
  real token of each row is not pad_token_id (for RoPE families the position offset of left-padded rows does not
  change attention scores, so left padding agrees too). They differ when
    - a row's last real token equals pad_token_id (tokenizers with pad = eos and texts that end with eos, as
      TRL appends): transformers reads an earlier token, jaxrlhf the eos;
    - pad slots hold another id than pad_token_id: transformers reads a pad slot of a right-padded row;
    - pad_token_id is None: transformers reads the last slot (and scores one row at a time);
    - GPT-2 (learned positions) on left-padded rows: transformers' positions are shifted by the padding.
  The import records transformers' rule in `rm.config.pad_token_id`; `transformers_rewards` reads a RewardModel
  exactly as transformers would (its pad rule and positions), for the cases above.

Head kinds (jaxrlhf.models.heads):
  num_labels = 1           <-> "linear"; rewards (B,)
  num_labels = K > 1       <-> "multihead" of linear members (K independent rewards (B, K)), or "attributes"
                               when config.json carries `jaxrlhf_attribute_weights` (written by the export of an
                               "attributes" head: transformers' K logits are the attribute outputs, the scalar
                               reward their weighted sum, which transformers does not compute)
  "mlp" heads and "multihead" of mlp members cannot be exported: transformers' score is one linear layer.
  A nonzero head bias cannot be exported either (transformers' score has none) unless `drop_bias=True`, which
  shifts every reward by -bias (Bradley-Terry preferences and rankings are unchanged).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.models.config import HF_ARCHITECTURES, ModelConfig
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.hf import hf_to_params, params_to_hf, read_hf_folder, write_safetensors
from jaxrlhf.models.reward_model import LoraRewardEnsemble, RewardEnsemble, RewardModel
from jaxrlhf.parallel.sharding import auto_axes, state_shardings

Array = jax.Array

# transformers model_type -> its sequence-classification class (the architecture config.json names).
SEQUENCE_CLASSIFICATION_ARCHITECTURES = {
    "llama": "LlamaForSequenceClassification",
    "mistral": "MistralForSequenceClassification",
    "phi3": "Phi3ForSequenceClassification",
    "qwen2": "Qwen2ForSequenceClassification",
    "qwen3": "Qwen3ForSequenceClassification",
    "gemma": "GemmaForSequenceClassification",
    "gemma2": "Gemma2ForSequenceClassification",
    "gemma3_text": "Gemma3TextForSequenceClassification",
    "gpt2": "GPT2ForSequenceClassification",
}
# config.json key carrying an "attributes" head's scalarization weights (transformers keeps unknown keys).
ATTRIBUTE_WEIGHTS_KEY = "jaxrlhf_attribute_weights"
_SCORE = "score.weight"


def sequence_classification_architecture(hf_config: Mapping[str, Any]) -> str | None:
  """The *ForSequenceClassification architecture a config.json dict names, or None."""
  for arch in hf_config.get("architectures") or []:
    if isinstance(arch, str) and arch.endswith("ForSequenceClassification"):
      return arch
  return None


def _backbone_config(hf_config: Mapping[str, Any], config_path: pathlib.Path, **overrides: Any) -> ModelConfig:
  """The decoder's ModelConfig of a sequence-classification config.json (checked against its architecture)."""
  arch = sequence_classification_architecture(hf_config)
  model_type = hf_config.get("model_type")
  expected = SEQUENCE_CLASSIFICATION_ARCHITECTURES.get(model_type)
  if arch is None:
    raise ValueError(f"{config_path}: architectures={hf_config.get('architectures')!r} names no sequence-"
                     f"classification model; expected one of {sorted(SEQUENCE_CLASSIFICATION_ARCHITECTURES.values())} "
                     "(a *ForCausalLM folder is a policy: load it with jaxrlhf.models.from_pretrained)")
  if expected is None or arch != expected:
    raise ValueError(f"{config_path}: architecture {arch!r} with model_type={model_type!r} is not supported; "
                     f"expected one of {SEQUENCE_CLASSIFICATION_ARCHITECTURES}")
  # ModelConfig.from_hf knows the causal-LM architectures; the decoder is the same.
  return ModelConfig.from_hf(dict(hf_config, architectures=[HF_ARCHITECTURES[model_type]]), **overrides)


def _head_config(hf_config: Mapping[str, Any], num_labels: int, config_path: pathlib.Path) -> HeadConfig:
  id2label = hf_config.get("id2label")
  if isinstance(id2label, dict) and len(id2label) != num_labels:
    raise ValueError(f"{config_path}: id2label has {len(id2label)} labels but {_SCORE} has {num_labels} rows; "
                     "expected equal counts")
  weights = hf_config.get(ATTRIBUTE_WEIGHTS_KEY)
  if weights is not None:
    if not isinstance(weights, list) or len(weights) != num_labels:
      raise ValueError(f"{config_path}: {ATTRIBUTE_WEIGHTS_KEY}={weights!r}; expected a list of {num_labels} "
                       "numbers (one per label)")
    return HeadConfig("attributes", num_outputs=num_labels, attribute_weights=tuple(float(w) for w in weights))
  if num_labels == 1:
    return HeadConfig("linear")
  return HeadConfig("multihead", num_outputs=num_labels, member_kind="linear")


def reward_model_from_pretrained(path: str | os.PathLike, dtype: Any = jnp.float32, mesh: Any = None,
                                 **config_overrides: Any) -> RewardModel:
  """Loads a Hugging Face sequence-classification folder (see module docstring) as a RewardModel.

  Args:
    path: folder with config.json and model.safetensors (or a sharded model.safetensors.index.json).
    dtype: parameter and compute dtype (the head computes in float32 regardless).
    mesh: optional jax.sharding.Mesh; parameters are placed directly in the shardings their logical axes give.
    **config_overrides: ModelConfig fields such as scan_layers=False or remat="full".

  Returns:
    The RewardModel: rewards (B,) for num_labels = 1, (B, K) for a K-label "multihead" head; its
    `config.pad_token_id` records transformers' reading rule (`transformers_rewards`).

  Raises:
    ValueError / ModelFileError: naming the file and what was expected (no sequence-classification
      architecture, unsupported model_type, missing or misshapen `score.weight`, label count mismatch, unexpected
      tensors).
  """
  path = pathlib.Path(path)
  hf_config, tensors = read_hf_folder(path)
  config_path = path / "config.json"
  dtype_name = jnp.dtype(dtype).name
  config = _backbone_config(hf_config, config_path, dtype=dtype_name, param_dtype=dtype_name, **config_overrides)
  if _SCORE not in tensors:
    raise ValueError(f"{path}: the checkpoint has no {_SCORE!r} tensor (the reward head, shape (num_labels, "
                     f"{config.embed_dim})); expected a sequence-classification checkpoint")
  score_KxD = np.asarray(tensors[_SCORE])
  if score_KxD.ndim != 2 or score_KxD.shape[1] != config.embed_dim or score_KxD.shape[0] < 1:
    raise ValueError(f"{path}: tensor {_SCORE!r} has shape {score_KxD.shape}, expected (num_labels, "
                     f"{config.embed_dim})")
  head = _head_config(hf_config, score_KxD.shape[0], config_path)
  # A sequence-classification checkpoint holds no LM head: the tied table lists exactly the decoder's tensors
  # (the RewardModel drops the LM head anyway), and any other tensor (a score.bias, say) is reported unexpected.
  backbone = hf_to_params(config.replace(tie_word_embeddings=True), {k: tensors[k] for k in tensors if k != _SCORE})
  pure = {"backbone": backbone,
          "head": {"kernel": score_KxD.astype(config.params_dtype),
                   "bias": np.zeros((score_KxD.shape[0],), config.params_dtype)}}
  if head.kind == "attributes":
    pure["head"]["attribute_weights"] = np.asarray(head.attribute_weights, np.float32)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: RewardModel(config, head, rngs=nnx.Rngs(0))))
  if mesh is None:
    values = jax.tree.map(jnp.asarray, pure)
  else:
    shardings = nnx.to_pure_dict(state_shardings(abstract_state, auto_axes(mesh)))
    values = jax.tree.map(jax.device_put, pure, shardings)
  nnx.replace_by_pure_dict(abstract_state, values)
  return nnx.merge(graphdef, abstract_state)


def save_reward_model_pretrained(rm: RewardModel | RewardEnsemble | LoraRewardEnsemble, out_dir: str | os.PathLike,
                                 pad_token_id: int | None = None, *, member: int | None = None,
                                 drop_bias: bool = False) -> None:
  """Writes config.json + model.safetensors that `transformers.AutoModelForSequenceClassification` (and TRL's
  RewardTrainer / reward pipelines) load; its logits are `rm`'s rewards (module docstring: reading rules).

  A LoRA reward model is exported merged (backbone kernels W + (alpha / r) A B; `RewardModel.merged`): a plain
  checkpoint that scores as `rm` does. Frozen base weights (the stages' FrozenParams) are exported like Params.

  Args:
    rm: a RewardModel (LoRA or not) with a "linear", "attributes" or linear "multihead" head, or a RewardEnsemble /
      LoraRewardEnsemble (one member is written, merged with its adapters: `member`, which may be omitted for
      K = 1).
    out_dir: the folder to write (created if missing).
    pad_token_id: the tokenizer's pad id, which transformers uses to find the last real token; defaults to
      `rm.config.pad_token_id`.
    member: the ensemble member to export.
    drop_bias: export a nonzero head bias by dropping it (rewards shift by -bias; preferences are unchanged).

  Raises:
    ValueError: an "mlp" head (or multihead of mlp members), a nonzero bias without drop_bias, no pad_token_id,
      an ensemble of K > 1 without `member`, or a config transformers' class cannot express.
  """
  if isinstance(rm, (RewardEnsemble, LoraRewardEnsemble)):
    if member is None and rm.num_members != 1:
      raise ValueError(f"rm is an ensemble of {rm.num_members} members; pass member=k (0 <= k < "
                       f"{rm.num_members}) to export one")
    rm = rm.member(member or 0)  # a LoraRewardEnsemble's member k: the shared base + its adapters and head
  elif member is not None:
    raise ValueError(f"member={member} applies to a RewardEnsemble or LoraRewardEnsemble; rm is a single "
                     "RewardModel")
  head = rm.head.config
  if head.form != "linear":
    raise ValueError(f"head kind {head.kind!r}{' of mlp members' if head.kind == 'multihead' else ''} cannot be "
                     "exported: transformers' sequence-classification score is one bias-free linear layer; "
                     "expected a 'linear', 'attributes' or linear 'multihead' head")
  bias_K = np.asarray(jax.device_get(rm.head.bias[...]), np.float32)
  if np.any(bias_K != 0) and not drop_bias:
    raise ValueError(f"the head bias is nonzero (max |bias| = {np.abs(bias_K).max():.3g}) and transformers' score "
                     "layer has no bias; pass drop_bias=True to export without it (rewards shift by -bias, "
                     "preferences are unchanged)")
  pad = rm.config.pad_token_id if pad_token_id is None else int(pad_token_id)
  if pad is None:
    raise ValueError("pad_token_id is None (argument and rm.config.pad_token_id): transformers finds each row's "
                     "last real token by its pad id and refuses batches of more than one row without one; pass "
                     "pad_token_id= (the tokenizer's pad id)")
  # transformers' checkpoint has no adapters: write what the model computes, not its base weights.
  rm = rm.merged()
  config = rm.config.replace(pad_token_id=pad)
  hf = config.to_hf()
  model_type = hf["model_type"]
  num_labels = head.num_heads
  hf.update(architectures=[SEQUENCE_CLASSIFICATION_ARCHITECTURES[model_type]],
            id2label={str(i): f"LABEL_{i}" for i in range(num_labels)},
            label2id={f"LABEL_{i}": i for i in range(num_labels)})
  if head.kind == "attributes":
    hf[ATTRIBUTE_WEIGHTS_KEY] = [float(w) for w in np.asarray(rm.head.attribute_weights[...])]
  # Every variable, not only nnx.Param: a frozen model's weights are FrozenParams; params_to_hf picks by name.
  params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), nnx.to_pure_dict(nnx.state(rm)))
  tensors = params_to_hf(config.replace(tie_word_embeddings=True), params["backbone"])  # no LM head (see import)
  tensors[_SCORE] = np.ascontiguousarray(params["head"]["kernel"])
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  write_safetensors(out_dir / "model.safetensors", tensors)
  (out_dir / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True))


def hf_last_token_index(input_ids_BxT: Array, pad_token_id: int | None) -> Array:
  """(B,) transformers' read position: the rightmost token that is not `pad_token_id` (0 for an all-pad row),
  or the last position when pad_token_id is None."""
  B, T = input_ids_BxT.shape
  if pad_token_id is None:
    return jnp.full((B,), T - 1, jnp.int32)
  non_pad_BxT = (input_ids_BxT != pad_token_id).astype(jnp.int32)
  return jnp.argmax(jnp.arange(T, dtype=jnp.int32) * non_pad_BxT, axis=-1)


def transformers_rewards(rm: RewardModel, input_ids_BxT: Array, attention_mask_BxT: Array | None = None,
                         pad_token_id: int | None = None) -> Array:
  """`rm`'s rewards read as transformers reads its sequence-classification logits: at `hf_last_token_index`
  (pad id: the argument, else rm.config.pad_token_id), with positions 0..T-1.

  Returns:
    What `rm(...)` returns ((B,), or (B, K) for a multihead head), float32.

  Raises:
    ValueError: no pad id and more than one row (transformers raises too).
  """
  pad = rm.config.pad_token_id if pad_token_id is None else pad_token_id
  B, T = input_ids_BxT.shape
  if pad is None and B != 1:
    raise ValueError("transformers cannot score batches of more than one row without a pad_token_id; pass "
                     "pad_token_id= or score one row at a time")
  positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  hidden_BxTxD = rm.backbone.hidden_states(input_ids_BxT, attention_mask_BxT, positions_BxT)
  index_B = hf_last_token_index(input_ids_BxT, pad)
  return rm.head(jnp.take_along_axis(hidden_BxTxD, index_B[:, None, None], axis=1)[:, 0])
