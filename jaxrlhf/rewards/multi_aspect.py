"""Multi-aspect instruction-adherence rewards and the generalized length-penalty reward of "Beyond Monolithic Rewards".

Paper: Radha Gulhane and Sathish Reddy Indurthi (2025), "Beyond Monolithic Rewards: A Hybrid and Multi-Aspect
Reward Optimization for MLLM Alignment", arXiv:2510.05283: "Beyond accuracy, we further incorporate multi-aspect
rewards to enforce instruction adherence and introduce a generalized length-penalty reward to stabilize training".
Only the abstract and the introduction could be read offline (no official code was found), so the aspect list and
the length formula below are OURS, written to that description and stated exactly; they are not the paper's
verified definitions.

Instruction adherence (`instruction_adherence`): each prompt carries its constraints as columns of the prompt file
(IFEval-style rule-checkable constraints; an empty / None value = that constraint is absent for the row). Aspects,
each 1.0 when satisfied, else 0.0 (words are whitespace-separated pieces; sentences are the non-empty pieces of the
text split after ".", "!" or "?"):

    min_words / max_words          word count >= / <= the value
    min_sentences / max_sentences  sentence count >= / <= the value
    keywords                       every listed word appears (case-insensitive, as a whole word)
    forbidden_words                no listed word appears (case-insensitive, as a whole word)
    case                           "lower": no uppercase letter; "upper": no lowercase letter
    num_bullets                    exactly that many lines start with "- " or "* " (after leading spaces)
    end_phrase                     the text, stripped, ends with the phrase
    json                           true: the stripped text parses as JSON (false / empty: no constraint)

    r = (1/|A|) sum_{a in A} [aspect a satisfied]          (aggregate="mean": the fraction of constraints met)
    r = prod_{a in A} [aspect a satisfied]                 (aggregate="all": IFEval's strict prompt-level accuracy)

over the row's present aspects A (restricted to `aspects`); a row with no constraint is not scorable (None).

Generalized length penalty (`generalized_length_penalty`): a band [L_lo, L_hi] of acceptable lengths (options, or
per-row columns such as the instruction's min_words / max_words), a relative deviation outside it and a power:

    d = max(0, L_lo - L) / max(L_lo, 1) + max(0, L - L_hi) / max(L_hi, 1)       (relative=True)
    d = max(0, L_lo - L) + max(0, L - L_hi)                                     (relative=False)
    r = -alpha * min(cap, d ** power)

It generalizes `shaping.length_penalty` (L_lo = 0, relative=False, power 1, cap inf gives -alpha * max(0, L - T)):
two-sided, scale-free (relative), convex / concave (power) and bounded (cap, so one runaway sample cannot dominate a
GRPO group's statistics). r = 0 inside the band.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Sequence

from jaxrlhf.rewards.calling import completion_text
from jaxrlhf.rewards.shaping import LENGTH_UNITS, completion_length

ASPECTS = ("min_words", "max_words", "min_sentences", "max_sentences", "keywords", "forbidden_words", "case",
           "num_bullets", "end_phrase", "json")
AGGREGATES = ("mean", "all")
CASES = ("lower", "upper")
_SENTENCE_END = re.compile(r"[.!?]+")
_BULLET = re.compile(r"^\s*[-*] ", re.MULTILINE)


def count_words(text: str) -> int:
  """Whitespace-separated pieces of `text`."""
  return len(text.split())


def count_sentences(text: str) -> int:
  """Non-empty pieces of `text` split at runs of ".", "!" or "?"."""
  return sum(1 for piece in _SENTENCE_END.split(text) if piece.strip())


def _has_word(text: str, word: str) -> bool:
  return re.search(rf"(?<!\w){re.escape(word.strip())}(?!\w)", text, re.IGNORECASE) is not None


def _words(value: Any, name: str) -> list[str]:
  if isinstance(value, str):
    value = [value]
  if not isinstance(value, (list, tuple)) or not all(isinstance(w, str) and w.strip() for w in value):
    raise ValueError(f"instruction_adherence: column {name!r} must be a list of non-empty words, got {value!r}")
  return list(value)


def _count(value: Any, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
    raise ValueError(f"instruction_adherence: column {name!r} must be an integer >= 0, got {value!r}")
  return int(value)


def _absent(value: Any) -> bool:
  return value is None or value is False or value == "" or (isinstance(value, (list, tuple)) and not value) or (
      isinstance(value, float) and math.isnan(value))


def aspect_satisfied(aspect: str, text: str, value: Any) -> bool:
  """Whether `text` meets the constraint `aspect` = `value` (module docstring). ValueError for a bad value."""
  if aspect in ("min_words", "max_words", "min_sentences", "max_sentences"):
    n = count_words(text) if aspect.endswith("words") else count_sentences(text)
    bound = _count(value, aspect)
    return n >= bound if aspect.startswith("min") else n <= bound
  if aspect == "keywords":
    return all(_has_word(text, w) for w in _words(value, aspect))
  if aspect == "forbidden_words":
    return not any(_has_word(text, w) for w in _words(value, aspect))
  if aspect == "case":
    if value not in CASES:
      raise ValueError(f"instruction_adherence: column 'case' must be one of {CASES}, got {value!r}")
    return text == text.lower() if value == "lower" else text == text.upper()
  if aspect == "num_bullets":
    return len(_BULLET.findall(text)) == _count(value, aspect)
  if aspect == "end_phrase":
    if not isinstance(value, str):
      raise ValueError(f"instruction_adherence: column 'end_phrase' must be a string, got {value!r}")
    return text.strip().endswith(value.strip())
  if aspect == "json":
    try:
      json.loads(text.strip())
    except ValueError:
      return False
    return True
  raise ValueError(f"instruction_adherence: unknown aspect {aspect!r}; expected one of {ASPECTS}")


def adherence_scores(text: str, constraints: dict[str, Any], aspects: Sequence[str] = ASPECTS) -> dict[str, float]:
  """{aspect: 1.0 / 0.0} for each of `aspects` present (not empty) in `constraints`."""
  return {a: float(aspect_satisfied(a, text, constraints[a])) for a in aspects
          if a in constraints and not _absent(constraints[a])}


def instruction_adherence(aspects: Sequence[str] = ASPECTS, aggregate: str = "mean"):
  """Reward function: the fraction of a row's constraints the completion meets ("mean") or 1.0 only when it meets
  all ("all"), over the constraint columns named in `aspects` (module docstring); None for a row without any.

  Args:
    aspects: the constraint columns to check, a subset of ASPECTS (a column missing from the file counts as absent).
    aggregate: "mean" | "all".
  """
  aspects = (aspects,) if isinstance(aspects, str) else tuple(aspects)
  bad = [a for a in aspects if a not in ASPECTS]
  if bad or not aspects:
    raise ValueError(f"instruction_adherence.aspects: {bad or '()'} invalid; expected a non-empty subset of {ASPECTS}")
  if aggregate not in AGGREGATES:
    raise ValueError(f"instruction_adherence.aggregate: expected one of {AGGREGATES}, got {aggregate!r}")

  def reward(prompts: Sequence[str], completions: Sequence[Any], **columns) -> list[float | None]:
    del prompts
    out = []
    for r, completion in enumerate(completions):
      row = {a: columns[a][r] for a in aspects if a in columns}
      scores = adherence_scores(completion_text(completion), row, aspects)
      if not scores:
        out.append(None)
      elif aggregate == "mean":
        out.append(sum(scores.values()) / len(scores))
      else:
        out.append(float(all(scores.values())))
    return out

  reward.__name__ = reward.__qualname__ = "instruction_adherence"
  return reward


def length_deviation(length: float, low: float, high: float, relative: bool = True) -> float:
  """d of the module docstring: the (relative) distance of `length` outside the band [low, high]."""
  short, long = max(0.0, low - length), max(0.0, length - high)
  if relative:
    return short / max(low, 1.0) + long / max(high, 1.0)
  return short + long


def generalized_length_penalty(min_length: float = 0, max_length: float = math.inf, alpha: float = 1.0,
                               power: float = 1.0, cap: float = math.inf, relative: bool = True,
                               unit: str = "words", min_column: str = "", max_column: str = ""):
  """Reward function: -alpha * min(cap, d ** power), d the (relative) deviation of the completion's length outside
  [L_lo, L_hi] (module docstring); 0 inside the band.

  Args:
    min_length, max_length: the band's default bounds L_lo <= L_hi (>= 0; max_length may be inf).
    alpha: the penalty's scale (>= 0).
    power: the exponent on d (> 0): 1 linear, 2 quadratic (gentle near the band, steep far from it).
    cap: the largest d ** power counted (> 0; inf: unbounded).
    relative: divide each side's distance by its bound (scale-free) instead of counting raw units.
    unit: "chars" | "words" | "tokens" (the last reads the `completion_ids` column), as `shaping.length_penalty`.
    min_column, max_column: columns of the prompt file that override the bounds per row (empty / None: the default).
  """
  if unit not in LENGTH_UNITS:
    raise ValueError(f"generalized_length_penalty.unit: expected one of {LENGTH_UNITS}, got {unit!r}")
  for name, value in (("min_length", min_length), ("max_length", max_length)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
      raise ValueError(f"generalized_length_penalty.{name}: expected a number >= 0, got {value!r}")
  if not min_length <= max_length:
    raise ValueError(f"generalized_length_penalty: min_length {min_length} > max_length {max_length}")
  if not alpha >= 0 or not power > 0 or not cap > 0:
    raise ValueError(f"generalized_length_penalty: expected alpha >= 0, power > 0, cap > 0; got alpha={alpha!r}, "
                     f"power={power!r}, cap={cap!r}")

  def bound(columns, name, r, default):
    value = columns[name][r] if name and name in columns else None
    return default if _absent(value) else float(value)

  def reward(prompts: Sequence[str], completions: Sequence[Any], **columns) -> list[float]:
    del prompts
    ids = columns.get("completion_ids", [None] * len(completions))
    out = []
    for r, (c, row_ids) in enumerate(zip(completions, ids)):
      low, high = bound(columns, min_column, r, min_length), bound(columns, max_column, r, max_length)
      d = length_deviation(completion_length(c, unit, row_ids), low, high, relative)
      out.append(-alpha * min(cap, d ** power) if d > 0 else 0.0)
    return out

  reward.__name__ = reward.__qualname__ = "generalized_length_penalty"
  return reward
