"""Follow-up utterances for FLR, "Follow-up Likelihood as Reward" (Zhang et al. 2024, "Aligning Language Models Using
Follow-up Likelihood as Reward Signal", arXiv 2409.13948, AAAI 2025): the reward of a response is how likely a
language model finds a POSITIVE next user turn ("That's very helpful.") after it, against a NEGATIVE one ("That makes
no sense!"):

    FLR(x, y) = mean_{f in F+} lbar(f | x, y) - mean_{f in F-} lbar(f | x, y),
    lbar(f | x, y) = (1 / |f|) sum_t log p(f_t | x, y, turn marker, f_<t)      (per-token average log-likelihood)

with f rendered as the next user turn by the model's chat template. Sources: the paper's abstract (the likelihood of
follow-up utterances as the reward, positive against negative ones) and its code (github.com/e0397123/FLR), which
renders each follow-up as the next user message with the chat template, averages a per-token value over the
follow-up's tokens and keeps one value per positive and per negative follow-up. The paper's equation text was not
available offline, so the aggregation above (mean over positives minus mean over negatives of the per-token average
log-likelihood) is this library's reading of it. The lists below are the 20 positive and 20 negative follow-ups
that the repository's pairwise-preference script (`test_qwen2_pairwise.py`) scores (understanding, relevance,
engagingness, informativeness, helpfulness), kept verbatim (one positive repeats, as there).

This module is host-side (tokenizer and chat template, no model): `encode_follow_ups` renders the follow-ups as the
token rows `train.scoring.follow_up_logps` appends to a (prompt, response) row.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

POSITIVE_FOLLOW_UPS: tuple[str, ...] = (
    "This is highly relevant here.",
    "You’re very clear and easy to understand.",
    "I completely understand what you’re saying.",
    "This is highly pertinent to our discussion.",
    "You are very clear.",
    "You’re very engaging.",
    "This is very interesting.",
    "That was a really engaging response.",
    "I understand perfectly now.",
    "I see exactly what you’re trying to say.",
    "That makes perfect sense!",
    "I understand completely!",
    "You’re understanding me perfectly!",
    "That’s a very specific response.",
    "You’re making perfect sense.",
    "I definitely want to talk about that!",
    "That makes perfect sense!",
    "That's very helpful.",
    "Your explanation was clear and easy to follow.",
    "This information is exactly what I was looking for.",
)

NEGATIVE_FOLLOW_UPS: tuple[str, ...] = (
    "Not really relevant here.",
    "You’re really confusing",
    "I don’t understand what you’re saying.",
    "That’s not really relevant here.",
    "You are so confusing.",
    "You’re really boring.",
    "That’s not very interesting.",
    "That was a really boring response.",
    "I am so confused right now.",
    " What are you trying to say?",
    "That makes no sense!",
    "I don’t understand at all!",
    "You’re not understanding me!",
    "That’s a very generic response.",
    "You’re making no sense at all. ",
    "I don’t want to talk about that!",
    "What does that even mean?",
    "That's not helpful.",
    "Your explanation was vague and hard to follow.",
    "This information isn't what I was looking for.",
)

# Stand-ins rendered by the chat template, then located in its output to cut the turn marker out.
_RESPONSE_MARK = "\x00FLR-RESPONSE\x00"
_FOLLOW_UP_MARK = "\x00FLR-FOLLOW-UP\x00"


@dataclasses.dataclass(frozen=True)
class FollowUps:
  """F follow-ups as token rows to append after a response (right-padded to width L).

  ids_FxL: int32, [turn marker | utterance | pad]: the tokens that close the assistant turn and open the user's
    (e.g. ChatML "<|im_end|>\\n<|im_start|>user\\n"), then the utterance's tokens.
  mask_FxL: int32, 1 on real tokens.
  target_FxL: float32, 1 on the utterance's tokens (the ones scored), 0 on the marker and padding.
  positive_F: bool, True for a positive follow-up.
  texts: the F utterances.
  """
  ids_FxL: np.ndarray
  mask_FxL: np.ndarray
  target_FxL: np.ndarray
  positive_F: np.ndarray
  texts: tuple[str, ...]


def turn_marker(tokenizer: Any) -> str:
  """The text the chat template puts between an assistant response and the next user message's content (it closes
  the assistant turn; e.g. "<|im_end|>\\n<|im_start|>user\\n"); "\\n" for a tokenizer without a chat template."""
  if getattr(tokenizer, "chat_template", None) is None:
    return "\n"
  text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"},
                                        {"role": "assistant", "content": _RESPONSE_MARK},
                                        {"role": "user", "content": _FOLLOW_UP_MARK}])
  start, end = text.find(_RESPONSE_MARK), text.find(_FOLLOW_UP_MARK)
  if start < 0 or end < start:
    raise ValueError("tokenizer.chat_template: could not locate a user turn after an assistant turn in its output")
  return text[start + len(_RESPONSE_MARK):end]


def encode_follow_ups(tokenizer: Any, positive: Sequence[str] = POSITIVE_FOLLOW_UPS,
                      negative: Sequence[str] = NEGATIVE_FOLLOW_UPS, width: int = 0) -> FollowUps:
  """The positive then the negative follow-ups as `FollowUps` rows: `turn_marker` tokens, then the utterance's
  tokens (encoded on their own, so an utterance scores the same tokens after every response).

  Args:
    tokenizer: a jaxrlhf Tokenizer (encode, chat_template, pad_id).
    positive, negative: the utterances (each list non-empty, each utterance non-empty).
    width: L; 0 = the longest row. A longer row is an error.
  """
  positive, negative = tuple(positive), tuple(negative)
  if not positive or not negative:
    raise ValueError(f"follow-ups: need at least one positive and one negative, got {len(positive)} positive and "
                     f"{len(negative)} negative")
  marker = tokenizer.encode(turn_marker(tokenizer))
  rows, targets = [], []
  for text in positive + negative:
    utterance = tokenizer.encode(text)
    if not utterance:
      raise ValueError(f"follow-ups: {text!r} encodes to no tokens")
    rows.append(list(marker) + list(utterance))
    targets.append([0] * len(marker) + [1] * len(utterance))
  width = width or max(len(r) for r in rows)
  if max(len(r) for r in rows) > width:
    raise ValueError(f"follow-ups: width {width} is shorter than the longest follow-up ({max(map(len, rows))} tokens)")
  f = len(rows)
  ids = np.full((f, width), tokenizer.pad_id, np.int32)
  mask, target = np.zeros((f, width), np.int32), np.zeros((f, width), np.float32)
  for i, (row, t) in enumerate(zip(rows, targets)):
    ids[i, :len(row)], mask[i, :len(row)], target[i, :len(row)] = row, 1, t
  positive_F = np.arange(f) < len(positive)
  return FollowUps(ids, mask, target, positive_F, positive + negative)
