"""Records -> token ids, with the truncation policy (keep the prompt's tail and the responses' heads).

Tokenizers follow the protocol in docs/design.md. A text prompt is encoded as is; a chat prompt is rendered with
`apply_chat_template(messages, add_generation_prompt=True)` and then encoded; a response is
`encode(text) + [eos_id]`, where the text of one assistant message is its content and the text of a multi-turn
continuation or of structured tool calls is rendered by the chat template (`response_text_under_template`).
Encoding never adds special tokens (templates carry their own).

Tools: a record's `tools` (function schemas) are passed to every rendering of its prompt and responses, as TRL
does, and structured `tool_calls` are written by the template. A template that would drop either (it renders the
same text without them, e.g. SmolLM2's) is refused with a ValueError rather than trained on text that lacks them;
likewise a response's `reasoning_content`. A record's `chat_template_kwargs` (template variables such as
enable_thinking, TRL's per-row column) go to every rendering of it too.

Truncation (`truncate`), for a prompt and its response(s):
  1. a prompt longer than `max_prompt_length` keeps its last `max_prompt_length` tokens (the end of a dialogue is
     what the response answers);
  2. if fewer than `min_response_length` tokens remain for a response under `max_length`, the example is dropped;
  3. a response longer than the remaining budget keeps its first tokens (its eos is then cut off).
"""

import dataclasses
import inspect
import json
from typing import Any, Mapping, Sequence

import numpy as np

from jaxrlhf.data.records import Prompt, Response, has_reasoning, has_tool_calls, response_text

Tools = Sequence[Mapping[str, Any]] | None
TemplateKwargs = Mapping[str, Any] | None


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
           tools: Tools = None, template_kwargs: TemplateKwargs = None) -> str:
  """`tokenizer.apply_chat_template`, with `tools` and the record's chat template arguments passed only when there
  are some (a tokenizer of the protocol may take neither; it is then refused only for records that have them)."""
  if not tools and not template_kwargs:
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt)
  extra = {}
  parameters = inspect.signature(tokenizer.apply_chat_template).parameters
  if tools:
    if "tools" not in parameters:
      raise ValueError(f"{type(tokenizer).__name__}.apply_chat_template takes no tools, so the record's tools cannot "
                       "be shown to the model")
    extra["tools"] = list(tools)
  if template_kwargs:
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
      raise ValueError(f"{type(tokenizer).__name__}.apply_chat_template takes no chat template arguments, so the "
                       f"record's chat_template_kwargs {dict(template_kwargs)} cannot be applied")
    extra.update(template_kwargs)
  return tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, **extra)


def _without(messages: Sequence[Mapping[str, Any]], key: str, start: int = 0) -> list[dict]:
  """`messages` with `key` removed from messages[start:]."""
  return [dict(m) if i < start else {k: v for k, v in m.items() if k != key} for i, m in enumerate(messages)]


def _require_shown(tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool, tools: Tools,
                   rendered: str, check_tools: bool = True, template_kwargs: TemplateKwargs = None,
                   response_start: int | None = None) -> None:
  """Raises ValueError when the template renders `messages` (with `tools`) the same without their tool_calls, or,
  with `check_tools`, without the tools, or, given `response_start`, without the reasoning_content of
  messages[response_start:] (a response's thinking is trained on, so it must be in the text)."""
  checks = []
  if tools and check_tools:
    checks.append(("tools", lambda: render(tokenizer, messages, add_generation_prompt,
                                           template_kwargs=template_kwargs)))
  if has_tool_calls(messages):
    checks.append(("tool_calls", lambda: render(tokenizer, _without(messages, "tool_calls"), add_generation_prompt,
                                                tools, template_kwargs)))
  if response_start is not None and has_reasoning(messages[response_start:]):
    checks.append(("the response's reasoning_content",
                   lambda: render(tokenizer, _without(messages, "reasoning_content", response_start),
                                  add_generation_prompt, tools, template_kwargs)))
  for what, render_without in checks:
    try:
      without = render_without()
    except Exception:  # The template refuses the conversation without them: it does read them.
      continue
    if without == rendered:
      kind = "reasoning (a reasoning model's template)" if "reasoning" in what else "tool use"
      raise ValueError(f"the chat template does not render {what} (the conversation renders the same text without "
                       f"them), so the model would never see them; give a chat template that supports {kind} "
                       "(data.chat_template_path / prompts.chat_template_path: a .jinja file)")


def encode_prompt(tokenizer: Any, prompt: Prompt, tools: Tools = None, template_kwargs: TemplateKwargs = None
                  ) -> list[int]:
  """Prompt token ids: text encoded as is, chat messages (with `tools` and `template_kwargs`, the record's chat
  template arguments, if any) rendered with the generation prompt first.

  Raises:
    ValueError: tools or template arguments with a text prompt, or a template that drops the tools or the prompt's
      tool_calls.
  """
  if isinstance(prompt, str):
    if tools or template_kwargs:
      what = "tools" if tools else "chat_template_kwargs"
      raise ValueError(f"{what} need a chat prompt (messages): a text prompt is encoded without the chat template")
    return list(tokenizer.encode(prompt, add_special_tokens=False))
  text = render(tokenizer, prompt, True, tools, template_kwargs)
  _require_shown(tokenizer, prompt, True, tools, text, template_kwargs=template_kwargs)
  return list(tokenizer.encode(text, add_special_tokens=False))


def response_text_under_template(tokenizer: Any, response: Response, prompt: Prompt | None = None,
                                 tools: Tools = None, template_kwargs: TemplateKwargs = None) -> str:
  """The text a response is encoded from, before its end token.

  Text is itself and one assistant message is its content, as a model writes them after the generation prompt
  (under a template that writes more than the content into an answer's turn, `wraps_answers`, the template's
  rendering of the turn, as below). A
  multi-turn continuation [assistant, (tool | user | assistant)..., assistant] of a chat prompt is what the chat
  template renders between the prompt's generation header and the last assistant message's end: the earlier turns
  with their markers and the header of the last turn, then the last message's content, so the eos that follows
  closes the last turn as it closes a one-message response. Every token of it is a response token (TRL's DPO
  likewise scores the whole continuation, tool results and user turns included). When the last message carries
  structured tool_calls, the template writes them (e.g. a <tool_call> block after the content), so the text is the
  template's rendering of the whole conversation after the prompt's generation header, up to the end token that
  closes the last turn. So is a last message with `reasoning_content` (a reasoning model's thinking, which its
  template writes, e.g. as a <think> block before the content): the model learns to write its thinking, then its
  answer. Reasoning in the prompt's turns is passed to the template, which may leave it out (Qwen3's shows only the
  thinking after the last user turn, as at inference).

  Raises:
    ValueError: several messages, tool calls or reasoning without a chat prompt; a template that does not render
      the prompt as the start of the longer conversation (the continuation would not be a suffix; e.g. thinking
      switched off by enable_thinking=False while the response reasons), that drops the response's tool_calls or
      all of its reasoning (a template that drops the tools is refused by `encode_prompt`), or that does not close
      a tool-calling or reasoning last turn with the tokenizer's end token.
  """
  if isinstance(response, str):
    return response
  chat_prompt = prompt is not None and not isinstance(prompt, str)
  # A last turn that calls tools or reasons is the template's to write (e.g. <tool_call> after the content, a
  # <think> block before it), and so is every last turn under a template that wraps answers: rendered to its end.
  # A plain last turn: rendered up to its header, content appended.
  templated = (has_tool_calls(response[-1:]) or has_reasoning(response[-1:])
               or (chat_prompt and wraps_answers(tokenizer, template_kwargs)))
  if len(response) == 1 and not templated:
    return response_text(response)
  if not chat_prompt:
    raise ValueError(f"a response of {len(response)} message(s) with turn markers, tool calls or reasoning continues "
                     "a chat: it needs the prompt's messages")
  head = render(tokenizer, prompt, True, tools, template_kwargs)
  shown = list(prompt) + list(response[:-1] if not templated else response)
  rendered = render(tokenizer, shown, not templated, tools, template_kwargs)
  if not rendered.startswith(head):
    raise ValueError("the chat template renders the prompt differently once the response's turns follow it (e.g. "
                     "it rewrites earlier turns, or its generation header differs from the response's turn: thinking "
                     "switched off for a response that reasons), so the response is not a continuation of the "
                     f"prompt's text: prompt ends {head[-80:]!r}, the longer conversation has "
                     f"{rendered[:len(head)][-80:]!r}")
  # The tools are checked where the prompt is encoded (`encode_prompt`); here only the calls the response adds.
  _require_shown(tokenizer, shown, not templated, tools, rendered, check_tools=False, template_kwargs=template_kwargs,
                 response_start=len(prompt))
  if not templated:
    return rendered[len(head):] + response[-1]["content"]
  body = rendered[len(head):]
  eos = tokenizer.decode([tokenizer.eos_id], skip_special_tokens=False)
  end = body.rfind(eos) if eos else -1
  if end < 0 or body[end + len(eos):].strip():
    raise ValueError(f"the chat template does not close the last assistant turn (with tool_calls or reasoning) with "
                     f"the end token "
                     f"{eos!r}: the turn renders as ...{body[-80:]!r}, so it has no end the model can learn to emit")
  return body[:end]


_PROBE_ANSWER = "Zq7 probe answer"
_wraps_answers_cache: dict[tuple, bool] = {}


def wraps_answers(tokenizer: Any, template_kwargs: TemplateKwargs = None) -> bool:
  """Whether the tokenizer's chat template writes more than an answer's content between the generation header and
  the end token of a plain assistant turn (Qwen3's template in thinking mode writes an empty <think> block before
  it). Probed once per template source and arguments with a one-turn chat; a template that cannot be probed so
  (no Jinja `chat_template`, no end token after the answer, a prompt that is not a prefix) counts as not wrapping.
  Under a wrapping template a response's text is the template's rendering, as TRL takes it, not its content."""
  source = getattr(tokenizer, "chat_template", None)
  if not isinstance(source, str):
    return False
  key = (source, tokenizer.eos_id, json.dumps(template_kwargs, sort_keys=True, default=repr) if template_kwargs else "")
  if key not in _wraps_answers_cache:
    eos = tokenizer.decode([tokenizer.eos_id], skip_special_tokens=False)
    prompt = [{"role": "user", "content": "Hi"}]
    try:
      head = render(tokenizer, prompt, True, None, template_kwargs)
      full = render(tokenizer, prompt + [{"role": "assistant", "content": _PROBE_ANSWER}], False, None,
                    template_kwargs)
    except Exception:  # A template that refuses the probe chat: keep the content rule.
      full, head = "", None
    body = full[len(head):] if head is not None and full.startswith(head) else None
    end = body.rfind(eos) if body is not None and eos else -1
    _wraps_answers_cache[key] = (end >= 0 and not body[end + len(eos):].strip() and body[:end] != _PROBE_ANSWER
                                 and _PROBE_ANSWER in body[:end])
  return _wraps_answers_cache[key]


def encode_response(tokenizer: Any, response: Response, prompt: Prompt | None = None, tools: Tools = None,
                    template_kwargs: TemplateKwargs = None) -> list[int]:
  """Response token ids: `response_text_under_template` encoded, then eos_id. `prompt`, `tools` and
  `template_kwargs` are needed (and only read) for a multi-turn or tool-calling response."""
  text = response_text_under_template(tokenizer, response, prompt, tools, template_kwargs)
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
  tools, kwargs = getattr(record, "tools", None), getattr(record, "chat_template_kwargs", None)
  kept = truncate(encode_prompt(tokenizer, record.prompt, tools, kwargs),
                  [encode_response(tokenizer, record.chosen, record.prompt, tools, kwargs),
                   encode_response(tokenizer, record.rejected, record.prompt, tools, kwargs)], config)
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
    kwargs = record.get("chat_template_kwargs")
  else:
    prompt, response, tools = record.prompt, getattr(record, "response", None), getattr(record, "tools", None)
    kwargs = getattr(record, "chat_template_kwargs", None)
    response = record.chosen if response is None else response
  if not isinstance(response, str) and len(response) > 1:
    where = record.get("source") if isinstance(record, Mapping) else getattr(record, "source", None)
    raise ValueError(f"{where or 'record'}: a response of {len(response)} messages (roles "
                     f"{[m['role'] for m in response]}) cannot be an SFT target: its non-assistant turns would be "
                     "trained as the model's own; for multi-turn SFT give the conversations as an SFT file "
                     "(data.format='sft', a 'messages' column) with data.turns='all'")
  kept = truncate(encode_prompt(tokenizer, prompt, tools, kwargs),
                  [encode_response(tokenizer, response, prompt, tools, kwargs)], config)
  if kept is None:
    return {"dropped": 1}
  prompt_ids, (response_ids,), flags = kept
  return {"prompt": np.asarray(prompt_ids, np.int32), "response": np.asarray(response_ids, np.int32), **flags}
