"""Format adapters: local JSONL / JSONL.gz / parquet files -> PreferenceRecords (or KWayRecords).

Formats (`AdapterConfig.format`); the canonical column names below can be renamed with `columns`:

- "pairwise": `prompt` (text or messages), `chosen`, `rejected` (text); optional `chosen_score`, `rejected_score`,
  `margin`, `chosen_attributes`, `rejected_attributes` (lists of numbers), `annotator`, `subset`.
- "chat": `chosen` and `rejected` are message lists. The responses are the messages after the longest shared
  leading run of messages; the prompt is the optional `prompt` column (text or messages) or else that shared run.
  A response is one assistant message or a multi-turn continuation that starts and ends with the assistant's turn
  (tool results, user turns between; no system message; the prompt must then be messages): its turn markers come
  from the chat template (`tokenize.response_text_under_template`) and every token of it is scored, as in TRL. Such
  rows are counted as the note "chat_multi_turn_response"; other role layouts are bad_messages rows. Same optional
  columns as "pairwise".

Tool use, in the formats with chat messages ("pairwise" and "chat" prompts and responses, "kway", "prompts",
"sft"): an assistant message may hold structured `tool_calls` (its content may then be null or empty), a tool
message its `name` and `tool_call_id`, as in transformers' chat format, and the optional `tools` column holds the
function schemas the template shows (a list, or its JSON text, as TRL reads it). An assistant message may also
hold `reasoning_content`, a reasoning model's thinking apart from its answer, which its template writes (e.g. a
<think> block). The optional `chat_template_kwargs` column (a dict or its JSON text, TRL's per-row template
arguments, e.g. {"enable_thinking": false}) is passed to every rendering of the row. Whether the model's template
renders tools, calls and a response's reasoning is checked when the records are tokenized (`tokenize`). Any other
message key that holds something (weight, tool_calls on a user turn, ...) makes a bad_messages row in every format:
it would be lost; so does a `chat_template_kwargs` column that holds something in the formats without chat
prompts ("hh", "ultrafeedback", "m_rewardbench", "rag_rewardbench"), as a bad_field row.
- "hh": Anthropic HH-RLHF: `chosen`, `rejected` are dialogues of "\n\nHuman:" / "\n\nAssistant:" turns. The prompt
  is the shared dialogue up to and including the final "\n\nAssistant:" marker; the responses are the final
  assistant turns with exactly one leading space removed (HH writes "Assistant: text"). When the two dialogues
  diverge before their final assistant turn (5 of 2,312 harmless-base test pairs), the prompt is the longest shared
  prefix that ends with an assistant marker and the responses are the (multi-turn) remainders; such rows are kept
  and counted as the note "hh_diverging_dialogue". An empty final assistant turn is kept (HH has a few, its
  annotators preferred silence) and counted as the note "hh_empty_response".
- "ultrafeedback": an instruction (`prompt`, default column "instruction") with `completions`: either dicts with a
  `response` text and an `overall_score` (UltraFeedback's layout; keys renamable via `columns`), or texts with a
  parallel `scores` list. chosen = the top-scored completion; ties at the top go to the lowest index. rejected =
  a completion scored strictly below the top, drawn uniformly with `random.Random(f"{seed}:{file}:{line}")`
  (`rejected="random"`, so the draw does not depend on read order) or the lowest-scored one (`rejected="lowest"`,
  ties to the lowest index). A row whose completions all tie has no preference and is a bad row
  ("no_preference").
- "kway": `prompt`, `completions` (texts, message lists, or ultrafeedback-style dicts), and `scores` (or dict
  scores) or `best_index` -> KWayRecord for best-of-k evaluation. A row with both is kept (by its scores) only
  when `best_index` is a top-scored completion; otherwise it is a bad row ("bad_field").
- "sft": supervised fine-tuning examples -> SFTRecord, in any of TRL's SFT layouts: `prompt` (text or messages
  ending with a user or tool turn) and `completion` (text, or a list of one assistant message); `messages` (a
  conversation whose last message is the assistant's: the prompt is every message before it, the response is that
  last message); or `text` (language modeling: the whole text is the response to an empty prompt, so every token but
  the first, which has no context, is a target; no BOS is added, as for any text prompt here). A row holding more
  than one layout is a bad row unless `columns` names the columns of one of them, which is then the only one read.
  The record's response is the final assistant turn; a conversation with earlier assistant turns keeps them in the
  prompt and is counted as the note "sft_earlier_assistant_turns" (the sft stage trains on them too with
  `data.turns="all"`, `transforms.every_assistant_turn`).
- "prompts": prompts for the online stages -> PromptRecord. The prompt is the `prompt` column (text, or a list of
  messages as in TRL's conversational format) or the `messages` column (a list of messages); a row holding both
  is a bad row unless `columns` names only one of them, which is then the only one read. Chat messages must end
  with the turn the model answers (role "user" or "tool"). Every other column is passed through unchanged in
  `PromptRecord.columns` (JSON values; a parquet value that is not one, e.g. bytes or a timestamp, is a bad row),
  or only the columns named in `keep_columns`, which every row must then hold (not null).

- "m_rewardbench": M-RewardBench (Gureja et al. 2024, arXiv 2410.15522), one file per language as released
  (CohereLabsCommunity/multilingual-reward-bench `<lang>/test-00000-of-00001.parquet`): `prompt`, `chosen`,
  `rejected` (text), `language` (required: the group), `subset` (default column "source": the RewardBench subset,
  e.g. "alpacaeval-easy"; optional) and `id` (optional; int or text) -> BenchmarkRecord (group = language).
- "rag_rewardbench": RAG-RewardBench (Jin et al. 2024, arXiv 2412.13746), the released JSONL files
  (jinzhuoran/RAG-RewardBench `Dataset/{reason,citation,abstain,conflict,helpful,harmless}.jsonl`): `prompt` (the
  retrieval-augmented input: retrieved documents and question, as the answering model saw it), `chosen`,
  `rejected`, optional `subset` (the source dataset) and `id` -> BenchmarkRecord whose group is the scenario: the
  row's `scenario` column when the file has one, else the file's name (`RAG_REWARDBENCH_SCENARIOS`: reason.jsonl ->
  "multi-hop reasoning", ...; another name gives its stem). A row whose prompt equals its `question` column (the
  documents missing from the scored input) is kept and counted as the note "rag_prompt_is_question".

Bad rows raise `ValueError("file:line: reason: detail")` in strict mode and are counted per reason in a
`SkipReport` in lenient mode (see errors.py).
"""

import dataclasses
import gzip
import json
import logging
import math
import os
import random
import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

from jaxrlhf.data import errors
from jaxrlhf.data.records import (BenchmarkRecord, KWayRecord, OPTIONAL_MESSAGE_KEYS, PROMPT_LAST_ROLES,
                                  PreferenceRecord, PromptRecord, SFTRecord, VALID_ROLES, response_problem,
                                  template_kwargs_problem, tool_call_problem, tools_problem)

# TRL's per-row chat template arguments (read in the formats with chat prompts; refused in the others: parse_row).
TEMPLATE_KWARGS_COLUMN = "chat_template_kwargs"
_CHAT_COLUMNS = ("tools", TEMPLATE_KWARGS_COLUMN)
# The file types `iter_rows` reads.
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
FORMATS = ("pairwise", "chat", "hh", "ultrafeedback", "kway", "prompts", "sft", "m_rewardbench", "rag_rewardbench")
_OPTIONAL_PAIR_COLUMNS = ("chosen_score", "rejected_score", "margin", "chosen_attributes", "rejected_attributes",
                          "annotator", "subset")
# Canonical column -> default name in the file, per format.
DEFAULT_COLUMNS = {
    "pairwise": {c: c for c in ("prompt", "chosen", "rejected") + _CHAT_COLUMNS + _OPTIONAL_PAIR_COLUMNS},
    "chat": {c: c for c in ("prompt", "chosen", "rejected") + _CHAT_COLUMNS + _OPTIONAL_PAIR_COLUMNS},
    "hh": {"chosen": "chosen", "rejected": "rejected", "subset": "subset"},
    "ultrafeedback": {"prompt": "instruction", "completions": "completions", "scores": "scores",
                      "response": "response", "score": "overall_score", "subset": "subset"},
    "kway": {"prompt": "prompt", "completions": "completions", "scores": "scores", "best_index": "best_index",
             "response": "response", "score": "overall_score", "subset": "subset",
             **{c: c for c in _CHAT_COLUMNS}},
    "prompts": {"prompt": "prompt", "messages": "messages", **{c: c for c in _CHAT_COLUMNS}},
    "sft": {"prompt": "prompt", "completion": "completion", "messages": "messages", "text": "text",
            **{c: c for c in _CHAT_COLUMNS}},
    "m_rewardbench": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "language": "language",
                      "subset": "source", "id": "id"},
    "rag_rewardbench": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "scenario": "scenario",
                        "subset": "subset", "id": "id", "question": "question"},
}
# RAG-RewardBench's file stems -> the paper's scenario names (four RAG-specific scenarios, then the general ones).
RAG_REWARDBENCH_SCENARIOS = {
    "reason": "multi-hop reasoning", "citation": "fine-grained citation", "abstain": "appropriate abstain",
    "conflict": "conflict robustness", "helpful": "helpfulness", "harmless": "harmlessness",
}
HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """How to read a file.

  Attributes:
    format: one of FORMATS.
    columns: canonical column name -> the file's column name, overriding DEFAULT_COLUMNS[format].
    strict: raise on the first bad row (True) or skip and count it (False).
    seed: seeds the ultrafeedback rejected draw.
    rejected: ultrafeedback rejected choice, "random" or "lowest".
    keep_columns: "prompts" format: the columns passed through to `PromptRecord.columns` (each required in every
      row); None passes every column but the prompt's.
  """

  format: str
  columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
  strict: bool = True
  seed: int = 0
  rejected: str = "random"
  keep_columns: Sequence[str] | None = None

  def __post_init__(self):
    if self.format not in FORMATS:
      raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
    unknown = set(self.columns) - set(DEFAULT_COLUMNS[self.format])
    if unknown:
      raise ValueError(f"columns: unknown keys {sorted(unknown)} for format {self.format!r}; "
                       f"valid: {sorted(DEFAULT_COLUMNS[self.format])}")
    if self.rejected not in ("random", "lowest"):
      raise ValueError(f"rejected must be 'random' or 'lowest', got {self.rejected!r}")
    if self.keep_columns is not None:
      if self.format != "prompts":
        raise ValueError(f"keep_columns: only the 'prompts' format passes columns through (format is "
                         f"{self.format!r})")
      if isinstance(self.keep_columns, str) or not all(isinstance(k, str) and k for k in self.keep_columns):
        raise ValueError(f"keep_columns: expected a list of column names, got {self.keep_columns!r}")
      object.__setattr__(self, "keep_columns", tuple(self.keep_columns))

  def column(self, name: str) -> str:
    return self.columns.get(name, DEFAULT_COLUMNS[self.format][name])


# ----------------------------------------------------------------------------------------------------------------
# Reading rows.


def iter_rows(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
  """Yields (line number from 1, row dict or RecordError) for a .jsonl, .jsonl.gz or .parquet file (FILE_SUFFIXES).

  Whitespace-only JSONL lines are not rows (they yield nothing); parquet rows are numbered from 1. A UTF-8 byte
  order mark at the start of a JSONL file is not part of its first row.
  """
  path = os.fspath(path)
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
      yield i, row
    return
  if path.endswith(".jsonl"):
    opener = open
  elif path.endswith(".jsonl.gz"):
    opener = gzip.open
  else:
    raise ValueError(f"path {path!r}: expected a .jsonl, .jsonl.gz or .parquet file")
  # Undecodable bytes become lone surrogates (U+DC80..U+DCFF) so that one bad line is a bad row, not a crash;
  # "utf-8-sig" drops a leading BOM (editors on Windows write one), which json.loads would reject.
  with opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape") as f:
    for i, line in enumerate(f, start=1):
      if not line.strip():
        continue
      yield i, _decode_line(line)


_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _decode_line(line: str) -> Any:
  """A JSONL line's value, or a malformed_json RecordError (bad UTF-8, bad JSON, nesting or digits past Python's
  limits)."""
  bad = _UNDECODABLE.search(line)
  if bad:
    return errors.RecordError(errors.MALFORMED_JSON, f"not UTF-8: byte 0x{ord(bad.group()) - 0xDC00:02x} at "
                              f"character {bad.start()}")
  line = line.rstrip("\r\n")  # The newline is not part of the row: json would report it as a second line.
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:  # The file's line number is the caller's; only the column is the row's.
    return errors.RecordError(errors.MALFORMED_JSON, f"{e.msg} at column {e.colno}")
  except (ValueError, RecursionError) as e:  # int_max_str_digits; deep nesting.
    return errors.RecordError(errors.MALFORMED_JSON, str(e))


# ----------------------------------------------------------------------------------------------------------------
# Field checks: each raises RecordError with the reason and the column name.


def _required(row: Mapping, col: str) -> Any:
  if col not in row or row[col] is None:
    raise errors.RecordError(errors.MISSING_FIELD, f"column {col!r} is missing")
  return row[col]


def _text(value: Any, col: str, allow_empty: bool = False) -> str:
  if not isinstance(value, str):
    raise errors.RecordError(errors.NON_STRING_CONTENT, f"{col} must be a string, got {type(value).__name__}")
  if not allow_empty and not value.strip():
    raise errors.RecordError(errors.EMPTY_FIELD, f"{col} is empty")
  try:  # A lone surrogate (e.g. "\ud83d", half of an emoji cut by an escape) has no UTF-8 form: tokenizers refuse it.
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    raise errors.RecordError(errors.BAD_FIELD, f"{col} is not valid Unicode: {e.reason} "
                                               f"({value[e.start:e.end]!r} at character {e.start})") from None
  return value


def _number(value: Any, col: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise errors.RecordError(errors.BAD_SCORE, f"{col} must be a number, got {value!r}")
  if not math.isfinite(value):
    raise errors.RecordError(errors.NON_FINITE_SCORE, f"{col} must be finite, got {value!r}")
  return float(value)


def _optional_number(row: Mapping, col: str) -> float | None:
  value = row.get(col)
  return None if value is None else _number(value, col)


def _optional_text(row: Mapping, col: str) -> str | None:
  value = row.get(col)
  return None if value is None else _text(value, col)


def _optional_id(row: Mapping, col: str) -> str | None:
  """An optional id: text, or an integer (annotator ids often are) turned into text."""
  value = row.get(col)
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  return None if value is None else _text(value, col)


def _optional_vector(row: Mapping, col: str) -> tuple[float, ...] | None:
  value = row.get(col)
  if value is None:
    return None
  if not isinstance(value, (list, tuple)) or not value:
    raise errors.RecordError(errors.BAD_FIELD, f"{col} must be a non-empty list of numbers, got {value!r}")
  return tuple(_number(v, f"{col}[{i}]") for i, v in enumerate(value))


def _messages(value: Any, col: str) -> list[dict[str, Any]]:
  """A validated message list, normalized to {"role", "content"} dicts plus the keys their role may hold (an
  assistant's `tool_calls` and `reasoning_content`, a tool's `name` / `tool_call_id`;
  records.OPTIONAL_MESSAGE_KEYS). Any other key that holds something (not null or empty) makes a bad_messages
  row."""
  if not isinstance(value, (list, tuple)):
    raise errors.RecordError(errors.BAD_MESSAGES, f"{col} must be a list of messages, got {type(value).__name__}")
  if not value:
    raise errors.RecordError(errors.EMPTY_FIELD, f"{col} has no messages")
  out = []
  for i, m in enumerate(value):
    if not isinstance(m, Mapping) or "role" not in m:
      raise errors.RecordError(errors.BAD_MESSAGES, f"{col}[{i}] must be a dict with 'role' and 'content'")
    role = m["role"]
    if role not in VALID_ROLES:
      raise errors.RecordError(errors.BAD_MESSAGES, f"{col}[{i}] has role {role!r}; valid: {VALID_ROLES}")
    # A key holding something the template is never given (weight, a tool_calls or reasoning on a user turn)
    # would be lost without a trace, changing the text the model sees, so the row is refused. Null or empty values
    # carry nothing (a parquet struct column gives every message every field, mostly null).
    allowed = OPTIONAL_MESSAGE_KEYS.get(role, ())
    held = {k: v for k, v in m.items() if k not in ("role", "content") and v not in (None, "", [], {})}
    extra = sorted(k for k in held if k not in allowed)
    if extra:
      raise errors.RecordError(errors.BAD_MESSAGES, f"{col}[{i}] (role {role!r}) has key(s) {extra}; read beside "
                               f"'role' and 'content': {list(allowed) or 'nothing'} for this role, so they would be "
                               "lost: fold what they hold into content or drop the key")
    message = {"role": role}
    if "tool_calls" in held:
      # An assistant turn that only calls tools often has null or no content.
      message["content"] = "" if m.get("content") is None else _text(m["content"], f"{col}[{i}].content",
                                                                     allow_empty=True)
      calls = held["tool_calls"]
      if not isinstance(calls, (list, tuple)):
        raise errors.RecordError(errors.BAD_MESSAGES, f"{col}[{i}].tool_calls must be a list, got {calls!r}")
      for j, call in enumerate(calls):
        problem = tool_call_problem(call)
        if problem:
          raise errors.RecordError(errors.BAD_MESSAGES, f"{col}[{i}].tool_calls[{j}]: {problem}")
      message["tool_calls"] = [dict(call) for call in calls]
    elif "content" not in m:
      raise errors.RecordError(errors.BAD_MESSAGES, f"{col}[{i}] must be a dict with 'role' and 'content'")
    else:
      message["content"] = _text(m["content"], f"{col}[{i}].content")
    for key in ("name", "tool_call_id", "reasoning_content"):
      if key in held:
        message[key] = _text(held[key], f"{col}[{i}].{key}")
    out.append(message)
  return out


def _json_column(row: Mapping, col: str, problem_of: Any) -> Any:
  """A column that holds JSON or its JSON text (as TRL reads `tools` and `chat_template_kwargs`), checked by
  `problem_of` (value -> message or None); None when null or empty."""
  value = row.get(col)
  if value in (None, "", [], (), {}):
    return None
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError as e:
      raise errors.RecordError(errors.BAD_FIELD, f"{col} is text but not JSON ({e.msg} at character {e.pos})")
  problem = problem_of(value)
  if problem:
    raise errors.RecordError(errors.BAD_FIELD, f"{col}: {problem}")
  return value


def _optional_tools(row: Mapping, col: str) -> tuple[dict, ...] | None:
  """The row's tool schemas: a list of dicts or its JSON text; null or empty is none."""
  value = _json_column(row, col, tools_problem)
  return None if value is None else tuple(dict(t) for t in value)


def _optional_template_kwargs(row: Mapping, col: str) -> dict[str, Any] | None:
  """The row's chat template arguments (TRL's per-row `chat_template_kwargs`): a dict or its JSON text; null or
  empty is none."""
  value = _json_column(row, col, template_kwargs_problem)
  return dict(value) if value else None


def _chat_extras(row: Mapping, c: Any) -> dict[str, Any]:
  """The record fields every rendering of a chat row's prompt and responses gets: `tools` and
  `chat_template_kwargs` (columns renamed by `c`, the config's column map)."""
  return {"tools": _optional_tools(row, c("tools")),
          "chat_template_kwargs": _optional_template_kwargs(row, c(TEMPLATE_KWARGS_COLUMN))}


def _prompt(value: Any, col: str):
  return _messages(value, col) if isinstance(value, (list, tuple)) else _text(value, col)


def _pair_extras(row: Mapping, config: AdapterConfig) -> dict:
  c = config.column
  return {
      "chosen_score": _optional_number(row, c("chosen_score")),
      "rejected_score": _optional_number(row, c("rejected_score")),
      "margin": _optional_number(row, c("margin")),
      "chosen_attributes": _optional_vector(row, c("chosen_attributes")),
      "rejected_attributes": _optional_vector(row, c("rejected_attributes")),
      "annotator": _optional_id(row, c("annotator")),
      "subset": _optional_text(row, c("subset")),
  }


def _make(cls, where: str, **fields):
  """Builds a record; its own validation errors (e.g. attribute lengths) become bad-row errors."""
  try:
    return cls(source=where, **fields)
  except ValueError as e:
    raise errors.RecordError(errors.BAD_FIELD, str(e).removeprefix(f"{where}: ")) from e


# ----------------------------------------------------------------------------------------------------------------
# One parser per format: row -> record, raising RecordError.


def _parse_pairwise(row: Mapping, config: AdapterConfig, where: str) -> PreferenceRecord:
  c = config.column
  prompt = _prompt(_required(row, c("prompt")), c("prompt"))
  chosen = _text(_required(row, c("chosen")), c("chosen"))
  rejected = _text(_required(row, c("rejected")), c("rejected"))
  if chosen == rejected:
    raise errors.RecordError(errors.IDENTICAL_RESPONSES, "chosen and rejected are identical")
  return _make(PreferenceRecord, where, prompt=prompt, chosen=chosen, rejected=rejected,
               **_chat_extras(row, c), **_pair_extras(row, config))


def _parse_chat(row: Mapping, config: AdapterConfig, where: str, report: errors.SkipReport | None
                ) -> PreferenceRecord:
  c = config.column
  chosen = _messages(_required(row, c("chosen")), c("chosen"))
  rejected = _messages(_required(row, c("rejected")), c("rejected"))
  shared = 0
  while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
    shared += 1
  chosen_response, rejected_response = chosen[shared:], rejected[shared:]
  if not chosen_response and not rejected_response:
    raise errors.RecordError(errors.IDENTICAL_RESPONSES, "chosen and rejected messages are identical")
  if row.get(c("prompt")) is not None:
    prompt = _prompt(row[c("prompt")], c("prompt"))
  elif shared:
    prompt = chosen[:shared]
  else:
    raise errors.RecordError(errors.MISSING_FIELD, f"no column {c('prompt')!r} and {c('chosen')} / "
                             f"{c('rejected')} share no leading messages")
  for name, response in (("chosen", chosen_response), ("rejected", rejected_response)):
    if not response:
      raise errors.RecordError(errors.EMPTY_FIELD, f"{c(name)} has no messages after the shared prefix")
    problem = response_problem(response, prompt)
    if problem:
      raise errors.RecordError(errors.BAD_MESSAGES, f"{c(name)} after the shared prefix: {problem}")
  if report is not None and max(len(chosen_response), len(rejected_response)) > 1:
    report.note("chat_multi_turn_response")
  return _make(PreferenceRecord, where, prompt=prompt, chosen=chosen_response, rejected=rejected_response,
               **_chat_extras(row, c), **_pair_extras(row, config))


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str, bool]:
  """Splits two HH dialogues into (prompt, chosen_response, rejected_response, diverged).

  Raises RecordError if there is no shared assistant marker. See the module docstring for the rule.
  """
  c_cut, r_cut = chosen.rfind(ASSISTANT), rejected.rfind(ASSISTANT)
  if c_cut < 0 or r_cut < 0:
    raise errors.RecordError(errors.BAD_FIELD, f"no {ASSISTANT!r} turn in chosen or rejected")
  c_end, r_end = c_cut + len(ASSISTANT), r_cut + len(ASSISTANT)
  diverged = chosen[:c_end] != rejected[:r_end]
  if diverged:
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT)
    if cut < 0:
      raise errors.RecordError(errors.BAD_FIELD, "chosen and rejected share no assistant turn")
    c_end = r_end = cut + len(ASSISTANT)
  prompt = chosen[:c_end]
  return prompt, chosen[c_end:].removeprefix(" "), rejected[r_end:].removeprefix(" "), diverged


def hh_messages(dialogue: str) -> list[dict[str, str]] | None:
  """An HH prompt ("\n\nHuman: ...\n\nAssistant: ...\n\nHuman: ...\n\nAssistant:") as chat messages (Human ->
  user, Assistant -> assistant; contents stripped; the trailing empty assistant marker dropped, since a chat
  template's generation prompt takes its place). None when the text is not a sequence of such turns starting with
  a Human turn and ending with the turn the model answers."""
  if not dialogue.startswith(HUMAN):
    return None
  messages, rest = [], dialogue
  while rest:
    role = "user" if rest.startswith(HUMAN) else "assistant" if rest.startswith(ASSISTANT) else None
    if role is None:
      return None
    rest = rest[len(HUMAN if role == "user" else ASSISTANT):]
    cuts = [i for i in (rest.find(HUMAN), rest.find(ASSISTANT)) if i >= 0]
    end = min(cuts) if cuts else len(rest)
    messages.append({"role": role, "content": rest[:end].strip()})
    rest = rest[end:]
  if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
    messages.pop()
  roles = [m["role"] for m in messages]
  alternating = all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))
  return messages if alternating and roles[-1] == "user" else None


def _parse_hh(row: Mapping, config: AdapterConfig, where: str, report: errors.SkipReport | None):
  c = config.column
  chosen = _text(_required(row, c("chosen")), c("chosen"))
  rejected = _text(_required(row, c("rejected")), c("rejected"))
  prompt, chosen_response, rejected_response, diverged = split_hh(chosen, rejected)
  if chosen_response == rejected_response:
    raise errors.RecordError(errors.IDENTICAL_RESPONSES, "the final assistant turns are identical")
  record = _make(PreferenceRecord, where, prompt=prompt, chosen=chosen_response, rejected=rejected_response,
                 subset=_optional_text(row, c("subset")))
  if report is not None:
    if diverged:
      report.note("hh_diverging_dialogue")
    if not chosen_response.strip() or not rejected_response.strip():
      report.note("hh_empty_response")
  return record


def _completions(row: Mapping, config: AdapterConfig, allow_messages: bool) -> tuple[list, list | None]:
  """(completions, scores or None) from either dict completions or texts (+ a parallel scores column)."""
  c = config.column
  items = _required(row, c("completions"))
  if not isinstance(items, (list, tuple)) or len(items) < 2:
    raise errors.RecordError(errors.BAD_FIELD, f"{c('completions')} must be a list of >= 2 completions")
  if all(isinstance(x, Mapping) and "role" not in x for x in items):
    texts = [_text(_required(x, c("response")), f"{c('completions')}[{i}].{c('response')}")
             for i, x in enumerate(items)]
    scores = [_number(_required(x, c("score")), f"{c('completions')}[{i}].{c('score')}")
              for i, x in enumerate(items)]
    return texts, scores
  texts = [_messages(x, f"{c('completions')}[{i}]") if allow_messages and isinstance(x, (list, tuple))
           else _text(x, f"{c('completions')}[{i}]") for i, x in enumerate(items)]
  if row.get(c("scores")) is None:
    return texts, None
  scores = row[c("scores")]
  if not isinstance(scores, (list, tuple)) or len(scores) != len(texts):
    raise errors.RecordError(errors.BAD_FIELD, f"{c('scores')} must be a list of {len(texts)} numbers")
  return texts, [_number(s, f"{c('scores')}[{i}]") for i, s in enumerate(scores)]


def _parse_ultrafeedback(row: Mapping, config: AdapterConfig, where: str) -> PreferenceRecord:
  c = config.column
  prompt = _text(_required(row, c("prompt")), c("prompt"))
  texts, scores = _completions(row, config, allow_messages=False)
  if scores is None:
    raise errors.RecordError(errors.MISSING_FIELD, f"column {c('scores')!r} is missing")
  top = max(scores)
  best = scores.index(top)  # Ties at the top: the lowest index wins.
  below = [i for i, s in enumerate(scores) if s < top]
  if not below:
    raise errors.RecordError(errors.NO_PREFERENCE, f"all {len(scores)} completions score {top}")
  if config.rejected == "lowest":
    worst = scores.index(min(scores))
  else:
    worst = random.Random(f"{config.seed}:{where}").choice(below)
  if texts[best] == texts[worst]:
    raise errors.RecordError(errors.IDENTICAL_RESPONSES, f"completions {best} and {worst} are identical")
  return _make(PreferenceRecord, where, prompt=prompt, chosen=texts[best], rejected=texts[worst],
               chosen_score=scores[best], rejected_score=scores[worst], subset=_optional_text(row, c("subset")))


def _parse_kway(row: Mapping, config: AdapterConfig, where: str) -> KWayRecord:
  c = config.column
  prompt = _prompt(_required(row, c("prompt")), c("prompt"))
  texts, scores = _completions(row, config, allow_messages=True)
  for i, completion in enumerate(texts):
    problem = response_problem(completion, prompt)
    if problem:
      raise errors.RecordError(errors.BAD_MESSAGES, f"{c('completions')}[{i}]: {problem}")
  best_index = row.get(c("best_index"))
  if best_index is not None and (isinstance(best_index, bool) or not isinstance(best_index, int)):
    raise errors.RecordError(errors.BAD_FIELD, f"{c('best_index')} must be an integer, got {best_index!r}")
  if scores is None and best_index is None:
    raise errors.RecordError(errors.MISSING_FIELD, f"need {c('scores')!r} or {c('best_index')!r}")
  if scores is not None and best_index is not None and not (
      0 <= best_index < len(scores) and scores[best_index] == max(scores)):
    # Which one the annotator meant is unknown: keeping either would silently contradict the other.
    raise errors.RecordError(errors.BAD_FIELD, f"{c('best_index')}={best_index} disagrees with {c('scores')}="
                             f"{scores} (best: {scores.index(max(scores))}); give one, or make them agree")
  return _make(KWayRecord, where, prompt=prompt, completions=tuple(texts),
               scores=None if scores is None else tuple(scores),
               best_index=best_index if scores is None else None, subset=_optional_text(row, c("subset")),
               **_chat_extras(row, c))


def _benchmark_pair(row: Mapping, config: AdapterConfig, where: str) -> tuple[PreferenceRecord, str | None]:
  """The pair of a benchmark row (prompt text or messages, chosen and rejected texts, optional subset) and its
  optional id."""
  c = config.column
  prompt = _prompt(_required(row, c("prompt")), c("prompt"))
  chosen = _text(_required(row, c("chosen")), c("chosen"))
  rejected = _text(_required(row, c("rejected")), c("rejected"))
  if chosen == rejected:
    raise errors.RecordError(errors.IDENTICAL_RESPONSES, "chosen and rejected are identical")
  pair = _make(PreferenceRecord, where, prompt=prompt, chosen=chosen, rejected=rejected,
               subset=_optional_text(row, c("subset")))
  return pair, _optional_id(row, c("id"))


def _parse_m_rewardbench(row: Mapping, config: AdapterConfig, where: str) -> BenchmarkRecord:
  pair, row_id = _benchmark_pair(row, config, where)
  language = _text(_required(row, config.column("language")), config.column("language"))
  return BenchmarkRecord(pair=pair, group=language.strip(), id=row_id)


def rag_rewardbench_scenario(path: str) -> str:
  """The scenario a RAG-RewardBench file holds, from its name ("Dataset/reason.jsonl" -> "multi-hop reasoning"); a
  name outside the release's six gives its stem (e.g. "my_pairs.jsonl" -> "my_pairs")."""
  stem = os.path.basename(path)
  for suffix in (".jsonl.gz", ".jsonl", ".parquet"):
    stem = stem.removesuffix(suffix)
  return RAG_REWARDBENCH_SCENARIOS.get(stem, stem)


def _parse_rag_rewardbench(row: Mapping, config: AdapterConfig, where: str,
                           report: errors.SkipReport | None) -> BenchmarkRecord:
  pair, row_id = _benchmark_pair(row, config, where)
  scenario = _optional_text(row, config.column("scenario"))
  if scenario is None:  # The release's rows carry no scenario: their file does ("file:line" -> "file").
    scenario = rag_rewardbench_scenario(where.rsplit(":", 1)[0])
  question = row.get(config.column("question"))
  if report is not None and isinstance(question, str) and pair.prompt == question:
    # The prompt is the bare question: the retrieved documents the answers were written from are not in it.
    report.note("rag_prompt_is_question")
  return BenchmarkRecord(pair=pair, group=scenario.strip(), id=row_id)


def _json_value(value: Any, col: str) -> None:
  """Raises bad_field unless `value` is a JSON value (what a JSONL row holds; parquet may hold more)."""
  if value is None or isinstance(value, (str, bool, int, float)):
    return
  if isinstance(value, (list, tuple)):
    for i, v in enumerate(value):
      _json_value(v, f"{col}[{i}]")
    return
  if isinstance(value, Mapping):
    for k, v in value.items():
      if not isinstance(k, str):
        raise errors.RecordError(errors.BAD_FIELD, f"{col} has a non-string key {k!r}")
      _json_value(v, f"{col}.{k}")
    return
  raise errors.RecordError(errors.BAD_FIELD, f"{col} holds a {type(value).__name__}, not a JSON value (leave the "
                           "column out with keep_columns)")


def _parse_prompts(row: Mapping, config: AdapterConfig, where: str) -> PromptRecord:
  c = config.column
  # The columns a prompt may come from: the one(s) `columns` names, else both defaults.
  keys = [k for k in ("prompt", "messages") if k in config.columns] or ["prompt", "messages"]
  present = [k for k in keys if row.get(c(k)) is not None]
  if not present:
    raise errors.RecordError(errors.MISSING_FIELD, f"column {' or '.join(repr(c(k)) for k in keys)} is missing")
  if len(present) > 1:
    raise errors.RecordError(errors.BAD_FIELD, f"both {c('prompt')!r} and {c('messages')!r} are set; name the one "
                             "to read in columns (e.g. columns={'messages': " + repr(c("messages")) + "})")
  col = c(present[0])
  value = row[col]
  if present[0] == "messages" or isinstance(value, (list, tuple)):
    prompt = _chat_prompt(value, col)
  else:
    prompt = _text(value, col)
  if config.keep_columns is None:
    skip = {c(k) for k in keys}
    columns = {k: v for k, v in row.items() if k not in skip}
  else:
    columns = {k: _required(row, k) for k in config.keep_columns}
  for k, v in columns.items():
    _json_value(v, k)
  return _make(PromptRecord, where, prompt=prompt, columns=columns, **_chat_extras(row, c))


def _chat_prompt(value: Any, col: str) -> list[dict[str, str]]:
  """A prompt's messages: validated, ending with the turn the model answers."""
  prompt = _messages(value, col)
  if prompt[-1]["role"] not in PROMPT_LAST_ROLES:
    raise errors.RecordError(errors.BAD_MESSAGES, f"{col}: the last message has role {prompt[-1]['role']!r}; a "
                             f"prompt ends with the turn the model answers, one of {PROMPT_LAST_ROLES}")
  return prompt


def _parse_sft(row: Mapping, config: AdapterConfig, where: str, report: errors.SkipReport | None) -> SFTRecord:
  c = config.column
  # The layouts a row may use: the one whose columns `columns` names, else both.
  layouts = {"completion": ("prompt", "completion"), "messages": ("messages",), "text": ("text",)}
  named = [k for k, cols in layouts.items() if any(col in config.columns for col in cols)] or list(layouts)
  present = [k for k in named if any(row.get(c(col)) is not None for col in layouts[k])]
  shown = {k: " + ".join(repr(c(col)) for col in layouts[k]) for k in layouts}
  if not present:
    raise errors.RecordError(errors.MISSING_FIELD, f"need column {' or '.join(shown[k] for k in named)}")
  if len(present) > 1:
    raise errors.RecordError(errors.BAD_FIELD, f"{' and '.join(shown[k] for k in present)} are all set; name the "
                             "columns to read in columns (e.g. columns={'messages': " + repr(c("messages")) + "})")
  if present[0] == "text":
    return _make(SFTRecord, where, prompt="", response=_text(row[c("text")], c("text")),
                 **_chat_extras(row, c))
  if present[0] == "messages":
    messages = _messages(row[c("messages")], c("messages"))
    if messages[-1]["role"] != "assistant":
      raise errors.RecordError(errors.BAD_MESSAGES, f"{c('messages')}: the last message has role "
                               f"{messages[-1]['role']!r}; expected 'assistant' (the response trained on)")
    if len(messages) < 2:
      raise errors.RecordError(errors.BAD_MESSAGES, f"{c('messages')}: only an assistant message; expected the "
                               "turns it answers before it")
    prompt = _chat_prompt(messages[:-1], f"{c('messages')}[:-1]")
    response = messages[-1:]
  else:
    value = _required(row, c("prompt"))
    prompt = _chat_prompt(value, c("prompt")) if isinstance(value, (list, tuple)) else _text(value, c("prompt"))
    completion = _required(row, c("completion"))
    if isinstance(completion, (list, tuple)):
      response = _messages(completion, c("completion"))
      if len(response) != 1 or response[0]["role"] != "assistant":
        # Several turns would be encoded as one text + EOS, without the chat template's turn markers.
        raise errors.RecordError(errors.BAD_MESSAGES, f"{c('completion')}: roles {[m['role'] for m in response]}; "
                                 "expected one assistant message")
    else:
      response = _text(completion, c("completion"))
  if report is not None and isinstance(prompt, list) and any(m["role"] == "assistant" for m in prompt):
    report.note("sft_earlier_assistant_turns")
  return _make(SFTRecord, where, prompt=prompt, response=response, **_chat_extras(row, c))


def parse_row(row: Any, config: AdapterConfig, where: str, report: errors.SkipReport | None = None):
  """One decoded row -> a record; raises errors.RecordError for a bad row. `where` is "file:line"."""
  if isinstance(row, errors.RecordError):
    raise row
  if not isinstance(row, Mapping):
    raise errors.RecordError(errors.NOT_AN_OBJECT, f"expected a JSON object, got {type(row).__name__}")
  if TEMPLATE_KWARGS_COLUMN not in DEFAULT_COLUMNS[config.format] and row.get(TEMPLATE_KWARGS_COLUMN) not in (
      None, "", {}):
    # TRL passes this column to the chat template (e.g. {"enable_thinking": false}); a format whose prompts are not
    # rendered from chat messages here would silently give the model other text than the row asks for.
    raise errors.RecordError(errors.BAD_FIELD, f"{TEMPLATE_KWARGS_COLUMN} is not read in the {config.format!r} "
                             "format (its prompts are not chat messages rendered per row); drop the column, or use a "
                             "chat format (pairwise, chat, kway, prompts, sft)")
  if config.format == "pairwise":
    return _parse_pairwise(row, config, where)
  if config.format == "chat":
    return _parse_chat(row, config, where, report)
  if config.format == "hh":
    return _parse_hh(row, config, where, report)
  if config.format == "ultrafeedback":
    return _parse_ultrafeedback(row, config, where)
  if config.format == "prompts":
    return _parse_prompts(row, config, where)
  if config.format == "sft":
    return _parse_sft(row, config, where, report)
  if config.format == "m_rewardbench":
    return _parse_m_rewardbench(row, config, where)
  if config.format == "rag_rewardbench":
    return _parse_rag_rewardbench(row, config, where, report)
  return _parse_kway(row, config, where)


def iter_records(paths: str | os.PathLike | Sequence[str | os.PathLike], config: AdapterConfig | str,
                 report: errors.SkipReport | None = None
                 ) -> Iterator[PreferenceRecord | KWayRecord | PromptRecord | BenchmarkRecord]:
  """Yields the records of `paths` in file and line order.

  Args:
    paths: one path or a list of paths (.jsonl, .jsonl.gz, .parquet).
    config: an AdapterConfig, or a format name (strict, default columns).
    report: where lenient mode counts skipped rows (and where notes/kept are counted in both modes).

  Raises:
    DataFileError (a ValueError): "file:line: reason: detail" for the first bad row in strict mode.
  """
  if isinstance(config, str):
    config = AdapterConfig(format=config)
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  report = errors.SkipReport() if report is None else report
  skipped_before = report.skipped
  for path in paths:
    name = os.path.basename(os.fspath(path))
    for line, row in iter_rows(path):
      where = f"{name}:{line}"
      try:
        record = parse_row(row, config, where, report)
      except errors.RecordError as e:
        if config.strict:
          raise errors.DataFileError(f"{os.fspath(path)}:{line}: {e}") from e
        report.skip(e, where)
        continue
      report.kept += 1
      yield record
  if report.skipped > skipped_before:
    logging.warning("%s", errors.format_skip_report(report, f"{config.format} {[os.fspath(p) for p in paths]}"))


def read_records(paths: str | os.PathLike | Sequence[str | os.PathLike], config: AdapterConfig | str,
                 ) -> tuple[list[PreferenceRecord | KWayRecord | PromptRecord | BenchmarkRecord], errors.SkipReport]:
  """All records of `paths` plus the SkipReport (see iter_records)."""
  report = errors.SkipReport()
  records = list(iter_records(paths, config, report))
  return records, report


def read_prompt_records(paths: str | os.PathLike | Sequence[str | os.PathLike], config: AdapterConfig | None = None,
                        ) -> tuple[list[PromptRecord], errors.SkipReport]:
  """All PromptRecords of prompt files plus the SkipReport (read_records with the "prompts" format).

  Args:
    paths: one path or a list of paths (.jsonl, .jsonl.gz, .parquet).
    config: an AdapterConfig with format "prompts" (default: strict, default columns, every column kept).
  """
  config = AdapterConfig("prompts") if config is None else config
  if config.format != "prompts":
    raise ValueError(f"read_prompt_records: config.format must be 'prompts', got {config.format!r}")
  return read_records(paths, config)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping]) -> None:
  """Writes rows as JSON lines (gzip when the name ends with .gz); a helper for tests and data prep."""
  opener = gzip.open if os.fspath(path).endswith(".gz") else open
  with opener(path, "wt", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
