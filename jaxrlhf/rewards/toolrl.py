"""ToolRL's reward for tool calls (Qian et al. 2025, "ToolRL: Reward is All Tool Learning Needs", arXiv 2504.13958,
Sec. 3.3 "Reward Design"; official code github.com/qiancheng0/ToolRL, verl/utils/reward_score/rlla.py).

A completion answers in tagged fields: <think>...</think>, then <tool_call>...</tool_call> holding one JSON call per
line ({"name": ..., "parameters": {...}}) and/or <response>...</response>. The reward is

    R_final = R_format + R_correct                                    in [-3, 4]

Format, R_format in {0, 1}: 1 when the completion (surrounding whitespace stripped) has exactly the fields the ground
truth has, in order (rlla.py `customize_format_reward_func`; Python `re.search`, DOTALL):
    tool calls only        ^<think>.*?</think>\\n<tool_call>\\n.*?\\n</tool_call>$
    response only          ^<think>.*?</think>\\n<response>.*?</response>$
    tool calls + response  ^<think>.*?</think>\\n<tool_call>\\n.*?\\n</tool_call>\\n<response>.*?</response>$
    neither                ^<think>.*?</think>$
and each <tool_call>, </tool_call>, <response>, </response> the kind needs occurs exactly once.

Correctness, R_correct in [-3, 3], predicted calls P = {P_1..P_m} against the gold calls G = {G_1..G_n}:
    r_name  = |N_G ∩ N_P| / |N_G ∪ N_P|                                         in [0, 1]
    for a matched pair (G_j, P_j):
      r_param = |keys(G_j) ∩ keys(P_j)| / |keys(G_j) ∪ keys(P_j)|               in [0, 1]
      r_value = sum_{k in keys(G_j)} 1[G_j[k] == P_j[k]]                          in [0, |keys(G_j)|]
    R_max   = r_name + max over one-to-one matchings of sum_{matched j} (r_param + r_value)
    S_max   = 1 + |G| + sum_j |keys(G_j)|
    R_correct = 6 * R_max / S_max - 3        (in general (hi - lo) * R_max / S_max + lo, [lo, hi] = [-3, 3])

Details the paper leaves open, taken from the official code (rlla.py `compute_tool_call_reward`, `match_score`):
  * N_G, N_P are the MULTISETS of names (`match_score` counts: gold [w, w] vs predicted [w] gives 1/2); with
    distinct names this is the paper's set formula. Both empty -> 1; one empty -> 0 (likewise for r_param).
  * Only a predicted call with the gold call's name can match it (a pair of different names scores 0); an unmatched
    gold call adds nothing, and extra predicted calls cost only through r_name.
  * Values compare as parsed JSON with Python's == (so 1 == 1.0, and "1" != 1).
  * The matching is the paper's "optimal matching between P and G to maximize the total match score", solved
    exactly with scipy's linear_sum_assignment. The official code instead matches greedily, gold call by gold call,
    each to the best unused same-name prediction (the first of ties); the two agree except where an early greedy
    choice takes a later gold call's only good partner (tests/rewards/test_toolrl.py shows such a case).
Edge cases (official code, `customize_correctness_reward_tool`):
  * No gold call (the row expects a plain response): R_correct = 0 whatever the completion does.
  * Gold calls but no <tool_call> ... </tool_call> in the completion, a line of the (first) block that is not valid
    JSON (or nested past the parser's recursion limit), or a call that is not an object with a string "name" and an
    object "parameters": R_correct = lo (-3). (The code reads "parameters" only of same-name predictions; here every
    predicted call needs it.)
  * Lines of the block are split on "\\n" after stripping the block, so a blank line between calls is invalid JSON.

Granularity (the paper's Sec. 5 ablation, rlla.py INTERMEDIATEREWARD / COARSEREWARD): "fine" (above, the default);
"intermediate": a matched pair scores 1 only when the calls are identical, S_max = 1 + |G|; "coarse": hi when the
predicted list equals the gold list (in order), else lo. In every granularity a prediction equal to the gold list
scores hi (the code's exact-match shortcut; the fine and intermediate formulas give hi there anyway).

Outcome counts (`rewards.outcomes`): the reward counts rows with R_format 0 ("bad_format") and, among rows that
expect calls, completions without a call block ("no_tool_call") or with one that does not parse
("unparsable_tool_call"); the stages report them.
"""

from __future__ import annotations

import collections
import json
import re
from typing import Any, Mapping, Sequence

import numpy as np

from jaxrlhf.rewards.calling import completion_text
from jaxrlhf.rewards.outcomes import Outcomes

GRANULARITIES = ("fine", "intermediate", "coarse")
TERMS = ("format", "correctness")
TOOL_CALL, RESPONSE = ("<tool_call>", "</tool_call>"), ("<response>", "</response>")
_FORMATS = {  # (needs tool calls, needs a response) -> pattern; rlla.py customize_format_reward_func.
    (True, False): re.compile(r"^<think>.*?</think>\n<tool_call>\n.*?\n</tool_call>$", re.DOTALL),
    (False, True): re.compile(r"^<think>.*?</think>\n<response>.*?</response>$", re.DOTALL),
    (True, True): re.compile(r"^<think>.*?</think>\n<tool_call>\n.*?\n</tool_call>\n<response>.*?</response>$",
                             re.DOTALL),
    (False, False): re.compile(r"^<think>.*?</think>$", re.DOTALL),
}

Call = Mapping[str, Any]  # {"name": str, "parameters": {key: JSON value}}


class ToolCallParseError(ValueError):
  """A completion's <tool_call> block is missing or does not hold one JSON call per line."""


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
  """The calls in the FIRST <tool_call>...</tool_call> block of `text`: the block stripped, split on newlines, one
  JSON object {"name": ..., "parameters": {...}} per line.

  Raises:
    ToolCallParseError: no opening or closing tag, a line that is not JSON (or nested too deeply for the parser), or
      a call whose "name" is missing or not a string or whose "parameters" is missing or not an object.
  """
  if TOOL_CALL[0] not in text or TOOL_CALL[1] not in text:
    raise ToolCallParseError("no <tool_call> ... </tool_call> block")
  block = text.split(TOOL_CALL[0])[1].split(TOOL_CALL[1])[0].strip()
  calls = []
  for i, line in enumerate(block.split("\n")):
    try:
      call = json.loads(line)
    except json.JSONDecodeError as e:
      raise ToolCallParseError(f"line {i} of the <tool_call> block is not JSON: {e}") from e
    except RecursionError as e:
      # "[[[[...]]]]" nested past the interpreter's recursion limit: a policy's bad output, scored like bad JSON.
      raise ToolCallParseError(f"line {i} of the <tool_call> block is JSON nested too deeply to parse") from e
    # A string name: names are counted (collections.Counter) and compared; a list or object name is no tool.
    if (not isinstance(call, dict) or not isinstance(call.get("name"), str)
        or not isinstance(call.get("parameters"), dict)):
      raise ToolCallParseError(f"line {i} of the <tool_call> block: expected an object with a string 'name' and an "
                               f"object 'parameters', got {line[:80]!r}")
    calls.append(call)
  return calls


# The correctness cases a ToolRL reward counts (rewards.outcomes) on rows that expect tool calls.
OUTCOME_CASES = {
    "no_tool_call": "gold calls expected, but no <tool_call> ... </tool_call> block",
    "unparsable_tool_call": "a <tool_call> block whose lines are not calls (R_correct at its minimum)",
}


def parsed_calls(completion: str) -> tuple[str, list[dict[str, Any]] | None]:
  """(case, calls): what `parse_tool_calls` makes of a completion, parsed once for both the reward and its outcome
  count. case is "parsed" (calls: the list), "no_tool_call" or "unparsable_tool_call" (calls: None)."""
  text = completion.strip()
  try:
    return "parsed", parse_tool_calls(text)
  except ToolCallParseError:
    return ("no_tool_call" if TOOL_CALL[0] not in text or TOOL_CALL[1] not in text else "unparsable_tool_call"), None


def format_reward(completion: str, tool_calls: bool, response: bool) -> float:
  """R_format: 1.0 when `completion` (stripped) has exactly the fields <think>, then <tool_call> (if `tool_calls`),
  then <response> (if `response`), each needed tag once (module docstring); else 0.0."""
  text = completion.strip()
  if _FORMATS[(tool_calls, response)].search(text) is None:
    return 0.0
  needed = (TOOL_CALL if tool_calls else ()) + (RESPONSE if response else ())
  return float(all(text.count(tag) == 1 for tag in needed))


def match_score(gold: Sequence[Any], predicted: Sequence[Any]) -> float:
  """Multiset Jaccard |A ∩ B| / |A ∪ B| of two lists (rlla.py match_score): 1 when equal (both empty too), 0 when
  exactly one is empty."""
  if list(gold) == list(predicted):
    return 1.0
  if not gold or not predicted:
    return 0.0
  a, b = collections.Counter(gold), collections.Counter(predicted)
  both = sum(min(a[k], b[k]) for k in a.keys() & b.keys())
  return both / (len(gold) + len(predicted) - both)


def pair_score(gold: Call, predicted: Call, granularity: str = "fine") -> float:
  """r_param + r_value of a gold and a predicted call ("intermediate": 1 if identical, else 0); 0 for different
  names."""
  if predicted["name"] != gold["name"]:
    return 0.0
  if granularity == "intermediate":
    return float(dict(predicted) == dict(gold))
  g, p = gold["parameters"], predicted["parameters"]
  return match_score(list(g), list(p)) + sum(1.0 for k, v in g.items() if k in p and p[k] == v)


def match_total(gold: Sequence[Call], predicted: Sequence[Call], granularity: str = "fine") -> tuple[float, float]:
  """(R_max, S_max) of the module docstring: r_name plus the best one-to-one matching's pair scores, and the most
  it can be."""
  r_name = match_score([c["name"] for c in gold], [c["name"] for c in predicted])
  s_max = 1.0 + sum(1.0 if granularity == "intermediate" else 1.0 + len(c["parameters"]) for c in gold)
  if not gold or not predicted:
    return r_name, s_max
  scores_GxP = np.array([[pair_score(g, p, granularity) for p in predicted] for g in gold], np.float64)
  import scipy.optimize  # pylint: disable=g-import-not-at-top  (here: scipy costs every CLI start ~0.4 s)
  rows, cols = scipy.optimize.linear_sum_assignment(scores_GxP, maximize=True)
  return r_name + float(scores_GxP[rows, cols].sum()), s_max


def correctness_reward(completion: str, gold: Sequence[Call], granularity: str = "fine", lo: float = -3.0,
                       hi: float = 3.0) -> float:
  """R_correct in [lo, hi] of `completion` against the gold calls (module docstring): 0 without gold calls, lo when
  the completion's calls cannot be parsed, hi for the gold list itself, else (hi - lo) * R_max / S_max + lo."""
  if granularity not in GRANULARITIES:
    raise ValueError(f"granularity: expected one of {GRANULARITIES}, got {granularity!r}")
  if not gold:
    return 0.0
  return calls_correctness(parsed_calls(completion)[1], gold, granularity, lo, hi)


def calls_correctness(predicted: Sequence[Call] | None, gold: Sequence[Call], granularity: str = "fine",
                      lo: float = -3.0, hi: float = 3.0) -> float:
  """R_correct of already parsed calls (`predicted` None: unparsable, scores lo) against non-empty `gold`; what
  `correctness_reward` computes after parsing."""
  if predicted is None:
    return lo
  if list(predicted) == [dict(c) for c in gold]:
    return hi
  if granularity == "coarse":
    return lo
  r_max, s_max = match_total(gold, predicted, granularity)
  return (hi - lo) * r_max / s_max + lo


def gold_calls(value: Any, column: str, row: int) -> list[dict[str, Any]]:
  """The gold calls of a column value: a JSON string or a list of {"name": str, "parameters": object} (an empty
  list: no call expected). ValueError naming `column` and `row` otherwise."""
  where = f"toolrl: column {column!r} row {row}"
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where}: not valid JSON ({e}): {value[:80]!r}") from e
    except RecursionError as e:
      raise ValueError(f"{where}: JSON nested too deeply to parse: {value[:80]!r}") from e
  if not isinstance(value, (list, tuple)):
    raise ValueError(f"{where}: expected a list of calls {{'name', 'parameters'}}, got {type(value).__name__}")
  for i, call in enumerate(value):
    if (not isinstance(call, Mapping) or not isinstance(call.get("name"), str)
        or not isinstance(call.get("parameters"), Mapping)):
      raise ValueError(f"{where}: call {i} must be an object with a string 'name' and an object 'parameters', "
                       f"got {call!r}")
  return [{"name": c["name"], "parameters": dict(c["parameters"])} for c in value]


def toolrl_reward(column: str = "tool_calls", response_column: str | None = None,
                  terms: Sequence[str] = TERMS, granularity: str = "fine", max_correct: float = 3.0):
  """Reward function: R_format + R_correct of ToolRL (module docstring) against the gold calls in `column`.

  Args:
    column: the gold calls, per row a JSON string (or list) of {"name", "parameters"} objects; [] = no call expected;
      None = no gold, the row is not scorable (None).
    response_column: a column of booleans, whether a <response> is expected too; None: a response is expected
      exactly when no call is (the format's kind follows the gold calls).
    terms: which of "format" (R_format) and "correctness" (R_correct) to sum; the paper's reward has both.
    granularity: "fine" (the paper's reward) | "intermediate" | "coarse" (its Sec. 5 granularity ablation).
    max_correct: R_correct's range is [-max_correct, max_correct]; 3 in the paper (its scale ablation uses 1).
  """
  if granularity not in GRANULARITIES:
    raise ValueError(f"toolrl.granularity: expected one of {GRANULARITIES}, got {granularity!r}")
  if not max_correct > 0:
    raise ValueError(f"toolrl.max_correct: expected a number > 0, got {max_correct!r}")
  terms = (terms,) if isinstance(terms, str) else tuple(terms)
  if not terms or not set(terms) <= set(TERMS):
    raise ValueError(f"toolrl.terms: expected a non-empty subset of {TERMS}, got {terms!r}")

  cases = {"bad_format": "R_format 0: the completion's fields are not the expected ones"} if "format" in terms else {}
  if "correctness" in terms:
    cases.update(OUTCOME_CASES)
  outcomes = Outcomes(cases)

  def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns) -> list[float | None]:
    del prompts
    for name in (column, response_column):
      if name is not None and name not in columns:
        raise ValueError(f"toolrl: column {name!r} not among the columns {sorted(columns)}")
    responses = columns[response_column] if response_column else [None] * len(completions)
    out, counts = [], collections.Counter()
    for row, (completion, value, wants_response) in enumerate(zip(completions, columns[column], responses)):
      if value is None:  # No gold for this row: not scorable.
        out.append(None)
        continue
      gold = gold_calls(value, column, row)
      text = completion_text(completion)
      total = 0.0
      if "format" in terms:
        fmt = format_reward(text, bool(gold), (not gold) if wants_response is None else bool(wants_response))
        counts["bad_format"] += fmt == 0.0
        total += fmt
      if "correctness" in terms and gold:  # Without gold calls R_correct is 0 (correctness_reward).
        case, predicted = parsed_calls(text)
        counts[case] += 1
        total += calls_correctness(predicted, gold, granularity, -max_correct, max_correct)
      out.append(total)
    outcomes.add(len(out) - out.count(None), {k: n for k, n in counts.items() if k != "parsed"})
    return out

  reward.__name__ = reward.__qualname__ = "toolrl"
  reward.outcomes = outcomes
  return reward
