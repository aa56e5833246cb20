"""Token lists -> padded (B, width) id and mask arrays: prompts left-padded (generation continues at the right
edge), responses and training rows right-padded. The one place these layouts are built.

Masks are int32, 1 on real tokens. Padding slots hold `pad_id` in the ids; consumers that embed ids replace pad
slots first (a pad id may be out of the vocabulary's range).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from jaxrlhf.data import tokenize as tokenize_lib


def pad_rows(rows: Sequence[Sequence[int]], width: int | None = None, pad_id: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads id lists to (B, width) int32 ids and an int32 mask (width defaults to the longest row)."""
  width = max([len(r) for r in rows] + [1]) if width is None else width
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    if len(r) > width:
      raise ValueError(f"rows[{i}] has {len(r)} ids, more than width {width}")
    ids[i, :len(r)] = r
    mask[i, :len(r)] = 1
  return ids, mask


def bucket_width(length: int, buckets: Sequence[int] | None = None, multiple: int = 16) -> int:
  """The padded width for a prompt of `length` tokens: the smallest bucket >= length, else a multiple of
  `multiple`. Few distinct widths mean few compiled programs."""
  if length < 1:
    raise ValueError(f"length must be >= 1, got {length}")
  if multiple < 1:
    raise ValueError(f"multiple must be >= 1, got {multiple}")
  if buckets:
    for b in sorted(buckets):
      if b >= length:
        return int(b)
    raise ValueError(f"prompt length {length} exceeds the largest bucket {max(buckets)}")
  return int(-(-length // multiple) * multiple)


def pad_prompts(rows: Sequence[Sequence[int]], pad_id: int = 0, width: int | None = None,
                buckets: Sequence[int] | None = None, multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists into (ids int32 (B, P), mask int32 (B, P)).

  `width` fixes P; otherwise P = bucket_width(longest row, buckets, multiple).
  """
  if not rows or any(len(r) == 0 for r in rows):
    raise ValueError("rows must be a non-empty list of non-empty token lists")
  longest = max(len(r) for r in rows)
  width = bucket_width(longest, buckets, multiple) if width is None else width
  if longest > width:
    raise ValueError(f"a prompt has {longest} tokens, more than width={width}")
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    ids[i, width - len(r):] = np.asarray(r, np.int32)
    mask[i, width - len(r):] = 1
  return ids, mask


def encode_prompts(tokenizer: Any, prompts: Sequence[Any], width: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded (N, width) ids and mask of prompts (text or chat messages, `tokenize.encode_prompt`); a longer
  prompt keeps its last `width` tokens (the end of a dialogue is what the response answers), and the number of
  such prompts is logged as a warning."""
  if width < 1:
    raise ValueError(f"width must be >= 1, got {width}")
  rows = [tokenize_lib.encode_prompt(tokenizer, p) for p in prompts]
  cut = [len(r) for r in rows if len(r) > width]
  if cut:
    logging.warning("prompts: %d of %d prompts are longer than %d tokens and keep their last %d (longest %d)",
                    len(cut), len(rows), width, width, max(cut))
  return pad_prompts([r[-width:] for r in rows], tokenizer.pad_id, width=width)


def encode_responses(tokenizer: Any, responses: Sequence[Any], width: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded (N, width) ids and mask of responses as a rollout holds them (text + eos, cut at `width`; the
  number of cut responses, which lose their eos, is logged as a warning)."""
  if width < 1:
    raise ValueError(f"width must be >= 1, got {width}")
  rows = [tokenize_lib.encode_response(tokenizer, r) for r in responses]
  cut = [len(r) for r in rows if len(r) > width]
  if cut:
    logging.warning("responses: %d of %d responses are longer than %d tokens with their end token and are cut "
                    "to their first %d, without it (longest %d)", len(cut), len(rows), width, width, max(cut))
  return pad_rows([r[:width] for r in rows], width, tokenizer.pad_id)
