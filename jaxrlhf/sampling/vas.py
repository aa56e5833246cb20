"""Value Augmented Sampling (VAS; Han, Shenfeld, Srivastava, Kim, Agrawal 2024, "Value Augmented Sampling for Language
Model Alignment and Personalization", arXiv:2405.06639): decoding from a FROZEN base policy reweighted by a value
model trained on the base policy's own samples (`losses.value`, stage `value_train`).

The KL-regularized optimum pi*(a | s) ∝ pi_base(a | s) exp(beta Q(s, a)) is approximated token by token. As in the
official code (`VASLogitsProcessor`): the k most likely base tokens are the candidates; Q(s, a) = V(s . a) is the
value model's output after appending candidate a (k forward passes of the value model, batched, on a copy of its
KV cache); the candidates' values are centered over the k (Q - mean_k Q) and added, times beta, to the base
logits. Two ways to treat the other tokens:

  restrict=True   sample among the k candidates only: softmax over base + beta (Q - mean Q) on the top-k
                  (beta = 0 is exactly base top-k sampling);
  restrict=False  the official LogitsProcessor: every other token keeps its base logit (value term 0).

Composition (the paper's multi-reward personalization): M value models, each trained on its own reward, are summed
with weights w_m chosen at decoding time, Q = sum_m w_m Q_m (beta and the weights are traced arguments: one compiled
program serves every setting).

Cost per generated token: 1 base forward + M (k + 1) value-model token forwards (k candidates, plus feeding the
sampled token to advance each value cache, as the official code re-runs the value model on the new prefix).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.models.heads import per_position
# The inverse-CDF draw and the per-row keys of `generate`: with beta = 0 (restrict=True) VAS then draws exactly the
# tokens `generate(..., top_k=k)` draws from the same key.
from jaxrlhf.sampling.generate import (_categorical, _check_prompts, _check_tokens_per_iteration, _row_keys, cache_windows,
                                       decode_loop, resolve_cache_bucket)

Array = jax.Array
_NEG = jnp.finfo(jnp.float32).min


@flax.struct.dataclass
class VASGeneration:
  """VAS samples (one per prompt, rows in prompt order).

  Attributes:
    tokens: int32 (B, N) generated ids; `pad_id` after a row ended.
    logps: float32 (B, N) log-probability of each token under the VAS distribution it was drawn from.
    base_logps: float32 (B, N) log-probability under the base policy (temperature 1).
    mask: int32 (B, N), 1 on response tokens (the end token included).
    lengths: int32 (B,) response tokens.
    kl: float32 (B,) sum over the response's steps of the exact per-step KL(q_t || pi_base(. | s_t)): an unbiased
      estimate of the sequence KL(VAS || base) with lower variance than sum_t (logps - base_logps).
  """
  tokens: Array
  logps: Array
  base_logps: Array
  mask: Array
  lengths: Array
  kl: Array


def top_k_candidates(base_logits_RxV: Array, k: int) -> Array:
  """int32 (R, k) ids of the k largest base logits (ties: lower id first)."""
  return jax.lax.top_k(base_logits_RxV, k)[1].astype(jnp.int32)


def vas_logits(base_logits_RxV: Array, candidate_ids_RxK: Array, q_RxK: Array, beta: Any, *,
               restrict: bool = True) -> Array:
  """float32 (R, V) VAS decoding logits: base + beta * (Q - mean_k Q) on the candidates (module docstring).

  Args:
    base_logits_RxV: (R, V) base-policy logits at the current state.
    candidate_ids_RxK: (R, K) distinct candidate ids (`top_k_candidates`).
    q_RxK: (R, K) Q(s, a) of each candidate (the composed sum over value models).
    beta: scalar weight of the value (0: the base distribution, restricted to the candidates with `restrict`).
    restrict: True: tokens outside the candidates get float32 min (never drawn); False: they keep their base logit.
  """
  base_logits_RxV = base_logits_RxV.astype(jnp.float32)
  centered_RxK = q_RxK.astype(jnp.float32) - jnp.mean(q_RxK.astype(jnp.float32), axis=-1, keepdims=True)
  rows_R1 = jnp.arange(base_logits_RxV.shape[0])[:, None]
  bonus_RxV = jnp.zeros_like(base_logits_RxV).at[rows_R1, candidate_ids_RxK].set(beta * centered_RxK)
  logits_RxV = base_logits_RxV + bonus_RxV
  if restrict:
    keep_RxV = jnp.zeros(base_logits_RxV.shape, bool).at[rows_R1, candidate_ids_RxK].set(True)
    logits_RxV = jnp.where(keep_RxV, logits_RxV, _NEG)
  return logits_RxV


def _value_step(model, cache, ids_R, live_R):
  """Feeds one token per row to a value model (a RewardModel): (values (R,), new cache)."""
  hidden_Rx1xD, cache = model.backbone.backbone(ids_R[:, None], live_R[:, None], None, cache)
  return per_position(model.head, hidden_Rx1xD)[:, 0], cache


def _tile(cache, k: int):
  """A KV cache with every row repeated k times (rows b * k + j), to score k candidates of each row at once.

  A scratch copy (the candidates' own entries are discarded), so it holds only the slots the step reads
  (`KVCache.readable`) and the one it writes, not the whole cache."""
  n = min(cache.readable + 1, cache.max_len)
  return cache.replace(keys=jnp.repeat(cache.keys[:, :, :, :n], k, axis=1),
                       values=jnp.repeat(cache.values[:, :, :, :n], k, axis=1),
                       mask=jnp.repeat(cache.mask[:, :n], k, axis=0))


@functools.partial(jax.jit, static_argnames=("policy_graphdef", "value_graphdefs", "max_new_tokens", "top_k",
                                             "restrict", "eos_ids", "pad_id", "windows",
                                             "tokens_per_iteration"))
def _vas_jit(policy_graphdef, policy_state, value_graphdefs, value_states, weights_M, beta, prompt_ids_BxP,
             prompt_mask_BxP, row_keys_B, *, max_new_tokens: int, top_k: int, restrict: bool,
             eos_ids: tuple[int, ...], pad_id: int, windows: tuple[int, ...], tokens_per_iteration: int = 1
             ) -> VASGeneration:
  policy = nnx.merge(policy_graphdef, policy_state)
  values = [nnx.merge(g, s) for g, s in zip(value_graphdefs, value_states)]
  B, P = prompt_ids_BxP.shape
  N, K = max_new_tokens, top_k
  sample_keys_B = jax.vmap(lambda key: jax.random.fold_in(key, 0))(row_keys_B)  # sample 0, as `generate`
  prompt_ids_BxP = jnp.where(prompt_mask_BxP > 0, prompt_ids_BxP, 0).astype(jnp.int32)
  prompt_bool_BxP = prompt_mask_BxP.astype(bool)

  hidden_BxPxD, cache = policy.prefill(prompt_ids_BxP, prompt_bool_BxP, P + N)
  logits_BxV = policy.unembed(hidden_BxPxD[:, -1:])[:, 0]
  value_caches = []
  for m in values:
    _, c = m.backbone.prefill(prompt_ids_BxP, prompt_bool_BxP, P + N)
    value_caches.append(c)
  eos_V = jnp.asarray(eos_ids, jnp.int32) if eos_ids else jnp.full((1,), -1, jnp.int32)

  def emit(t, logits_BxV, value_caches, done_B, out):
    """Scores the k candidates, draws token t, and writes it into the output buffers."""
    live_B = ~done_B
    cand_BxK = top_k_candidates(logits_BxV, K)
    live_BK = jnp.repeat(live_B, K)
    q_BxK = jnp.zeros((B, K), jnp.float32)
    for m, c, w in zip(values, value_caches, weights_M):
      q_BK, _ = _value_step(m, _tile(c, K), cand_BxK.reshape(-1), live_BK)
      q_BxK = q_BxK + w * q_BK.reshape(B, K)
    vas_BxV = vas_logits(logits_BxV, cand_BxK, q_BxK, beta, restrict=restrict)
    keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(sample_keys_B, t)
    tok_B = _categorical(keys_B, vas_BxV)
    logq_BxV = jax.nn.log_softmax(vas_BxV, axis=-1)
    logp_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
    q_probs_BxV = jnp.exp(logq_BxV)
    step_kl_B = jnp.sum(jnp.where(q_probs_BxV > 0, q_probs_BxV * (logq_BxV - logp_BxV), 0.0), axis=-1)
    logq_B = jnp.take_along_axis(logq_BxV, tok_B[:, None], axis=-1)[:, 0]
    logp_B = jnp.take_along_axis(logp_BxV, tok_B[:, None], axis=-1)[:, 0]
    tok_B = jnp.where(live_B, tok_B, pad_id)
    cols = dict(tokens=tok_B, logps=jnp.where(live_B, logq_B, 0.0), base_logps=jnp.where(live_B, logp_B, 0.0),
                mask=live_B.astype(jnp.int32))
    kl_B = out["kl"] + jnp.where(live_B, step_kl_B, 0.0)
    out = {k: jax.lax.dynamic_update_index_in_dim(out[k], v.astype(out[k].dtype), t, axis=1) for k, v in cols.items()}
    out["kl"] = kl_B
    done_B = done_B | jnp.isin(tok_B, eos_V)
    return tok_B, live_B, done_B, out

  out = dict(tokens=jnp.full((B, N), pad_id, jnp.int32), logps=jnp.zeros((B, N), jnp.float32),
             base_logps=jnp.zeros((B, N), jnp.float32), mask=jnp.zeros((B, N), jnp.int32),
             kl=jnp.zeros((B,), jnp.float32))
  tok_B, live_B, done_B, out = emit(0, logits_BxV, value_caches, jnp.zeros((B,), bool), out)

  def body(carry):
    t, tok_B, live_B, done_B, cache, value_caches, out = carry
    feed_B = jnp.where(live_B, tok_B, 0)  # an ended row feeds a masked pad (never attended to)
    logits_Bx1xV, cache = policy(feed_B[:, None], live_B[:, None], cache=cache)
    value_caches = [_value_step(m, c, feed_B, live_B)[1] for m, c in zip(values, value_caches)]
    tok_B, live_B, done_B, out = emit(t, logits_Bx1xV[:, 0], value_caches, done_B, out)
    return t + 1, tok_B, live_B, done_B, cache, value_caches, out

  def open_phase(carry, window):  # decode phases, as `generate`: the steps read only the first `window` cache slots
    t, tok_B, live_B, done_B, cache, value_caches, out = carry
    return (t, tok_B, live_B, done_B, cache.replace(read_len=window),
            [c.replace(read_len=window) for c in value_caches], out)

  # Step t feeds the policy and the value models at slot P + t - 1 and then scores candidates at slot P + t: every
  # slot they read lies within the phase's first `window` while P + t <= window, the loop's rule.
  carry = decode_loop((jnp.asarray(1, jnp.int32), tok_B, live_B, done_B, cache, value_caches, out), body,
                      progress=lambda c: (c[0], c[3]), open_phase=open_phase, windows=windows, num_steps=N,
                      prompt_width=P, tokens_per_iteration=tokens_per_iteration)
  out = carry[-1]
  return VASGeneration(tokens=out["tokens"], logps=out["logps"], base_logps=out["base_logps"], mask=out["mask"],
                       lengths=jnp.sum(out["mask"], axis=-1, dtype=jnp.int32), kl=out["kl"])


def vas_generate(policy, value_models: Sequence[Any], prompt_ids_BxP, prompt_mask_BxP, *, beta: float,
                 weights: Sequence[float] | None = None, top_k: int = 20, max_new_tokens: int, rng: Any,
                 restrict: bool = True, eos_ids: Sequence[int] | int | None = (), pad_id: int = 0,
                 cache_bucket: int | None = None, tokens_per_iteration: int = 1) -> VASGeneration:
  """Samples one VAS continuation per left-padded prompt (one jitted program; see the module docstring).

  Args:
    policy: the frozen base CausalLM.
    value_models: M value models (RewardModel with a scalar head, trained by `value_train`; they must share the
      policy's vocabulary). M = 0 decodes from the base (restricted to its top-k with `restrict`).
    prompt_ids_BxP, prompt_mask_BxP: left-padded prompts.
    beta: weight of the (composed) value on the logits.
    weights: (M,) composition weights (default all 1).
    top_k: k candidates scored per step (the official code: 20).
    max_new_tokens, eos_ids, pad_id: as `generate`.
    rng: one key (row b uses fold_in(rng, b), as `generate`) or (B,) keys.
    restrict: sample among the candidates only (True) or keep the other tokens' base logits (False).
    cache_bucket: as `generate`: each decode phase reads this many more slots of the policy's and the value
      models' caches (and copies only those for the candidates); None: the backend's rule.
    tokens_per_iteration: as `generate`: decode steps per iteration of the decode loop (the exit tested once per
      block of that many tokens; the same tokens, log-probs and KL as 1).

  Returns:
    VASGeneration with (B, N) tokens / logps / base_logps / mask and (B,) lengths and kl.
  """
  prompt_ids_BxP, prompt_mask_BxP = jnp.asarray(prompt_ids_BxP), jnp.asarray(prompt_mask_BxP)
  _check_prompts(prompt_ids_BxP, prompt_mask_BxP)
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
  vocab = policy.config.vocab_size
  _check_tokens_per_iteration(tokens_per_iteration)
  if not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= vocab:
    raise ValueError(f"top_k must be an int in [1, vocab_size={vocab}], got {top_k!r}")
  weights = tuple(1.0 for _ in value_models) if weights is None else tuple(float(w) for w in weights)
  if len(weights) != len(value_models):
    raise ValueError(f"weights: {len(weights)} entries for {len(value_models)} value models")
  for i, m in enumerate(value_models):
    if m.config.vocab_size != vocab:
      raise ValueError(f"value_models[{i}]: vocabulary {m.config.vocab_size} differs from the policy's {vocab}")
  eos_ids = (eos_ids,) if isinstance(eos_ids, (int, np.integer)) else tuple(int(e) for e in (eos_ids or ()))
  # P + N slots: the last step's candidates are scored at slot P + N - 1.
  windows = cache_windows(prompt_ids_BxP.shape[1], int(max_new_tokens) + 1, resolve_cache_bucket(cache_bucket))
  policy_graphdef, policy_state = nnx.split(policy)
  splits = [nnx.split(m) for m in value_models]
  return _vas_jit(policy_graphdef, policy_state, tuple(g for g, _ in splits), tuple(s for _, s in splits),
                  jnp.asarray(weights, jnp.float32), jnp.asarray(beta, jnp.float32), prompt_ids_BxP,
                  prompt_mask_BxP, _row_keys(rng, prompt_ids_BxP.shape[0]), max_new_tokens=int(max_new_tokens),
                  top_k=int(top_k), restrict=bool(restrict), eos_ids=eos_ids, pad_id=int(pad_id), windows=windows,
                  tokens_per_iteration=int(tokens_per_iteration))


def vas_cost(lengths_B: Any, *, top_k: int, num_value_models: int, value_params_ratio: float = 1.0
             ) -> dict[str, np.ndarray]:
  """Inference cost per response of VAS, in token forwards (one model applied to one token, prompt excluded):
  "base" = n (one base forward per generated token), "value" = M (k + 1) n, and "flops" = base + value * (value
  model parameters / base parameters), a FLOP proxy in base-token-forward units. float64 (B,) each."""
  n = np.asarray(lengths_B, np.float64)
  value = num_value_models * (top_k + 1) * n
  return {"base": n, "value": value, "flops": n + value * value_params_ratio}
