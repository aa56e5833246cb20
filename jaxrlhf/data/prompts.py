"""Prompt files for the online stages: train / held-out splits, rendering into left-padded ids for generation, and
generated completions decoded back to text for reward functions.

Splits (`split_prompts`, `read_prompt_splits`): the held-out prompts are the LAST `eval_fraction` of the records in
file order, as for preference files (`stages.inputs.read_files`), so a file shuffled once keeps its split when rows
are appended; a file sorted by topic or difficulty must be shuffled first. Or they are the records of separate
`eval_paths`. Caps: `num_train` keeps the first train records, `num_eval` the last held-out records of the fraction
(the first records of eval files); 0 = all.

Rendering (`chat_template`):
  "auto":   chat prompts are rendered with the tokenizer's chat template and the generation prompt
            (`tokenize.encode_prompt`); text prompts are encoded as they are;
  "always": text prompts too are wrapped as one user message and rendered (an instruct model on plain prompts);
  "never":  text prompts are encoded as they are and chat prompts are refused (a base model without a template).
Encoding never adds special tokens (templates carry their own).

Truncation: a prompt longer than `max_length` tokens keeps its LAST `max_length` tokens (as
`padding.encode_prompts`: the end of the dialogue, with the generation prompt, is what the model answers). Nothing
is cut silently: the count goes to the returned report and to the log.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import numpy as np

from jaxrlhf.data import adapters
from jaxrlhf.data import errors
from jaxrlhf.data import padding
from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.data.records import Prompt, PromptRecord, as_messages

CHAT_TEMPLATE_MODES = ("auto", "always", "never")
# Preference-file formats whose prompts can feed the online stages (`prompts_of_preferences`).
PREFERENCE_FORMATS = ("pairwise", "chat", "hh", "ultrafeedback")
PROMPT_FORMATS = ("prompts",) + PREFERENCE_FORMATS
PAD_TO = ("max_length", "longest")

Paths = str | os.PathLike | Sequence[str | os.PathLike]


# ------------------------------------------------------------------------------------------------ splits
def split_prompts(records: Sequence[PromptRecord], eval_fraction: float, num_train: int = 0, num_eval: int = 0
                  ) -> tuple[list[PromptRecord], list[PromptRecord]]:
  """(train, held-out): the last round(N * eval_fraction) records (at most `num_eval` of them when > 0) are held
  out; the first `num_train` (> 0) of the others are the train records."""
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
  if num_train < 0 or num_eval < 0:
    raise ValueError(f"num_train and num_eval must be >= 0 (0 = all), got {num_train}, {num_eval}")
  records = list(records)
  n_eval = int(round(len(records) * eval_fraction))
  if num_eval:
    n_eval = min(n_eval, num_eval)
  train, held_out = records[:len(records) - n_eval], records[len(records) - n_eval:]
  return (train[:num_train] if num_train else train), held_out


def read_prompt_splits(paths: Paths, eval_paths: Paths = (), config: adapters.AdapterConfig | None = None, *,
                       eval_fraction: float = 0.05, num_train: int = 0, num_eval: int = 0,
                       hh_as_chat: bool = False) -> tuple[list[PromptRecord], list[PromptRecord], dict]:
  """(train, held-out, report) PromptRecords from prompt files (or the prompts of preference files).

  Args:
    paths: the prompt files (.jsonl, .jsonl.gz, .parquet).
    eval_paths: held-out prompt files; when given, `eval_fraction` is not used and all of `paths` is train.
    config: the AdapterConfig: the "prompts" format (default: strict, default columns, every column kept), or a
      preference format of PREFERENCE_FORMATS, whose distinct prompts are read (`prompts_of_preferences`).
    eval_fraction, num_train, num_eval: the split and caps (module docstring); 0 = all.
    hh_as_chat: the "hh" format's dialogue prompts become chat messages (`prompts_of_preferences`).

  Returns:
    train, held_out: lists of PromptRecord.
    report: {"kept", "skipped", "skipped/<reason>", ... (SkipReport.as_dict of all files), "line" (the log line),
      "num_train", "num_eval", "held_out_in_train" (held-out prompts equal to a train prompt)}.

  Raises:
    DataFileError: a bad row in strict mode, or no usable train record (an empty file, every row skipped).
  """
  config = adapters.AdapterConfig("prompts") if config is None else config
  records, report = _read(paths, config, hh_as_chat)
  if eval_paths:
    held_out, eval_report = _read(eval_paths, config, hh_as_chat)
    report.merge(eval_report)
    train = records[:num_train] if num_train else records
    held_out = held_out[:num_eval] if num_eval else held_out
  else:
    train, held_out = split_prompts(records, eval_fraction, num_train, num_eval)
  line = errors.format_skip_report(report, f"prompts {_names(paths)}" + (f" + {_names(eval_paths)}"
                                                                          if eval_paths else ""))
  if not train:
    raise errors.DataFileError(f"paths: no usable train prompts in {_names(paths)} ({line})")
  # The split on the printed line: a fraction too small to hold out a prompt shows before any stage needs one.
  line += f"; {len(train)} train, {len(held_out)} held out" + (
      " (eval_paths)" if eval_paths else f" (the last {eval_fraction:g})")
  logging.info("%s", line)
  seen = {_record_key(r) for r in train}
  summary = {**report.as_dict(), "line": line, "num_train": len(train), "num_eval": len(held_out),
             "held_out_in_train": sum(_record_key(r) in seen for r in held_out)}
  return train, held_out, summary


def prompts_of_preferences(records: Sequence[Any], report: errors.SkipReport | None = None,
                           hh_as_chat: bool = False, *, strict: bool = False,
                           files: Sequence[str] | None = None) -> list[PromptRecord]:
  """The distinct prompts of preference records, in file order (a repeated prompt keeps its first record), each
  with that record's responses as the columns "chosen" / "rejected" (and "subset" when set), e.g. to sample a
  policy on the prompts a reward model was trained or evaluated on. Repeats are counted in `report` as the note
  "repeated_prompt" and `report.kept` becomes the number of prompts. `hh_as_chat`: an HH dialogue prompt becomes
  chat messages (`adapters.hh_messages`; the column "hh_prompt" keeps the raw text), so a chat model answers one
  turn under its own template instead of continuing the transcript with invented turns; a prompt that does not
  parse stays text (the note "hh_prompt_not_chat").

  A pair whose prompt cannot be sampled from (chat messages ending with an assistant turn: there is no turn for the
  model to answer) is a bad row: `strict` raises DataFileError "file:line: bad_messages: ..." (the full path from
  `files`, record i's file, when given), otherwise it is skipped and counted in `report` under "bad_messages".
  """
  out, seen, repeated = [], set(), 0
  report = errors.SkipReport() if report is None else report
  for i, r in enumerate(records):
    key = _record_key(r)
    if key in seen:
      repeated += 1
      continue
    seen.add(key)
    columns = {"chosen": r.chosen, "rejected": r.rejected}
    if r.subset is not None:
      columns["subset"] = r.subset
    prompt = r.prompt
    if hh_as_chat and isinstance(prompt, str):
      messages = adapters.hh_messages(prompt)
      if messages is None:
        report.note("hh_prompt_not_chat")
      else:
        prompt, columns["hh_prompt"] = messages, r.prompt
    try:
      out.append(PromptRecord(prompt, columns, source=r.source, tools=r.tools,
                              chat_template_kwargs=r.chat_template_kwargs))
    except ValueError as e:  # A preference prompt may end anywhere; a prompt to sample from may not.
      where = r.source or f"records[{i}]"
      detail = str(e).removeprefix(f"{where}: ")
      error = errors.RecordError(errors.BAD_MESSAGES if isinstance(prompt, (list, tuple)) else errors.BAD_FIELD,
                                 detail)
      if strict:
        line = where.rsplit(":", 1)[-1]
        full = f"{files[i]}:{line}" if files is not None and r.source else where
        raise errors.DataFileError(f"{full}: {error}") from e
      report.skip(error, where)
      seen.discard(key)  # A later pair with the same prompt is as bad; it is counted too, not as a repeat.
  if repeated:
    report.notes["repeated_prompt"] += repeated
  report.kept = len(out)
  return out


def _read(paths: Paths, config: adapters.AdapterConfig, hh_as_chat: bool
          ) -> tuple[list[PromptRecord], errors.SkipReport]:
  """PromptRecords of prompt files, or the distinct prompts of preference files (`config.format`)."""
  if config.format == "prompts":
    return adapters.read_prompt_records(paths, config)
  if config.format not in PREFERENCE_FORMATS:
    raise ValueError(f"format: {config.format!r} has no prompts to sample; valid: {PROMPT_FORMATS}")
  report = errors.SkipReport()
  records, files = [], []
  for path in _names(paths):  # One file at a time: a bad prompt's error names its full path.
    for record in adapters.iter_records(path, config, report):
      records.append(record)
      files.append(path)
  return prompts_of_preferences(records, report, hh_as_chat and config.format == "hh", strict=config.strict,
                                files=files), report


def _names(paths: Paths) -> list[str]:
  return [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]


def _key(prompt: Prompt | Sequence[dict]) -> Any:
  # Every key of a message counts: two prompts that differ only in a tool call are different prompts.
  return prompt if isinstance(prompt, str) else tuple(json.dumps(m, sort_keys=True, default=repr) for m in prompt)


def _record_key(record: Any) -> Any:
  """What makes two records the same prompt to sample from: the prompt, the tools it is shown with and its chat
  template arguments."""
  return (_key(record.prompt), _key(record.tools or ()),
          json.dumps(record.chat_template_kwargs or {}, sort_keys=True, default=repr))


# ------------------------------------------------------------------------------------------------ rendering
def _as_rendered(prompt: Prompt, chat_template: str, where: str) -> Prompt:
  """The prompt `tokenize.encode_prompt` should get under `chat_template` (text stays text, messages render)."""
  if chat_template not in CHAT_TEMPLATE_MODES:
    raise ValueError(f"chat_template must be one of {CHAT_TEMPLATE_MODES}, got {chat_template!r}")
  if isinstance(prompt, str):
    return as_messages(prompt) if chat_template == "always" else prompt
  if chat_template == "never":
    raise ValueError(f"{where}: a chat prompt needs the chat template, but chat_template='never'")
  return prompt


def prompt_text(tokenizer: Any, prompt: PromptRecord | Prompt, chat_template: str = "auto") -> str:
  """The exact text `encode_prompt_records` encodes for one prompt (the template's rendering with the generation
  prompt for chat prompts; see the module docstring), e.g. for logging samples."""
  where = (prompt.source if isinstance(prompt, PromptRecord) else None) or "prompt"
  tools, kwargs = (prompt.tools, prompt.chat_template_kwargs) if isinstance(prompt, PromptRecord) else (None, None)
  prompt = prompt.prompt if isinstance(prompt, PromptRecord) else prompt
  rendered = _as_rendered(prompt, chat_template, where)
  if isinstance(rendered, str):
    return rendered
  try:
    return tokenize_lib.render(tokenizer, rendered, True, tools, kwargs)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e


def _where(prompt: Any, i: int) -> str:
  return (prompt.source if isinstance(prompt, PromptRecord) else None) or f"prompts[{i}]"


def encode_prompt_records(tokenizer: Any, prompts: Sequence[PromptRecord | Prompt], max_length: int, *,
                          chat_template: str = "auto", pad_to: str = "max_length"
                          ) -> tuple[np.ndarray, np.ndarray, dict]:
  """Left-padded prompt ids for generation, with the truncation report.

  Args:
    tokenizer: the model's tokenizer (docs/design.md protocol).
    prompts: N PromptRecords (or bare prompts: text or chat messages).
    max_length: the prompt budget in tokens; a longer prompt keeps its last `max_length` tokens.
    chat_template: "auto", "always" or "never" (module docstring).
    pad_to: "max_length" pads to W = max_length (one shape whatever the prompts); "longest" to the smallest
      multiple of 16 that holds the longest kept prompt, at most max_length.

  Returns:
    ids_NxW int32 (pad slots hold tokenizer.pad_id), mask_NxW int32 (1 on prompt tokens, left-padded), and the
    report {"num_prompts", "truncated" (prompts cut), "max_length" / "mean_length" (tokens of the rendered
    prompts BEFORE truncation), "limit" (= max_length argument), "width" (W)}.

  Raises:
    ValueError naming the record's source: a chat prompt with chat_template="never" or a tokenizer without a chat
      template, an empty rendered prompt, bad arguments.
  """
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1, got {max_length}")
  if pad_to not in PAD_TO:
    raise ValueError(f"pad_to must be one of {PAD_TO}, got {pad_to!r}")
  if not prompts:
    raise ValueError("prompts: expected at least one prompt")
  rows, lengths = [], []
  for i, p in enumerate(prompts):
    where = _where(p, i)
    rendered = _as_rendered(p.prompt if isinstance(p, PromptRecord) else p, chat_template, where)
    try:
      extras = (p.tools, p.chat_template_kwargs) if isinstance(p, PromptRecord) else ()
      ids = tokenize_lib.encode_prompt(tokenizer, rendered, *extras)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from e
    if not ids:
      raise ValueError(f"{where}: the prompt renders to no tokens")
    lengths.append(len(ids))
    rows.append(ids[-max_length:])
  truncated = sum(n > max_length for n in lengths)
  width = max_length if pad_to == "max_length" else min(padding.bucket_width(max(len(r) for r in rows)), max_length)
  ids_NxW, mask_NxW = padding.pad_prompts(rows, tokenizer.pad_id, width=width)
  report = {"num_prompts": len(rows), "truncated": int(truncated), "max_length": int(max(lengths)),
            "mean_length": float(np.mean(lengths)), "limit": int(max_length), "width": int(width)}
  if truncated:
    logging.warning("prompts: %d of %d prompts are longer than %d tokens and keep their last %d (longest %d)",
                    truncated, len(rows), max_length, max_length, report["max_length"])
  return ids_NxW, mask_NxW, report


# ------------------------------------------------------------------------------------------------ completions
def decode_completions(tokenizer: Any, tokens_RxN: np.ndarray, mask_RxN: np.ndarray,
                       eos_ids: Sequence[int] | None = None) -> list[str]:
  """The texts of R generated completions, for reward functions.

  Args:
    tokenizer: the tokenizer that produced the ids.
    tokens_RxN: int (R, N) right-padded completion ids (as `sampling.generate` returns them).
    mask_RxN: (R, N), nonzero on completion tokens (the end token included).
    eos_ids: end tokens (default: (tokenizer.eos_id,)); each row is cut at its first end token, which is dropped.

  Returns:
    R strings, decoded with skip_special_tokens=True.
  """
  tokens_RxN, mask_RxN = np.asarray(tokens_RxN), np.asarray(mask_RxN)
  if tokens_RxN.ndim != 2 or mask_RxN.shape != tokens_RxN.shape:
    raise ValueError(f"tokens_RxN and mask_RxN must be (R, N) of equal shape; got {tokens_RxN.shape} and "
                     f"{mask_RxN.shape}")
  eos = np.asarray([tokenizer.eos_id] if eos_ids is None else list(eos_ids), np.int64)
  texts = []
  for row, mrow in zip(tokens_RxN, mask_RxN):
    ids = row[mrow > 0].astype(np.int64)
    ends = np.flatnonzero(np.isin(ids, eos))
    texts.append(tokenizer.decode((ids[:ends[0]] if ends.size else ids).tolist(), skip_special_tokens=True))
  return texts
