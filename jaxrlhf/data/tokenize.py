"""Records -> token ids, with the truncation policy (keep the prompt's tail and the responses' heads).

Tokenizers follow the protocol in docs/design.md. A text prompt is encoded as is; a chat prompt is rendered with
`apply_chat_template(messages, add_generation_prompt=True)` and then encoded; a response is
`encode(text) + [eos_id]`, where the text of one assistant message is its content and the text of a multi-turn
continuation is rendered by the chat template (`response_text_under_template`). Encoding never adds special tokens
(templates carry their own).

Truncation (`truncate`), for a prompt and its response(s):
  1. a prompt longer than `max_prompt_length` keeps its last `max_prompt_length` tokens (the end of a dialogue is
     what the response answers);
  2. if fewer than `min_response_length` tokens remain for a response under `max_length`, the example is dropped;
  3. a response longer than the remaining budget keeps its first tokens (its eos is then cut off).
"""

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from jaxrlhf.data.records import Prompt, Response, response_text


@dataclasses.dataclass(frozen=True)
class TruncationConfig:
  """Token budgets: `max_length` for prompt + response; optional `max_prompt_length`; `min_response_length`."""

  max_length: int
  max_prompt_length: int | None = None
  min_response_length: int = 1

  def __post_init__(self):
    if self.max_length < 2:
      raise ValueError(f"max_length must be >= 2, got {self.max_length}")
    if self.max_prompt_length is not None and not 1 <= self.max_prompt_length < self.max_length:
      raise ValueError(f"max_prompt_length must be in [1, max_length={self.max_length}), "
                       f"got {self.max_prompt_length}")
    if not 1 <= self.min_response_length < self.max_length:
      raise ValueError(f"min_response_length must be in [1, max_length), got {self.min_response_length}")
    if (self.max_prompt_length is not None
        and self.max_length - self.max_prompt_length < self.min_response_length):
      raise ValueError(f"max_length - max_prompt_length = {self.max_length - self.max_prompt_length} leaves less "
                       f"than min_response_length={self.min_response_length} tokens for a response")


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
  """Prompt token ids: text encoded as is, chat messages rendered with the generation prompt first."""
  if isinstance(prompt, str):
    return list(tokenizer.encode(prompt, add_special_tokens=False))
  return list(tokenizer.encode(tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True),
                               add_special_tokens=False))


def response_text_under_template(tokenizer: Any, response: Response, prompt: Prompt | None = None) -> str:
  """The text a response is encoded from, before its end token.

  Text is itself and one assistant message is its content, as a model writes them after the generation prompt. A
  multi-turn continuation [assistant, (tool | user | assistant)..., assistant] of a chat prompt is what the chat
  template renders between the prompt's generation header and the last assistant message's end: the earlier turns
  with their markers and the header of the last turn, then the last message's content, so the eos that follows
  closes the last turn as it closes a one-message response. Every token of it is a response token (TRL's DPO
  likewise scores the whole continuation, tool results and user turns included).

  Raises:
    ValueError: several messages without a chat prompt, or a template that does not render the prompt as the start
      of the longer conversation (the continuation would not be a suffix).
  """
  if isinstance(response, str) or len(response) == 1:
    return response_text(response)
  if prompt is None or isinstance(prompt, str):
    raise ValueError(f"a response of {len(response)} messages continues a chat: it needs the prompt's messages")
  head = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True)
  upto_last = tokenizer.apply_chat_template(list(prompt) + list(response[:-1]), add_generation_prompt=True)
  if not upto_last.startswith(head):
    raise ValueError("the chat template renders the prompt differently once the response's turns follow it (e.g. "
                     "it rewrites earlier turns), so a multi-turn response is not a continuation of the prompt's "
                     f"text: prompt ends {head[-80:]!r}, the longer conversation has {upto_last[:len(head)][-80:]!r}")
  return upto_last[len(head):] + response[-1]["content"]


def encode_response(tokenizer: Any, response: Response, prompt: Prompt | None = None) -> list[int]:
  """Response token ids: `response_text_under_template` encoded, then eos_id. `prompt` is needed (and only read)
  for a multi-turn response."""
  text = response_text_under_template(tokenizer, response, prompt)
  return list(tokenizer.encode(text, add_special_tokens=False)) + [tokenizer.eos_id]


def truncate(prompt_ids: Sequence[int], response_ids: Sequence[Sequence[int]], config: TruncationConfig
             ) -> tuple[list[int], list[list[int]], dict[str, int]] | None:
  """Applies the truncation policy to one prompt and its responses (one for SFT, two for a pair).

  Returns:
    (prompt_ids, [response_ids, ...], flags) with flags {"truncated_prompt": 0/1, "truncated_responses": n},
    or None when the prompt leaves fewer than `min_response_length` tokens for a response (drop the example).
  """
  prompt_ids = list(prompt_ids)
  truncated_prompt = 0
  if config.max_prompt_length is not None and len(prompt_ids) > config.max_prompt_length:
    prompt_ids = prompt_ids[-config.max_prompt_length:]
    truncated_prompt = 1
  budget = config.max_length - len(prompt_ids)
  if budget < config.min_response_length:
    return None
  out, truncated_responses = [], 0
  for ids in response_ids:
    truncated_responses += len(ids) > budget
    out.append(list(ids[:budget]))
  return prompt_ids, out, {"truncated_prompt": truncated_prompt, "truncated_responses": truncated_responses}


def _float(value: float | None) -> np.float32:
  return np.float32(np.nan if value is None else value)


def tokenize_pair(record: Any, tokenizer: Any, config: TruncationConfig, num_attributes: int = 0) -> dict:
  """A PreferenceRecord -> {"prompt", "chosen", "rejected": int32 ids, scores, flags} or {"dropped": 1}.

  `weight` is the record's `weight` attribute when it has one (e.g. from a transform), else 1.
  """
  kept = truncate(encode_prompt(tokenizer, record.prompt),
                  [encode_response(tokenizer, record.chosen, record.prompt),
                   encode_response(tokenizer, record.rejected, record.prompt)], config)
  if kept is None:
    return {"dropped": 1}
  prompt_ids, (chosen_ids, rejected_ids), flags = kept
  weight = getattr(record, "weight", None)
  example = {
      "prompt": np.asarray(prompt_ids, np.int32), "chosen": np.asarray(chosen_ids, np.int32),
      "rejected": np.asarray(rejected_ids, np.int32),
      "chosen_score": _float(record.chosen_score), "rejected_score": _float(record.rejected_score),
      "margin": _float(record.margin), "weight": np.float32(1.0 if weight is None else weight),
      **flags,
  }
  if num_attributes:
    attributes = np.full((2, num_attributes), np.nan, np.float32)
    if record.chosen_attributes is not None:
      if len(record.chosen_attributes) != num_attributes:
        raise ValueError(f"{record.source}: {len(record.chosen_attributes)} attributes, expected "
                         f"num_attributes={num_attributes}")
      attributes[0], attributes[1] = record.chosen_attributes, record.rejected_attributes
    example["attributes"] = attributes
  return example


def tokenize_sft(record: Any, tokenizer: Any, config: TruncationConfig) -> dict:
  """An SFT example -> {"prompt", "response": int32 ids, flags} or {"dropped": 1}.

  Accepts a record with `prompt` and `response` (an SFTRecord), a PreferenceRecord (trains on `chosen`), or a
  mapping {"prompt": ..., "response": ...}.

  Raises:
    ValueError: the response has several messages. SFT puts the loss on every response token, so the tool results
      or user turns inside it would be trained as if the model had written them; a conversation file
      (`format="sft"`, `messages` layout) with `turns="all"` trains each assistant turn instead.
  """
  if isinstance(record, Mapping):
    prompt, response = record["prompt"], record["response"]
  else:
    prompt, response = record.prompt, getattr(record, "response", None)
    response = record.chosen if response is None else response
  if not isinstance(response, str) and len(response) > 1:
    where = record.get("source") if isinstance(record, Mapping) else getattr(record, "source", None)
    raise ValueError(f"{where or 'record'}: a response of {len(response)} messages (roles "
                     f"{[m['role'] for m in response]}) cannot be an SFT target: its non-assistant turns would be "
                     "trained as the model's own; for multi-turn SFT give the conversations as an SFT file "
                     "(data.format='sft', a 'messages' column) with data.turns='all'")
  kept = truncate(encode_prompt(tokenizer, prompt), [encode_response(tokenizer, response)], config)
  if kept is None:
    return {"dropped": 1}
  prompt_ids, (response_ids,), flags = kept
  return {"prompt": np.asarray(prompt_ids, np.int32), "response": np.asarray(response_ids, np.int32), **flags}
