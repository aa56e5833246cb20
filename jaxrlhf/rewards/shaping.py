"""Shaping rewards on the completion's form: a regular-expression format reward and a length penalty.

Format (`regex_format`), for patterns p_1..p_K and a match mode m (Python `re`):

    r = 1.0 if every p_k matches, else 0.0                        (partial_credit=False, the default)
    r = (1/K) sum_k [p_k matches]                                 (partial_credit=True)

with m = "search" (anywhere in the text), "match" (at its start) or "fullmatch" (the whole text). `flags` is a
string of letters: "i" IGNORECASE, "m" MULTILINE, "s" DOTALL (TRL's think_format_reward uses "ms"); `strip` first
removes surrounding whitespace (decoded completions often end with a newline).

Length penalty (`length_penalty`), for a length L of the completion in `unit` and a target T:

    r = -alpha * max(0, L - T)                                    (two_sided=False, the default: only overshoot)
    r = -alpha * |L - T|                                          (two_sided=True)

unit: "chars" (len of the text), "words" (whitespace-separated pieces), "tokens" (len of the row's
`completion_ids`, the column TRL's GRPOTrainer passes; the caller supplies the token ids of the completion without
padding). A penalty, so r <= 0, and 0 at or under the target.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from jaxrlhf.rewards.calling import completion_text

MATCH_MODES = ("search", "match", "fullmatch")
FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
LENGTH_UNITS = ("chars", "words", "tokens")


def compile_flags(flags: str) -> int:
  """re flags from letters ("ims"); ValueError naming an unknown letter."""
  out = 0
  for letter in flags:
    if letter not in FLAGS:
      raise ValueError(f"regex_format.flags: unknown flag {letter!r} in {flags!r}, expected letters of "
                       f"{''.join(FLAGS)} (i: IGNORECASE, m: MULTILINE, s: DOTALL)")
    out |= FLAGS[letter]
  return out


def regex_format(pattern: str | Sequence[str], match: str = "search", flags: str = "", partial_credit: bool = False,
                 strip: bool = False):
  """Reward function: 1.0 / 0.0 whether the completion matches `pattern` (several patterns: all must match, or the
  fraction matched with `partial_credit`). See the module docstring for the modes and flags."""
  patterns = [pattern] if isinstance(pattern, str) else list(pattern)
  if not patterns or not all(isinstance(p, str) for p in patterns):
    raise ValueError(f"regex_format.pattern: expected a regular expression or a non-empty list of them, "
                     f"got {pattern!r}")
  if match not in MATCH_MODES:
    raise ValueError(f"regex_format.match: expected one of {MATCH_MODES}, got {match!r}")
  re_flags = compile_flags(flags)
  compiled = []
  for p in patterns:
    try:
      compiled.append(re.compile(p, re_flags))
    except re.error as e:
      raise ValueError(f"regex_format.pattern: {p!r} is not a valid regular expression: {e}") from e

  def score(text: str) -> float:
    text = text.strip() if strip else text
    hits = [getattr(c, match)(text) is not None for c in compiled]
    return sum(hits) / len(hits) if partial_credit else float(all(hits))

  def reward(prompts: Sequence[str], completions: Sequence[Any], **columns) -> list[float]:
    del prompts, columns
    return [score(completion_text(c)) for c in completions]

  reward.__name__ = reward.__qualname__ = "regex_format"
  return reward


def completion_length(completion: Any, unit: str, completion_ids: Any = None) -> int:
  """L of the module docstring: characters, whitespace words, or len(completion_ids) for "tokens"."""
  if unit == "tokens":
    if completion_ids is None:
      raise ValueError("length_penalty: unit 'tokens' needs the column 'completion_ids' (the completion's token ids)")
    return len(completion_ids)
  text = completion_text(completion)
  return len(text) if unit == "chars" else len(text.split())


def length_penalty(target: int, alpha: float = 1.0, unit: str = "chars", two_sided: bool = False):
  """Reward function: -alpha * max(0, L - target) (or -alpha * |L - target| with `two_sided`), L in `unit`.

  Args:
    target: the length T (>= 0) up to which nothing is penalized.
    alpha: penalty per unit of length beyond T (>= 0).
    unit: "chars" | "words" | "tokens" (the last reads the `completion_ids` column).
    two_sided: also penalize completions shorter than T.
  """
  if unit not in LENGTH_UNITS:
    raise ValueError(f"length_penalty.unit: expected one of {LENGTH_UNITS}, got {unit!r}")
  if not (isinstance(target, int) and not isinstance(target, bool)) or target < 0:
    raise ValueError(f"length_penalty.target: expected an integer length >= 0, got {target!r}")
  if not alpha >= 0:
    raise ValueError(f"length_penalty.alpha: expected a number >= 0, got {alpha!r}")

  def reward(prompts: Sequence[str], completions: Sequence[Any], **columns) -> list[float]:
    del prompts
    ids = columns.get("completion_ids", [None] * len(completions))
    out = []
    for c, row_ids in zip(completions, ids):
      excess = completion_length(c, unit, row_ids) - target
      over = abs(excess) if two_sided else max(0, excess)
      out.append(-alpha * float(over) if over else 0.0)
    return out

  reward.__name__ = reward.__qualname__ = "length_penalty"
  return reward
