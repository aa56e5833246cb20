"""RewardModel (decoder backbone + reward head), ensembles of K stacked members, and LoRA ensembles of K adapter
sets + heads on one shared base backbone."""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import CausalLM
from jaxrlhf.models.heads import HeadConfig, RewardHead, gather_last
from jaxrlhf.models.shared_prompt import shared_prompt_hidden, shared_prompt_layout

Array = jax.Array


class RewardModel(nnx.Module):
  """A causal-LM backbone (LM head dropped) read at the last non-pad token by a RewardHead.

  Call: `rm(input_ids_BxT, attention_mask_BxT=None, positions=None)` -> rewards (B,) float32, or (B, K) for a
  "multihead" head. `rm.attributes(...)` gives the (B, K) regression outputs of an "attributes" head.

  `lora` (a `models.lora.LoraConfig` or its fields; with `backbone` None) puts LoRA adapters on the backbone
  (`backbone.lora`; Hu et al. 2021, arXiv:2106.09685): the base weights are drawn first from `rngs` as without
  adapters, then the adapters (B = 0, so a fresh LoRA reward model scores exactly as its base), then the head.
  `merged()` is the plain RewardModel with the adapters folded into the kernels.
  """

  def __init__(self, config: ModelConfig, head: HeadConfig = HeadConfig(), *, rngs: nnx.Rngs,
               backbone: CausalLM | None = None, lora: Any = None):
    backbone = CausalLM(config, rngs=rngs, lora=lora) if backbone is None else backbone
    if hasattr(backbone, "lm_head"):
      del backbone.lm_head  # never used by a reward model: no memory, no optimizer state for it
    self.backbone = backbone
    self.head = RewardHead(config.embed_dim, head, rngs=rngs,
                           param_dtype=jnp.dtype(config.param_dtype))

  @property
  def config(self) -> ModelConfig:
    return self.backbone.config

  def features(self, input_ids: Array, attention_mask: Array | None = None,
               positions: Array | None = None) -> Array:
    """(B, D) final hidden state at each sequence's last non-pad token (the last position when unpadded)."""
    hidden_BxTxD = self.backbone.hidden_states(input_ids, attention_mask, positions)
    if attention_mask is None:
      return hidden_BxTxD[:, -1]
    return gather_last(hidden_BxTxD, attention_mask)

  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               positions: Array | None = None) -> Array:
    return self.head(self.features(input_ids, attention_mask, positions))

  def attributes(self, input_ids: Array, attention_mask: Array | None = None,
                 positions: Array | None = None) -> Array:
    """(B, K) per-attribute outputs (the K scalar projections before any scalarization)."""
    return self.head.outputs(self.features(input_ids, attention_mask, positions))

  def score_shared_prompt(self, input_ids: Array, prompt_length: Array, chosen_length: Array,
                          rejected_length: Array, *, attributes: bool = False) -> tuple[Array, Array]:
    """(chosen, rejected) rewards (B,) (or (B, K) multihead / attributes) of [prompt | chosen | rejected] rows.

    One forward over P + R_c + R_r tokens per pair (models.shared_prompt); each response is read at its own
    last token, so the rewards equal scoring prompt + chosen and prompt + rejected as separate rows.
    `attributes=True` returns the attribute outputs, as `attributes()`.
    """
    layout = shared_prompt_layout(prompt_length, chosen_length, rejected_length, input_ids.shape[1])
    hidden_BxTxD = shared_prompt_hidden(self.backbone, input_ids, layout)
    read_Bx2 = jnp.stack([layout.chosen_last, layout.rejected_last], axis=1)
    features_Bx2xD = jnp.take_along_axis(hidden_BxTxD, read_Bx2[:, :, None], axis=1)
    features_2BxD = jnp.concatenate([features_Bx2xD[:, 0], features_Bx2xD[:, 1]], axis=0)
    out = self.head.outputs(features_2BxD) if attributes else self.head(features_2BxD)
    b = input_ids.shape[0]
    return out[:b], out[b:]

  def merged(self) -> "RewardModel":
    """A plain RewardModel (no adapters; every parameter an nnx.Param) whose backbone kernels are W + (alpha / r) A B
    and whose head is this one's: it scores as this model does (up to float rounding). Without adapters: itself."""
    lora = getattr(self.backbone, "lora_config", None)
    if lora is None:
      return self
    pure = nnx.to_pure_dict(nnx.state(self))  # Params and frozen base parameters alike.
    adapters = pure["backbone"].pop("lora")
    pure["backbone"]["layers"] = lora_lib.merged_layers(self.config, lora, pure["backbone"]["layers"], adapters)
    config, head = self.config, self.head.config
    graphdef, state = nnx.split(nnx.eval_shape(lambda: RewardModel(config, head, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    return nnx.merge(graphdef, state)

  @classmethod
  def from_causal_lm(cls, lm: CausalLM, head: HeadConfig = HeadConfig(), *, seed: int = 0) -> "RewardModel":
    """A reward model initialized from a (pretrained) causal LM's weights with a fresh head.

    `lm` is consumed: the reward model shares (and owns) its parameter arrays.
    """
    return cls(lm.config, head, rngs=nnx.Rngs(seed), backbone=lm)


class _MemberCalls:
  """The calls of a K-member ensemble, each RewardModel's call run on every member by the class's `_per_member`
  (rewards (B, K), or (B, K, H) for multihead members)."""

  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               positions: Array | None = None) -> Array:
    return self._per_member(lambda m, *a: m(*a), input_ids, attention_mask, positions)

  def attributes(self, input_ids: Array, attention_mask: Array | None = None,
                 positions: Array | None = None) -> Array:
    """(B, K_members, K_attributes) attribute outputs."""
    return self._per_member(lambda m, *a: m.attributes(*a), input_ids, attention_mask, positions)

  def score_shared_prompt(self, input_ids: Array, prompt_length: Array, chosen_length: Array,
                          rejected_length: Array, *, attributes: bool = False) -> tuple[Array, Array]:
    """(chosen, rejected) rewards (B, K_members, ...) of shared-prompt rows (RewardModel.score_shared_prompt)."""
    return self._per_member(lambda m, *a: m.score_shared_prompt(*a, attributes=attributes), input_ids,
                            prompt_length, chosen_length, rejected_length)

  def _per_member(self, fn, *args) -> Array:
    raise NotImplementedError


class RewardEnsemble(_MemberCalls, nnx.Module):
  """K reward models kept as one stacked module: every parameter has a leading "ensemble" axis of size K.

  One call returns rewards (B, K) (or (B, K, H) for multihead members). Members differ by init seed
  (`RewardEnsemble(config, head, K, rngs=...)`) or share pretrained backbone weights with different head
  seeds (`RewardEnsemble.from_pretrained_backbone`).
  """

  def __init__(self, config: ModelConfig, head: HeadConfig, num_members: int, *, rngs: nnx.Rngs):
    if num_members < 1:
      raise ValueError(f"num_members must be >= 1, got {num_members}")

    @nnx.split_rngs(splits=num_members)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "ensemble"})
    def make(rngs):
      return RewardModel(config, head, rngs=rngs)

    self.members = make(rngs)
    self.num_members = num_members

  def _per_member(self, fn, *args) -> Array:
    """fn(member, *args) for every member (args shared), member outputs stacked on axis 1."""
    @nnx.vmap(in_axes=(0,) + (None,) * len(args), out_axes=1)
    def run(member, *a):
      return fn(member, *a)

    return run(self.members, *args)

  @classmethod
  def from_pretrained_backbone(cls, lm: CausalLM, head: HeadConfig, num_members: int, *,
                               seed: int = 0) -> "RewardEnsemble":
    """K members that all start from `lm`'s weights, each with its own head init (seed + k).

    This is the "finetune-seed" ensemble of Eisenstein et al. (2023): members differ only by head init and,
    during training, by data order.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(lm.config, head, num_members, rngs=nnx.Rngs(seed))))
    pure = nnx.to_pure_dict(state)
    backbone = nnx.to_pure_dict(nnx.state(lm))
    backbone.pop("lm_head", None)
    heads = [nnx.to_pure_dict(nnx.state(RewardHead(lm.config.embed_dim, head, rngs=nnx.Rngs(seed + k),
                                                   param_dtype=jnp.dtype(lm.config.param_dtype))))
             for k in range(num_members)]
    pure["members"]["backbone"] = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_members, *x.shape)), backbone)
    pure["members"]["head"] = jax.tree.map(lambda *xs: jnp.stack(xs), *heads)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)

  @classmethod
  def stack(cls, models: Sequence[RewardModel]) -> "RewardEnsemble":
    """The ensemble whose member k holds models[k]'s parameters (K = len(models); K = 1 wraps one model, e.g. an
    imported Hugging Face reward model, in the stacked form stages load). The models are not consumed."""
    if not models:
      raise ValueError("models: expected at least one RewardModel, got none")
    config, head = models[0].config, models[0].head.config
    for k, model in enumerate(models):
      if model.config != config or model.head.config != head:
        raise ValueError(f"models[{k}] has a different model or head config than models[0]; members of an "
                         "ensemble must share both")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(config, head, len(models), rngs=nnx.Rngs(0))))
    pure = nnx.to_pure_dict(state)
    pure["members"] = jax.tree.map(lambda *xs: jnp.stack(xs), *(nnx.to_pure_dict(nnx.state(m)) for m in models))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)

  def member(self, k: int) -> RewardModel:
    """Member k as a RewardModel (its parameter arrays sliced out of the stacked ones)."""
    if not 0 <= k < self.num_members:
      raise ValueError(f"member index {k} is out of range for an ensemble of {self.num_members} members")
    config, head = self.members.backbone.config, self.members.head.config
    graphdef, state = nnx.split(nnx.eval_shape(lambda: RewardModel(config, head, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda x: x[k], nnx.to_pure_dict(nnx.state(self.members))))
    return nnx.merge(graphdef, state)


# What each LoRA ensemble member owns (stacked over members): its adapters and its reward head. The rest of a
# member (the backbone's base weights) is ONE unstacked copy shared by all members.
PER_MEMBER = nnx.Any(nnx.PathContains("lora"), nnx.PathContains("head"))


def _with_member_axis(variable: nnx.Variable, add: bool) -> nnx.Variable:
  """`variable` with the logical axis "ensemble" put in front of (add) or taken off (not add) its axis names."""
  names = variable.get_metadata().get("out_sharding")
  if not names:
    return variable
  names = ("ensemble", *names) if add else tuple(names[1:])
  return variable.replace(variable.get_value(), out_sharding=names)


class LoraRewardEnsemble(_MemberCalls, nnx.Module):
  """K LoRA reward models on ONE shared base backbone: K adapter sets and K reward heads stacked on a leading
  "ensemble" axis, the base weights held once (not K times as in `RewardEnsemble`).

  Member k is `RewardModel(config, head, rngs=nnx.Rngs(keys_K[k]), lora=lora)` with its base weights replaced by
  member 0's: members differ by their adapters' A init and their head init (seeds), and, when trained, by data
  order. With B = 0 at init every member's backbone computes the base model. `member(k)` is member k as a
  standalone LoRA RewardModel (the shared base + its adapters + its head); `merged()` the plain `RewardEnsemble` of
  the K merged members (K backbones; for export).

  Call: rewards (B, K) (or (B, K, H) for multihead members), as `RewardEnsemble`; the K member forwards run as one
  `jax.vmap` over the stacked adapters and heads with the base weights unbatched (no copy of them per member).
  """

  def __init__(self, config: ModelConfig, head: HeadConfig, lora: Any, keys_K: jax.Array):
    lora = lora_lib.lora_config(lora)
    if lora is None:
      raise ValueError("lora: expected a LoraConfig (or its fields), got none; use RewardEnsemble without adapters")
    num_members = int(keys_K.shape[0])
    if num_members < 1:
      raise ValueError(f"keys_K: expected at least one member key, got shape {tuple(keys_K.shape)}")

    def member(key):
      return RewardModel(config, head, rngs=nnx.Rngs(key), lora=lora)

    graphdef, _, base = nnx.split(member(keys_K[0]), PER_MEMBER, ...)
    stacked = jax.vmap(lambda key: nnx.split(member(key), PER_MEMBER, ...)[1])(keys_K)
    stacked = jax.tree.map(lambda v: _with_member_axis(v, True), stacked,
                           is_leaf=lambda x: isinstance(x, nnx.Variable))
    self.members = nnx.merge(graphdef, stacked, base)
    self.num_members = num_members
    self.lora_config = lora

  def _split(self):
    return nnx.split(self.members, PER_MEMBER, ...)

  def _per_member(self, fn, *args) -> Array:
    """fn(member, *args) for every member (args and base weights shared), member outputs stacked on axis 1."""
    graphdef, stacked, base = self._split()
    return jax.vmap(lambda state_k: fn(nnx.merge(graphdef, state_k, base), *args), out_axes=1)(stacked)

  def member(self, k: int) -> RewardModel:
    """Member k as a standalone LoRA RewardModel (the shared base weights, its adapters and its head)."""
    if not 0 <= k < self.num_members:
      raise ValueError(f"member index {k} is out of range for an ensemble of {self.num_members} members")
    graphdef, stacked, base = self._split()
    state_k = jax.tree.map(lambda v: _with_member_axis(v.replace(v.get_value()[k]), False), stacked,
                           is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state_k, base)

  def merged(self) -> RewardEnsemble:
    """The plain RewardEnsemble whose member k is `member(k).merged()` (K full backbones)."""
    return RewardEnsemble.stack([self.member(k).merged() for k in range(self.num_members)])
