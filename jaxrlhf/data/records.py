"""The canonical records every adapter, transform and pipeline stage exchanges.

A prompt is either plain text or a list of chat messages ({"role": ..., "content": ...}); a response is
plain text or a list of messages: one assistant message, or a multi-turn continuation of a chat prompt that starts
and ends with the assistant's turn (tool results or user turns in between; see `response_problem`). Scores may be
on any scale (NaN-free; absent is None).
An `SFTRecord` is a prompt and the one response supervised fine-tuning trains on.
A `PromptRecord` is a prompt alone (for the online stages, which generate the responses) plus the extra columns
its reward functions read (reference answers, test cases, metadata).
"""

import dataclasses
import json
import math
from typing import Any, Sequence, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]
Response = Union[str, list[Message]]

VALID_ROLES = ("system", "user", "assistant", "tool")
# A prompt's chat messages end with one of these roles (after an assistant turn there is nothing to answer).
PROMPT_LAST_ROLES = ("user", "tool")


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

  def __post_init__(self):
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
  """

  prompt: Prompt
  response: Response
  source: str | None = None

  def __post_init__(self):
    where = self.source or "record"
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

  def __post_init__(self):
    where = self.source or "record"
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
  """

  prompt: Prompt
  columns: dict[str, Any] = dataclasses.field(default_factory=dict)
  source: str | None = None

  def __post_init__(self):
    where = self.source or "record"
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
  return None


def response_text(response: Response) -> str:
  """The text of a response: itself, or the content of its one assistant message.

  Raises:
    ValueError: the response has several messages: its text includes the turn markers of a chat template, see
      `tokenize.response_text_under_template`.
  """
  if isinstance(response, str):
    return response
  if len(response) != 1:
    raise ValueError(f"a response of {len(response)} messages has no text without a chat template; use "
                     "jaxrlhf.data.tokenize.response_text_under_template(tokenizer, response, prompt)")
  return response[0]["content"]


def as_messages(prompt: Prompt) -> list[Message]:
  """A prompt as chat messages (plain text becomes one user turn)."""
  if isinstance(prompt, str):
    return [{"role": "user", "content": prompt}]
  return list(prompt)


def validate_messages(messages: Sequence, where: str) -> None:
  """Raises ValueError (naming `where`) unless `messages` is a non-empty list of {role, content: str}."""
  if not isinstance(messages, (list, tuple)) or not messages:
    raise ValueError(f"{where}: expected a non-empty list of messages, got {type(messages).__name__}")
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
      raise ValueError(f"{where}: message {i} must be a dict with 'role' and 'content'")
    if m["role"] not in VALID_ROLES:
      raise ValueError(f"{where}: message {i} has role {m['role']!r}; valid roles: {VALID_ROLES}")
    if not isinstance(m["content"], str):
      raise ValueError(f"{where}: message {i} content must be a string, got {type(m['content']).__name__}")


def record_to_json(record: PreferenceRecord | KWayRecord | PromptRecord | SFTRecord) -> bytes:
  """UTF-8 JSON bytes for a record (a "kind" key tells the kinds apart); nested messages survive."""
  fields = dataclasses.asdict(record)
  fields["kind"] = {KWayRecord: "kway", PromptRecord: "prompt", SFTRecord: "sft"}.get(type(record), "pair")
  return json.dumps(fields, ensure_ascii=False).encode("utf-8")


def record_from_json(data: bytes | str) -> PreferenceRecord | KWayRecord | PromptRecord | SFTRecord:
  """Inverse of record_to_json (tuples come back as tuples)."""
  fields = json.loads(data)
  kind = fields.pop("kind")
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
