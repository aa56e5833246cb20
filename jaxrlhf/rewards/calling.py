"""Calling a reward function on text: TRL's `reward_funcs` convention, output checks, errors that name the row.

A reward function scores R completions at once:

    fn(prompts=[...R str], completions=[...R str], **columns) -> R values, each a number or None

as TRL's GRPOTrainer calls its `reward_funcs` (trl/trainer/grpo_trainer.py, `_calculate_rewards`: every dataset
column other than "prompt" / "completion" / "completion_ids" is passed as a keyword holding one value per
completion; None becomes NaN, "not scorable"; a row where every function returns None is unscorable). This module
also accepts the positional style fn(prompts, completions) that reward_sources' "python" kind used, detects which
style a function takes from its signature (`call_style`), and passes only the columns a function can receive.

Values come back as float32 (R,) numpy with NaN for "not scorable". A bad output (wrong length, a string, inf) or
an exception inside the function raises `RewardFunctionError` naming the function and, where it can be found, the
row and its prompt.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import inspect
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxrlhf.config import ConfigError

RewardFn = Callable[..., Sequence[Any]]

# The keywords the calling layer itself passes; a column may not take these names.
RESERVED = ("prompts", "completions")
_PREVIEW_CHARS = 40
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class RewardFunctionError(ValueError):
  """A reward function raised or returned something unusable; the message names the function and the row."""


def describe(fn: Any) -> str:
  """"module:qualname" of a function (or its class for a callable object), for messages."""
  target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn) else type(fn)
  qualname = getattr(fn, "__name__", None) or getattr(target, "__qualname__", None) or repr(fn)
  module = getattr(fn, "__module__", None) or getattr(target, "__module__", None)
  return f"{module}:{qualname}" if module else str(qualname)


def load_function(spec: str, path: str = "function") -> Callable[..., Any]:
  """The callable named by "package.module:function" (or "module:Class.attribute").

  Raises ConfigError naming `path` (the config key) and saying what was wrong: no ":", a module that cannot be
  imported (with the import error), a missing attribute (with the closest public names), or a value that is not
  callable.
  """
  if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.partition(":")[::2]):
    raise ConfigError(f"{path}: expected 'package.module:function', got {spec!r}")
  module_name, _, attr = spec.partition(":")
  try:
    obj = importlib.import_module(module_name)
  except Exception as e:  # pylint: disable=broad-except  # ImportError, or a SyntaxError / error in the module.
    raise ConfigError(f"{path}: cannot import module {module_name!r} of {spec!r}: {type(e).__name__}: {e}") from e
  for part in attr.split("."):
    if not hasattr(obj, part):
      close = difflib.get_close_matches(part, [n for n in dir(obj) if not n.startswith("_")], n=3)
      hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
      raise ConfigError(f"{path}: {spec!r}: {getattr(obj, '__name__', module_name)!r} has no attribute "
                        f"{part!r}{hint}")
    obj = getattr(obj, part)
  if not callable(obj):
    raise ConfigError(f"{path}: {spec!r} is a {type(obj).__name__}, not a callable")
  return obj


def call_style(fn: Callable[..., Any]) -> tuple[str, set[str] | None]:
  """How `fn` is called: ("keyword" | "positional", the keyword names it accepts, None = any (**kwargs)).

  "keyword" (TRL's style: TRL calls every reward function by keyword, so its functions take **kwargs) when a
  parameter is named `prompts` or `completions` or the function takes **kwargs: fn(prompts=..., completions=...,
  **columns), each passed only if the function can receive it. "positional" otherwise (fn(p, c), fn(*args), or a
  builtin without an inspectable signature): fn(prompts, completions, **columns), the columns going to the later
  parameters named after them.
  """
  try:
    params = list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):  # Builtins / C extensions: nothing to inspect.
    return "positional", set()
  var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
  named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
  positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
  if var_kw or named & set(RESERVED):
    return "keyword", None if var_kw else named
  # Positional: the first two positional parameters take prompts and completions; only later names take columns.
  later = {p.name for p in positional[2:] if p.kind is p.POSITIONAL_OR_KEYWORD}
  return "positional", later | {p.name for p in params if p.kind is p.KEYWORD_ONLY}


def _required_keywords(fn: Callable[..., Any], style: str) -> list[str]:
  """Parameters without a default that must come by keyword (beyond prompts / completions)."""
  try:
    params = list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):
    return []
  if style == "positional":
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    params = positional[2:] + [p for p in params if p.kind is p.KEYWORD_ONLY]
  return [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
          and p.name not in RESERVED]


def completion_text(completion: Any) -> str:
  """The text of a completion: a string as is, or TRL's conversational form (a list of {"role", "content"}
  messages) -> the content of its last message, so the built-in rewards also work as TRL reward_funcs."""
  if isinstance(completion, str):
    return completion
  if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], Mapping):
    return str(completion[-1].get("content", ""))
  raise TypeError(f"completion: expected a string or a list of chat messages, got {type(completion).__name__}")


def _preview(value: Any) -> str:
  """repr of a string cut to 40 characters (+ "..."); repr of anything else, cut likewise."""
  if isinstance(value, str):
    return repr(value if len(value) <= _PREVIEW_CHARS else value[:_PREVIEW_CHARS] + "...")
  text = repr(value)
  return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "..."


def _where(name: str, row: int, prompts: Sequence[Any]) -> str:
  return f"reward function {name!r} row {row} (prompt {_preview(prompts[row])})"


def _invoke(fn, style, accepted, prompts, completions, columns):
  kwargs = {k: v for k, v in columns.items() if accepted is None or k in accepted}
  if style == "keyword":
    if accepted is None or "prompts" in accepted:
      kwargs["prompts"] = prompts
    if accepted is None or "completions" in accepted:
      kwargs["completions"] = completions
    out = fn(**kwargs)
  else:
    out = fn(prompts, completions, **kwargs)
  if inspect.isawaitable(out):  # TRL accepts async reward functions too.
    out = asyncio.run(_await(out))
  return out


async def _await(awaitable):
  return await awaitable


def _to_float(value: Any) -> float | None:
  """A real number (bool, int, float, numpy / 0-d array scalar) as float; None for anything else."""
  if isinstance(value, (str, bytes)):
    return None
  try:
    arr = np.asarray(value)
  except Exception:  # pylint: disable=broad-except  # Exotic objects: not a number.
    return None
  if arr.ndim != 0 or arr.dtype.kind not in "biuf":
    return None
  return float(arr)


def check_rewards(out: Any, prompts: Sequence[Any], name: str) -> np.ndarray:
  """float32 (R,) from a reward function's output, NaN where it said None / NaN; RewardFunctionError otherwise.

  Accepted: a list / tuple / 1-D array of R values, each a real number, None or NaN. Rejected (the message names
  the function, and the row and its prompt for a bad value): a non-sequence (a scalar, a dict, a string), a wrong
  length, a non-number, and +-inf or a value beyond float32's range (an infinite reward breaks the advantages).
  """
  n = len(prompts)
  try:
    length = None if isinstance(out, (str, bytes, Mapping)) or not hasattr(out, "__iter__") else len(out)
  except TypeError:  # A 0-d array.
    length = None
  if length is None or getattr(out, "ndim", 1) != 1:
    shape = f" of shape {tuple(out.shape)}" if hasattr(out, "shape") else ""
    raise RewardFunctionError(f"reward function {name!r}: returned {type(out).__name__}{shape} {_preview(out)}, "
                              f"expected a list of {n} rewards (one number or None per completion)")
  if length != n:
    raise RewardFunctionError(f"reward function {name!r}: returned {len(out)} rewards for {n} completions, "
                              "expected one per completion")
  values = np.full(n, np.nan, np.float32)
  for i, value in enumerate(out):
    if value is None:
      continue
    x = _to_float(value)
    if x is None:
      raise RewardFunctionError(f"{_where(name, i, prompts)}: returned {_preview(value)} "
                                f"({type(value).__name__}), expected a number or None")
    if math.isinf(x) or abs(x) > _FLOAT32_MAX:
      raise RewardFunctionError(f"{_where(name, i, prompts)}: returned {x!r}, expected a finite number (float32) "
                                "or None / NaN for 'not scorable'")
    values[i] = x
  return values


def call_reward_function(fn: Callable[..., Any], prompts: Sequence[str], completions: Sequence[Any],
                         columns: Mapping[str, Sequence[Any]] | None = None, name: str | None = None) -> np.ndarray:
  """Calls a reward function on R (prompt, completion) rows and returns float32 (R,), NaN = not scorable.

  Args:
    fn: fn(prompts=..., completions=..., **columns) (TRL) or fn(prompts, completions); see `call_style`. Only the
      columns a function can receive are passed (all of them to one with **kwargs, as TRL does).
    prompts, completions: R texts (completions may also be TRL's conversational form; they are passed as given).
    columns: name -> R values (reference answers, test cases, ...), one per row.
    name: the function's name in messages (e.g. the config's "module:function"); default `describe(fn)`.

  Raises:
    RewardFunctionError: the output is unusable (`check_rewards`), a required parameter is not a column, or `fn`
      raised. For an exception the function is called again row by row to find the rows that fail: the message
      names the first one and its prompt (or says that every row fails, or that only the whole batch does), and the
      original exception is chained (`__cause__`).
    ValueError: prompts, completions and columns differ in length, or a column is named "prompts"/"completions".
  """
  name = name or describe(fn)
  columns = dict(columns or {})
  n = len(prompts)
  if len(completions) != n:
    raise ValueError(f"reward function {name!r}: {n} prompts but {len(completions)} completions")
  for key, values in columns.items():
    if key in RESERVED:
      raise ValueError(f"reward function {name!r}: column {key!r} clashes with the argument of that name; rename it")
    if len(values) != n:
      raise ValueError(f"reward function {name!r}: column {key!r} has {len(values)} values for {n} completions")
  style, accepted = call_style(fn)
  missing = [k for k in _required_keywords(fn, style) if k not in columns]
  if missing:
    raise RewardFunctionError(f"reward function {name!r}: needs argument(s) {missing} that are not columns (columns: "
                              f"{sorted(columns) or 'none'}); give them defaults or add the columns")
  try:
    out = _invoke(fn, style, accepted, list(prompts), list(completions), columns)
  except RewardFunctionError:  # From a nested call (a weighted sum's term): it already names the function and row.
    raise
  except Exception as e:  # pylint: disable=broad-except  # Re-raised below with the function and row named.
    raise _locate_failure(fn, style, accepted, prompts, completions, columns, name, e) from e
  return check_rewards(out, prompts, name)


def _locate_failure(fn, style, accepted, prompts, completions, columns, name, error) -> RewardFunctionError:
  """A RewardFunctionError for `error`, naming the first row whose single-row call raises the same type."""
  failing, first = [], None
  for i in range(len(prompts)):
    row_columns = {k: v[i:i + 1] for k, v in columns.items()}
    try:
      _invoke(fn, style, accepted, list(prompts[i:i + 1]), list(completions[i:i + 1]), row_columns)
    except Exception as e:  # pylint: disable=broad-except
      if type(e) is type(error):
        failing.append(i)
        first = first or e
  if not failing:
    return RewardFunctionError(f"reward function {name!r} raised {type(error).__name__}: {error} (on the batch of "
                               f"{len(prompts)}; no single row raises it alone)")
  if len(failing) == len(prompts) and len(prompts) > 1:
    return RewardFunctionError(f"reward function {name!r} raised {type(error).__name__}: {error} (on every row)")
  more = f"; {len(failing) - 1} more rows fail: {failing[1:6]}" if len(failing) > 1 else ""
  return RewardFunctionError(f"{_where(name, failing[0], prompts)}: raised {type(first).__name__}: {first}{more}")
