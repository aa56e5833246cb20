"""Encoder-based text rewards: the plain relevance of a response to its prompt, R^3 (the regularized relevance
reward), and the semantic similarity of a generated SQL query to the gold one. Embeddings come from
`rewards.encoder` (mean-pooled, L2-normalized last hidden states of a local causal LM: a stand-in for the papers'
retrievers, see there), so every similarity below is a cosine in [-1, 1].

R^3, "Preference-free Alignment Learning with Regularized Relevance Reward" (Kim & Seo 2024, arXiv 2402.03469).
The paper's preliminary study uses a retriever's relevance r_x = M(x) . M(y^) (Contriever) of the rollout y^ to the
query x as the PPO reward and finds it hacked: the policy learns short answers and copies the question (about 40%
of responses). R^3 regularizes it with inductive biases that check each other:

    LI(y^) = (#words of y^) / 100                                   length incentive (against short answers)
    RP(y^) = #unique word trigrams of y^ / #word trigrams of y^     repetition penalty (against a long answer made
                                                                    by repeating, e.g. the question over and over)
    R^3(x, y, y^) = r_x * LI(y^) * RP(y^)        if x is open-ended
                    F(r_y) * RP(y^)              otherwise (closed-ended: r_y = M(y) . M(y^), the relevance of y^
                                                 to the reference answer y; F rescales it to the open-ended range)

The query type T(x) comes from a classifier in the paper (GPT-4 labels, then a fine-tuned LLaMA-2); here from a
prompt-file column (`type_column`; "" = every prompt open-ended, the paper's R_OE ablation). Sources: the arXiv
abstract (relevance regularized by inductive biases into "a mixture of reward functions") and a detailed public review
of the paper that reproduces the equations above; the paper's own PDF and code could not be read offline, so these
facts are unchecked against it: (1) F is only described as an interpolation that matches ranges: ours is the clipped
linear map `interpolation` = (in_lo, in_hi, out_lo, out_hi), identity on [0, 1] by default; (2) "words" and
"trigrams" are read as whitespace words (case kept); a response of fewer than 3 words has no trigram and RP = 1;
(3) the paper's r_x is Contriever's unnormalized dot product, ours a cosine. The authors' names are as recalled
(the pages read did not list them). An empty response (no words) scores R^3 = 0 when open-ended (LI = 0) and is not
scorable (None) when closed-ended or under the plain relevance.

sql_semantic: the "contrastive reward" of "Bridging the Semantic Gap: Contrastive Rewards for Multilingual Text-to-SQL
with GRPO" (Kattamuri, Prasad, Malhotra, Vats, Raja, Lie 2025, arXiv 2510.13827): GRPO with a reward from the
semantic similarity of the generated and the gold SQL under an encoder (a fine-tuned multilingual XLM-RoBERTa per a
third-party summary), added to execution-based rewards. Only the abstract could be read offline: how the paper maps
the similarity to a reward is unchecked, so `mapping` chooses: "unit" (default, ours) (1 + cos) / 2 in [0, 1], the
range of the Reasoning-SQL terms it is summed with; "cosine" cos itself; "positive" max(cos, 0). The predicted query
is `sql.extract_sql` of the completion; a completion without one scores 0 (as the other SQL terms), a row without a
gold query is not scorable (None).
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from jaxrlhf.rewards.calling import completion_text
from jaxrlhf.rewards.sql import extract_sql

OPEN_TYPES = ("open", "open_ended", "oe")
CLOSED_TYPES = ("closed", "closed_ended", "ce")
SQL_MAPPINGS = ("unit", "cosine", "positive")
IDENTITY_INTERPOLATION = (0.0, 1.0, 0.0, 1.0)


# ------------------------------------------------------------------------------------------------ R^3's factors
def length_incentive(text: str, scale: float = 100.0) -> float:
  """LI: the number of whitespace words of `text` / scale (100 in the paper); unbounded above."""
  return len(text.split()) / scale


def repetition_penalty(text: str) -> float:
  """RP in (0, 1]: distinct word trigrams / word trigrams of `text` (whitespace words, case kept); 1.0 when it has
  fewer than 3 words (no trigram, nothing repeated)."""
  words = text.split()
  trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
  return len(set(trigrams)) / len(trigrams) if trigrams else 1.0


def interpolate(value: float, interpolation: Sequence[float] = IDENTITY_INTERPOLATION) -> float:
  """F: `value` mapped linearly from [in_lo, in_hi] to [out_lo, out_hi], clipped to that interval."""
  in_lo, in_hi, out_lo, out_hi = interpolation
  t = min(max((value - in_lo) / (in_hi - in_lo), 0.0), 1.0)
  return out_lo + t * (out_hi - out_lo)


def r3_value(text: str, r_x: float | None, r_y: float | None, open_ended: bool, length_scale: float = 100.0,
             interpolation: Sequence[float] = IDENTITY_INTERPOLATION) -> float | None:
  """R^3 of one response (module docstring) from its relevance to the query r_x and to the reference r_y.

  Returns r_x * LI * RP (open-ended; 0.0 for a response without words, whatever r_x), F(r_y) * RP (closed-ended),
  or None when the needed relevance is None / NaN.
  """
  if open_ended:
    li = length_incentive(text, length_scale)
    if li == 0.0:
      return 0.0
    return None if _missing(r_x) else float(r_x * li * repetition_penalty(text))
  return None if _missing(r_y) else float(interpolate(r_y, interpolation) * repetition_penalty(text))


def _missing(value: Any) -> bool:
  return value is None or (isinstance(value, float) and math.isnan(value))


# ------------------------------------------------------------------------------------------------ options
def _check_model(model: Any, kind: str) -> str:
  if not isinstance(model, (str, os.PathLike)) or not os.fspath(model):
    raise ValueError(f"{kind}.model: required: the encoder model, a Hugging Face folder or a .gguf file (e.g. "
                     "SmolLM2-135M-Instruct's GGUF, configs/_sections.py S.smollm2_gguf())")
  return os.fspath(model)


def _encoder(model: Any, kind: str, max_length: int, batch_size: int):
  from jaxrlhf.rewards import encoder as encoder_lib  # pylint: disable=g-import-not-at-top  lazy: imports JAX
  path = _check_model(model, kind)
  for name, value in (("max_length", max_length), ("batch_size", batch_size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{kind}.{name}: expected an integer >= 1, got {value!r}")
  try:
    return encoder_lib.load_encoder(path, max_length, batch_size)  # Loaded at planning: bad files fail early.
  except ValueError as e:
    raise ValueError(f"{kind}.model: {e}") from e


def _cosines(encoder: Any, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
  """float64 (R,) cosine of each pair (NaN where a text has no tokens); one encode call for all texts."""
  emb = encoder.encode(list(left) + list(right)).astype(np.float64)
  return np.sum(emb[:len(left)] * emb[len(left):], axis=-1)


def _references(value: Any, column: str, row: int, kind: str) -> list[str]:
  if _missing(value):
    return []
  refs = [value] if isinstance(value, str) else (list(value) if isinstance(value, (list, tuple)) else None)
  if refs is None or not all(isinstance(v, str) or v is None for v in refs):
    raise ValueError(f"{kind}: column {column!r} row {row}: expected a reference string or a list of strings, got "
                     f"{value!r}")
  return [v for v in refs if v is not None and v.strip()]


def _open_ended(value: Any, column: str, row: int) -> bool:
  if _missing(value):
    return True
  label = str(value).strip().lower().replace("-", "_")
  if label in OPEN_TYPES:
    return True
  if label in CLOSED_TYPES:
    return False
  raise ValueError(f"r3_relevance: column {column!r} row {row}: query type {value!r}; expected one of "
                   f"{OPEN_TYPES + CLOSED_TYPES} (case-insensitive)")


# ------------------------------------------------------------------------------------------------ reward functions
def relevance(model: str = "", max_length: int = 256, batch_size: int = 16):
  """Reward function: the plain relevance r_x = cos(e(prompt), e(completion)) in [-1, 1] under the encoder of
  `model` (module docstring; the hackable baseline of R^3); None where either text has no tokens.

  Args:
    model: the encoder: a Hugging Face folder or a .gguf file (required; loaded once per path).
    max_length, batch_size: the encoder's token budget per text and rows per jitted call.
  """
  encoder = _encoder(model, "relevance", max_length, batch_size)

  def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns) -> list[float | None]:
    del columns
    cos = _cosines(encoder, [completion_text(p) for p in prompts], [completion_text(c) for c in completions])
    return [None if math.isnan(v) else float(v) for v in cos]

  reward.__name__ = reward.__qualname__ = "relevance"
  return reward


def r3_relevance(model: str = "", reference_column: str = "references", type_column: str = "",
                 length_scale: float = 100.0, interpolation: Sequence[float] = IDENTITY_INTERPOLATION,
                 max_length: int = 256, batch_size: int = 16):
  """Reward function: R^3 (module docstring) of each completion.

  Args:
    model: the encoder (a Hugging Face folder or a .gguf file; required).
    reference_column: the reference answers y (a string or a list of strings: the best reference counts), read on
      closed-ended rows only; a closed-ended row without one is not scorable.
    type_column: the column holding each prompt's type, "open" / "closed" (also "open_ended" / "oe", "closed_ended" /
      "ce"; a missing value is open-ended); "" = every prompt is open-ended.
    length_scale: LI's divisor (100 words in the paper).
    interpolation: F = (in_lo, in_hi, out_lo, out_hi), the clipped linear map of r_y (identity on [0, 1]).
    max_length, batch_size: the encoder's token budget per text and rows per jitted call.
  """
  if isinstance(length_scale, bool) or not isinstance(length_scale, (int, float)) or not length_scale > 0 or (
      not math.isfinite(length_scale)):
    raise ValueError(f"r3_relevance.length_scale: expected a finite number > 0 (words), got {length_scale!r}")
  if (isinstance(interpolation, (str, bytes)) or not hasattr(interpolation, "__len__") or len(interpolation) != 4
      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in interpolation)
      or not interpolation[1] > interpolation[0]):
    raise ValueError("r3_relevance.interpolation: expected 4 finite numbers (in_lo, in_hi, out_lo, out_hi) with "
                     f"in_hi > in_lo, got {interpolation!r}")
  for name, value in (("reference_column", reference_column), ("type_column", type_column)):
    if not isinstance(value, str):
      raise ValueError(f"r3_relevance.{name}: expected a column name (a string), got {value!r}")
  interpolation = tuple(float(v) for v in interpolation)
  encoder = _encoder(model, "r3_relevance", max_length, batch_size)

  def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns) -> list[float | None]:
    if type_column and type_column not in columns:
      raise ValueError(f"r3_relevance: type column {type_column!r} not among the columns {sorted(columns)}")
    texts = [completion_text(c) for c in completions]
    open_ended = [_open_ended(v, type_column, i) for i, v in enumerate(columns[type_column])] if type_column else (
        [True] * len(texts))
    if not all(open_ended) and reference_column not in columns:
      raise ValueError(f"r3_relevance: reference column {reference_column!r} not among the columns "
                       f"{sorted(columns)} (closed-ended rows need it)")
    r_x = _cosines(encoder, [completion_text(p) for p in prompts], texts)
    out = []
    for i, text in enumerate(texts):
      r_y = None
      if not open_ended[i]:
        refs = _references(columns[reference_column][i], reference_column, i, "r3_relevance")
        values = [v for v in _cosines(encoder, refs, [text] * len(refs)) if not math.isnan(v)] if refs else []
        r_y = max(values) if values else None
      out.append(r3_value(text, float(r_x[i]), r_y, open_ended[i], length_scale, interpolation))
    return out

  reward.__name__ = reward.__qualname__ = "r3_relevance"
  return reward


def sql_semantic(model: str = "", gold_column: str = "gold_sql", mapping: str = "unit", max_length: int = 256,
                 batch_size: int = 16):
  """Reward function: the semantic similarity of the completion's SQL query to the gold query under the encoder
  (module docstring), mapped by `mapping`: "unit" (1 + cos) / 2, "cosine", or "positive" max(cos, 0); 0.0 without a
  predicted query, None without a gold query.

  Args:
    model: the encoder (a Hugging Face folder or a .gguf file; required).
    gold_column: the gold query's column.
    mapping: "unit" | "cosine" | "positive".
    max_length, batch_size: the encoder's token budget per text and rows per jitted call.
  """
  if mapping not in SQL_MAPPINGS:
    raise ValueError(f"sql_semantic.mapping: expected one of {SQL_MAPPINGS}, got {mapping!r}")
  if not isinstance(gold_column, str) or not gold_column:
    raise ValueError(f"sql_semantic.gold_column: expected a column name, got {gold_column!r}")
  encoder = _encoder(model, "sql_semantic", max_length, batch_size)
  transform = {"unit": lambda c: (1.0 + c) / 2.0, "cosine": lambda c: c, "positive": lambda c: max(c, 0.0)}[mapping]

  def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns) -> list[float | None]:
    del prompts
    if gold_column not in columns:
      raise ValueError(f"sql_semantic: column {gold_column!r} not among the prompt file's columns {sorted(columns)}")
    golds = columns[gold_column]
    predicted = [extract_sql(completion_text(c)) for c in completions]
    rows = [i for i, (p, g) in enumerate(zip(predicted, golds)) if p and not _missing(g) and str(g).strip()]
    cos = _cosines(encoder, [predicted[i] for i in rows], [str(golds[i]) for i in rows]) if rows else []
    out: list[float | None] = [None if _missing(g) or not str(g).strip() else 0.0 for g in golds]
    for i, c in zip(rows, cos):
      out[i] = None if math.isnan(c) else float(transform(float(c)))
    return out

  reward.__name__ = reward.__qualname__ = "sql_semantic"
  return reward
