"""Records -> token ids, with the truncation policy (keep the prompt's tail and the responses' heads).

Tokenizers follow the protocol in docs/design.md. A text prompt is encoded as is; a chat prompt is rendered with
`apply_chat_template(messages, add_generation_prompt=True)` and then encoded; a response is
`encode(text) + [eos_id]`, where the text of one assistant message is its content and the text of a multi-turn
continuation or of structured tool calls is rendered by the chat template (`response_text_under_template`).
Encoding never adds special tokens (templates carry their own).

Tools: a record's `tools` (function schemas) are passed to every rendering of its prompt and responses, as TRL
does, and structured `tool_calls` are written by the template. A template that would drop either (it renders the
same text without them, e.g. SmolLM2's) is refused with a ValueError rather than trained on text that lacks them.

Truncation (`truncate`), for a prompt and its response(s):
  1. a prompt longer than `max_prompt_length` keeps its last `max_prompt_length` tokens (the end of a dialogue is
     what the response answers);
  2. if fewer than `min_response_length` tokens remain for a response under `max_length`, the example is dropped;
  3. a response longer than the remaining budget keeps its first tokens (its eos is then cut off).
"""

import dataclasses
import inspect
from typing import Any, Mapping, Sequence

import numpy as np

from jaxrlhf.data.records import Prompt, Response, has_tool_calls, response_text

Tools = Sequence[Mapping[str, Any]] | None


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


def render(tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool,
           tools: Tools = None) -> str:
  """`tokenizer.apply_chat_template`, with `tools` passed only when there are some (a tokenizer of the protocol
  may take no tools argument; it is then refused only for records that have tools)."""
  if not tools:
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt)
  if "tools" not in inspect.signature(tokenizer.apply_chat_template).parameters:
    raise ValueError(f"{type(tokenizer).__name__}.apply_chat_template takes no tools, so the record's tools cannot "
                     "be shown to the model")
  return tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt,
                                       tools=list(tools))


def _without_tool_calls(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
  return [{k: v for k, v in m.items() if k != "tool_calls"} for m in messages]


def _require_shown(tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool, tools: Tools,
                   rendered: str, check_tools: bool = True) -> None:
  """Raises ValueError when the template renders `messages` (with `tools`) the same without their tool_calls, or,
  with `check_tools`, without the tools."""
  checks = []
  if tools and check_tools:
    checks.append(("tools", lambda: render(tokenizer, messages, add_generation_prompt)))
  if has_tool_calls(messages):
    checks.append(("tool_calls", lambda: render(tokenizer, _without_tool_calls(messages), add_generation_prompt,
                                                tools)))
  for what, render_without in checks:
    try:
      without = render_without()
    except Exception:  # The template refuses the conversation without them: it does read them.
      continue
    if without == rendered:
      raise ValueError(f"the chat template does not render {what} (the conversation renders the same text without "
                       "them), so the model would never see them; give a chat template that supports tool use "
                       "(data.chat_template_path / prompts.chat_template_path: a .jinja file)")


def encode_prompt(tokenizer: Any, prompt: Prompt, tools: Tools = None) -> list[int]:
  """Prompt token ids: text encoded as is, chat messages (with `tools`, if any) rendered with the generation
  prompt first.

  Raises:
    ValueError: tools with a text prompt, or a template that drops the tools or the prompt's tool_calls.
  """
  if isinstance(prompt, str):
    if tools:
      raise ValueError("tools need a chat prompt (messages): a text prompt is encoded without the chat template")
    return list(tokenizer.encode(prompt, add_special_tokens=False))
  text = render(tokenizer, prompt, True, tools)
  _require_shown(tokenizer, prompt, True, tools, text)
  return list(tokenizer.encode(text, add_special_tokens=False))


def response_text_under_template(tokenizer: Any, response: Response, prompt: Prompt | None = None,
                                 tools: Tools = None) -> str:
  """The text a response is encoded from, before its end token.

  Text is itself and one assistant message is its content, as a model writes them after the generation prompt. A
  multi-turn continuation [assistant, (tool | user | assistant)..., assistant] of a chat prompt is what the chat
  template renders between the prompt's generation header and the last assistant message's end: the earlier turns
  with their markers and the header of the last turn, then the last message's content, so the eos that follows
  closes the last turn as it closes a one-message response. Every token of it is a response token (TRL's DPO
  likewise scores the whole continuation, tool results and user turns included). When the last message carries
  structured tool_calls, the template writes them (e.g. a <tool_call> block after the content), so the text is the
  template's rendering of the whole conversation after the prompt's generation header, up to the end token that
  closes the last turn.

  Raises:
    ValueError: several messages or tool calls without a chat prompt; a template that does not render the prompt
      as the start of the longer conversation (the continuation would not be a suffix), that drops the response's
      tool_calls (a template that drops the tools is refused by `encode_prompt`), or that does not close a
      tool-calling last turn with the tokenizer's end token.
  """
  if isinstance(response, str) or (len(response) == 1 and not has_tool_calls(response)):
    return response_text(response)
  if prompt is None or isinstance(prompt, str):
    raise ValueError(f"a response of {len(response)} message(s) with turn markers or tool calls continues a chat: it "
                     "needs the prompt's messages")
  head = render(tokenizer, prompt, True, tools)
  last_calls = has_tool_calls(response[-1:])
  # Rendered up to the last turn's header (plain last turn) or to its end (the template writes its tool calls).
  shown = list(prompt) + list(response[:-1] if not last_calls else response)
  rendered = render(tokenizer, shown, not last_calls, tools)
  if not rendered.startswith(head):
    raise ValueError("the chat template renders the prompt differently once the response's turns follow it (e.g. "
                     "it rewrites earlier turns), so a multi-turn response is not a continuation of the prompt's "
                     f"text: prompt ends {head[-80:]!r}, the longer conversation has {rendered[:len(head)][-80:]!r}")
  # The tools are checked where the prompt is encoded (`encode_prompt`); here only the calls the response adds.
  _require_shown(tokenizer, shown, not last_calls, tools, rendered, check_tools=False)
  if not last_calls:
    return rendered[len(head):] + response[-1]["content"]
  body = rendered[len(head):]
  eos = tokenizer.decode([tokenizer.eos_id], skip_special_tokens=False)
  end = body.rfind(eos) if eos else -1
  if end < 0 or body[end + len(eos):].strip():
    raise ValueError(f"the chat template does not close the last assistant turn (with tool_calls) with the end token "
                     f"{eos!r}: the turn renders as ...{body[-80:]!r}, so it has no end the model can learn to emit")
  return body[:end]


def encode_response(tokenizer: Any, response: Response, prompt: Prompt | None = None, tools: Tools = None
                    ) -> list[int]:
  """Response token ids: `response_text_under_template` encoded, then eos_id. `prompt` and `tools` are needed
  (and only read) for a multi-turn or tool-calling response."""
  text = response_text_under_template(tokenizer, response, prompt, tools)
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
  tools = getattr(record, "tools", None)
  kept = truncate(encode_prompt(tokenizer, record.prompt, tools),
                  [encode_response(tokenizer, record.chosen, record.prompt, tools),
                   encode_response(tokenizer, record.rejected, record.prompt, tools)], config)
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
    prompt, response, tools = record["prompt"], record["response"], record.get("tools")
  else:
    prompt, response, tools = record.prompt, getattr(record, "response", None), getattr(record, "tools", None)
    response = record.chosen if response is None else response
  if not isinstance(response, str) and len(response) > 1:
    where = record.get("source") if isinstance(record, Mapping) else getattr(record, "source", None)
    raise ValueError(f"{where or 'record'}: a response of {len(response)} messages (roles "
                     f"{[m['role'] for m in response]}) cannot be an SFT target: its non-assistant turns would be "
                     "trained as the model's own; for multi-turn SFT give the conversations as an SFT file "
                     "(data.format='sft', a 'messages' column) with data.turns='all'")
  kept = truncate(encode_prompt(tokenizer, prompt, tools), [encode_response(tokenizer, response, prompt, tools)],
                  config)
  if kept is None:
    return {"dropped": 1}
  prompt_ids, (response_ids,), flags = kept
  return {"prompt": np.asarray(prompt_ids, np.int32), "response": np.asarray(response_ids, np.int32), **flags}
