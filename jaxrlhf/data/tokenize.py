"""Records -> token ids, with the truncation policy (keep the prompt's tail and the responses' heads).

Tokenizers follow the protocol in docs/design.md. A text prompt is encoded as is; a chat prompt is rendered with
`apply_chat_template(messages, add_generation_prompt=True)` and then encoded; a response is
`encode(response_text) + [eos_id]`. Encoding never adds special tokens (templates carry their own).

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


def encode_response(tokenizer: Any, response: Response) -> list[int]:
  """Response token ids: the text (assistant messages' contents joined) followed by eos_id."""
  return list(tokenizer.encode(response_text(response), add_special_tokens=False)) + [tokenizer.eos_id]


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
                  [encode_response(tokenizer, record.chosen), encode_response(tokenizer, record.rejected)], config)
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

  Accepts a record with `prompt` and `response` (e.g. the synthetic world's SFTRecord), a PreferenceRecord
  (trains on `chosen`), or a mapping {"prompt": ..., "response": ...}.
  """
  if isinstance(record, Mapping):
    prompt, response = record["prompt"], record["response"]
  else:
    prompt, response = record.prompt, getattr(record, "response", None)
    response = record.chosen if response is None else response
  kept = truncate(encode_prompt(tokenizer, prompt), [encode_response(tokenizer, response)], config)
  if kept is None:
    return {"dropped": 1}
  prompt_ids, (response_ids,), flags = kept
  return {"prompt": np.asarray(prompt_ids, np.int32), "response": np.asarray(response_ids, np.int32), **flags}
