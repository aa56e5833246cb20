"""Exact match of a final answer against a reference column, with number normalization.

    r(completion, reference) = 1.0 if answer(completion) == reference after normalization, else 0.0
                               None (not scorable) when the reference is missing (None, NaN, "" or blank)

Extraction (`extract`), from the completion's text:
  "boxed":       the content of the LAST \\boxed{...} (or \\fbox{...}), braces balanced;
  "answer":      the text after the LAST answer marker, to the end of its line: "Answer: X", "answer is X",
                 "answer = X" (any case, Markdown ** around the marker allowed) or GSM8K's "#### X";
  "last_number": the last number in the completion (rules below);
  "whole":       the whole completion, stripped;
  "auto":        the first of boxed, answer, last_number that finds something (the default).
Nothing found: 0.0 (a wrong answer, not "not scorable"); such rows are counted as the case "no_answer" of the
function's `outcomes` (`rewards.outcomes`), which the stages report.

Comparison. The reference is a string or a number; a string containing "####" is cut after its last "####"
(GSM8K's answer column). When the reference parses as a number (`parse_number`), the answer must too: the whole
extracted span, or else the FIRST number inside it ("Answer: 5 apples (2 + 3)" -> 5). Numbers compare EXACTLY as
rationals (fractions.Fraction), so "1,000" == "1000" == "1000.0" == "1e3", "+5" == "5", "-0" == "0",
"3/4" == "0.75" == "\\frac{3}{4}", and 1/3 != 0.3333; `rel_tol` > 0 allows |a - r| <= rel_tol * max(|a|, |r|).
Otherwise both are compared as normalized strings: LaTeX wrappers removed (below), case folded, whitespace collapsed,
a trailing period and surrounding quotes / Markdown ** / $ dropped.

Number rules (`parse_number`, `NUMBER`): not glued to a word character on the left ("x2", "H2O" hold no number);
an optional sign (only at the start or after a non-word character, so the hyphen of "3-2" is no minus sign), digits
with optional thousands commas in groups of three ("12,345"; "12,34" is two numbers), an optional decimal part, an
optional exponent ("1e3"), and an optional "/denominator"; ".5" too.
Before parsing: surrounding $ and \\$, %, \\%, "\\!", "\\,", "{,}" (LaTeX's thousands comma), \\text{...} /
\\mathrm{...} wrappers, \\left / \\right and a trailing period are removed, and \\frac{a}{b} (\\dfrac, \\tfrac) becomes
a/b. So "50%" == "50" (the percent sign is dropped, not read as 1/100) and "$1,000." == "1000". Not supported:
mixed numbers ("1 1/2"), space-separated thousands ("1 000"), words ("five").
Size bound: a number whose numerator or denominator has more than MAX_NUMBER_DIGITS (1000) characters or whose
exponent exceeds MAX_EXPONENT (1000) in magnitude is NOT a number (it is skipped as a candidate, and a reference made
of one is compared as text): an exact Fraction of "1e99999999" would take minutes and Python refuses int() of more
than 4300 digits, while no task's answer needs such a number.
"""

from __future__ import annotations

import math
import numbers
import re
from fractions import Fraction
from typing import Any, Sequence

from jaxrlhf.rewards.calling import completion_text
from jaxrlhf.rewards.outcomes import Outcomes

EXTRACT_MODES = ("auto", "boxed", "answer", "last_number", "whole")
# Bounds of an exact number (module docstring, "Size bound"): beyond them parsing costs time or raises ValueError.
MAX_NUMBER_DIGITS = 1000
MAX_EXPONENT = 1000

_NUMBER_BODY = r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
# A number inside text: not glued to a word character or a decimal point on its left.
NUMBER = re.compile(rf"(?<![\w.])[-+]?{_NUMBER_BODY}(?:/{_NUMBER_BODY})?")
_NUMBER_FULL = re.compile(rf"(?P<sign>[-+]?)(?P<num>{_NUMBER_BODY})(?:/(?P<den>{_NUMBER_BODY}))?")
_ANSWER_MARKER = re.compile(r"(?:\banswer\**\s*(?::|\bis\b|=)|####)\s*\**\s*(?P<span>[^\n]*)", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


def _last_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...} with balanced braces (None if absent or unclosed)."""
  starts = [m.end() for m in _BOXED.finditer(text)]
  for start in reversed(starts):
    depth = 1
    for i in range(start, len(text)):
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      if depth == 0:
        return text[start:i]
  return None


def extract_answer(text: str, extract: str = "auto") -> str | None:
  """The answer span of a completion under `extract` (see the module docstring); None when nothing is found."""
  if extract not in EXTRACT_MODES:
    raise ValueError(f"extract: expected one of {EXTRACT_MODES}, got {extract!r}")
  if extract == "whole":
    return text.strip()
  if extract in ("auto", "boxed"):
    boxed = _last_boxed(text)
    if boxed is not None or extract == "boxed":
      return boxed
  if extract in ("auto", "answer"):
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers and markers[-1].group("span").strip():
      return markers[-1].group("span").strip()
    if extract == "answer":
      return None
  numbers = NUMBER.findall(text)
  return numbers[-1] if numbers else None


def clean_latex(text: str) -> str:
  """Removes the LaTeX / currency / percent wrappers listed in the module docstring; \\frac{a}{b} -> a/b."""
  s = text.strip()
  s = _WRAPPER.sub(r"\1", s)
  s = _FRAC.sub(r"\1/\2", s)
  for old, new in (("{,}", ","), ("\\!", ""), ("\\,", ""), ("\\left", ""), ("\\right", ""), ("\\$", ""),
                   ("\\%", ""), ("%", "")):
    s = s.replace(old, new)
  s = s.strip().strip("$").strip()
  while len(s) >= 2 and s[0] == "{" and s[-1] == "}":
    s = s[1:-1].strip()
  return s[:-1].rstrip() if s.endswith(".") else s


def _bounded_fraction(body: str) -> Fraction | None:
  """The exact value of one number body (`_NUMBER_BODY`), or None past the size bound (module docstring)."""
  mantissa, _, exponent = body.replace(",", "").lower().partition("e")
  if len(mantissa) > MAX_NUMBER_DIGITS:
    return None
  # Leading zeros stripped first, so the int() below only ever sees a few digits.
  exponent_digits = exponent.lstrip("+-").lstrip("0")
  if len(exponent_digits) > len(str(MAX_EXPONENT)) or int(exponent_digits or 0) > MAX_EXPONENT:
    return None
  return Fraction(body.replace(",", ""))


def parse_number(text: str) -> Fraction | None:
  """The exact value of `text` if the whole (cleaned) text is one number, else None. "1,000" -> 1000, "-0" -> 0,
  "3/4" and "\\frac{3}{4}" -> 3/4, "1e3" -> 1000; a zero denominator
  or a number past the size bound (MAX_NUMBER_DIGITS, MAX_EXPONENT) -> None."""
  m = _NUMBER_FULL.fullmatch(clean_latex(text))
  if m is None:
    return None
  num = _bounded_fraction(m.group("num"))
  if num is None:
    return None
  if m.group("den") is not None:
    den = _bounded_fraction(m.group("den"))
    if den is None or den == 0:
      return None
    num /= den
  return -num if m.group("sign") == "-" else num


def _span_number(span: str) -> Fraction | None:
  """The span as one number, else its first number."""
  value = parse_number(span)
  if value is not None:
    return value
  for candidate in NUMBER.findall(clean_latex(span)):
    value = parse_number(candidate)
    if value is not None:
      return value
  return None


def normalize_text(text: str) -> str:
  """String form for non-numeric answers: LaTeX wrappers removed, case folded, whitespace collapsed, surrounding
  quotes / Markdown ** and a trailing period dropped."""
  s = " ".join(clean_latex(text).split()).casefold()
  s = s.strip("*\"'` ").strip()
  return s[:-1].rstrip() if s.endswith(".") else s


def reference_answer(reference: Any) -> str | None:
  """The reference as a string, cut after its last "####"; None when missing (None, NaN, blank)."""
  if reference is None:
    return None
  if isinstance(reference, numbers.Integral) and not isinstance(reference, bool):  # int, numpy integers
    return str(int(reference))
  if isinstance(reference, numbers.Real) and not isinstance(reference, bool):  # float, numpy floats
    return None if math.isnan(reference) else repr(float(reference))
  text = str(reference)
  if "####" in text:
    text = text.rsplit("####", 1)[1]
  return text.strip() or None


def answer_matches(completion: str, reference: Any, extract: str = "auto", rel_tol: float = 0.0) -> float | None:
  """1.0 / 0.0 whether the completion's answer equals the reference (module docstring); None without a reference."""
  ref = reference_answer(reference)
  if ref is None:
    return None
  span = extract_answer(completion, extract)
  if span is None:
    return 0.0
  ref_value = parse_number(ref)
  if ref_value is None:
    return float(normalize_text(span) == normalize_text(ref))
  value = _span_number(span)
  if value is None:
    return 0.0
  if rel_tol > 0:
    return float(abs(value - ref_value) <= rel_tol * max(abs(value), abs(ref_value)))
  return float(value == ref_value)


def exact_match(column: str = "answer", extract: str = "auto", rel_tol: float = 0.0):
  """Reward function: 1.0 where the completion's final answer equals `columns[column]` (normalized as in the
  module docstring), 0.0 where not, None where the reference is missing.

  Args:
    column: the reference column (a string such as "72", "#### 72", "3/4", "Paris", or a number).
    extract: "auto" | "boxed" | "answer" | "last_number" | "whole" (module docstring).
    rel_tol: 0 = exact rational equality; > 0 = relative tolerance for numbers.
  """
  if extract not in EXTRACT_MODES:
    raise ValueError(f"exact_match.extract: expected one of {EXTRACT_MODES}, got {extract!r}")
  if not rel_tol >= 0:
    raise ValueError(f"exact_match.rel_tol: expected a number >= 0, got {rel_tol!r}")

  outcomes = Outcomes({"no_answer": f"no answer found in the completion (extract={extract!r})"})

  def reward(prompts: Sequence[str], completions: Sequence[Any], **columns) -> list[float | None]:
    del prompts
    if column not in columns:
      raise ValueError(f"exact_match: reference column {column!r} not among the columns {sorted(columns)}")
    texts = [completion_text(c) for c in completions]
    out = [answer_matches(t, r, extract, rel_tol) for t, r in zip(texts, columns[column])]
    scored = [t for t, v in zip(texts, out) if v is not None]
    outcomes.add(len(scored), {"no_answer": sum(extract_answer(t, extract) is None for t in scored)})
    return out

  reward.__name__ = reward.__qualname__ = "exact_match"
  reward.outcomes = outcomes
  return reward
