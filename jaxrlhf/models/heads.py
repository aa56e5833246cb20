"""Reward heads read at the last non-pad token.

Kinds (HeadConfig.kind):
  "linear"      r = h W + b                                   -> (B,)
  "mlp"         r = SiLU(h W1 + b1) W2 + b2 (as BaseReward)   -> (B,)
  "attributes"  K regression outputs a_k = h W_k + b_k, and the scalar r = sum_k w_k a_k with a fixed weight
                vector w (HelpSteer2-style multi-attribute regression)   -> (B, K) attributes, (B,) scalar
  "multihead"   K independent scalar heads (linear or mlp) on one backbone -> (B, K)
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

HEAD_KINDS = ("linear", "mlp", "attributes", "multihead")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """Reward head shape.

  kind: one of HEAD_KINDS.
  num_outputs: K for "attributes" and "multihead" (ignored otherwise).
  hidden_dim: width of the "mlp" hidden layer (default: the model width D).
  member_kind: "linear" or "mlp", the form of each head of a "multihead".
  attribute_weights: the K scalarization weights for "attributes" (default: all 1/K).
  """

  kind: str = "linear"
  num_outputs: int = 1
  hidden_dim: int | None = None
  member_kind: str = "linear"
  attribute_weights: tuple[float, ...] | None = None

  def __post_init__(self):
    if self.kind not in HEAD_KINDS:
      raise ValueError(f"head.kind must be one of {HEAD_KINDS}, got {self.kind!r}")
    if self.member_kind not in ("linear", "mlp"):
      raise ValueError(f"head.member_kind must be 'linear' or 'mlp', got {self.member_kind!r}")
    if self.num_outputs < 1:
      raise ValueError(f"head.num_outputs must be >= 1, got {self.num_outputs}")
    if self.attribute_weights is not None and len(self.attribute_weights) != self.num_outputs:
      raise ValueError(f"head.attribute_weights has {len(self.attribute_weights)} entries, "
                       f"expected num_outputs={self.num_outputs}")

  @property
  def num_heads(self) -> int:
    """Number of stacked scalar projections."""
    return self.num_outputs if self.kind in ("attributes", "multihead") else 1

  @property
  def form(self) -> str:
    """"mlp" or "linear": the form of each projection."""
    if self.kind == "multihead":
      return self.member_kind
    return "mlp" if self.kind == "mlp" else "linear"


def last_token_index(attention_mask_BxT: Array) -> Array:
  """(B,) index of the last non-pad token; works for left and right padding (all-pad rows give 0)."""
  mask = attention_mask_BxT.astype(bool)
  T = mask.shape[1]
  last = T - 1 - jnp.argmax(mask[:, ::-1], axis=1)
  return jnp.where(mask.any(axis=1), last, 0)


def gather_last(hidden_BxTxD: Array, attention_mask_BxT: Array) -> Array:
  """Hidden state (B, D) at each row's last non-pad token."""
  index_B = last_token_index(attention_mask_BxT)
  return jnp.take_along_axis(hidden_BxTxD, index_B[:, None, None], axis=1)[:, 0]


class RewardHead(nnx.Module):
  """K stacked scalar projections (linear or two-layer) of a (B, D) feature; see module docstring."""

  def __init__(self, embed_dim: int, config: HeadConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.config = config
    K, D = config.num_heads, embed_dim
    std = 1.0 / (D + 1) ** 0.5  # HF/TRL score-head scale: keeps initial rewards O(1)
    if config.form == "mlp":
      F = config.hidden_dim or D
      self.hidden_kernel = nnx.Param(
          (jax.random.normal(rngs.params(), (K, D, F)) * std).astype(param_dtype),
          out_sharding=("attributes", "embed", "mlp"))
      self.hidden_bias = nnx.Param(jnp.zeros((K, F), param_dtype), out_sharding=("attributes", "mlp"))
      D = F
      std = 1.0 / (F + 1) ** 0.5
    self.kernel = nnx.Param((jax.random.normal(rngs.params(), (K, D)) * std).astype(param_dtype),
                            out_sharding=("attributes", "embed"))
    self.bias = nnx.Param(jnp.zeros((K,), param_dtype), out_sharding=("attributes",))
    if config.kind == "attributes":
      weights = config.attribute_weights or (1.0 / K,) * K
      self.attribute_weights = nnx.Variable(jnp.asarray(weights, jnp.float32))

  def outputs(self, features_BxD: Array) -> Array:
    """(B, K) raw head outputs in float32."""
    x = features_BxD.astype(jnp.float32)
    if self.config.form == "mlp":
      x_BxKxF = jnp.einsum("bd,kdf->bkf", x, self.hidden_kernel[...].astype(jnp.float32))
      x_BxKxF = jax.nn.silu(x_BxKxF + self.hidden_bias[...].astype(jnp.float32))
      return jnp.einsum("bkf,kf->bk", x_BxKxF, self.kernel[...].astype(jnp.float32)) + self.bias[...]
    return jnp.einsum("bd,kd->bk", x, self.kernel[...].astype(jnp.float32)) + self.bias[...]

  def __call__(self, features_BxD: Array) -> Array:
    """Rewards: (B,) for linear/mlp/attributes (scalarized), (B, K) for multihead."""
    out_BxK = self.outputs(features_BxD)
    if self.config.kind == "multihead":
      return out_BxK
    if self.config.kind == "attributes":
      return out_BxK @ self.attribute_weights[...]
    return out_BxK[:, 0]


def per_position(head: RewardHead, hidden_BxTxD: Array) -> Array:
  """`head` applied at every position: float32 (B, T) (or (B, T, K) for a multihead). A scalar head read at each
  prefix is a value model V(s_t) (Value Augmented Sampling, Han et al. 2024, arXiv:2405.06639: a causal LM with a
  scalar value head, the value of prefix s_t read at its last token)."""
  B, T, D = hidden_BxTxD.shape
  out = head(hidden_BxTxD.reshape(B * T, D))
  return out.reshape(B, T, *out.shape[1:])
