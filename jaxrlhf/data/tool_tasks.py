"""A generated tool-calling prompt file for ToolRL's reward (`jaxrlhf.rewards.toolrl`): user requests with their
gold JSON tool calls.

Four tools (TOOLS, JSON-schema-like signatures): get_weather(city, unit), convert_units(value, from_unit, to_unit),
calculate(a, b, operation) and create_event(title, date, time). A request comes from templates and needs one call
(about 75% of rows), two calls (15%: two cities' weather, or the weather and a conversion) or no call at all (10%:
small talk, answered in <response>, where the reward checks that the model does NOT call a tool). A row is

    {"prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": <request>}],
     "tool_calls": "[{\\"name\\": \\"get_weather\\", \\"parameters\\": {\\"city\\": \\"Paris\\", \\"unit\\": \\"celsius\\"}}]",
     "id": "train-0"}

`tool_calls` is the gold calls as a JSON string ("[]" for small talk); every value the calls need is stated in the
request (numbers as JSON numbers, dates as YYYY-MM-DD, times as HH:MM). The system prompt lists the tools and the
output format of ToolRL (<think>...</think>, then <tool_call> with one JSON object per line, or <response>).

Everything is a pure function of (seed, split, row index) through SHA-256, as in `jaxrlhf.data.tasks`: row i is the
same whatever n is, and the "train" and "eval" splits never share a request's gold calls (a candidate row whose calls
hash into the other split is redrawn), so held-out reward does not measure memorization of a training call.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jaxrlhf.data import generated
from jaxrlhf.data.generated import stable_hash

SPLITS = ("train", "eval")
EVAL_SHARE = 0.2

TOOLS = (
    {"name": "get_weather", "description": "Current weather in a city.",
     "parameters": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}},
    {"name": "convert_units", "description": "Convert a quantity between units.",
     "parameters": {"value": {"type": "number"}, "from_unit": {"type": "string", "enum": ["km", "mi", "kg", "lb"]},
                    "to_unit": {"type": "string", "enum": ["km", "mi", "kg", "lb"]}}},
    {"name": "calculate", "description": "Arithmetic on two numbers.",
     "parameters": {"a": {"type": "number"}, "b": {"type": "number"},
                    "operation": {"type": "string", "enum": ["add", "subtract", "multiply", "divide"]}}},
    {"name": "create_event", "description": "Add an event to the calendar.",
     "parameters": {"title": {"type": "string"}, "date": {"type": "string", "format": "YYYY-MM-DD"},
                    "time": {"type": "string", "format": "HH:MM"}}},
)
SYSTEM_PROMPT = (
    "You can call these tools:\n" + "\n".join(json.dumps(t) for t in TOOLS) + "\n"
    "Answer in this format. First think: <think> your reasoning </think>\n"
    "Then, to call tools, write one JSON object per line:\n"
    "<tool_call>\n{\"name\": \"tool name\", \"parameters\": {\"parameter\": \"value\"}}\n</tool_call>\n"
    "If no tool is needed, reply instead: <response> your reply </response>")

_CITIES = ("Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Toronto", "Sydney", "Mumbai", "Berlin", "Nairobi", "Seoul",
           "Madrid")
_UNIT_WORDS = {"celsius": "Celsius", "fahrenheit": "Fahrenheit"}
_WEATHER = ("What is the weather in {city} in {unit}?", "How warm is it in {city} right now? Use {unit}.",
            "Tell me the current weather for {city}, in degrees {unit}.")
_WEATHER_TWO = ("Compare the weather in {city} and {city2}, both in {unit}.",
                "What is the weather in {city} and in {city2}? Give {unit}.")
_LENGTH_WORDS = {"km": ("kilometer", "kilometers"), "mi": ("mile", "miles"), "kg": ("kilogram", "kilograms"),
                 "lb": ("pound", "pounds")}
_CONVERSIONS = (("km", "mi"), ("mi", "km"), ("kg", "lb"), ("lb", "kg"))
_CONVERT = ("Convert {value} {from_words} to {to_words}.", "How many {to_words} is {value} {from_words}?",
            "I have {value} {from_words}. What is that in {to_words}?")
_OPERATIONS = {"add": ("What is {a} plus {b}?", "Add {a} and {b}."),
               "subtract": ("What is {a} minus {b}?", "Subtract {b} from {a}."),
               "multiply": ("What is {a} times {b}?", "Multiply {a} by {b}."),
               "divide": ("What is {a} divided by {b}?", "Divide {a} by {b}.")}
_EVENTS = ("Dentist appointment", "Team meeting", "Lunch with Sam", "Yoga class", "Project review", "Birthday party")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_EVENT = ("Schedule \"{title}\" on {month} {day}, 2025 at {time}.", "Add {title} to my calendar for {month} {day}, "
          "2025 at {time}.", "Put \"{title}\" in my calendar: {month} {day}, 2025, {time}.")
_SMALL_TALK = ("Hello! How are you today?", "Thanks, that was helpful.", "Tell me a fun fact about octopuses.",
               "What is your name?", "Good morning!", "Can you recommend a good book?", "Who wrote Hamlet?",
               "Say something nice.")


def _pick(options, *parts):
  return options[stable_hash(*parts) % len(options)]


def _weather(key) -> tuple[str, list[dict[str, Any]]]:
  city, unit = _pick(_CITIES, "city", *key), _pick(tuple(_UNIT_WORDS), "unit", *key)
  text = _pick(_WEATHER, "template", *key).format(city=city, unit=_UNIT_WORDS[unit])
  return text, [{"name": "get_weather", "parameters": {"city": city, "unit": unit}}]


def _convert(key) -> tuple[str, list[dict[str, Any]]]:
  (src, dst), value = _pick(_CONVERSIONS, "pair", *key), 1 + stable_hash("value", *key) % 100
  text = _pick(_CONVERT, "template", *key).format(value=value, from_words=_LENGTH_WORDS[src][value != 1],
                                                  to_words=_LENGTH_WORDS[dst][1])
  return text, [{"name": "convert_units", "parameters": {"value": value, "from_unit": src, "to_unit": dst}}]


def _calculate(key) -> tuple[str, list[dict[str, Any]]]:
  operation = _pick(tuple(_OPERATIONS), "operation", *key)
  a, b = 2 + stable_hash("a", *key) % 98, 2 + stable_hash("b", *key) % 98
  text = _pick(_OPERATIONS[operation], "template", *key).format(a=a, b=b)
  return text, [{"name": "calculate", "parameters": {"a": a, "b": b, "operation": operation}}]


def _event(key) -> tuple[str, list[dict[str, Any]]]:
  title, month, day = (_pick(_EVENTS, "title", *key), 1 + stable_hash("month", *key) % 12,
                       1 + stable_hash("day", *key) % 28)
  time = f"{8 + stable_hash('hour', *key) % 11:02d}:{_pick((0, 15, 30, 45), 'minute', *key):02d}"
  text = _pick(_EVENT, "template", *key).format(title=title, month=_MONTHS[month - 1], day=day, time=time)
  return text, [{"name": "create_event", "parameters": {"title": title, "date": f"2025-{month:02d}-{day:02d}",
                                                        "time": time}}]


def _two_calls(key) -> tuple[str, list[dict[str, Any]]]:
  if stable_hash("two", *key) % 2:
    city, unit = _pick(_CITIES, "city", *key), _pick(tuple(_UNIT_WORDS), "unit", *key)
    city2 = _CITIES[(_CITIES.index(city) + 1 + stable_hash("city2", *key) % (len(_CITIES) - 1)) % len(_CITIES)]
    text = _pick(_WEATHER_TWO, "template", *key).format(city=city, city2=city2, unit=_UNIT_WORDS[unit])
    return text, [{"name": "get_weather", "parameters": {"city": c, "unit": unit}} for c in (city, city2)]
  (text1, calls1), (text2, calls2) = _weather(key), _convert(key)
  return f"{text1} Also: {text2[0].lower()}{text2[1:]}", calls1 + calls2


def _small_talk(key) -> tuple[str, list[dict[str, Any]]]:
  return _pick(_SMALL_TALK, "talk", *key), []


# (share out of 20, generator): 15 single calls, 3 two-call requests, 2 small talk.
_KINDS = ((4, _weather), (4, _convert), (4, _calculate), (3, _event), (3, _two_calls), (2, _small_talk))


def _request(seed: int, split: str, i: int, attempt: int) -> tuple[str, list[dict[str, Any]]]:
  slot = stable_hash("kind", seed, split, i, attempt) % sum(share for share, _ in _KINDS)
  for share, make in _KINDS:
    if slot < share:
      return make((seed, split, i, attempt))
    slot -= share
  raise AssertionError("unreachable")


def _in_split(seed: int, text: str, calls: list[dict[str, Any]], split: str) -> bool:
  """Whether a request belongs to `split`: its gold calls (small talk: its text) hash below EVAL_SHARE for "eval"."""
  key = json.dumps(calls, sort_keys=True) if calls else text
  return (stable_hash("split", seed, key) < EVAL_SHARE * 2.0**64) == (split == "eval")


def tool_rows(seed: int, n: int, split: str = "train") -> list[dict[str, Any]]:
  """`n` rows of the "prompts" file format (module docstring) for `split` ("train" or "eval")."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  rows = []
  for i in range(n):
    attempt = 0
    text, calls = _request(seed, split, i, attempt)
    while not _in_split(seed, text, calls, split):
      attempt += 1
      text, calls = _request(seed, split, i, attempt)
    rows.append({"prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
                 "tool_calls": json.dumps(calls), "id": f"{split}-{i}"})
  return rows


def write_tool_files(folder: str | os.PathLike, seed: int, num_train: int, num_eval: int) -> tuple[str, str]:
  """Writes `folder`/toolcall_train.jsonl and toolcall_eval.jsonl (disjoint gold calls); returns their paths."""
  paths = generated.write_split_files(folder, "toolcall_{split}.jsonl",
                                      lambda split, n: tool_rows(seed, n, split),
                                      (("train", num_train), ("eval", num_eval)))
  return paths[0], paths[1]
