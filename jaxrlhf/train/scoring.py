"""A model applied to a batch: token and sequence log-probs, pair rewards, in every row layout the library uses.

The one place where a CausalLM or a reward model meets a batch (every stage, the reference caches and the
evaluation stages call these; losses never run a model):

  token_logps            rows [prompt | response] right padded, a `loss_mask` on the scored tokens: the log-prob
                         of token t + 1 at position t (next-token alignment), chunked over the vocabulary on
                         request, packed rows (segment ids) and control prefixes supported;
  aligned_token_logps    the same log-probs moved onto the tokens they score (position t holds log p(token t));
  response_logps         rollouts [left-padded prompt | right-padded response], softmax(logits / temperature),
                         with per-token entropy (policy gradient, KL estimates, evaluation);
  sequence_logps         host helper: summed response log-probs of token lists, in fixed-shape batches;
  follow_up_logps,       FLR: the per-token average log-likelihood of follow-up user turns after
  flr_scores             [prompt | response] rows, and positive minus negative means;
  pair_token_logps,      preference pairs in either layout, two rows (chosen_/rejected_ keys) or one
  pair_rewards, ...      shared-prompt row [prompt | chosen | rejected] (`models.shared_prompt`, whose
                         `shared_prompt_token_logps` scores such rows);
  mismatched_pair_rows   KTO's mismatched (prompt, other pair's completion) rows of a preference batch.
  state_values           a value model (a RewardModel whose head is read at every position) on rollouts: the
                         values of the states s_0..s_N of each response (VAS).

Shapes: B rows, T row length, P prompt width, N response width, V vocabulary, D model width.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.data.padding import pad_prompts, pad_rows
from jaxrlhf.losses import logps as logps_lib
from jaxrlhf.models.heads import per_position
from jaxrlhf.models.shared_prompt import shared_prompt_layout, shared_prompt_token_logps


# ------------------------------------------------------------------------------------------------ token log-probs
def prepend_ids(ids_BxT: jax.Array, prefix_ids: Sequence[int] | jax.Array) -> jax.Array:
  """(B, N + T): `prefix_ids` (N tokens, e.g. a control context such as `<better>`; may be a traced int array)
  in front of every row."""
  prefix = jnp.broadcast_to(jnp.asarray(prefix_ids, ids_BxT.dtype), (ids_BxT.shape[0], len(prefix_ids)))
  return jnp.concatenate([prefix, ids_BxT], axis=1)


def with_prefix(ids_BxT: jax.Array, attention_mask_BxT: jax.Array, loss_mask_BxT: jax.Array,
                prefix_ids: Sequence[int] | jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The rows with `prefix_ids` in front (`prepend_ids`): ids (B, N + T), attention 1 and loss mask 0 on the
  prefix."""
  b, n = ids_BxT.shape[0], len(prefix_ids)
  att = jnp.concatenate([jnp.ones((b, n), attention_mask_BxT.dtype), attention_mask_BxT], axis=1)
  lm = jnp.concatenate([jnp.zeros((b, n), loss_mask_BxT.dtype), loss_mask_BxT], axis=1)
  return prepend_ids(ids_BxT, prefix_ids), att, lm


# How the training stages (sft, preference, self_rewarding, rl) turn final hidden states into target log-probs.
LOGPS_PATHS = ("auto", "full", "chunked", "fused")
DEFAULT_LOGPS_CHUNK = logps_lib.DEFAULT_CHUNK_SIZE


def resolve_logps_path(path: str, chunk_size: int = 0, backend: str | None = None) -> tuple[int, bool]:
  """(chunk_size, fused) for `token_logps` / `pair_token_logps` / `response_logps` from a stage's `logps_path` and
  `logps_chunk_size`.

  "full": the (B, T, V) logits and a plain log-softmax (chunk_size must be 0); "chunked": the LM head applied
  `chunk_size` tokens at a time under jax.checkpoint, never the (B, T, V) logits (0: 1024); "fused": the same forward
  with the hand-written backward of `losses.logps.fused_sequence_logps` (bf16 backward matmuls for a bf16 model).
  A chunk size asks for bounded memory, so "fused" keeps it: with chunk_size > 0 the backward recomputes each
  chunk's logits (nothing of size (B*T, V) is held, like "chunked"); with 0 it stores the softmax gradient in the
  compute dtype (chunks of 1024 tokens; (B*T, V) x 2 bytes in bf16, still less than the full path's fp32 logits)
  and skips that recomputation. On one H200 the 1.24B LM head's forward + backward at 8 x 2 x 2048 tokens took
  200.6 ms chunked, 160.0 full, 115.8 fused recomputing and 98.5 fused storing. "auto": "fused" on "gpu" (the 1.24B
  DPO step 43.0% -> 50.9% MFU, identical loss values), elsewhere "chunked" when chunk_size > 0 and "full" otherwise
  (on the CPU the (B, T, V) logits of the library's small shapes fit, and XLA:CPU runs the fp32 path anyway).
  `backend` defaults to `jax.default_backend()`. The loss values of all paths are equal; their gradients differ only
  by the compute dtype's rounding of d logits on the fused path (identical in fp32 up to float order).
  Returns (chunk_size, fused) with chunk_size as the fused functions take it (0: store the softmax gradient).
  """
  if path not in LOGPS_PATHS:
    raise ValueError(f"logps_path must be one of {LOGPS_PATHS}, got {path!r}")
  if not isinstance(chunk_size, int) or chunk_size < 0:
    raise ValueError(f"logps_chunk_size must be an int >= 0, got {chunk_size!r}")
  if path == "auto":
    path = "fused" if (backend or jax.default_backend()) == "gpu" else ("chunked" if chunk_size else "full")
  if path == "full":
    if chunk_size:
      raise ValueError(f"logps_path 'full' computes the whole (B, T, V) logits; logps_chunk_size must be 0, got "
                       f"{chunk_size} (use logps_path 'chunked' or 'fused' to chunk)")
    return 0, False
  if path == "fused":
    return chunk_size, True
  return chunk_size or DEFAULT_LOGPS_CHUNK, False


def head_logps(model: Any, hidden_BxTxD: jax.Array, targets_BxT: jax.Array, mask_BxT: jax.Array,
               chunk_size: int, fused: bool = False, return_log_sum_sq_probs: bool = False):
  """(B, T) float32 log-probs of `targets` from a CausalLM's final hidden states, the LM head (and its soft-cap)
  applied by `losses.logps.lm_head_logps` (chunked, or fused with `fused`); 0 where mask is 0. With
  `return_log_sum_sq_probs`, (log-probs, log sum_v p_v^2 (B, T), detached)."""
  head_DxV, softcap = model.output_projection()
  out = logps_lib.lm_head_logps(hidden_BxTxD, head_DxV, targets_BxT, mask_BxT, chunk_size=chunk_size,
                                fused=fused, logit_softcap=softcap, return_log_sum_sq_probs=return_log_sum_sq_probs)
  return (out[0], out[2]) if return_log_sum_sq_probs else out[0]


def token_logps(model: Any, input_ids_BxT: jax.Array, attention_mask_BxT: jax.Array, loss_mask_BxT: jax.Array,
                chunk_size: int = 0, *, positions_BxT: jax.Array | None = None,
                segment_ids_BxT: jax.Array | None = None, prefix_ids: Sequence[int] = (), fused: bool = False,
                return_log_sum_sq_probs: bool = False):
  """(token_logps_BxT, target_mask_BxT) float32: position t holds log p(input_ids[t + 1] | ids[<= t]) where
  loss_mask[t + 1] = 1, else 0. With `return_log_sum_sq_probs` a third (B, T) output, aligned the same way: the
  log sum_v p_v^2 of that prediction's softmax (`losses.logps.token_log_sum_sq_probs`, detached; WPO's weights).

  Args:
    model: a CausalLM.
    input_ids_BxT, attention_mask_BxT: right-padded rows.
    loss_mask_BxT: 1 on the tokens to score (the responses).
    chunk_size: > 0 gathers from the hidden states chunk by chunk instead of materializing (B, T, V) logits.
    positions_BxT, segment_ids_BxT: packed rows (a segment's first token is a prompt token, so no target
      crosses a segment boundary).
    prefix_ids: tokens put in front of every row (a control context); outputs are realigned to the rows
      without it.
    fused: the fused LM-head log-probs (`losses.logps.lm_head_logps`) instead of autodiff of the chunked or full
      path (`resolve_logps_path` says which a stage runs).
  """
  n = len(prefix_ids)
  if n and (positions_BxT is not None or segment_ids_BxT is not None):
    # One prefix in front of a packed row would sit before its first segment only, not each example's.
    raise ValueError("token_logps: prefix_ids cannot be combined with packed rows (positions_BxT / segment_ids_BxT); "
                     "put the prefix into each packed example instead")
  if n:
    input_ids_BxT, attention_mask_BxT, loss_mask_BxT = with_prefix(input_ids_BxT, attention_mask_BxT,
                                                                   loss_mask_BxT, prefix_ids)
  targets_BxT, mask_BxT = logps_lib.shift_for_next_token(input_ids_BxT, loss_mask_BxT)
  if segment_ids_BxT is not None:
    next_segment = jnp.concatenate([segment_ids_BxT[:, 1:], jnp.zeros_like(segment_ids_BxT[:, :1])], axis=1)
    mask_BxT = mask_BxT * (next_segment == segment_ids_BxT)
  side = None
  if chunk_size or fused or segment_ids_BxT is not None:
    hidden_BxTxD = model.hidden_states(input_ids_BxT, attention_mask_BxT, positions_BxT,
                                       segment_ids=segment_ids_BxT)
    logps = head_logps(model, hidden_BxTxD, targets_BxT, mask_BxT, chunk_size, fused, return_log_sum_sq_probs)
    if return_log_sum_sq_probs:
      logps, side = logps
  else:
    logits_BxTxV = model(input_ids_BxT, attention_mask_BxT)
    logps, _ = logps_lib.sequence_logps(logits_BxTxV, targets_BxT, mask_BxT)
    if return_log_sum_sq_probs:
      side = jax.lax.stop_gradient(logps_lib.token_log_sum_sq_probs(logits_BxTxV, mask_BxT))
  if return_log_sum_sq_probs:
    return logps[:, n:], mask_BxT[:, n:], side[:, n:]
  return logps[:, n:], mask_BxT[:, n:]


def aligned_token_logps(model: Any, input_ids_BxT: jax.Array, attention_mask_BxT: jax.Array,
                        loss_mask_BxT: jax.Array, prefix_ids: Sequence[int] | jax.Array = ()
                        ) -> tuple[jax.Array, jax.Array]:
  """Per-token log-probs on the tokens themselves: (logps_BxT, mask_BxT) float32 with logps[b, t] =
  log p(ids[b, t] | prefix, ids[b, :t]) where mask[b, t] = 1 (loss_mask * attention_mask; position 0 only with
  a prefix, since nothing else predicts it), 0 elsewhere. `prefix_ids` may be a traced int array."""
  if input_ids_BxT.ndim != 2:
    raise ValueError(f"input_ids_BxT: expected shape (B, T), got {input_ids_BxT.shape}")
  for name, x in (("attention_mask_BxT", attention_mask_BxT), ("loss_mask_BxT", loss_mask_BxT)):
    if x.shape != input_ids_BxT.shape:
      raise ValueError(f"{name}: expected shape {input_ids_BxT.shape} like input_ids_BxT, got {x.shape}")
  n = len(prefix_ids)
  target = ((loss_mask_BxT > 0) & (attention_mask_BxT > 0)).astype(jnp.int32)
  ids, att = input_ids_BxT, attention_mask_BxT
  if n:
    ids, att, target = with_prefix(ids, att, target, prefix_ids)
  predicted_BxT, _ = token_logps(model, ids, att, target)
  # predicted[:, t] scores token t + 1; move it onto token t (token 0 has no prediction).
  logps_BxT = jnp.concatenate([jnp.zeros_like(predicted_BxT[:, :1]), predicted_BxT[:, :-1]], axis=1)
  mask_BxT = (target > 0).at[:, 0].set(False).astype(jnp.float32)
  return (logps_BxT * mask_BxT)[:, n:], mask_BxT[:, n:]


def _prompt_width(prompt_ids_BxP: jax.Array) -> int:
  """P, which must be >= 1: response token 0 is predicted at the prompt's last slot (P - 1); with P = 0 the slices
  [P - 1:-1] would silently select nothing (or one slot)."""
  if prompt_ids_BxP.ndim != 2 or prompt_ids_BxP.shape[1] < 1:
    raise ValueError(f"prompt_ids_BxP: expected shape (B, P) with P >= 1 (the last prompt slot predicts response "
                     f"token 0), got {prompt_ids_BxP.shape}")
  return prompt_ids_BxP.shape[1]


def response_logps(model: Any, prompt_ids_BxP: jax.Array, prompt_mask_BxP: jax.Array, response_ids_BxN: jax.Array,
                   response_mask_BxN: jax.Array, temperature: float = 1.0, chunk_size: int = 0, fused: bool = False
                   ) -> tuple[jax.Array, jax.Array]:
  """(logps_BxN, entropy_BxN) float32 of the response tokens under softmax(logits / temperature), 0 on masked
  slots.

  One forward over [left-padded prompt | right-padded response]; response token n is predicted at P + n - 1.
  Differentiable (the policy-gradient loss); under stop_gradient for old-policy and reference log-probs. Pad ids
  may be out of the vocabulary's range: masked slots are embedded as id 0. chunk_size > 0 applies the LM head
  chunk by chunk to the final hidden states (`losses.logps.chunked_sequence_logps`): the same values (float
  rounding aside) without ever holding the (B, N, V) fp32 logits, which at rollout shapes (512 rows x 512 tokens x
  a 128k vocabulary: 134 GB) do not fit. `fused` takes the same chunked forward with the hand-written LM-head
  backward (`losses.logps.lm_head_logps`); its entropy is detached (a metric),
  the log-probs' gradients are the chunked path's (fp32) or within the compute dtype's rounding of them.
  """
  logps, entropy, _ = _response_forward(model, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxN, response_mask_BxN,
                                        temperature, chunk_size, with_hidden=False, fused=fused)
  return logps, entropy


def response_logps_and_hidden(model: Any, prompt_ids_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                              response_ids_BxN: jax.Array, response_mask_BxN: jax.Array, temperature: float = 1.0,
                              chunk_size: int = 0, fused: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`response_logps` and the final hidden states (B, N, D) that predict each response token, from ONE forward.

  hidden[:, n] is the state before response token n (position P + n - 1), where a value head reads V(s_n) (TRL's
  `full_value[:, context_length - 1:-1]`); a policy with a shared value head gets log-probs and values together.
  """
  return _response_forward(model, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxN, response_mask_BxN, temperature,
                           chunk_size, with_hidden=True, fused=fused)


def _response_forward(model, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxN, response_mask_BxN, temperature,
                      chunk_size, with_hidden, fused=False):
  """(logps_BxN, entropy_BxN, hidden_BxNxD or None) of `response_logps_and_hidden`."""
  p = _prompt_width(prompt_ids_BxP)
  valid = response_mask_BxN > 0
  mask_BxT = jnp.concatenate([prompt_mask_BxP > 0, valid], axis=1)
  ids_BxT = jnp.where(mask_BxT, jnp.concatenate([prompt_ids_BxP, response_ids_BxN], axis=1), 0).astype(jnp.int32)
  targets_BxN = ids_BxT[:, p:]
  if chunk_size or fused:
    hidden_BxNxD = model.hidden_states(ids_BxT, mask_BxT)[:, p - 1:-1]
    head_DxV, softcap = model.output_projection()
    logps, _, entropy = logps_lib.lm_head_logps(hidden_BxNxD, head_DxV, targets_BxN, valid, chunk_size=chunk_size,
                                                fused=fused, temperature=temperature, return_entropy=True,
                                                logit_softcap=softcap)
  else:
    if with_hidden:
      logits_BxTxV, hidden_BxTxD = model(ids_BxT, mask_BxT, return_hidden=True)
      hidden_BxNxD = hidden_BxTxD[:, p - 1:-1]
    else:
      logits_BxTxV, hidden_BxNxD = model(ids_BxT, mask_BxT), None
    logp_BxNxV = jax.nn.log_softmax(logits_BxTxV[:, p - 1:-1].astype(jnp.float32) / temperature, axis=-1)
    logps = jnp.take_along_axis(logp_BxNxV, targets_BxN[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_BxNxV) * logp_BxNxV, axis=-1)
  return (jnp.where(valid, logps, 0.0), jnp.where(valid, entropy, 0.0),
          hidden_BxNxD if with_hidden else None)


def response_hidden(model: Any, prompt_ids_BxP: jax.Array, prompt_mask_BxP: jax.Array, response_ids_BxN: jax.Array,
                    response_mask_BxN: jax.Array) -> jax.Array:
  """(B, N, D) final hidden states of a backbone (anything with `hidden_states`, e.g. a reward model's) at the
  positions before each response token, as `response_logps_and_hidden` (no LM head is applied)."""
  p = _prompt_width(prompt_ids_BxP)
  mask_BxT = jnp.concatenate([prompt_mask_BxP > 0, response_mask_BxN > 0], axis=1)
  ids_BxT = jnp.where(mask_BxT, jnp.concatenate([prompt_ids_BxP, response_ids_BxN], axis=1), 0).astype(jnp.int32)
  return model.hidden_states(ids_BxT, mask_BxT)[:, p - 1:-1]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _response_logps_jit(graphdef, state, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxN, response_mask_BxN):
  return response_logps(nnx.merge(graphdef, state), prompt_ids_BxP, prompt_mask_BxP, response_ids_BxN,
                        response_mask_BxN)[0]


def jit_response_logps(model: Any, prompt_ids_BxP: Any, prompt_mask_BxP: Any, response_ids_BxN: Any,
                       response_mask_BxN: Any) -> jax.Array:
  """`response_logps` at temperature 1 of an NNX model on host or device arrays, as one jitted program per
  architecture and shape (the reference log-probs of samples, teacher-forced checks): float32 (B, N)."""
  prompt_ids_BxP, prompt_mask_BxP = jnp.asarray(prompt_ids_BxP), jnp.asarray(prompt_mask_BxP)
  response_ids_BxN, response_mask_BxN = jnp.asarray(response_ids_BxN), jnp.asarray(response_mask_BxN)
  if prompt_ids_BxP.ndim != 2 or prompt_mask_BxP.shape != prompt_ids_BxP.shape:
    raise ValueError(f"prompt_ids_BxP / prompt_mask_BxP must be (B, P) of equal shape; got {prompt_ids_BxP.shape} "
                     f"and {prompt_mask_BxP.shape}")
  if response_ids_BxN.shape != response_mask_BxN.shape or response_ids_BxN.shape[0] != prompt_ids_BxP.shape[0]:
    raise ValueError(f"response_ids_BxN / response_mask_BxN must be (B, N) with B = {prompt_ids_BxP.shape[0]}; "
                     f"got {response_ids_BxN.shape} and {response_mask_BxN.shape}")
  graphdef, state = nnx.split(model)
  return _response_logps_jit(graphdef, state, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxN, response_mask_BxN)


def state_values(value_model: Any, prompt_ids_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                 response_ids_BxN: jax.Array, response_mask_BxN: jax.Array) -> jax.Array:
  """float32 (B, N + 1) values V(s_t) of the states s_t = (prompt, response[:t]), t = 0..N, of a value model (a
  `RewardModel` whose scalar head is read at every position: `models.heads.per_position`).

  One forward over [left-padded prompt | right-padded response]; s_t is read at position P - 1 + t (s_0 at the
  prompt's last token, s_n at the response's last token). Slots after a row's end hold values of padding
  (mask them with `losses.value.state_mask`). Differentiable (the value regression of `value_train`).
  """
  p = _prompt_width(prompt_ids_BxP)
  mask_BxT = jnp.concatenate([prompt_mask_BxP > 0, response_mask_BxN > 0], axis=1)
  ids_BxT = jnp.where(mask_BxT, jnp.concatenate([prompt_ids_BxP, response_ids_BxN], axis=1), 0).astype(jnp.int32)
  hidden_BxTxD = value_model.backbone.hidden_states(ids_BxT, mask_BxT)
  return per_position(value_model.head, hidden_BxTxD[:, p - 1:]).astype(jnp.float32)


def sequence_logps(model: Any, prompt_rows: Sequence[Sequence[int]], response_rows: Sequence[Sequence[int]],
                   pad_id: int, batch_size: int = 128) -> np.ndarray:
  """float64 (N,) log p(response | prompt) under `model` (temperature 1), summed over the response tokens.

  Prompts are left-padded and responses right-padded to one width over all rows, and the last batch is filled
  with copies of its first row, so every call compiles one program.
  """
  if len(prompt_rows) != len(response_rows):
    raise ValueError(f"prompt_rows and response_rows: {len(prompt_rows)} prompts for {len(response_rows)} "
                     "responses")
  if any(not r for r in response_rows):
    raise ValueError("response_rows: every response needs at least one token")
  empty = [i for i, p in enumerate(prompt_rows) if not p]
  if empty:
    raise ValueError(f"prompt_rows[{empty[0]}]: every prompt needs at least one token (its last token predicts the "
                     f"response's first); {len(empty)} of {len(prompt_rows)} prompts are empty")
  if not prompt_rows:
    return np.zeros((0,), np.float64)
  out = []
  p_width = max(len(p) for p in prompt_rows)
  r_width = max(len(r) for r in response_rows)
  for start in range(0, len(prompt_rows), batch_size):
    prompts = list(prompt_rows[start:start + batch_size])
    responses = list(response_rows[start:start + batch_size])
    fill = batch_size - len(prompts)
    prompts += [prompts[0]] * fill
    responses += [responses[0]] * fill
    ids, mask = pad_prompts(prompts, pad_id, width=p_width)
    r_ids, r_mask = pad_rows(responses, r_width, pad_id)
    logps = np.asarray(jit_response_logps(model, ids, mask, r_ids, r_mask), np.float64)
    out.append(logps.sum(axis=1)[:batch_size - fill])
  return np.concatenate(out)


# ------------------------------------------------------------------------------------------------ follow-ups (FLR)
def follow_up_logps(model: Any, prompt_ids_RxP: jax.Array, prompt_mask_RxP: jax.Array, response_ids_RxN: jax.Array,
                    response_mask_RxN: jax.Array, follow_ids_FxL: jax.Array, follow_mask_FxL: jax.Array,
                    follow_target_FxL: jax.Array, end_ids: Sequence[int] = (), chunk_size: int = 1024) -> jax.Array:
  """float32 (R, F): the per-token average log-likelihood of each follow-up's target tokens after each row,

      lbar[r, f] = (1 / |f|) sum_{t in target(f)} log p(f_t | prompt_r, response_r, f_<t)

  (FLR's per-follow-up value, `rewards.follow_up`). The context [prompt | response] is read ONCE per row: a row is
  packed as [left-padded prompt | response without a trailing end token | pad | f_1 | f_2 | ... | f_F], the context
  visible to every follow-up (`shared_mask`), each follow-up its own segment that sees only itself and the context,
  with positions continuing from the context's real length (prefix sharing, as `models.shared_prompt` does for
  preference pairs). So every value equals the one of the unpadded dialogue [prompt | response | f] up to float
  rounding, at the cost of P + N + F * L tokens per row instead of F * (P + N + L).
  The follow-up's first tokens close the assistant turn (`encode_follow_ups`), which is why a response's own end
  token (one of `end_ids`, when it is its last real token) is dropped; a truncated response has none to drop.

  Args:
    model: a CausalLM.
    prompt_ids_RxP, prompt_mask_RxP: left-padded prompts (P may be 0).
    response_ids_RxN, response_mask_RxN: right-padded responses (an end token included or not).
    follow_ids_FxL, follow_mask_FxL, follow_target_FxL: right-padded follow-up rows, target 1 on the scored tokens
      (each row needs at least one).
    end_ids: end-of-turn / EOS ids (static).
    chunk_size: the vocabulary projection runs over chunks of this many tokens (no (R, T, V) logits).
  """
  r, p = prompt_ids_RxP.shape
  n = response_ids_RxN.shape[1]
  f, l = follow_ids_FxL.shape
  length_R = jnp.sum(response_mask_RxN > 0, axis=1).astype(jnp.int32)
  if end_ids:
    last_R = jnp.take_along_axis(response_ids_RxN, jnp.maximum(length_R - 1, 0)[:, None], axis=1)[:, 0]
    length_R = length_R - ((length_R > 0) & jnp.isin(last_R, jnp.asarray(end_ids))).astype(jnp.int32)
  # The context: the prompt's real tokens then the response's first length_R tokens (its rest is padding).
  prompt_mask = prompt_mask_RxP > 0
  in_response = jnp.arange(n)[None, :] < length_R[:, None]
  context_mask = jnp.concatenate([prompt_mask, in_response], axis=1)
  context_ids = jnp.where(context_mask, jnp.concatenate([prompt_ids_RxP, response_ids_RxN], axis=1), 0)
  context_positions = jnp.maximum(jnp.cumsum(context_mask.astype(jnp.int32), axis=1) - 1, 0)
  context_length_R = jnp.sum(context_mask, axis=1).astype(jnp.int32)
  # The F follow-ups, one segment each (2, 3, ...), positions continuing from the context's length.
  follow_mask = (follow_mask_FxL > 0).reshape(1, f * l)
  follow_ids = jnp.where(follow_mask, follow_ids_FxL.reshape(1, f * l), 0)
  k_S = jnp.tile(jnp.arange(l, dtype=jnp.int32), f)  # Slot s's index in its follow-up.
  ids_RxT = jnp.concatenate([context_ids, jnp.broadcast_to(follow_ids, (r, f * l))], axis=1).astype(jnp.int32)
  mask_RxT = jnp.concatenate([context_mask, jnp.broadcast_to(follow_mask, (r, f * l))], axis=1)
  positions_RxT = jnp.concatenate([context_positions, context_length_R[:, None] + k_S[None, :]], axis=1)
  segments = jnp.concatenate([jnp.ones((p + n,), jnp.int32), jnp.repeat(jnp.arange(f, dtype=jnp.int32) + 2, l)])
  segment_ids_RxT = jnp.where(mask_RxT, segments[None, :], 0)
  shared_RxT = jnp.concatenate([context_mask, jnp.zeros((r, f * l), bool)], axis=1)
  hidden_RxTxD = model.hidden_states(ids_RxT, mask_RxT.astype(jnp.int32), positions_RxT.astype(jnp.int32),
                                     segment_ids=segment_ids_RxT, shared_mask=shared_RxT)
  # A follow-up token is predicted by its left neighbour, its first token by the context's last real token.
  last_context_R = p + length_R - 1
  source_RxS = jnp.where(k_S[None, :] == 0, last_context_R[:, None], p + n + jnp.arange(f * l)[None, :] - 1)
  predictor_RxSxD = jnp.take_along_axis(hidden_RxTxD, jnp.maximum(source_RxS, 0)[:, :, None], axis=1)
  target_RxS = (follow_target_FxL.reshape(1, f * l).astype(jnp.float32) * follow_mask) * (source_RxS >= 0)
  head_DxV, softcap = model.output_projection()
  logps_RxS, _ = logps_lib.chunked_sequence_logps(predictor_RxSxD, head_DxV, ids_RxT[:, p + n:], target_RxS,
                                                  chunk_size=chunk_size, logit_softcap=softcap)
  logps_RxFxL = (logps_RxS * target_RxS).reshape(r, f, l)
  count_RxF = jnp.sum(target_RxS.reshape(r, f, l), axis=-1)
  return (jnp.sum(logps_RxFxL, axis=-1) / jnp.maximum(count_RxF, 1.0)).astype(jnp.float32)


def flr_scores(logps_RxF: jax.Array, positive_F: jax.Array) -> jax.Array:
  """float32 (R,) FLR = mean over the positive follow-ups of `follow_up_logps` minus the mean over the negative ones
  (Zhang et al. 2024, arXiv 2409.13948). positive_F: bool (F,), at least one True and one False."""
  try:
    flags = np.asarray(positive_F)
  except jax.errors.TracerArrayConversionError:
    flags = None  # Traced: checked where it was built.
  if flags is not None:
    if flags.ndim != 1 or flags.shape[0] != logps_RxF.shape[-1] or flags.all() or not flags.any():
      raise ValueError(f"positive_F: expected (F,) = ({logps_RxF.shape[-1]},) flags with at least one positive and one "
                       f"negative follow-up (each mean divides by its count), got {flags.tolist()}")
  pos = jnp.asarray(positive_F, jnp.float32)
  neg = 1.0 - pos
  logps = logps_RxF.astype(jnp.float32)
  return logps @ pos / jnp.sum(pos) - logps @ neg / jnp.sum(neg)


# ------------------------------------------------------------------------------------------------ preference pairs
def is_shared_prompt(batch: dict) -> bool:
  """True for a shared-prompt batch ([prompt | chosen | rejected] rows)."""
  return "pair_input_ids" in batch


def pair_token_logps(model: Any, batch: dict, chunk_size: int = 0, prefix_ids: tuple[int, ...] = (), *,
                     fused: bool = False, return_log_sum_sq_probs: bool = False):
  """Chosen and rejected response log-probs in one forward: (token_logps (2B, T), target mask (2B, T)).

  Rows [0, B) are the chosen responses, [B, 2B) the rejected ones; sums over T are the sequence log-probs.
  Two-row batches put the log-prob of token t + 1 at position t; shared-prompt batches put each token's
  log-prob at its own position in the packed row. Either way a row's positions are the same in every call on
  the same batch, so per-token quantities (T-REG token rewards) line up.

  prefix_ids: tokens inserted in front of every prompt (T-REG's control context); outputs are realigned to
  the positions without it. chunk_size / fused: the LM-head path, as in `token_logps`.
  return_log_sum_sq_probs: a third (2B, T) output at the same positions, each scored token's log sum_v p_v^2
  (detached; WPO's weights), 0 elsewhere.
  """
  n = len(prefix_ids)
  if is_shared_prompt(batch):
    ids = batch["pair_input_ids"]
    if n:
      ids = prepend_ids(ids, prefix_ids)
    layout = shared_prompt_layout(batch["prompt_length"] + n, batch["chosen_length"], batch["rejected_length"],
                                  ids.shape[1])
    out = shared_prompt_token_logps(model, ids, layout, chunk_size, fused=fused,
                                    return_log_sum_sq_probs=return_log_sum_sq_probs)
    return tuple(x[:, n:] for x in out)
  ids = jnp.concatenate([batch["chosen_input_ids"], batch["rejected_input_ids"]], axis=0)
  att = jnp.concatenate([batch["chosen_attention_mask"], batch["rejected_attention_mask"]], axis=0)
  lm = jnp.concatenate([batch["chosen_loss_mask"], batch["rejected_loss_mask"]], axis=0)
  return token_logps(model, ids, att, lm, chunk_size, prefix_ids=prefix_ids, fused=fused,
                     return_log_sum_sq_probs=return_log_sum_sq_probs)


def mismatched_pair_rows(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """KTO's mismatched (prompt, completion) rows of a preference batch, two-row layout, width T of the batch.

  The 2B examples of a batch are its chosen responses (j < B) then its rejected ones (j = B + i, same prompt as
  pair i). Example j's prompt is paired with example (j - 1) mod 2B's completion: TRL's KTOTrainer builds its KL
  dataset by shifting the completions of a batch by one, `[c[-1]] + c[:-1]` (Ethayarajh et al. 2024, section 4.1:
  the reference point z0 is a KL estimate from mismatched pairs). For B >= 2 every row pairs a prompt with another
  pair's response. A row longer than T (a long prompt with another pair's long completion) keeps its first T tokens.

  Works for both layouts (two rows: `chosen_/rejected_` keys; shared prompt: `pair_input_ids` and the lengths).

  Returns:
    (input_ids, attention_mask, loss_mask), each (2B, T) int32, right padded; loss_mask marks the completion.
  """
  if is_shared_prompt(batch):
    src_RxT = batch["pair_input_ids"]
    b = src_RxT.shape[0]
    p, c, r = batch["prompt_length"], batch["chosen_length"], batch["rejected_length"]
    src_row_2B = jnp.concatenate([jnp.arange(b), jnp.arange(b)])
    prompt_len_2B = jnp.concatenate([p, p])
    start_2B = jnp.concatenate([p, p + c])
    length_2B = jnp.concatenate([c, r])
  else:
    src_RxT = jnp.concatenate([batch["chosen_input_ids"], batch["rejected_input_ids"]], axis=0)
    att = jnp.concatenate([batch["chosen_attention_mask"], batch["rejected_attention_mask"]], axis=0)
    lm = jnp.concatenate([batch["chosen_loss_mask"], batch["rejected_loss_mask"]], axis=0)
    src_row_2B = jnp.arange(src_RxT.shape[0])
    length_2B = jnp.sum(lm, axis=1)
    prompt_len_2B = jnp.sum(att, axis=1) - length_2B
    start_2B = prompt_len_2B
  t = src_RxT.shape[1]
  # Example j takes the completion of example j - 1 (mod 2B).
  comp_row_2B = jnp.roll(src_row_2B, 1)
  comp_start_2B = jnp.roll(start_2B, 1)
  comp_len_2B = jnp.roll(length_2B, 1)
  pos_T = jnp.arange(t)[None, :]
  in_prompt = pos_T < prompt_len_2B[:, None]
  offset = pos_T - prompt_len_2B[:, None]
  in_completion = (offset >= 0) & (offset < comp_len_2B[:, None])
  prompt_tok = src_RxT[src_row_2B]
  comp_idx = jnp.clip(comp_start_2B[:, None] + offset, 0, t - 1)
  comp_tok = jnp.take_along_axis(src_RxT[comp_row_2B], comp_idx, axis=1)
  ids = jnp.where(in_prompt, prompt_tok, jnp.where(in_completion, comp_tok, 0)).astype(jnp.int32)
  return ids, (in_prompt | in_completion).astype(jnp.int32), in_completion.astype(jnp.int32)


def pair_rewards(model: Any, batch: dict, attributes: bool = False) -> tuple[jax.Array, jax.Array]:
  """(chosen, rejected) outputs of a RewardModel / RewardEnsemble in one forward (attribute outputs with
  `attributes`): (B,) per model, (B, K) per ensemble, plus a trailing head axis for multihead / attributes."""
  if is_shared_prompt(batch):
    return model.score_shared_prompt(batch["pair_input_ids"], batch["prompt_length"], batch["chosen_length"],
                                     batch["rejected_length"], attributes=attributes)
  ids = jnp.concatenate([batch["chosen_input_ids"], batch["rejected_input_ids"]], axis=0)
  mask = jnp.concatenate([batch["chosen_attention_mask"], batch["rejected_attention_mask"]], axis=0)
  out = model.attributes(ids, mask) if attributes else model(ids, mask)
  b = batch["chosen_input_ids"].shape[0]
  return out[:b], out[b:]


def tokens_read(batch: dict) -> jax.Array:
  """(B,) tokens each pair's forward reads: P + R_c + R_r shared, 2P + R_c + R_r in two rows."""
  if is_shared_prompt(batch):
    return batch["prompt_length"] + batch["chosen_length"] + batch["rejected_length"]
  return (jnp.sum(batch["chosen_attention_mask"] > 0, axis=-1)
          + jnp.sum(batch["rejected_attention_mask"] > 0, axis=-1))


def nonempty_rows(batch: dict) -> np.ndarray:
  """(B,) bool (numpy): rows holding a pair (False on the filler rows of a final partial batch)."""
  if is_shared_prompt(batch):
    # Any token makes a pair (a pair with an empty chosen response is still one, as in the two-row layout).
    return sum(np.asarray(batch[f"{k}_length"]) for k in ("prompt", "chosen", "rejected")) > 0
  return np.asarray(batch["chosen_attention_mask"]).any(axis=-1)


def row_key(batch: dict, i: int) -> bytes:
  """A pair's identity in a numpy batch: its tokens (and, shared, where the responses split), layout-tagged."""
  if is_shared_prompt(batch):
    ends = np.cumsum([batch[f"{k}_length"][i] for k in ("prompt", "chosen", "rejected")])
    return (b"shared|" + ends.astype(np.int32).tobytes() + b"|"
            + np.asarray(batch["pair_input_ids"][i, :ends[-1]], np.int32).tobytes())
  ids_c, att_c = batch["chosen_input_ids"][i], batch["chosen_attention_mask"][i]
  ids_r, att_r = batch["rejected_input_ids"][i], batch["rejected_attention_mask"][i]
  return (np.asarray(ids_c[att_c > 0], np.int32).tobytes() + b"|"
          + np.asarray(ids_r[att_r > 0], np.int32).tobytes())


def row_length(batch: dict) -> int:
  """T, the padded length of the batch's rows (the width of `pair_token_logps`'s outputs)."""
  key = "pair_input_ids" if is_shared_prompt(batch) else "chosen_input_ids"
  return batch[key].shape[-1]
