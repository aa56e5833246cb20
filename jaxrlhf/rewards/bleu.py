"""Sentence BLEU against reference columns, in two variants that differ in smoothing and brevity.

Both count, for n = 1..N (N = `max_order`, 4), the clipped matches m_n (each hypothesis n-gram counts at most as
often as in the reference that has it most often) and the hypothesis n-grams t_n = max(c - n + 1, 0), c the
hypothesis length in tokens, and return BLEU = BP * exp(sum_n w_n log p_n) in [0, 1] (not sacrebleu's 0-100).

"sacrebleu" (`sentence_bleu`; sacrebleu.sentence_bleu's defaults, Post 2018):
  p_n = m_n / t_n, uniform weights over the EFFECTIVE order (orders with t_n = 0 are left out);
  smoothing of orders with m_n = 0 (Chen & Cherry 2014): "exp" p_n = 1 / (2^k t_n), k counting the zero-match
  orders so far (mteval's method 3, the default); "add1" (sacrebleu's add-k, k = 1) p_n = (m_n + 1) / (t_n + 1) for
  n >= 2, so no order is left out; "none" any p_n = 0 gives 0. No match of any order gives 0.
  BP = exp(1 - r / c) for c < r, else 1, r the reference length closest to c (ties: the shorter); c = 0 gives 0.
  Text is right-stripped, optionally lowercased, then tokenized (13a by default, as sacrebleu).

"bleuberi" (`bleuberi_bleu`; Chang et al. 2025, "BLEUBERI: BLEU is a surprisingly effective reward for instruction
following", whose reward calls Hugging Face evaluate's "bleu" metric with smooth=True: evaluate/metrics/bleu/
nmt_bleu.py, tensorflow/nmt's compute_bleu, Lin & Och 2004 smoothing):
  p_n = (m_n + 1) / (t_n + 1) on EVERY order, unigrams too, so an order with t_n = 0 has p_n = 1; fixed weights
  w_n = 1/N; BP = exp(1 - r / c) for c <= r (1 when c = r), else 1, with r the SHORTEST reference's length;
  c = 0 or r = 0 gives 0. Text is tokenized with 13a as is (evaluate's default tokenizer). BLEUBERI's reward also
  scores 0 for an empty or blank completion and, when the completion has "<answer>", scores only the text between
  "<answer>" and "</answer>" (`answer_tags`).

Tokenization "13a" (`tokenize_13a`) is mteval-v13a's, as sacrebleu's and evaluate's Tokenizer13a: "<skipped>"
removed, "-\\n" joined, newlines to spaces, &quot; &amp; &lt; &gt; unescaped, then punctuation split off (periods and
commas only when not next to a digit, a dash after a digit); "whitespace" splits on whitespace only.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any, Callable, Sequence

from jaxrlhf.rewards.calling import completion_text

SMOOTHING = ("exp", "add1", "none")
VARIANTS = ("sacrebleu", "bleuberi")

# mteval-v13a's language-dependent rules, in order: most ASCII punctuation and symbols become tokens; periods and
# commas split unless preceded by a digit, and unless followed by one; a dash after a digit splits.
_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)


def tokenize_13a(text: str) -> list[str]:
  """mteval-v13a tokens of `text` (module docstring)."""
  text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
  if "&" in text:
    text = text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
  text = f" {text} "
  for pattern, replacement in _13A_RULES:
    text = pattern.sub(replacement, text)
  return text.split()


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"13a": tokenize_13a, "whitespace": str.split}


def _ngrams(tokens: Sequence[Any], n: int) -> collections.Counter:
  return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _match_counts(hypothesis: Sequence[Any], references: Sequence[Sequence[Any]], max_order: int
                  ) -> tuple[list[int], list[int]]:
  """(clipped matches m_n, hypothesis n-grams t_n) for n = 1..max_order."""
  matches, totals = [], []
  for n in range(1, max_order + 1):
    max_ref = collections.Counter()
    for ref in references:
      for gram, count in _ngrams(ref, n).items():
        max_ref[gram] = max(max_ref[gram], count)
    matches.append(sum(min(count, max_ref[gram]) for gram, count in _ngrams(hypothesis, n).items()))
    totals.append(max(len(hypothesis) - n + 1, 0))
  return matches, totals


def _check(references: Sequence[Sequence[Any]], max_order: int) -> None:
  if not references:
    raise ValueError("references: expected at least one reference")
  if not (isinstance(max_order, int) and max_order >= 1):
    raise ValueError(f"max_order: expected an integer >= 1, got {max_order!r}")


def sentence_bleu(hypothesis: Sequence[Any], references: Sequence[Sequence[Any]], *, max_order: int = 4,
                  smoothing: str = "exp") -> float:
  """sacrebleu's sentence BLEU in [0, 1] of one tokenized hypothesis against tokenized references.

  Equals sacrebleu.sentence_bleu(" ".join(hypothesis), [" ".join(r) for r in references], tokenize="none",
  smooth_method=("exp" | "add-k" | "none"), use_effective_order=True).score / 100 (module docstring).
  """
  _check(references, max_order)
  if smoothing not in SMOOTHING:
    raise ValueError(f"smoothing: expected one of {SMOOTHING}, got {smoothing!r}")
  c = len(hypothesis)
  if c == 0:
    return 0.0
  r = min((len(ref) for ref in references), key=lambda length: (abs(length - c), length))
  matches, totals = _match_counts(hypothesis, references, max_order)
  if not any(matches):  # sacrebleu returns 0 here whatever the smoothing (its issue #141).
    return 0.0
  log_p = []
  zeros = 0
  for n, (m, t) in enumerate(zip(matches, totals), start=1):
    if smoothing == "add1" and n >= 2:
      m, t = m + 1, t + 1
    if t == 0:  # Effective order: no hypothesis n-gram of this order (or any higher one).
      break
    if m == 0:
      if smoothing == "none":
        return 0.0
      zeros += 1
      log_p.append(math.log(1.0 / (2 ** zeros * t)))
    else:
      log_p.append(math.log(m / t))
  bp = 1.0 if c >= r else math.exp(1.0 - r / c)
  return bp * math.exp(sum(log_p) / len(log_p))


def bleuberi_bleu(hypothesis: Sequence[Any], references: Sequence[Sequence[Any]], *, max_order: int = 4) -> float:
  """BLEUBERI's BLEU in [0, 1]: evaluate's "bleu" (tensorflow/nmt compute_bleu) with smooth=True on one tokenized
  hypothesis: add-one on every order, fixed weights 1/max_order, brevity from the shortest reference."""
  _check(references, max_order)
  c = len(hypothesis)
  r = min(len(ref) for ref in references)
  if c == 0 or r == 0:
    return 0.0
  matches, totals = _match_counts(hypothesis, references, max_order)
  # The reference's order of float operations: a weighted sum of logs, BP from the length ratio.
  log_mean = sum((1.0 / max_order) * math.log((m + 1.0) / (t + 1.0)) for m, t in zip(matches, totals))
  ratio = c / r
  bp = 1.0 if ratio > 1.0 else math.exp(1.0 - 1.0 / ratio)
  return math.exp(log_mean) * bp


def _reference_list(value: Any) -> list[str] | None:
  """A row's references: one string or a list of strings; None when missing (None, NaN, no non-None entry)."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return None
  refs = [value] if isinstance(value, str) else [v for v in value if v is not None]
  if not all(isinstance(v, str) for v in refs):
    raise ValueError(f"references: expected a string or a list of strings, got {value!r}")
  return refs or None


def _answer_span(text: str) -> str:
  """BLEUBERI's extract_answer: the text between <answer> and </answer> (to the end if unclosed), else all."""
  if "<answer>" in text:
    text = text.split("<answer>", 1)[1].split("</answer>", 1)[0]
  return text.strip()


def bleu_reward(column: str = "references", variant: str = "sacrebleu", tokenize: str = "13a", smoothing: str = "exp",
         max_order: int = 4, lowercase: bool = False, answer_tags: bool = True):
  """Reward function: sentence BLEU in [0, 1] of each completion against its row's `columns[column]` (a string or
  a list of strings); None where the row has no reference.

  Args:
    column: the reference column.
    variant: "sacrebleu" (`sentence_bleu`, with `smoothing` and `lowercase`) or "bleuberi" (`bleuberi_bleu`, with
      BLEUBERI's empty-completion rule and `answer_tags`); see the module docstring.
    tokenize: "13a" (both references' default) or "whitespace".
    max_order: N, the highest n-gram order.
  """
  if variant not in VARIANTS:
    raise ValueError(f"bleu.variant: expected one of {VARIANTS}, got {variant!r}")
  if tokenize not in TOKENIZERS:
    raise ValueError(f"bleu.tokenize: expected one of {tuple(TOKENIZERS)}, got {tokenize!r}")
  if smoothing not in SMOOTHING:
    raise ValueError(f"bleu.smoothing: expected one of {SMOOTHING}, got {smoothing!r}")
  if variant == "bleuberi" and (smoothing != "exp" or lowercase):
    raise ValueError("bleu: variant 'bleuberi' has fixed add-one smoothing and no lowercasing; leave `smoothing` "
                     "and `lowercase` at their defaults")
  if not (isinstance(max_order, int) and max_order >= 1):
    raise ValueError(f"bleu.max_order: expected an integer >= 1, got {max_order!r}")
  tok = TOKENIZERS[tokenize]

  def score(text: str, refs: list[str]) -> float:
    if variant == "bleuberi":
      if answer_tags:
        text = _answer_span(text)
      if not text.strip():
        return 0.0
      return bleuberi_bleu(tok(text), [tok(ref) for ref in refs], max_order=max_order)
    prep = (lambda s: s.rstrip().lower()) if lowercase else str.rstrip
    return sentence_bleu(tok(prep(text)), [tok(prep(ref)) for ref in refs], max_order=max_order,
                         smoothing=smoothing)

  def reward(prompts: Sequence[str], completions: Sequence[Any], **columns) -> list[float | None]:
    del prompts
    if column not in columns:
      raise ValueError(f"bleu: reference column {column!r} not among the columns {sorted(columns)}")
    out = []
    for c, value in zip(completions, columns[column]):
      refs = _reference_list(value)
      out.append(None if refs is None else score(completion_text(c), refs))
    return out

  reward.__name__ = reward.__qualname__ = "bleu" if variant == "sacrebleu" else "bleuberi"
  return reward


def bleuberi_reward(column: str = "references", tokenize: str = "13a", max_order: int = 4, answer_tags: bool = True):
  """Reward function: BLEUBERI's BLEU reward, `bleu_reward(variant="bleuberi", ...)`."""
  return bleu_reward(column, variant="bleuberi", tokenize=tokenize, max_order=max_order, answer_tags=answer_tags)
