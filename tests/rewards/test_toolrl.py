"""jaxrlhf.rewards.toolrl against hand-computed values of ToolRL's reward (Qian et al. 2025, Sec. 3.3; the official
rlla.py for the details): R_format in {0, 1} plus R_correct = 6 R_max / S_max - 3."""

import json

import numpy as np
import pytest

from jaxrlhf.config import ConfigError
from jaxrlhf.rewards import kinds, toolrl
from jaxrlhf.rewards.calling import RewardFunctionError, call_reward_function

WEATHER = {"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}
CONVERT = {"name": "convert_units", "parameters": {"value": 5, "from_unit": "km", "to_unit": "mi"}}


def answer(*calls, think="I should call the tool.", response=None):
  text = f"<think>{think}</think>\n<tool_call>\n" + "\n".join(json.dumps(c) for c in calls) + "\n</tool_call>"
  return text + (f"\n<response>{response}</response>" if response is not None else "")


def score(completions, gold, **options):
  fn = toolrl.toolrl_reward(**options)
  return fn(prompts=["p"] * len(completions), completions=completions, tool_calls=[json.dumps(gold)] * len(completions))


def test_single_call_hand_computed():
  # S_max = 1 + |G| + |keys| = 1 + 1 + 2 = 4; R_correct = 6 R_max / 4 - 3; every completion has the right format.
  completions = [
      answer(WEATHER),                                                            # R_max 4: 3
      answer({"name": "get_time", "parameters": WEATHER["parameters"]}),          # wrong name, R_max 0: -3
      answer({"name": "get_weather", "parameters": {"city": "Paris"}}),           # 1 + 1/2 + 1 = 2.5: 0.75
      answer({"name": "get_weather", "parameters": {"city": "Rome", "unit": "celsius"}}),  # 1 + 1 + 1 = 3: 1.5
      answer({"name": "get_weather", "parameters": {**WEATHER["parameters"], "days": 3}}),  # 1 + 2/3 + 2: 2.5
      answer(WEATHER, {"name": "get_time", "parameters": {"timezone": "UTC"}}),  # extra call, r_name 1/2: 2.25
      answer(WEATHER, WEATHER),                 # a duplicate: r_name = 1/2 over multisets (rlla.py match_score): 2.25
      answer({"name": "get_weather", "parameters": {}}),                          # 1 + 0 + 0 = 1: -1.5
  ]
  expected = np.array([3.0, -3.0, 0.75, 1.5, 2.5, 2.25, 2.25, -1.5]) + 1.0
  np.testing.assert_allclose(score(completions, [WEATHER]), expected, rtol=0, atol=1e-12)
  assert score([answer(WEATHER)], [WEATHER]) == [4.0]  # The paper's maximum: 1 + 3.


def test_two_gold_calls_missing_swapped_and_wrong_values():
  # S_max = 1 + 2 + (2 + 3) = 8.
  completions = [
      answer(CONVERT, WEATHER),                          # order does not matter: 8: 3
      answer(WEATHER),                                   # missing call: 1/2 + 3 = 3.5: 6 * 3.5 / 8 - 3 = -0.375
      answer(WEATHER, {"name": "convert_units", "parameters": {"value": 5.0, "from_unit": "mi", "to_unit": "km"}}),
      # ^ 1 + 3 + (1 + 1): 6 * 6 / 8 - 3 = 1.5 (5.0 == 5 as parsed JSON values)
      answer(WEATHER, {"name": "convert_units", "parameters": {"value": "5", "from_unit": "km", "to_unit": "mi"}}),
      # ^ "5" != 5: 1 + 3 + (1 + 2) = 7: 2.25
  ]
  np.testing.assert_allclose(score(completions, [WEATHER, CONVERT], terms=("correctness",)),
                             [3.0, -0.375, 1.5, 2.25], rtol=0, atol=1e-12)


def test_matching_is_optimal_not_greedy():
  # Gold [A(x=1, y=1), A(x=1)], predicted [A(x=1), A(y=1)]. S_max = 1 + 2 + 3 = 6, r_name = 1.
  # Optimal: (G0, P1) = 1/2 + 1 and (G1, P0) = 1 + 1, R_max = 4.5 -> 1.5. The official code's greedy matching takes
  # (G0, P0) = 1/2 + 1 first (a tie, the first wins), leaving (G1, P1) = 0: R_max 2.5 -> -0.5.
  gold = [{"name": "A", "parameters": {"x": 1, "y": 1}}, {"name": "A", "parameters": {"x": 1}}]
  predicted = [{"name": "A", "parameters": {"x": 1}}, {"name": "A", "parameters": {"y": 1}}]
  assert toolrl.match_total(gold, predicted) == (4.5, 6.0)
  assert toolrl.correctness_reward(answer(*predicted), gold) == pytest.approx(1.5, abs=1e-12)


def test_unparsable_calls_score_the_minimum():
  good_format_bad_json = "<think>t</think>\n<tool_call>\n{\"name\": \"get_weather\", \"parameters\": {}\n</tool_call>"
  completions = [
      good_format_bad_json,                                                         # format 1, correct -3
      "<think>t</think>\n<response>It is sunny.</response>",                        # no call: format 0, -3
      answer({"name": "get_weather", "arguments": {"city": "Paris"}}),              # no "parameters": format 1, -3
      answer({"name": "get_weather", "parameters": ["Paris"]}),                     # parameters not an object
      "<think>t</think>\n<tool_call>\n" + json.dumps(WEATHER) + "\n\n" + json.dumps(WEATHER) + "\n</tool_call>",
      # ^ a blank line between calls is not JSON (the block is split on "\n"): format 1, -3
      "<think>t</think>\n<tool_call>\n" + json.dumps(WEATHER),                      # unclosed: format 0, -3
  ]
  assert score(completions, [WEATHER]) == [-2.0, -3.0, -2.0, -2.0, -2.0, -3.0]
  with pytest.raises(toolrl.ToolCallParseError, match="line 0 of the <tool_call> block is not JSON"):
    toolrl.parse_tool_calls(good_format_bad_json)



def test_non_string_names_and_deeply_nested_json_score_the_minimum_without_raising():
  # Before: a list / object name raised TypeError in collections.Counter and deep nesting raised RecursionError,
  # both ending training through RewardFunctionError. The official code scores such completions the minimum.
  deep = "[" * 100_000 + "]" * 100_000
  completions = [answer({"name": ["get_weather"], "parameters": WEATHER["parameters"]}),  # format 1, -3
                 answer({"name": {"tool": "get_weather"}, "parameters": {}}),
                 answer({"name": 7, "parameters": {}}),
                 "<think>t</think>\n<tool_call>\n" + deep + "\n</tool_call>",
                 '<think>t</think>\n<tool_call>\n{"name": "get_weather", "parameters": {"city": ' + deep + "}}"
                 "\n</tool_call>"]
  fn = toolrl.toolrl_reward()
  values = call_reward_function(fn, ["p"] * 5, completions, {"tool_calls": [json.dumps([WEATHER])] * 5})
  np.testing.assert_array_equal(values, [-2.0] * 5)
  with pytest.raises(toolrl.ToolCallParseError, match="line 0 of the <tool_call> block: expected an object with a "
                                                      "string 'name'"):
    toolrl.parse_tool_calls(completions[0])
  with pytest.raises(toolrl.ToolCallParseError, match="line 0 of the <tool_call> block is JSON nested too deeply"):
    toolrl.parse_tool_calls(completions[3])
  # Deeply nested GOLD JSON is a data error: a ValueError naming the column and row, not a RecursionError.
  with pytest.raises(ValueError, match=r"column 'tool_calls' row 0: JSON nested too deeply to parse"):
    fn(prompts=["p"], completions=[answer(WEATHER)], tool_calls=[deep])

def test_format_reward_by_ground_truth_kind():
  call = "\n" + json.dumps(WEATHER) + "\n"
  fmt = toolrl.format_reward
  assert fmt(f"<think>t</think>\n<tool_call>{call}</tool_call>", True, False) == 1.0
  assert fmt(f"  <think>t</think>\n<tool_call>{call}</tool_call>\n", True, False) == 1.0  # stripped first
  assert fmt(f"<tool_call>{call}</tool_call>", True, False) == 0.0  # no think
  assert fmt(f"<think>t</think><tool_call>{call}</tool_call>", True, False) == 0.0  # no newline between fields
  assert fmt(f"<think>t</think>\n<tool_call>{json.dumps(WEATHER)}</tool_call>", True, False) == 0.0  # no inner \n
  assert fmt(f"<think>t</think>\n<tool_call>{call}</tool_call>\n<response>r</response>", True, False) == 0.0
  assert fmt(f"<think>t</think>\n<tool_call>{call}</tool_call>\n<tool_call>{call}</tool_call>", True, False) == 0.0
  assert fmt(f"<think>t</think>\n<tool_call>{call}</tool_call> trailing", True, False) == 0.0
  assert fmt(f"<think>t</think>\n<tool_call>{call}</tool_call>\n<response>r</response>", True, True) == 1.0
  assert fmt(f"<think>t</think>\n<tool_call>{call}</tool_call>", True, True) == 0.0
  assert fmt("<think>t</think>\n<response>Hello!</response>", False, True) == 1.0
  assert fmt("<think>t</think>\n<response>a</response><response>b</response>", False, True) == 0.0
  assert fmt("<think>t</think>", False, False) == 1.0
  assert fmt("<think>t</think>\n<response>r</response>", False, False) == 0.0
  assert fmt("<think>multi\nline</think>\n<response>r</response>", False, True) == 1.0  # DOTALL


def test_no_gold_call_expects_a_response_and_correctness_is_zero():
  hello = "<think>A greeting; no tool is needed.</think>\n<response>Hello!</response>"
  assert score([hello, answer(WEATHER), "Hello!"], []) == [1.0, 0.0, 0.0]
  # A gold response on top of the call (response_column): the format needs both fields.
  fn = toolrl.toolrl_reward(response_column="respond")
  both = answer(WEATHER, response="Checking.")
  out = fn(prompts=["p"] * 2, completions=[both, answer(WEATHER)], tool_calls=[[WEATHER]] * 2, respond=[True, True])
  assert out == [4.0, 3.0]


def test_granularity_and_scale_ablations():
  completions = [answer(WEATHER), answer({"name": "get_weather", "parameters": {"city": "Paris"}}), answer(CONVERT)]
  correct = dict(terms="correctness")
  # intermediate: S_max = 1 + |G| = 2; partial: r_name 1 + 0 = 1 -> 0; wrong tool: 0 -> -3.
  assert score(completions, [WEATHER], granularity="intermediate", **correct) == [3.0, 0.0, -3.0]
  assert score(completions, [WEATHER], granularity="coarse", **correct) == [3.0, -3.0, -3.0]
  np.testing.assert_allclose(score(completions, [WEATHER], max_correct=1.0), [2.0, 1.25, 0.0])
  assert score(completions, [WEATHER], terms=("format",)) == [1.0, 1.0, 1.0]
  # The code's exact-match shortcut: order matters for coarse, not for fine.
  swapped = [answer(CONVERT, WEATHER)]
  assert score(swapped, [WEATHER, CONVERT], granularity="coarse", **correct) == [-3.0]
  assert score(swapped, [WEATHER, CONVERT], **correct) == [3.0]


def test_gold_column_errors_name_the_column_and_row():
  fn = toolrl.toolrl_reward(column="gold")
  good = json.dumps([WEATHER])
  cases = [("not json", r"column 'gold' row 1: not valid JSON"),
           (json.dumps({"name": "x"}), r"column 'gold' row 1: expected a list of calls"),
           (json.dumps([{"name": "x"}]), r"column 'gold' row 1: call 0 must be an object with a string 'name'")]
  for bad, message in cases:
    with pytest.raises(ValueError, match=message):
      fn(prompts=["p", "q"], completions=["a", "b"], gold=[good, bad])
  with pytest.raises(ValueError, match=r"toolrl: column 'gold' not among the columns \['tool_calls'\]"):
    fn(prompts=["p"], completions=["a"], tool_calls=[good])
  assert fn(prompts=["p", "q"], completions=[answer(WEATHER)] * 2, gold=[None, good]) == [None, 4.0]
  # Through the calling layer the row and its prompt are named too.
  with pytest.raises(RewardFunctionError, match=r"row 1 \(prompt 'q'\).*column 'gold' row 0: not valid JSON"):
    call_reward_function(fn, ["p", "q"], ["a", "b"], {"gold": [good, "{"]})


def test_by_name_through_kinds():
  fn = kinds.make_reward("toolrl", {"column": "tool_calls"})
  values = call_reward_function(fn, ["p", "q"], [answer(WEATHER), "no"], {"tool_calls": [json.dumps([WEATHER])] * 2})
  np.testing.assert_array_equal(values, [4.0, -3.0])
  assert kinds.make_reward("toolrl").__name__ == "toolrl"
  with pytest.raises(ConfigError, match=r"reward.options: toolrl.granularity: expected one of"):
    kinds.make_reward("toolrl", {"granularity": "medium"})
  with pytest.raises(ConfigError, match=r"toolrl.terms: expected a non-empty subset"):
    kinds.make_reward("toolrl", {"terms": ("format", "length")})
  with pytest.raises(ConfigError, match="toolrl.max_correct"):
    kinds.make_reward("toolrl", {"max_correct": 0})
