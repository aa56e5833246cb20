"""Per-token and per-sequence log-probabilities of target tokens, plain and chunked.

Convention: position t of `logits_BxTxV` scores `targets_BxT[:, t]`; the caller shifts. With the data contract's
`loss_mask` (1 where token t is a target, predicted from logits at t-1), `shift_for_next_token` gives the aligned
(targets, mask) for logits of the same length T.

Everything is computed in float32 whatever the input dtype (bf16 logits, hidden states or LM head), and the log-
softmax normaliser is a logsumexp, so logits up to ~1e4 (and beyond) stay finite.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp



def _check_btv(logits_BxTxV: jax.Array, targets_BxT: jax.Array, mask_BxT: jax.Array, name: str) -> None:
  if logits_BxTxV.ndim != 3:
    raise ValueError(f"{name} must have shape (B, T, V); got {logits_BxTxV.shape}")
  if targets_BxT.shape != logits_BxTxV.shape[:2]:
    raise ValueError(f"targets_BxT must have shape {logits_BxTxV.shape[:2]} to match {name}; "
                     f"got {targets_BxT.shape}")
  if mask_BxT.shape != targets_BxT.shape:
    raise ValueError(f"mask_BxT must have shape {targets_BxT.shape}; got {mask_BxT.shape}")


def shift_for_next_token(input_ids_BxT: jax.Array, loss_mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Aligns next-token targets with logits of the same length.

  Args:
    input_ids_BxT: int token ids (B, T).
    loss_mask_BxT: (B, T), nonzero where token t is a target (the data contract: predicted by logits at t-1).

  Returns:
    (targets_BxT, mask_BxT): targets[:, t] = input_ids[:, t+1] and mask[:, t] = loss_mask[:, t+1]; the last
    position gets target 0 and mask 0. Feed them with the model's logits (B, T, V) to `sequence_logps`.
  """
  if input_ids_BxT.ndim != 2:
    raise ValueError(f"input_ids_BxT must have shape (B, T); got {input_ids_BxT.shape}")
  if loss_mask_BxT.shape != input_ids_BxT.shape:
    raise ValueError(f"loss_mask_BxT must have shape {input_ids_BxT.shape}; got {loss_mask_BxT.shape}")
  pad_ids = jnp.zeros_like(input_ids_BxT[:, :1])
  pad_mask = jnp.zeros_like(loss_mask_BxT[:, :1])
  targets = jnp.concatenate([input_ids_BxT[:, 1:], pad_ids], axis=1)
  mask = jnp.concatenate([loss_mask_BxT[:, 1:], pad_mask], axis=1)
  return targets, mask


# Per-token statistics of the softmax a log-prob pass can return beside the log-probs (`side`):
#   "entropy":          H = lse - sum_v p_v z_v (nats);
#   "log_sum_sq_probs": log sum_v p_v^2 = logsumexp(2 z) - 2 lse, the log of the probability that two samples from
#                       the softmax agree (WPO's per-token normalizer; TRL's `log_sum_sq_probs`).
SIDE_STATS = ("entropy", "log_sum_sq_probs")


def _side_stat(logits_NxV: jax.Array, lse_N: jax.Array, valid_N: jax.Array, side: str) -> jax.Array:
  """One `SIDE_STATS` statistic of fp32 (scaled) logits with their logsumexp, 0 on masked rows."""
  if side == "entropy":
    probs = jnp.exp(logits_NxV - lse_N[..., None])  # exact softmax: large logits do not overflow
    value = lse_N - jnp.sum(probs * logits_NxV, axis=-1)
  elif side == "log_sum_sq_probs":
    value = jax.nn.logsumexp(2.0 * logits_NxV, axis=-1) - 2.0 * lse_N
  else:
    raise ValueError(f"side must be one of {SIDE_STATS}, got {side!r}")
  return jnp.where(valid_N, value, 0.0)


def _check_side(return_entropy: bool, return_log_sum_sq_probs: bool) -> str | None:
  if return_entropy and return_log_sum_sq_probs:
    raise ValueError("return_entropy and return_log_sum_sq_probs: ask for one side statistic per call")
  return "entropy" if return_entropy else ("log_sum_sq_probs" if return_log_sum_sq_probs else None)


def _target_logps_and_entropy(logits_NxV: jax.Array, targets_N: jax.Array, valid_N: jax.Array,
                              temperature: float, side: str | None = "entropy") -> tuple[jax.Array, jax.Array]:
  """log softmax(logits / temperature)[target] and a `SIDE_STATS` statistic of the same softmax (zeros for None),
  fp32, for one block of rows."""
  logits = logits_NxV.astype(jnp.float32) / temperature
  lse = jax.nn.logsumexp(logits, axis=-1)
  # Masked rows may hold pad ids like -100; gather a valid index there, the value is zeroed below.
  safe_targets = jnp.where(valid_N, targets_N, 0).astype(jnp.int32)
  target_logits = jnp.take_along_axis(logits, safe_targets[..., None], axis=-1)[..., 0]
  token_logps = jnp.where(valid_N, target_logits - lse, 0.0)
  if side is None:  # skip the extra (N, V) work, also in the rematerialized backward
    return token_logps, jnp.zeros_like(token_logps)
  return token_logps, _side_stat(logits, lse, valid_N, side)


def sequence_logps(logits_BxTxV: jax.Array, targets_BxT: jax.Array, mask_BxT: jax.Array, *,
                   temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Log-probabilities of the targets under softmax(logits / temperature).

  token_logps[b, t] = mask[b, t] * (logits[b, t, y] / tau - logsumexp_v(logits[b, t, v] / tau)), y = targets[b, t];
  logps[b] = sum_t token_logps[b, t]. The summed form is the sequence log-likelihood used by DPO (Rafailov et al.
  2023, eq. 7) and by TRL's `selective_log_softmax`. Computed in float32.

  Args:
    logits_BxTxV: (B, T, V) logits, any float dtype; position t scores targets[:, t] (the caller shifts).
    targets_BxT: (B, T) int target ids; values at masked positions are ignored (may be -100).
    mask_BxT: (B, T), nonzero where the target counts.
    temperature: divides the logits (TRL GRPO/PPO use the sampling temperature here).

  Returns:
    (token_logps_BxT float32 with 0 at masked positions, logps_B float32 sums over t).
  """
  _check_btv(logits_BxTxV, targets_BxT, mask_BxT, "logits_BxTxV")
  token_logps, _ = _target_logps_and_entropy(logits_BxTxV, targets_BxT, mask_BxT > 0, temperature, None)
  return token_logps, jnp.sum(token_logps, axis=-1)


def token_entropy(logits_BxTxV: jax.Array, mask_BxT: jax.Array, *, temperature: float = 1.0) -> jax.Array:
  """Per-token entropy of softmax(logits / temperature), in nats, float32, 0 at masked positions.

  H[b, t] = logsumexp(z) - sum_v softmax(z)_v z_v with z = logits[b, t] / tau (TRL's `entropy_from_logits`).

  Args:
    logits_BxTxV: (B, T, V) logits, any float dtype.
    mask_BxT: (B, T), nonzero where the entropy counts.
    temperature: divides the logits.

  Returns:
    entropy_BxT float32.
  """
  if logits_BxTxV.ndim != 3:
    raise ValueError(f"logits_BxTxV must have shape (B, T, V); got {logits_BxTxV.shape}")
  if mask_BxT.shape != logits_BxTxV.shape[:2]:
    raise ValueError(f"mask_BxT must have shape {logits_BxTxV.shape[:2]}; got {mask_BxT.shape}")
  dummy_targets = jnp.zeros(mask_BxT.shape, jnp.int32)
  _, entropy = _target_logps_and_entropy(logits_BxTxV, dummy_targets, mask_BxT > 0, temperature)
  return entropy


def token_log_sum_sq_probs(logits_BxTxV: jax.Array, mask_BxT: jax.Array, *, temperature: float = 1.0) -> jax.Array:
  """Per-token log sum_v p_v^2 of p = softmax(logits / temperature), float32, 0 at masked positions.

  = logsumexp(2 z) - 2 logsumexp(z) with z = logits[b, t] / tau: the log-probability that two independent samples
  agree, <= 0. WPO (Zhou et al. 2024, Eq. 2) divides each token's probability by it (TRL's `log_sum_sq_probs`).

  Args:
    logits_BxTxV: (B, T, V) logits, any float dtype.
    mask_BxT: (B, T), nonzero where the value counts.
    temperature: divides the logits.
  """
  if logits_BxTxV.ndim != 3:
    raise ValueError(f"logits_BxTxV must have shape (B, T, V); got {logits_BxTxV.shape}")
  if mask_BxT.shape != logits_BxTxV.shape[:2]:
    raise ValueError(f"mask_BxT must have shape {logits_BxTxV.shape[:2]}; got {mask_BxT.shape}")
  dummy_targets = jnp.zeros(mask_BxT.shape, jnp.int32)
  _, value = _target_logps_and_entropy(logits_BxTxV, dummy_targets, mask_BxT > 0, temperature, "log_sum_sq_probs")
  return value


def _chunked_scan(rows_NxX: jax.Array, project: Callable[[jax.Array], jax.Array], targets_N: jax.Array,
                  valid_N: jax.Array, chunk_size: int, temperature: float,
                  side: str | None) -> tuple[jax.Array, jax.Array]:
  """Scans `project` + log-softmax gather over row chunks; each chunk is rematerialized in the backward pass."""
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
  n = rows_NxX.shape[0]
  chunk_size = min(chunk_size, max(n, 1))
  num_chunks = -(-n // chunk_size)
  pad = num_chunks * chunk_size - n
  # Pad to whole chunks with masked rows (their values are zeroed and get no gradient).
  rows = jnp.pad(rows_NxX, ((0, pad),) + ((0, 0),) * (rows_NxX.ndim - 1))
  targets = jnp.pad(targets_N, (0, pad))
  valid = jnp.pad(valid_N, (0, pad))
  rows = rows.reshape((num_chunks, chunk_size) + rows.shape[1:])
  targets = targets.reshape(num_chunks, chunk_size)
  valid = valid.reshape(num_chunks, chunk_size)

  # jax.checkpoint's default policy saves nothing: the backward recomputes this chunk's (C, V) logits instead of
  # the scan stacking every chunk's logits as residuals.
  @jax.checkpoint
  def one_chunk(rows_c, targets_c, valid_c):
    return _target_logps_and_entropy(project(rows_c), targets_c, valid_c, temperature, side)

  def body(carry, xs):
    return carry, one_chunk(*xs)

  _, (token_logps, entropy) = jax.lax.scan(body, None, (rows, targets, valid))
  return token_logps.reshape(-1)[:n], entropy.reshape(-1)[:n]


def _check_head_shapes(hidden_BxTxD: jax.Array, lm_head_DxV: jax.Array, targets_BxT: jax.Array,
                       mask_BxT: jax.Array) -> tuple[int, int, int]:
  """(B, T, D) of a hidden-states-times-head log-prob call, or a ValueError naming the argument of a wrong shape."""
  if hidden_BxTxD.ndim != 3:
    raise ValueError(f"hidden_BxTxD must have shape (B, T, D); got {hidden_BxTxD.shape}")
  if lm_head_DxV.ndim != 2 or lm_head_DxV.shape[0] != hidden_BxTxD.shape[-1]:
    raise ValueError(f"lm_head_DxV must have shape ({hidden_BxTxD.shape[-1]}, V); got {lm_head_DxV.shape}")
  b, t, d = hidden_BxTxD.shape
  if targets_BxT.shape != (b, t):
    raise ValueError(f"targets_BxT must have shape {(b, t)}; got {targets_BxT.shape}")
  if mask_BxT.shape != (b, t):
    raise ValueError(f"mask_BxT must have shape {(b, t)}; got {mask_BxT.shape}")
  return b, t, d


def chunked_sequence_logps(hidden_BxTxD: jax.Array, lm_head_DxV: jax.Array, targets_BxT: jax.Array,
                           mask_BxT: jax.Array, *, chunk_size: int = 1024, temperature: float = 1.0,
                           return_entropy: bool = False, logit_softcap: float | None = None,
                           return_log_sum_sq_probs: bool = False):
  """`sequence_logps(hidden @ lm_head, ...)` without ever holding the (B, T, V) logits.

  The B*T token rows are split into chunks of `chunk_size` tokens; a `lax.scan` computes each chunk's fp32 logits
  (C, V) = hidden_c @ lm_head (float32 accumulation), its logsumexp and target gather, under `jax.checkpoint`, so
  the backward pass also works one chunk at a time. Peak extra memory is O(chunk_size * V) instead of O(B*T*V),
  plus an fp32 copy of lm_head so its gradient is summed over chunks in fp32 (a bf16 running sum over 64 chunks
  drifts ~1.5%). Values and gradients (w.r.t. hidden and lm_head) equal the unchunked form up to float rounding.

  Args:
    hidden_BxTxD: (B, T, D) final hidden states (after the final norm), any float dtype.
    lm_head_DxV: (D, V) output projection (for tied embeddings pass embedding.T).
    targets_BxT: (B, T) int targets aligned with hidden positions (the caller shifts).
    mask_BxT: (B, T), nonzero where the target counts.
    chunk_size: tokens per chunk (need not divide B*T).
    temperature: divides the logits.
    return_entropy: also return the per-token entropy (B, T) of the same softmax.
    logit_softcap: logits are cap * tanh(logits / cap) before the temperature (Gemma 2's final soft-cap;
      `CausalLM.output_projection()` returns the head and its cap); None: no cap.
    return_log_sum_sq_probs: also return the per-token log sum_v p_v^2 (B, T) of the same softmax
      (`token_log_sum_sq_probs`), under stop_gradient; not together with return_entropy.

  Returns:
    (token_logps_BxT, logps_B) float32, or (token_logps_BxT, logps_B, side_BxT) with return_entropy (the entropy)
    or return_log_sum_sq_probs.
  """
  b, t, d = _check_head_shapes(hidden_BxTxD, lm_head_DxV, targets_BxT, mask_BxT)
  side = _check_side(return_entropy, return_log_sum_sq_probs)

  # The scan sums the head's gradient over chunks in the dtype of what it closes over; closing over an fp32 copy
  # (cast back to the compute dtype per chunk) keeps that sum in fp32 while the matmul runs in the input dtype.
  compute_dtype = jnp.result_type(hidden_BxTxD.dtype, lm_head_DxV.dtype)
  head_f32 = lm_head_DxV.astype(jnp.float32)

  def project(h_CxD):
    logits = jnp.dot(h_CxD.astype(compute_dtype), head_f32.astype(compute_dtype), preferred_element_type=jnp.float32)
    return logits if logit_softcap is None else jnp.tanh(logits / logit_softcap) * logit_softcap

  token_logps, side_value = _chunked_scan(hidden_BxTxD.reshape(b * t, d), project, targets_BxT.reshape(-1),
                                          mask_BxT.reshape(-1) > 0, chunk_size, temperature, side)
  return _with_side(token_logps.reshape(b, t), side, side_value.reshape(b, t))


def _with_side(token_logps_BxT, side, side_BxT):
  """(token_logps, logps) or (token_logps, logps, side value); log_sum_sq_probs is a weight, never differentiated."""
  if side is None:
    return token_logps_BxT, jnp.sum(token_logps_BxT, axis=-1)
  if side == "log_sum_sq_probs":
    side_BxT = jax.lax.stop_gradient(side_BxT)
  return token_logps_BxT, jnp.sum(token_logps_BxT, axis=-1), side_BxT


def chunked_sequence_logps_from_logits(logits_BxTxV: jax.Array, targets_BxT: jax.Array, mask_BxT: jax.Array, *,
                                       chunk_size: int = 1024, temperature: float = 1.0,
                                       return_entropy: bool = False):
  """`sequence_logps` over existing (e.g. bf16) logits, upcasting only one chunk of `chunk_size` tokens at a time.

  Same equation and outputs as `sequence_logps` (plus entropy with return_entropy); avoids the (B, T, V) float32
  copy when the model returns low-precision logits. Gradients flow to the logits chunk by chunk.
  """
  _check_btv(logits_BxTxV, targets_BxT, mask_BxT, "logits_BxTxV")
  b, t, v = logits_BxTxV.shape
  side = "entropy" if return_entropy else None
  token_logps, entropy = _chunked_scan(logits_BxTxV.reshape(b * t, v), lambda x: x, targets_BxT.reshape(-1),
                                       mask_BxT.reshape(-1) > 0, chunk_size, temperature, side)
  return _with_side(token_logps.reshape(b, t), side, entropy.reshape(b, t))


def _pad_chunks(x_N: jax.Array, num_chunks: int, chunk_size: int) -> jax.Array:
  """(N, ...) -> (num_chunks, chunk_size, ...), zero-padded at the end."""
  pad = num_chunks * chunk_size - x_N.shape[0]
  x_N = jnp.pad(x_N, ((0, pad),) + ((0, 0),) * (x_N.ndim - 1))
  return x_N.reshape((num_chunks, chunk_size) + x_N.shape[1:])


def _fused_chunk(rows_CxD, head_DxV, targets_C, valid_C, temperature, softcap):
  """One chunk's fp32 (capped) logits / temperature and (token logps, lse), by exactly the math of the chunked
  path."""
  logits_CxV = jnp.dot(rows_CxD.astype(head_DxV.dtype), head_DxV, preferred_element_type=jnp.float32)
  if softcap is not None:
    logits_CxV = jnp.tanh(logits_CxV / softcap) * softcap
  logits_CxV = logits_CxV / temperature
  lse_C = jax.nn.logsumexp(logits_CxV, axis=-1)
  safe_targets = jnp.where(valid_C, targets_C, 0).astype(jnp.int32)
  target_C = jnp.take_along_axis(logits_CxV, safe_targets[:, None], axis=-1)[:, 0]
  return logits_CxV, jnp.where(valid_C, target_C - lse_C, 0.0), lse_C


def _softmax_grad_basis(logits_CxV, lse_C, targets_C, valid_C, temperature, softcap, dtype):
  """d token_logp / d (the head's raw logits) per row: (onehot(target) - softmax) / temperature, times the soft-
  cap's derivative 1 - tanh^2 (tanh = capped logit / cap) where there is a cap; 0 on masked rows."""
  probs_CxV = jnp.exp(logits_CxV - lse_C[:, None])
  onehot_CxV = jnp.arange(logits_CxV.shape[-1])[None, :] == targets_C[:, None]
  basis_CxV = jnp.where(onehot_CxV, 1.0 - probs_CxV, -probs_CxV) / temperature
  if softcap is not None:
    tanh_CxV = logits_CxV * (temperature / softcap)  # logits here are cap * tanh(raw / cap) / temperature
    basis_CxV = basis_CxV * (1.0 - tanh_CxV * tanh_CxV)
  return jnp.where(valid_C[:, None], basis_CxV, 0.0).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _fused_logps(rows_NxD, head_DxV, targets_N, valid_N, chunk_size, temperature, softcap, save_softmax_grad,
                 side):
  del save_softmax_grad  # only the backward pass differs
  return _fused_logps_fwd(rows_NxD, head_DxV, targets_N, valid_N, chunk_size, temperature, softcap, False,
                          side)[0]


def _fused_logps_fwd(rows_NxD, head_DxV, targets_N, valid_N, chunk_size, temperature, softcap, save_softmax_grad,
                     side):
  """((token_logps_N, side statistic_N (zeros for side None)), residuals of the backward pass)."""
  n = rows_NxD.shape[0]
  num_chunks = -(-n // chunk_size)
  compute_dtype = jnp.result_type(rows_NxD.dtype, head_DxV.dtype)
  head = head_DxV.astype(compute_dtype)
  rows, targets, valid = (_pad_chunks(x, num_chunks, chunk_size) for x in (rows_NxD, targets_N, valid_N))

  def body(_, xs):
    r, t, v = xs
    logits, token_logps, lse = _fused_chunk(r, head, t, v, temperature, softcap)
    entropy = _side_stat(logits, lse, v, side) if side else jnp.zeros_like(token_logps)
    if save_softmax_grad:  # the backward pass then needs no second LM-head matmul for this chunk
      return None, (token_logps, entropy,
                    _softmax_grad_basis(logits, lse, t, v, temperature, softcap, compute_dtype))
    return None, (token_logps, entropy, lse)

  _, (token_logps, entropy, saved) = jax.lax.scan(body, None, (rows, targets, valid))
  return (token_logps.reshape(-1)[:n], entropy.reshape(-1)[:n]), (rows, head_DxV, targets, valid, saved)


def _fused_logps_bwd(chunk_size, temperature, softcap, save_softmax_grad, side, residuals, g):
  del side
  # The side statistic leaves `fused_sequence_logps` under stop_gradient: its cotangent is zero, only the log-probs'
  # counts.
  g_N = g[0]
  rows, head_DxV, targets, valid, saved = residuals
  num_chunks, _, d = rows.shape
  n = g_N.shape[0]
  compute_dtype = jnp.result_type(rows.dtype, head_DxV.dtype)
  head = head_DxV.astype(compute_dtype)
  g = _pad_chunks(g_N.astype(jnp.float32), num_chunks, chunk_size)

  def body(d_head_DxV, xs):
    r, g_C, t, v, s = xs
    if save_softmax_grad:
      basis = s
    else:
      logits, _, _ = _fused_chunk(r, head, t, v, temperature, softcap)
      basis = _softmax_grad_basis(logits, s, t, v, temperature, softcap, compute_dtype)
    # d logits = g * basis (one row scale each), so both products run on the saved basis in the compute dtype:
    # d rows = g * (basis @ head^T);  d head += (g * rows)^T @ basis, summed over chunks in fp32.
    # Contracting dimensions instead of transposes: a (D, V) transpose per chunk must never be materialized.
    d_rows = jax.lax.dot_general(basis, head, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    d_rows = d_rows * g_C[:, None]
    scaled = (r.astype(jnp.float32) * g_C[:, None]).astype(compute_dtype)
    d_head_DxV = d_head_DxV + jax.lax.dot_general(scaled, basis, (((0,), (0,)), ((), ())),
                                                  preferred_element_type=jnp.float32)
    return d_head_DxV, d_rows.astype(rows.dtype)

  d_head, d_rows = jax.lax.scan(body, jnp.zeros(head_DxV.shape, jnp.float32), (rows, g, targets, valid, saved))
  return d_rows.reshape(-1, d)[:n], d_head.astype(head_DxV.dtype), None, None


_fused_logps.defvjp(_fused_logps_fwd, _fused_logps_bwd)


def fused_sequence_logps(hidden_BxTxD: jax.Array, lm_head_DxV: jax.Array, targets_BxT: jax.Array,
                         mask_BxT: jax.Array, *, chunk_size: int = 1024, temperature: float = 1.0,
                         save_softmax_grad: bool = True, logit_softcap: float | None = None,
                         return_entropy: bool = False, return_log_sum_sq_probs: bool = False):
  """`chunked_sequence_logps`'s values with a hand-written backward pass of the LM head.

  The forward pass is the chunked one: per chunk of `chunk_size` tokens, fp32 logits (C, V) = hidden_c @ lm_head,
  their logsumexp and the target gather, never the (B, T, V) logits; the values equal `chunked_sequence_logps`'s.
  The backward pass differs in two ways, both for speed on accelerators:
    * its two matmuls (d hidden = d logits @ lm_head^T, d lm_head = hidden^T @ d logits) take their operands in
      the compute dtype (bf16 for a bf16 model) with fp32 accumulation, where autodiff of the fp32 logits would
      upcast both operands to fp32 (an fp32 GEMM, several times slower on GPUs/TPUs). d logits is rounded to the
      compute dtype, as in any bf16 backward pass; in fp32 the gradients equal the chunked path's;
    * with `save_softmax_grad` (the default) the forward pass stores each chunk's (onehot(target) - softmax) /
      temperature in the compute dtype ((B*T, V) in all: 2 bytes per entry in bf16), so the backward pass skips
      the chunked path's recomputation of the logits (one LM-head matmul of three); False recomputes them from
      the stored logsumexp instead (no (B*T, V) memory).
  d logits of token (b, t) is g[b, t] * basis[b, t] with g the cotangent of token_logps (summed logps pass it to
  every token), so d hidden = g * (basis @ lm_head^T) and d lm_head = (g * hidden)^T @ basis, summed over chunks
  in fp32.

  Args:
    hidden_BxTxD: (B, T, D) final hidden states (after the final norm), any float dtype.
    lm_head_DxV: (D, V) output projection (for tied embeddings pass embedding.T).
    targets_BxT: (B, T) int targets aligned with hidden positions (the caller shifts).
    mask_BxT: (B, T), nonzero where the target counts.
    chunk_size: tokens per chunk (need not divide B*T).
    temperature: divides the logits.
    save_softmax_grad: store the softmax gradient in the forward pass (faster backward, (B*T, V) memory).
    logit_softcap: logits are cap * tanh(logits / cap) before the temperature, as in `chunked_sequence_logps`
      (the backward pass multiplies the softmax gradient by the cap's derivative 1 - tanh^2); None: no cap.
    return_entropy: also the per-token entropy (B, T) of the same softmax, computed in the forward pass from the
      chunk's logits and returned under stop_gradient (a metric: unlike `chunked_sequence_logps`'s, it passes no
      gradient, so an entropy bonus needs the chunked path).
    return_log_sum_sq_probs: also the per-token log sum_v p_v^2 (B, T), likewise (not with return_entropy).

  Returns:
    (token_logps_BxT, logps_B) float32, or (token_logps_BxT, logps_B, side_BxT) with return_entropy or
    return_log_sum_sq_probs.
  """
  b, t, d = _check_head_shapes(hidden_BxTxD, lm_head_DxV, targets_BxT, mask_BxT)
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
  if logit_softcap is not None and not logit_softcap > 0:
    raise ValueError(f"logit_softcap must be None or > 0; got {logit_softcap!r}")
  chunk_size = min(chunk_size, max(b * t, 1))
  softcap = None if logit_softcap is None else float(logit_softcap)
  side = _check_side(return_entropy, return_log_sum_sq_probs)
  token_logps, side_value = _fused_logps(hidden_BxTxD.reshape(b * t, d), lm_head_DxV, targets_BxT.reshape(-1),
                                         mask_BxT.reshape(-1) > 0, chunk_size, float(temperature), softcap,
                                         bool(save_softmax_grad), side)
  return _with_side(token_logps.reshape(b, t), side, jax.lax.stop_gradient(side_value.reshape(b, t)))


DEFAULT_CHUNK_SIZE = 1024  # tokens per LM-head chunk when a caller's chunk size is 0


def lm_head_logps(hidden_BxTxD: jax.Array, lm_head_DxV: jax.Array, targets_BxT: jax.Array, mask_BxT: jax.Array, *,
                  chunk_size: int = 0, fused: bool = False, temperature: float = 1.0,
                  logit_softcap: float | None = None, return_entropy: bool = False,
                  return_log_sum_sq_probs: bool = False):
  """The chunked or the fused LM-head log-probs for a caller's chunk size (the stages' `logps_chunk_size`).

  Not fused: `chunked_sequence_logps` in chunks of `chunk_size` tokens (0: DEFAULT_CHUNK_SIZE). Fused:
  `fused_sequence_logps`, where a chunk size > 0 is a request for bounded memory (the backward recomputes each
  chunk's logits, nothing of size (B*T, V) is held) and 0 stores the softmax gradient (chunks of DEFAULT_CHUNK_SIZE;
  one LM-head matmul fewer). Shapes, arguments and returns as those two functions.
  """
  size = chunk_size or DEFAULT_CHUNK_SIZE
  if fused:
    return fused_sequence_logps(hidden_BxTxD, lm_head_DxV, targets_BxT, mask_BxT, chunk_size=size,
                                temperature=temperature, save_softmax_grad=not chunk_size,
                                logit_softcap=logit_softcap, return_entropy=return_entropy,
                                return_log_sum_sq_probs=return_log_sum_sq_probs)
  return chunked_sequence_logps(hidden_BxTxD, lm_head_DxV, targets_BxT, mask_BxT, chunk_size=size,
                                temperature=temperature, return_entropy=return_entropy, logit_softcap=logit_softcap,
                                return_log_sum_sq_probs=return_log_sum_sq_probs)
