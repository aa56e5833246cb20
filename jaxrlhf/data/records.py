"""The canonical records every adapter, transform and pipeline stage exchanges.

A prompt is either plain text or a list of chat messages ({"role": ..., "content": ...}); a response is
plain text or a list of messages: one assistant message, or a multi-turn continuation of a chat prompt that starts
and ends with the assistant's turn (tool results or user turns in between; see `response_problem`). Scores may be
on any scale (NaN-free; absent is None).

Tool use follows transformers' chat format: an assistant message may carry structured `tool_calls` (each
{"type": "function", "function": {"name": str, "arguments": dict or JSON text}}, or the same without the
"function" wrapper) beside its content, a tool message may carry the `name` of the tool and the `tool_call_id` it
answers, and a record may carry `tools`, the JSON schemas of the functions the model may call, which the chat
template shows in the prompt. Both need a chat prompt: the model's template renders them (`tokenize`). So do an
assistant message's `reasoning_content` (a reasoning model's thinking, which its template writes, e.g. as a <think>
block) and a record's `chat_template_kwargs` (template variables for every rendering of the record, e.g.
{"enable_thinking": False}, TRL's per-row column).
An `SFTRecord` is a prompt and the one response supervised fine-tuning trains on.
A `PromptRecord` is a prompt alone (for the online stages, which generate the responses) plus the extra columns
its reward functions read (reference answers, test cases, metadata).
"""

import dataclasses
import json
import math
from typing import Any, Sequence, Union

Message = dict[str, Any]
Prompt = Union[str, list[Message]]
Response = Union[str, list[Message]]

VALID_ROLES = ("system", "user", "assistant", "tool")
# A prompt's chat messages end with one of these roles (after an assistant turn there is nothing to answer).
PROMPT_LAST_ROLES = ("user", "tool")
# Message keys beside role and content, by role: what transformers' tool-use format puts there.
# Template variables the renderer sets; chat template arguments may not replace them.
RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "tools", "documents", "add_generation_prompt"})
# Jinja keywords and literals, which cannot be variable names.
_JINJA_WORDS = frozenset({"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if",
                          "else", "elif", "endif", "for", "endfor", "set", "endset", "macro", "endmacro", "block",
                          "import", "include", "from", "with", "without", "context", "recursive", "loop"})
OPTIONAL_MESSAGE_KEYS = {"assistant": ("tool_calls", "reasoning_content"), "tool": ("name", "tool_call_id")}


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
  """One preference pair: `chosen` is preferred over `rejected` for `prompt`.

  Attributes:
    prompt: text, or chat messages ending before the responses.
    chosen: the preferred response (text or assistant messages).
    rejected: the dispreferred response.
    chosen_score, rejected_score: optional quality scores (any scale, e.g. a 1-10 judge score).
    margin: optional preference strength (used by margin losses).
    chosen_attributes, rejected_attributes: optional per-attribute scores (HelpSteer2-style), equal length.
    annotator: optional annotator / group id.
    subset: optional subset name (for per-subset accuracy).
    source: where the record came from ("file.jsonl:17"), for error messages.
    tools: optional JSON schemas of the functions the model may call (the chat template shows them; chat prompt only).
    chat_template_kwargs: optional chat template arguments for every rendering of this record (template variables
      such as {"enable_thinking": False}, TRL's per-row column; chat prompt only).
  """

  prompt: Prompt
  chosen: Response
  rejected: Response
  chosen_score: float | None = None
  rejected_score: float | None = None
  margin: float | None = None
  chosen_attributes: tuple[float, ...] | None = None
  rejected_attributes: tuple[float, ...] | None = None
  annotator: str | None = None
  subset: str | None = None
  source: str | None = None
  tools: tuple[dict, ...] | None = None
  chat_template_kwargs: dict[str, Any] | None = None

  def __post_init__(self):
    _check_chat_extras(self, self.prompt)
    for name in ("chosen_score", "rejected_score", "margin"):
      value = getattr(self, name)
      if value is not None and not math.isfinite(value):
        raise ValueError(f"{self.source or 'record'}: {name} must be finite, got {value!r}")
    if (self.chosen_attributes is None) != (self.rejected_attributes is None) or (
        self.chosen_attributes is not None
        and len(self.chosen_attributes) != len(self.rejected_attributes)):
      raise ValueError(f"{self.source or 'record'}: chosen_attributes and rejected_attributes must both be "
                       "given with equal length, or both be absent")

    for name in ("chosen", "rejected"):
      problem = response_problem(getattr(self, name), self.prompt)
      if problem:
        raise ValueError(f"{self.source or 'record'}: {name}: {problem}")

  def swapped(self) -> "PreferenceRecord":
    """The same pair with chosen and rejected (and their scores/attributes) exchanged."""
    return dataclasses.replace(
        self, chosen=self.rejected, rejected=self.chosen,
        chosen_score=self.rejected_score, rejected_score=self.chosen_score,
        chosen_attributes=self.rejected_attributes, rejected_attributes=self.chosen_attributes)


@dataclasses.dataclass(frozen=True)
class SFTRecord:
  """A prompt and the response supervised fine-tuning trains on (its tokens carry the loss; the prompt's do not).

  Attributes:
    prompt: text, or chat messages (the last one is the turn the model answers: role "user" or "tool").
    response: text, or a list of one assistant message.
    source: where the record came from ("file.jsonl:17"), for error messages.
    tools: optional JSON schemas of the functions the model may call (chat prompt only).
    chat_template_kwargs: optional chat template arguments for every rendering of this record (chat prompt only).
  """

  prompt: Prompt
  response: Response
  source: str | None = None
  tools: tuple[dict, ...] | None = None
  chat_template_kwargs: dict[str, Any] | None = None

  def __post_init__(self):
    where = self.source or "record"
    _check_chat_extras(self, self.prompt)
    if not isinstance(self.prompt, str):
      validate_messages(self.prompt, f"{where}: prompt")
      if self.prompt[-1]["role"] not in PROMPT_LAST_ROLES:
        raise ValueError(f"{where}: prompt: the last message has role {self.prompt[-1]['role']!r}; a prompt ends "
                         f"with the turn the model answers, one of {PROMPT_LAST_ROLES}")
    if not isinstance(self.response, str):
      validate_messages(self.response, f"{where}: response")
      if len(self.response) != 1 or self.response[0]["role"] != "assistant":
        raise ValueError(f"{where}: response: expected text or one assistant message, got roles "
                         f"{[m['role'] for m in self.response]}")
      problem = response_problem(self.response, self.prompt)
      if problem:
        raise ValueError(f"{where}: response: {problem}")


@dataclasses.dataclass(frozen=True)
class KWayRecord:
  """A prompt with k >= 2 completions for best-of-k evaluation.

  Exactly one of `scores` (one per completion, higher is better) or `best_index` must be given.
  """

  prompt: Prompt
  completions: tuple[Response, ...]
  scores: tuple[float, ...] | None = None
  best_index: int | None = None
  subset: str | None = None
  source: str | None = None
  tools: tuple[dict, ...] | None = None
  chat_template_kwargs: dict[str, Any] | None = None

  def __post_init__(self):
    where = self.source or "record"
    _check_chat_extras(self, self.prompt)
    if len(self.completions) < 2:
      raise ValueError(f"{where}: a k-way record needs >= 2 completions, got {len(self.completions)}")
    if (self.scores is None) == (self.best_index is None):
      raise ValueError(f"{where}: give exactly one of scores or best_index")
    if self.scores is not None:
      if len(self.scores) != len(self.completions):
        raise ValueError(f"{where}: {len(self.scores)} scores for {len(self.completions)} completions")
      if not all(math.isfinite(s) for s in self.scores):
        raise ValueError(f"{where}: scores must be finite, got {self.scores}")
    if self.best_index is not None and not 0 <= self.best_index < len(self.completions):
      raise ValueError(f"{where}: best_index {self.best_index} outside [0, {len(self.completions)})")
    for i, completion in enumerate(self.completions):
      problem = response_problem(completion, self.prompt)
      if problem:
        raise ValueError(f"{where}: completions[{i}]: {problem}")


@dataclasses.dataclass(frozen=True)
class PromptRecord:
  """A prompt for generation, with the columns passed through to reward functions.

  Attributes:
    prompt: text, or chat messages (the last one is the turn the model answers: role "user" or "tool").
    columns: the row's other fields (JSON values: str, int, float, bool, None, lists, str-keyed dicts), unchanged,
      e.g. {"answer": "12"}; reward functions read them by name.
    source: where the record came from ("file.jsonl:17"), for error messages.
    tools: optional JSON schemas of the functions the model may call (chat prompt only); the template shows them in
      the prompt the model answers.
    chat_template_kwargs: optional chat template arguments the prompt is rendered with (chat prompt only).
  """

  prompt: Prompt
  columns: dict[str, Any] = dataclasses.field(default_factory=dict)
  source: str | None = None
  tools: tuple[dict, ...] | None = None
  chat_template_kwargs: dict[str, Any] | None = None

  def __post_init__(self):
    where = self.source or "record"
    _check_chat_extras(self, self.prompt)
    if isinstance(self.prompt, str):
      if not self.prompt.strip():
        raise ValueError(f"{where}: prompt is empty")
    else:
      validate_messages(self.prompt, f"{where}: prompt")
      if self.prompt[-1]["role"] not in PROMPT_LAST_ROLES:
        raise ValueError(f"{where}: prompt: the last message has role {self.prompt[-1]['role']!r}; a prompt ends "
                         f"with the turn the model answers, one of {PROMPT_LAST_ROLES}")
    if not isinstance(self.columns, dict) or not all(isinstance(k, str) for k in self.columns):
      raise ValueError(f"{where}: columns must be a dict with string keys, got {self.columns!r}")


@dataclasses.dataclass(frozen=True)
class BenchmarkRecord:
  """A preference pair of a reward benchmark with the label its scores are grouped by.

  Attributes:
    pair: the pair (its `subset`: M-RewardBench's RewardBench subset, RAG-RewardBench's source dataset).
    group: M-RewardBench: the language (e.g. "deu_Latn"); RAG-RewardBench: the scenario (e.g. "multi-hop reasoning").
    id: the row's id in the release, as text (None when the file has none).
  """

  pair: PreferenceRecord
  group: str
  id: str | None = None

  def __post_init__(self):
    if not isinstance(self.group, str) or not self.group.strip():
      raise ValueError(f"{self.pair.source or 'record'}: group must be a non-empty string, got {self.group!r}")


def response_problem(response: Response, prompt: Prompt) -> str | None:
  """What is wrong with `response` as an answer to `prompt`, or None.

  A response is text, or messages that start with the assistant's turn and end with it (the last assistant message
  is what the end token follows); between them may come tool results, user turns and further assistant turns, but
  no system message. Several messages continue a chat, so they need a chat (messages) prompt: their turn markers
  come from the chat template (`tokenize.response_text_under_template`).
  """
  if isinstance(response, str):
    return None
  try:
    validate_messages(response, "response")
  except ValueError as e:
    return str(e).removeprefix("response: ")
  roles = [m["role"] for m in response]
  if roles[0] != "assistant" or roles[-1] != "assistant":
    return f"roles {roles}: a response starts and ends with the assistant's turn"
  if "system" in roles:
    return f"roles {roles}: a system message inside a response"
  if len(response) > 1 and isinstance(prompt, str):
    return (f"{len(response)} messages (roles {roles}) after a text prompt: a multi-turn response continues a chat, "
            "so the prompt must be messages (the turn markers come from the chat template)")
  if isinstance(prompt, str) and has_tool_calls(response):
    return ("an assistant message with tool_calls after a text prompt: the calls are written by the chat template, "
            "so the prompt must be messages")
  if isinstance(prompt, str) and has_reasoning(response):
    return ("an assistant message with reasoning_content after a text prompt: the reasoning is written by the chat "
            "template, so the prompt must be messages")
  return None


def has_tool_calls(messages: Prompt | Response) -> bool:
  """Whether any message carries structured `tool_calls` (text is never such a message)."""
  return not isinstance(messages, str) and any(m.get("tool_calls") for m in messages)


def template_kwargs_problem(kwargs: Any) -> str | None:
  """What is wrong with chat template arguments (a dict of template variable name -> JSON value), or None."""
  if not isinstance(kwargs, dict):
    return f"expected a JSON object of template variables, got {kwargs!r}"
  for name, value in kwargs.items():
    if not isinstance(name, str) or not name.isidentifier() or name in _JINJA_WORDS:
      return f"{name!r} is not a template variable name"
    if name in RESERVED_TEMPLATE_VARIABLES:
      return f"{name!r} is set by the renderer itself (reserved: {sorted(RESERVED_TEMPLATE_VARIABLES)})"
    problem = _json_value_problem(value)
    if problem:
      return f"{name}: {problem}"
  return None


def _json_value_problem(value: Any) -> str | None:
  if value is None or isinstance(value, (bool, int, str)):
    return None
  if isinstance(value, float):
    return None if math.isfinite(value) else f"{value!r} is not a finite number"
  if isinstance(value, (list, tuple)):
    return next(filter(None, map(_json_value_problem, value)), None)
  if isinstance(value, dict):
    if not all(isinstance(k, str) for k in value):
      return f"{value!r} has keys that are not strings"
    return next(filter(None, map(_json_value_problem, value.values())), None)
  return f"{value!r} ({type(value).__name__}) is not a JSON value"


def has_reasoning(messages: Prompt | Response) -> bool:
  """Whether any message carries `reasoning_content` (a reasoning model's thinking, kept apart from its answer)."""
  return not isinstance(messages, str) and any(m.get("reasoning_content") for m in messages)


def response_text(response: Response) -> str:
  """The text of a response: itself, or the content of its one assistant message.

  Raises:
    ValueError: the response has several messages, tool calls or reasoning: its text includes what a chat template
      writes, see `tokenize.response_text_under_template`.
  """
  if isinstance(response, str):
    return response
  if len(response) != 1 or has_tool_calls(response) or has_reasoning(response):
    what = (f"a response of {len(response)} messages" if len(response) != 1 else
            "a response with tool_calls" if has_tool_calls(response) else "a response with reasoning_content")
    raise ValueError(f"{what} has no text without a chat template; use "
                     "jaxrlhf.data.tokenize.response_text_under_template(tokenizer, response, prompt)")
  return response[0]["content"]


def as_messages(prompt: Prompt) -> list[Message]:
  """A prompt as chat messages (plain text becomes one user turn)."""
  if isinstance(prompt, str):
    return [{"role": "user", "content": prompt}]
  return list(prompt)


def validate_messages(messages: Sequence, where: str) -> None:
  """Raises ValueError (naming `where`) unless `messages` is a non-empty list of {role, content: str} dicts, where
  an assistant message may also hold `tool_calls` and a tool message `name` / `tool_call_id`
  (`OPTIONAL_MESSAGE_KEYS`; see the module docstring)."""
  if not isinstance(messages, (list, tuple)) or not messages:
    raise ValueError(f"{where}: expected a non-empty list of messages, got {type(messages).__name__}")
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
      raise ValueError(f"{where}: message {i} must be a dict with 'role' and 'content'")
    if m["role"] not in VALID_ROLES:
      raise ValueError(f"{where}: message {i} has role {m['role']!r}; valid roles: {VALID_ROLES}")
    if not isinstance(m["content"], str):
      raise ValueError(f"{where}: message {i} content must be a string, got {type(m['content']).__name__}")
    allowed = OPTIONAL_MESSAGE_KEYS.get(m["role"], ())
    extra = sorted(k for k in m if k not in ("role", "content") and k not in allowed)
    if extra:
      raise ValueError(f"{where}: message {i} (role {m['role']!r}) has key(s) {extra}; allowed beside role and "
                       f"content: {list(allowed)}")
    for key in ("name", "tool_call_id", "reasoning_content"):
      if key in m and not (isinstance(m[key], str) and m[key]):
        raise ValueError(f"{where}: message {i} {key} must be a non-empty string, got {m[key]!r}")
    if "tool_calls" in m:
      calls = m["tool_calls"]
      if not isinstance(calls, (list, tuple)) or not calls:
        raise ValueError(f"{where}: message {i} tool_calls must be a non-empty list, got {calls!r}")
      for j, call in enumerate(calls):
        problem = tool_call_problem(call)
        if problem:
          raise ValueError(f"{where}: message {i} tool_calls[{j}]: {problem}")


def tool_call_problem(call: Any) -> str | None:
  """What is wrong with one structured tool call, or None. A call is {"name", "arguments"}, optionally wrapped as
  {"type": "function", "function": {...}, "id": ...}; arguments are a JSON object, or its JSON text."""
  if not isinstance(call, dict):
    return f"expected a dict, got {type(call).__name__}"
  function = call.get("function", call)
  if not isinstance(function, dict):
    return f"function must be a dict with 'name' and 'arguments', got {function!r}"
  name = function.get("name")
  if not isinstance(name, str) or not name:
    return f"expected a non-empty function name, got {name!r}"
  arguments = function.get("arguments")
  if isinstance(arguments, str):
    try:
      arguments = json.loads(arguments)
    except json.JSONDecodeError as e:
      return f"arguments of {name!r} are text but not JSON ({e.msg} at character {e.pos})"
  if not isinstance(arguments, dict):
    return f"arguments of {name!r} must be a JSON object (a dict or its JSON text), got {function.get('arguments')!r}"
  return None


def tools_problem(tools: Any) -> str | None:
  """What is wrong with a record's `tools`, or None: a non-empty list of function schemas, each {"name", ...}
  (optionally wrapped as {"type": "function", "function": {...}}), names distinct."""
  if not isinstance(tools, (list, tuple)) or not tools:
    return f"expected a non-empty list of function schemas, got {tools!r}"
  names = []
  for i, tool in enumerate(tools):
    function = tool.get("function", tool) if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
      return f"tools[{i}] must be a dict with a non-empty 'name' (or {{'function': {{'name': ...}}}}), got {tool!r}"
    names.append(function["name"])
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    return f"function name(s) {repeated} appear more than once"
  return None


def _check_chat_extras(record: Any, prompt: Prompt) -> None:
  """Validates `record.tools` (made a tuple) and `record.chat_template_kwargs` (an empty dict becomes None) against
  its prompt: the chat template shows the tools and reads the arguments."""
  where = record.source or "record"
  kwargs = record.chat_template_kwargs
  if kwargs is not None:
    problem = template_kwargs_problem(kwargs)
    if problem:
      raise ValueError(f"{where}: chat_template_kwargs: {problem}")
    if kwargs and isinstance(prompt, str):
      raise ValueError(f"{where}: chat_template_kwargs need a chat prompt (messages): a text prompt is encoded "
                       "without the chat template")
    object.__setattr__(record, "chat_template_kwargs", dict(kwargs) or None)
  if record.tools is None:
    return
  problem = tools_problem(record.tools)
  if problem:
    raise ValueError(f"{where}: tools: {problem}")
  if isinstance(prompt, str):
    raise ValueError(f"{where}: tools need a chat prompt (messages): the chat template shows them, and a text "
                     "prompt is encoded without it")
  object.__setattr__(record, "tools", tuple(record.tools))


def record_to_json(record: PreferenceRecord | KWayRecord | PromptRecord | SFTRecord) -> bytes:
  """UTF-8 JSON bytes for a record (a "kind" key tells the kinds apart); nested messages survive."""
  fields = dataclasses.asdict(record)
  fields["kind"] = {KWayRecord: "kway", PromptRecord: "prompt", SFTRecord: "sft"}.get(type(record), "pair")
  return json.dumps(fields, ensure_ascii=False).encode("utf-8")


def record_from_json(data: bytes | str) -> PreferenceRecord | KWayRecord | PromptRecord | SFTRecord:
  """Inverse of record_to_json (tuples come back as tuples)."""
  fields = json.loads(data)
  kind = fields.pop("kind")
  if fields.get("tools") is not None:
    fields["tools"] = tuple(fields["tools"])
  if kind == "prompt":
    return PromptRecord(**fields)
  if kind == "sft":
    return SFTRecord(**fields)
  if kind == "kway":
    fields["completions"] = tuple(fields["completions"])
    fields["scores"] = None if fields["scores"] is None else tuple(fields["scores"])
    return KWayRecord(**fields)
  for name in ("chosen_attributes", "rejected_attributes"):
    fields[name] = None if fields[name] is None else tuple(fields[name])
  return PreferenceRecord(**fields)
