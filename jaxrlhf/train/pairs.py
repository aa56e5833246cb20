"""Preference batches in either layout: two rows per pair (chosen_/rejected_ ids) or one shared-prompt row.

The reward and preference stages call these instead of reading batch keys, so both layouts (data.pipeline's
module docstring; models.shared_prompt) flow through the same losses, reference cache and evaluation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.models.shared_prompt import shared_prompt_layout, shared_prompt_token_logps
from jaxrlhf.train.sft import response_token_logps


def is_shared_prompt(batch: dict) -> bool:
  """True for a shared-prompt batch ([prompt | chosen | rejected] rows)."""
  return "pair_input_ids" in batch


def _with_prefix(ids_BxT: jax.Array, prefix_ids: tuple[int, ...]) -> jax.Array:
  prefix = jnp.broadcast_to(jnp.asarray(prefix_ids, ids_BxT.dtype), (ids_BxT.shape[0], len(prefix_ids)))
  return jnp.concatenate([prefix, ids_BxT], axis=1)


def pair_token_logps(model: Any, batch: dict, chunk_size: int = 0, prefix_ids: tuple[int, ...] = ()
                     ) -> tuple[jax.Array, jax.Array]:
  """Chosen and rejected response log-probs in one forward: (token_logps (2B, T), target mask (2B, T)).

  Rows [0, B) are the chosen responses, [B, 2B) the rejected ones; sums over T are the sequence log-probs.
  Two-row batches put the log-prob of token t + 1 at position t; shared-prompt batches put each token's
  log-prob at its own position in the packed row. Either way a row's positions are the same in every call on
  the same batch, so per-token quantities (T-REG token rewards) line up.

  prefix_ids: tokens inserted in front of every prompt (T-REG's control context); outputs are realigned to
  the positions without it.
  """
  n = len(prefix_ids)
  if is_shared_prompt(batch):
    ids = batch["pair_input_ids"]
    if n:
      ids = _with_prefix(ids, prefix_ids)
    layout = shared_prompt_layout(batch["prompt_length"] + n, batch["chosen_length"], batch["rejected_length"],
                                  ids.shape[1])
    token_logps, mask = shared_prompt_token_logps(model, ids, layout, chunk_size)
    return token_logps[:, n:], mask[:, n:]
  ids = jnp.concatenate([batch["chosen_input_ids"], batch["rejected_input_ids"]], axis=0)
  att = jnp.concatenate([batch["chosen_attention_mask"], batch["rejected_attention_mask"]], axis=0)
  lm = jnp.concatenate([batch["chosen_loss_mask"], batch["rejected_loss_mask"]], axis=0)
  if n:
    ids = _with_prefix(ids, prefix_ids)
    att = jnp.concatenate([jnp.ones((att.shape[0], n), att.dtype), att], axis=1)
    lm = jnp.concatenate([jnp.zeros((lm.shape[0], n), lm.dtype), lm], axis=1)
  token_logps, mask = response_token_logps(model, ids, att, lm, chunk_size)
  return token_logps[:, n:], mask[:, n:]


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
    return np.asarray(batch["chosen_length"]) > 0
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
