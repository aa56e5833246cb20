"""The literal table of reward kinds a config can name: kind -> factory(**options) -> reward function.

    make_reward("exact_match", {"column": "answer"})
    make_reward("weighted_sum", {"terms": [{"kind": "exact_match", "weight": 1.0},
                                           {"kind": "length_penalty", "options": {"target": 400, "alpha": 0.001},
                                            "weight": 1.0}],
                                 "nan": "skip"})

Every factory's keyword arguments are its options (see each function's docstring); a bad kind, an unknown or
missing option, or a bad value raises ConfigError naming `path` and what was expected.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Mapping

from jaxrlhf.config import ConfigError
from jaxrlhf.rewards import answers, bleu, bmas, combine, multi_aspect, semantic, shaping, sql, toolrl, voting
from jaxrlhf.rewards.calling import load_function


def python_function(function: str) -> Callable[..., Any]:
  """A user reward function named "package.module:function" (TRL's or the positional convention, `calling`)."""
  return load_function(function, "function")


def weighted_sum_of(terms: Any, nan: str = "skip") -> Callable[..., Any]:
  """`combine.weighted_sum` whose terms are {"kind", "options" (optional), "weight" (default 1.0)} mappings
  built with `make_reward`, or (function, weight) pairs."""
  if isinstance(terms, (str, bytes)) or not hasattr(terms, "__iter__"):
    raise ValueError(f"terms: expected a list of {{'kind', 'options', 'weight'}} mappings, got {terms!r}")
  built = []
  for i, term in enumerate(terms):
    if isinstance(term, tuple):
      built.append(term)
      continue
    term = dict(term)
    unknown = set(term) - {"kind", "options", "weight"}
    if "kind" not in term or unknown:
      raise ValueError(f"terms[{i}]: expected keys 'kind', 'options' (optional), 'weight' (optional), got "
                       f"{sorted(term)}")
    fn = make_reward(term["kind"], term.get("options"), f"terms[{i}]")
    built.append((fn, term.get("weight", 1.0)))
  return combine.weighted_sum(built, nan=nan)


REWARDS: dict[str, Callable[..., Callable[..., Any]]] = {
    "exact_match": answers.exact_match,
    "regex_format": shaping.regex_format,
    "length_penalty": shaping.length_penalty,
    "bleu": bleu.bleu_reward,
    "bleuberi": bleu.bleuberi_reward,
    "sql_execution": sql.sql_execution,
    "sql_syntax": sql.sql_syntax,
    "sql_schema_linking": sql.sql_schema_linking,
    "sql_ngram": sql.sql_ngram,
    "sql_format": sql.sql_format,
    "reasoning_sql": sql.reasoning_sql,
    "weighted_sum": weighted_sum_of,
    "python": python_function,
    "toolrl": toolrl.toolrl_reward,
    "bmas": bmas.bmas_reward,
    "instruction_adherence": multi_aspect.instruction_adherence,
    "generalized_length_penalty": multi_aspect.generalized_length_penalty,
    "self_consistency": voting.self_consistency,
    "co_reward": voting.co_reward,
    "vote_unanimity": voting.vote_unanimity,
    "relevance": semantic.relevance,
    "r3_relevance": semantic.r3_relevance,
    "sql_semantic": semantic.sql_semantic,
}


def options_of(kind: str) -> dict[str, Any]:
  """{option: default (inspect.Parameter.empty when required)} of a kind's factory."""
  return {p.name: p.default for p in inspect.signature(REWARDS[kind]).parameters.values()}


def make_reward(kind: str, options: Mapping[str, Any] | None = None, path: str = "reward") -> Callable[..., Any]:
  """The reward function of built-in `kind` with `options` (the factory's keyword arguments).

  Raises:
    ConfigError: unknown kind (with the valid kinds), unknown or missing options (with the valid ones), or a value
      the factory rejects; the message starts with `path`.
  """
  if kind not in REWARDS:
    close = difflib.get_close_matches(str(kind), REWARDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{path}.kind: unknown reward kind {kind!r}{hint}; expected one of {sorted(REWARDS)}")
  options = dict(options or {})
  valid = options_of(kind)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ConfigError(f"{path}.options: unknown option(s) {unknown} for kind {kind!r}; its options are "
                      f"{sorted(valid)}")
  missing = [k for k, default in valid.items() if default is inspect.Parameter.empty and k not in options]
  if missing:
    raise ConfigError(f"{path}.options: kind {kind!r} needs option(s) {missing}")
  try:
    return REWARDS[kind](**options)
  except ConfigError as e:
    raise ConfigError(f"{path}.options.{e}") from e
  except (ValueError, TypeError) as e:
    raise ConfigError(f"{path}.options: {e}") from e
