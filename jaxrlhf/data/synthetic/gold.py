r"""The gold reward r*(x, y) of the synthetic world, as one function of padded token arrays.

The same code runs on numpy (for records) and on jax.numpy (jittable, for training/evaluation): every
function takes the array module `xp` explicitly, so there is one implementation, not two.

Notation: x = prompt ids, y = response ids y_1..y_T with mask m_t. Scored positions are masked tokens
before the first (masked) `<eos>`: s_t = m_t * [no eos among masked y_{<t}] * [y_t != eos]; n = sum_t s_t.
The prompt topic k(x) = argmax_k #{prompt tokens in topic k} (ties -> lowest k; -1 if no topic word).

  quality     Q = alpha * sum_t s_t q[y_t] / max(n, 1)
  relevance   R = rho * sum_t s_t rel(y_t, x) / max(n, 1),   rel = +1 on-topic word, -1 other-topic word, else 0
  coherence   C = sum_{t>=2} s_{t-1} s_t B[y_{t-1}, y_t]              (sparse bigram bonuses / penalties)
  repetition  P = -lambda * sum_t s_t [y_t not a function word] [y_t in {y_s : t-w <= s < t, s_s = 1}]
  length      L = beta * (2 n / L* - (n / L*)^2)                     (max beta at n = L*, 0 at n = 2 L*)
  r*(x, y) = Q + R + C + P + L

q[v] is a seeded per-token quality; tokens that do not belong in a response (specials, chat/control markers,
score tokens, instruction words) get q = `special_quality` (strongly negative) and no topic; ids outside
[0, V) score as `<unk>`.
Per-token credit c_t = s_t (alpha q[y_t] / n + rho rel_t / n + s_{t-1} B[y_{t-1}, y_t] + P_t) sums to
Q + R + C + P = r* - L over t (the non-length part).
"""

import dataclasses
from typing import Any

import numpy as np

ATTRIBUTE_NAMES = ("quality", "relevance", "coherence", "repetition", "length")


@dataclasses.dataclass(frozen=True, eq=False)
class GoldSpec:
  """Tables and constants of the gold reward (built by the World from its seed).

  Attributes:
    quality_V: float32 (V,) per-token quality q.
    topic_V: int32 (V,) topic of each token, -1 for non-topic tokens.
    bigram_VxV: float32 (V, V) coherence bonus B[prev, next].
    repeatable_V: bool (V,) tokens exempt from the repetition penalty (function words).
    num_topics, eos_id: ints; oov_id: the id that ids outside [0, V) score as (`<unk>`).
    quality_weight (alpha), relevance_weight (rho), repeat_penalty (lambda), repeat_window (w),
    length_weight (beta), length_optimum (L*): the constants in the equations above.
  """

  quality_V: np.ndarray
  topic_V: np.ndarray
  bigram_VxV: np.ndarray
  repeatable_V: np.ndarray
  num_topics: int
  eos_id: int
  oov_id: int
  quality_weight: float
  relevance_weight: float
  repeat_penalty: float
  repeat_window: int
  length_weight: float
  length_optimum: float


def _lookup(table: np.ndarray, xp: Any, *index_BxT: Any) -> Any:
  """table[index_BxT...] elementwise (one index array per table axis), shaped and sharded like the index arrays.

  On jax arrays sharded over an Explicit mesh axis (`jax.make_mesh`'s default) a plain gather from the replicated
  table has no unambiguous output sharding and raises; there the output is given the indices' sharding."""
  if xp is np:
    return table[index_BxT]
  import jax  # pylint: disable=g-import-not-at-top  (numpy users of this module need no jax)
  sharding = jax.typeof(index_BxT[0]).sharding
  if any(t == jax.sharding.AxisType.Explicit for t in getattr(sharding.mesh, "axis_types", ())):
    return xp.asarray(table).at[index_BxT].get(out_sharding=sharding)
  return xp.asarray(table)[index_BxT]


def _check_shapes(prompt_ids, prompt_mask, response_ids, response_mask) -> None:
  if prompt_ids.ndim != 2 or prompt_mask.shape != prompt_ids.shape:
    raise ValueError(f"prompt_ids/prompt_mask must be (B, P) of equal shape, got {prompt_ids.shape} and "
                     f"{prompt_mask.shape}")
  if response_ids.ndim != 2 or response_mask.shape != response_ids.shape:
    raise ValueError(f"response_ids/response_mask must be (B, T) of equal shape, got {response_ids.shape} and "
                     f"{response_mask.shape}")
  if prompt_ids.shape[0] != response_ids.shape[0]:
    raise ValueError(f"batch sizes differ: prompt_ids {prompt_ids.shape[0]} vs response_ids "
                     f"{response_ids.shape[0]}")


def length_term(spec: GoldSpec, n: Any, xp: Any = np) -> Any:
  """beta * (2 n / L* - (n / L*)^2): the length component for n scored tokens (any shape)."""
  u = xp.asarray(n, dtype=xp.float32) / spec.length_optimum
  return spec.length_weight * (2.0 * u - u * u)


def prompt_topic(spec: GoldSpec, prompt_ids_BxP: Any, prompt_mask_BxP: Any, xp: Any = np) -> Any:
  """int32 (B,): the prompt's majority topic (ties -> lowest index), -1 when it has no topic word."""
  ids_BxP = xp.asarray(prompt_ids_BxP).astype(xp.int32)
  ids_BxP = xp.where((ids_BxP < 0) | (ids_BxP >= spec.topic_V.shape[0]), spec.oov_id, ids_BxP)
  topic_BxP = _lookup(spec.topic_V, xp, ids_BxP)
  hits_BxPxK = (topic_BxP[:, :, None] == xp.arange(spec.num_topics)[None, None, :]) & (
      prompt_mask_BxP[:, :, None] > 0)
  counts_BxK = hits_BxPxK.sum(axis=1)
  return xp.where(counts_BxK.max(axis=1) > 0, counts_BxK.argmax(axis=1), -1).astype(xp.int32)


def scored_tokens(spec, response_ids_BxT, response_mask_BxT, xp=np):
  """(ids (B, T) int32 with ids outside the vocabulary mapped to `oov_id`, scored (B, T) bool): the response
  tokens the gold reward scores, i.e. masked tokens before the first end token."""
  ids_BxT = xp.asarray(response_ids_BxT).astype(xp.int32)
  ids_BxT = xp.where((ids_BxT < 0) | (ids_BxT >= spec.quality_V.shape[0]), spec.oov_id, ids_BxT)
  mask_BxT = xp.asarray(response_mask_BxT) > 0
  is_eos_BxT = (ids_BxT == spec.eos_id) & mask_BxT
  eos_before_BxT = (xp.cumsum(is_eos_BxT.astype(xp.int32), axis=1) - is_eos_BxT.astype(xp.int32)) > 0
  return ids_BxT, mask_BxT & ~eos_before_BxT & ~is_eos_BxT


def token_relevance(spec, topic_B, ids_BxT, xp=np):
  """(B, T) float32 relevance of each token to its prompt's topic: +1 on topic, -1 off topic, 0 for topic-free
  tokens or prompts."""
  token_topic_BxT = _lookup(spec.topic_V, xp, ids_BxT)
  return xp.where(token_topic_BxT < 0, 0.0,
                  xp.where((token_topic_BxT == topic_B[:, None]), 1.0,
                           xp.where(topic_B[:, None] < 0, 0.0, -1.0))).astype(xp.float32)


def _token_terms(spec, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT, xp):
  """Per-token pieces shared by the reward, its components and its token credit."""
  ids_BxT, scored_BxT = scored_tokens(spec, response_ids_BxT, response_mask_BxT, xp)
  s_BxT = scored_BxT.astype(xp.float32)
  n_B = s_BxT.sum(axis=1)
  inv_n_B = 1.0 / xp.maximum(n_B, 1.0)

  topic_B = prompt_topic(spec, xp.asarray(prompt_ids_BxP).astype(xp.int32), xp.asarray(prompt_mask_BxP), xp)
  rel_BxT = token_relevance(spec, topic_B, ids_BxT, xp)
  quality_BxT = spec.quality_weight * _lookup(spec.quality_V, xp, ids_BxT) * inv_n_B[:, None] * s_BxT
  relevance_BxT = spec.relevance_weight * rel_BxT * inv_n_B[:, None] * s_BxT

  prev_ids_BxT = xp.concatenate([ids_BxT[:, :1], ids_BxT[:, :-1]], axis=1)
  prev_s_BxT = xp.concatenate([xp.zeros_like(s_BxT[:, :1]), s_BxT[:, :-1]], axis=1)
  coherence_BxT = _lookup(spec.bigram_VxV, xp, prev_ids_BxT, ids_BxT) * prev_s_BxT * s_BxT

  t = xp.arange(ids_BxT.shape[1])
  window_TxT = (t[None, :] < t[:, None]) & (t[None, :] >= t[:, None] - spec.repeat_window)
  same_BxTxT = (ids_BxT[:, :, None] == ids_BxT[:, None, :]) & window_TxT[None] & scored_BxT[:, None, :]
  repeated_BxT = same_BxTxT.any(axis=2) & scored_BxT & ~_lookup(spec.repeatable_V, xp, ids_BxT)
  repetition_BxT = -spec.repeat_penalty * repeated_BxT.astype(xp.float32)
  return n_B, quality_BxT, relevance_BxT, coherence_BxT, repetition_BxT


def gold_components(spec: GoldSpec, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT,
                    xp: Any = np):
  """float32 (B, 5): the gold components (quality, relevance, coherence, repetition, length); sum = r*.

  Args:
    spec: the world's GoldSpec.
    prompt_ids_BxP, prompt_mask_BxP: prompt token ids and mask (1 = real token); chat markers are ignored.
    response_ids_BxT, response_mask_BxT: response ids (any vocabulary id) and mask, left or right padded.
    xp: numpy or jax.numpy.
  """
  _check_shapes(prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT)
  n_B, q, r, c, p = _token_terms(spec, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT,
                                 xp)
  return xp.stack([q.sum(1), r.sum(1), c.sum(1), p.sum(1), length_term(spec, n_B, xp)], axis=1)


def gold_reward(spec: GoldSpec, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT,
                xp: Any = np):
  """float32 (B,): r*(x, y) for each row (see the module docstring for the equations)."""
  return gold_components(spec, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT,
                         xp).sum(axis=1)


def gold_token_contributions(spec: GoldSpec, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT,
                             response_mask_BxT, xp: Any = np):
  """float32 (B, T): per-token credit c_t; sums over t to r* minus the length term (0 off scored tokens)."""
  _check_shapes(prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT)
  _, q, r, c, p = _token_terms(spec, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT, xp)
  return q + r + c + p
