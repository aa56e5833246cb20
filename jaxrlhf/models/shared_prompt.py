"""Shared-prompt scoring: a preference pair as ONE row [prompt | chosen | rejected], the prompt read once.

The usual layout runs prompt + chosen and prompt + rejected as two rows (2 x (P + R) tokens per pair); the
shared layout runs P + R_c + R_r tokens, so a long prompt is encoded once instead of twice (prefix sharing, as
in Wang et al. 2024, "Accelerating Direct Preference Optimization with Prefix Sharing"). Exactness comes from
three things, all derived here from the three lengths of each row:
  * attention: chosen tokens see the prompt and earlier chosen tokens; rejected tokens see the prompt and
    earlier rejected tokens, never the chosen response (segment ids 1 prompt, 2 chosen, 3 rejected, 0 padding,
    plus a `shared_mask` on the prompt: `CausalLM.backbone`);
  * positions: the rejected response continues at P, as it would right after the prompt;
  * next-token prediction: the first rejected token is predicted from the LAST PROMPT token's hidden state
    (not from the chosen response's last token, its left neighbour in the row).
So every log-prob and every last-token reward equals the two-row layout's up to float rounding.

Row layout (B rows, right padded to T): ids[0:P] prompt, ids[P:P+Rc] chosen, ids[P+Rc:P+Rc+Rr] rejected.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrlhf.losses import logps as logps_lib

Array = jax.Array

PROMPT, CHOSEN, REJECTED = 1, 2, 3


class SharedPromptLayout(NamedTuple):
  """Model inputs and read-out indices of shared-prompt rows; all (B, T) unless noted.

  Attributes:
    segment_ids: int32, PROMPT / CHOSEN / REJECTED, 0 on padding.
    shared_mask: bool, True on prompt tokens (visible to both responses).
    attention_mask: int32, 1 on real tokens.
    positions: int32 position ids (the rejected response restarts at P).
    source_index: int32, the position whose hidden state predicts the token at t (t - 1, except P - 1 for the
      first rejected token); 0 where nothing predicts t.
    chosen_targets, rejected_targets: bool, the response tokens whose log-prob counts (the first token of the
      row has no predictor, so with an empty prompt the first token of each response is not counted, exactly
      as in the two-row layout).
    chosen_last, rejected_last: (B,) int32 index of each response's last token (0 on empty rows).
  """
  segment_ids: Array
  shared_mask: Array
  attention_mask: Array
  positions: Array
  source_index: Array
  chosen_targets: Array
  rejected_targets: Array
  chosen_last: Array
  rejected_last: Array


def shared_prompt_layout(prompt_length_B: Array, chosen_length_B: Array, rejected_length_B: Array, length: int
                         ) -> SharedPromptLayout:
  """The layout of B rows of `length` slots from each row's prompt / chosen / rejected token counts (B,)."""
  P = prompt_length_B.astype(jnp.int32)[:, None]
  C = P + chosen_length_B.astype(jnp.int32)[:, None]  # End of chosen = start of rejected.
  E = C + rejected_length_B.astype(jnp.int32)[:, None]  # End of the row's real tokens.
  t = jnp.arange(length, dtype=jnp.int32)[None, :]
  segment_ids = jnp.where(t < P, PROMPT, jnp.where(t < C, CHOSEN, jnp.where(t < E, REJECTED, 0)))
  positions = jnp.where(segment_ids == REJECTED, t - (C - P), t)
  first_rejected = t == C
  source_index = jnp.where(first_rejected, P - 1, t - 1)
  predictable = source_index >= 0
  return SharedPromptLayout(
      segment_ids=segment_ids.astype(jnp.int32),
      shared_mask=segment_ids == PROMPT,
      attention_mask=(t < E).astype(jnp.int32),
      positions=jnp.where(t < E, positions, 0).astype(jnp.int32),
      source_index=jnp.maximum(source_index, 0).astype(jnp.int32),
      chosen_targets=(segment_ids == CHOSEN) & predictable,
      rejected_targets=(segment_ids == REJECTED) & predictable,
      chosen_last=jnp.maximum(C[:, 0] - 1, 0),
      # An empty rejected response is read at the prompt's last token, as its own row would be (E - 1 would be the
      # chosen response's last token); an empty chosen one already is (C - 1 = P - 1).
      rejected_last=jnp.maximum(jnp.where(E[:, 0] > C[:, 0], E[:, 0], P[:, 0]) - 1, 0))


def shared_prompt_hidden(backbone: Any, input_ids_BxT: Array, layout: SharedPromptLayout) -> Array:
  """Final-norm hidden states (B, T, D) of shared-prompt rows under a CausalLM `backbone`."""
  return backbone.hidden_states(input_ids_BxT, layout.attention_mask, layout.positions,
                                segment_ids=layout.segment_ids, shared_mask=layout.shared_mask)


def shared_prompt_token_logps(model: Any, input_ids_BxT: jax.Array, layout: SharedPromptLayout, chunk_size: int = 0,
                              *, fused: bool = False, return_log_sum_sq_probs: bool = False):
  """Per-token response log-probs of shared-prompt rows, split into chosen then rejected rows.

  Args:
    model: a CausalLM.
    input_ids_BxT: (B, T) int ids of [prompt | chosen | rejected] rows.
    layout: `shared_prompt_layout` of those rows.
    chunk_size: > 0 projects the hidden states onto the vocabulary chunk by chunk (no (B, T, V) logits).
    fused: the chunked forward with the hand-written LM-head backward (`losses.logps.lm_head_logps`: chunk_size 0
      stores the softmax gradient, > 0 recomputes it per chunk).
    return_log_sum_sq_probs: also each scored token's log sum_v p_v^2 (detached), split the same way.

  Returns:
    (token_logps (2B, T) float32, target mask (2B, T) float32): rows [0, B) hold the chosen response's token
    log-probs at that response's positions in the row (0 elsewhere), rows [B, 2B) the rejected response's, so
    sums over T give the same sequence log-probs as the two-row layout. With `return_log_sum_sq_probs` a third
    (2B, T) array of those statistics.
  """
  hidden_BxTxD = shared_prompt_hidden(model, input_ids_BxT, layout)
  # Each target reads the hidden state of its predictor; for all but one token per row that is t - 1.
  predictor_BxTxD = jnp.take_along_axis(hidden_BxTxD, layout.source_index[:, :, None], axis=1)
  targets_mask = (layout.chosen_targets | layout.rejected_targets).astype(jnp.float32)
  side = None
  if chunk_size or fused:
    head_DxV, softcap = model.output_projection()
    out = logps_lib.lm_head_logps(predictor_BxTxD, head_DxV, input_ids_BxT, targets_mask, chunk_size=chunk_size,
                                  fused=fused, logit_softcap=softcap, return_log_sum_sq_probs=return_log_sum_sq_probs)
    logps, side = out[0], (out[2] if return_log_sum_sq_probs else None)
  else:
    logits_BxTxV = model.unembed(predictor_BxTxD)
    logps, _ = logps_lib.sequence_logps(logits_BxTxV, input_ids_BxT, targets_mask)
    if return_log_sum_sq_probs:
      side = jax.lax.stop_gradient(logps_lib.token_log_sum_sq_probs(logits_BxTxV, targets_mask))
  chosen, rejected = layout.chosen_targets.astype(jnp.float32), layout.rejected_targets.astype(jnp.float32)
  out = (jnp.concatenate([logps * chosen, logps * rejected], axis=0), jnp.concatenate([chosen, rejected], axis=0))
  if return_log_sum_sq_probs:
    out += (jnp.concatenate([side * chosen, side * rejected], axis=0),)
  return out
