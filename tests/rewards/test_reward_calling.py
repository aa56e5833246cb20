"""jaxrlhf.rewards.calling: TRL's reward_funcs convention and the positional one, output checks, and errors that name
the function and the row; TRL's own reward functions run through the layer; load_function's errors."""

import asyncio
import math

import numpy as np
import pytest
from trl.rewards import get_soft_overlong_punishment, think_format_reward

from jaxrlhf.config import ConfigError
from jaxrlhf.rewards import calling
from jaxrlhf.rewards.calling import RewardFunctionError, call_reward_function, call_style, load_function

PROMPTS = ["What is 2 + 2?", "Name a colour.", "What is the capital of France? Answer in one word please."]
COMPLETIONS = ["4", "blue", "Paris"]
COLUMNS = {"answer": ["4", "red", "Paris"], "level": [1, 2, 3]}


def positional_words(prompts, completions):
  """The repo's original style (reward_sources' "python" kind): fn(prompts, completions)."""
  return [float(len(c.split())) for c in completions]


def trl_match(completions, answer, **kwargs):
  """TRL style: keyword arguments, a dataset column by name, **kwargs for the rest."""
  return [float(c == a) for c, a in zip(completions, answer)]


def named_only(completions, level):
  return [float(x) for x in level]


def short_names(p, c):
  return [1.0] * len(c)


def test_call_style_detection():
  assert call_style(positional_words) == ("keyword", {"prompts", "completions"})
  assert call_style(trl_match) == ("keyword", None)
  assert call_style(named_only) == ("keyword", {"completions", "level"})
  assert call_style(short_names) == ("positional", set())
  assert call_style(lambda p, c, level: level) == ("positional", {"level"})
  assert call_style(lambda *args: args[1]) == ("positional", set())
  assert call_style(lambda **kw: kw["completions"]) == ("keyword", None)
  assert call_style(max) == ("positional", set())  # A builtin without an inspectable signature.


def test_both_styles_and_columns_reach_the_function():
  np.testing.assert_array_equal(call_reward_function(positional_words, PROMPTS, COMPLETIONS, COLUMNS), [1, 1, 1])
  np.testing.assert_array_equal(call_reward_function(trl_match, PROMPTS, COMPLETIONS, COLUMNS), [1, 0, 1])
  # Only the columns a function names are passed when it has no **kwargs.
  np.testing.assert_array_equal(call_reward_function(named_only, PROMPTS, COMPLETIONS, COLUMNS), [1, 2, 3])
  np.testing.assert_array_equal(call_reward_function(short_names, PROMPTS, COMPLETIONS, COLUMNS), [1, 1, 1])
  seen = {}

  def spy(**kwargs):
    seen.update(kwargs)
    return [0.0] * 3

  call_reward_function(spy, PROMPTS, COMPLETIONS, COLUMNS)
  assert seen == {"prompts": PROMPTS, "completions": COMPLETIONS, **COLUMNS}


def test_none_and_nan_are_not_scorable_and_values_are_float32():
  out = call_reward_function(lambda prompts, completions: [None, float("nan"), 2], PROMPTS, COMPLETIONS)
  assert out.dtype == np.float32 and out.shape == (3,)
  assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == 2.0
  # numpy arrays, numpy scalars, bools and 0-d arrays are numbers.
  out = call_reward_function(lambda prompts, completions: [np.float64(0.5), True, np.array(3)], PROMPTS, COMPLETIONS)
  np.testing.assert_array_equal(out, [0.5, 1.0, 3.0])
  out = call_reward_function(lambda prompts, completions: np.array([1, 2, 3]), PROMPTS, COMPLETIONS)
  np.testing.assert_array_equal(out, [1, 2, 3])


def test_async_function():
  async def fn(completions, **kwargs):
    await asyncio.sleep(0)
    return [len(c) for c in completions]

  np.testing.assert_array_equal(call_reward_function(fn, PROMPTS, COMPLETIONS), [1, 4, 5])


@pytest.mark.parametrize("output, expected", [
    (["1.0", 2.0, 3.0], r"reward function 'mod:fn' row 0 \(prompt 'What is 2 \+ 2\?'\): returned '1.0' \(str\), "
                        r"expected a number or None"),
    ([1.0, [2.0], 3.0], r"row 1 \(prompt 'Name a colour.'\): returned \[2.0\] \(list\)"),
    ([1.0, 2.0, "abc"], r"row 2 \(prompt 'What is the capital of France\? Answer in\.\.\.'\): returned 'abc'"),
    ([1.0, math.inf, 0.0], r"row 1 .*returned inf, expected a finite number"),
    ([1.0, 2.0, 1e39], r"row 2 .*expected a finite number \(float32\)"),
    ([1.0, 2.0], r"'mod:fn': returned 2 rewards for 3 completions"),
    (0.5, r"'mod:fn': returned float 0.5, expected a list of 3 rewards"),
    ("1 2 3", r"'mod:fn': returned str '1 2 3', expected a list of 3 rewards"),
    ({"a": 1}, r"returned dict"),
    (None, r"returned NoneType"),
])
def test_bad_outputs_name_the_function_and_row(output, expected):
  with pytest.raises(RewardFunctionError, match=expected):
    call_reward_function(lambda prompts, completions: output, PROMPTS, COMPLETIONS, name="mod:fn")


def fails_on_colour(prompts, completions, **kwargs):
  return [1.0 / (0 if c == "blue" else 1) for c in completions]


def test_an_exception_names_the_function_and_the_failing_row():
  with pytest.raises(RewardFunctionError) as info:
    call_reward_function(fails_on_colour, PROMPTS, COMPLETIONS, COLUMNS)
  message = str(info.value)
  assert message.startswith(f"reward function '{__name__}:fails_on_colour' row 1 (prompt 'Name a colour.'): "
                            "raised ZeroDivisionError: float division by zero"), message
  assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_an_exception_on_every_row_or_only_on_the_batch():
  def always(prompts, completions):
    raise KeyError("solution")

  with pytest.raises(RewardFunctionError, match=r"'f' raised KeyError: 'solution' \(on every row\)"):
    call_reward_function(always, PROMPTS, COMPLETIONS, name="f")

  def batch_only(prompts, completions):
    if len(completions) > 1:
      raise RuntimeError("batch too big")
    return [0.0]

  with pytest.raises(RewardFunctionError, match=r"raised RuntimeError: batch too big \(on the batch of 3; no single "):
    call_reward_function(batch_only, PROMPTS, COMPLETIONS, name="f")

  def two_rows(prompts, completions):
    return [float(c) for c in completions]  # "blue" and "Paris" are not numbers.

  with pytest.raises(RewardFunctionError, match=r"row 1 \(prompt 'Name a colour.'\): raised ValueError: could not "
                                                r"convert string to float: 'blue'; 1 more rows fail: \[2\]"):
    call_reward_function(two_rows, PROMPTS, COMPLETIONS, name="f")


def test_required_argument_that_is_not_a_column():
  with pytest.raises(RewardFunctionError, match=r"needs argument\(s\) \['solution'\] that are not columns "
                                                r"\(columns: \['answer', 'level'\]\)"):
    call_reward_function(lambda completions, solution, **kw: [0.0] * 3, PROMPTS, COMPLETIONS, COLUMNS, name="f")


def test_input_lengths_and_reserved_column_names():
  with pytest.raises(ValueError, match="3 prompts but 2 completions"):
    call_reward_function(positional_words, PROMPTS, COMPLETIONS[:2])
  with pytest.raises(ValueError, match="column 'answer' has 2 values for 3 completions"):
    call_reward_function(positional_words, PROMPTS, COMPLETIONS, {"answer": ["a", "b"]})
  with pytest.raises(ValueError, match="column 'completions' clashes"):
    call_reward_function(positional_words, PROMPTS, COMPLETIONS, {"completions": COMPLETIONS})


def test_trl_reward_functions_run_through_the_layer():
  # TRL's own reward functions, called as TRL's GRPOTrainer would: conversational completions, completion_ids.
  conversational = [[{"role": "assistant", "content": "<think>\nreason\n</think>\nanswer"}],
                    [{"role": "assistant", "content": "no think"}]]
  expected = think_format_reward(completions=conversational)
  out = call_reward_function(think_format_reward, ["p", "q"], conversational)
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(out, [1.0, 0.0])
  overlong = get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)
  ids = [[1] * 5, [1] * 8, [1] * 12]
  out = call_reward_function(overlong, PROMPTS, COMPLETIONS, {"completion_ids": ids})
  np.testing.assert_allclose(out, [0.0, (10 - 4 - 8) / 4, -1.0])


def test_completion_text():
  assert calling.completion_text("abc") == "abc"
  assert calling.completion_text([{"role": "assistant", "content": "x"}]) == "x"
  with pytest.raises(TypeError, match="expected a string or a list of chat messages"):
    calling.completion_text(3)


def test_load_function(tmp_path, monkeypatch):
  assert load_function("math:sqrt") is math.sqrt
  assert load_function(f"{__name__}:positional_words") is positional_words
  assert load_function("jaxrlhf.rewards.calling:RewardFunctionError.__init__")
  with pytest.raises(ConfigError, match=r"rewards\[0\].function: expected 'package.module:function', got 'math.sqrt'"):
    load_function("math.sqrt", "rewards[0].function")
  with pytest.raises(ConfigError, match=r"function: cannot import module 'no_such_module_xyz' of "
                                       r"'no_such_module_xyz:f': ModuleNotFoundError"):
    load_function("no_such_module_xyz:f")
  with pytest.raises(ConfigError, match=r"'math:sqrtt': 'math' has no attribute 'sqrtt' \(did you mean 'sqrt'"):
    load_function("math:sqrtt")
  with pytest.raises(ConfigError, match=r"'math:pi' is a float, not a callable"):
    load_function("math:pi")
  (tmp_path / "user_rewards_mod.py").write_text("def broken(:\n  pass\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(ConfigError, match="cannot import module 'user_rewards_mod' of 'user_rewards_mod:broken': "
                                       "SyntaxError"):
    load_function("user_rewards_mod:broken")
