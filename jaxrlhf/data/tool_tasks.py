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

The SFT file (a format warm start: a small policy such as SmolLM2-135M never writes this format on its own, so every
GRPO group would score alike) holds the gold answers of the first n TRAIN rows, never the eval split's:

    {"prompt": <the train row's prompt>,
     "completion": "<think> Use get_weather. </think>\\n<tool_call>\\n{\\"name\\": \\"get_weather\\",
                    \\"parameters\\": {\\"city\\": \\"Paris\\", \\"unit\\": \\"celsius\\"}}\\n</tool_call>"}

(`gold_completion`: exactly the format the system prompt asks for, scoring ToolRL's maximum; small talk gets a fixed
reply from SMALL_TALK_REPLIES in <response>). The shipped data/tasks/toolcall/ holds the train and eval files of
`write_tool_files(..., 0, 1024, 128)` (configs/papers/toolrl.py) and the SFT file of
`python -c "from jaxrlhf.data import tool_tasks; tool_tasks.write_sft_file('data/tasks/toolcall', 0, 256)"`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jaxrlhf.data import adapters, generated
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
# The SFT file's <response> for each small-talk request (keys: exactly _SMALL_TALK). Fixed text, not generated: a
# warm start teaches the format and WHEN not to call a tool; the reply itself only has to be short and sensible.
# No "<" in any reply: a tag inside it would break ToolRL's format check.
SMALL_TALK_REPLIES = {
    "Hello! How are you today?": "I am doing well, thank you! How can I help you today?",
    "Thanks, that was helpful.": "You are welcome! Let me know if you need anything else.",
    "Tell me a fun fact about octopuses.": "An octopus has three hearts and blue blood.",
    "What is your name?": ("I am an assistant without a name. I can check the weather, convert units, do arithmetic "
                           "and add events to your calendar."),
    "Good morning!": "Good morning! What can I do for you today?",
    "Can you recommend a good book?": ("Try To Kill a Mockingbird by Harper Lee, a classic about justice and "
                                       "growing up."),
    "Who wrote Hamlet?": "William Shakespeare wrote Hamlet, around 1600.",
    "Say something nice.": "You are curious and kind, and that makes the world a little better.",
}


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


def gold_completion(request: str, calls: list[dict[str, Any]]) -> str:
  """The gold answer to `request` in the format SYSTEM_PROMPT asks for (and `jaxrlhf.rewards.toolrl` scores 1 +
  3 = 4): with gold `calls`, "<think> ... </think>\\n<tool_call>\\n" + one JSON call per line + "\\n</tool_call>";
  without, "<think> ... </think>\\n<response> SMALL_TALK_REPLIES[request] </response>".

  The reasoning is short and deterministic (it names the tools in order) so that a warm start teaches the format and
  the tool choice without spending the policy's few new tokens (96 in configs/papers/toolrl.py) on prose.
  ValueError for a request without calls that is not one of the small-talk requests (no reply is known for it).
  """
  if not calls:
    if request not in SMALL_TALK_REPLIES:
      raise ValueError(f"gold_completion: no gold calls and no fixed reply for the request {request!r} (only the "
                       f"small-talk requests of SMALL_TALK_REPLIES are answered without a tool)")
    reply = SMALL_TALK_REPLIES[request]
    return f"<think> This is small talk, so no tool is needed. </think>\n<response> {reply} </response>"
  # Names in call order, one per call ("Use get_weather and get_weather." for two cities), in few tokens: the longest
  # gold answer of the shipped train and eval files is 91 SmolLM2 tokens + the end token, and the config samples 96.
  reason = f"Use {' and '.join(call['name'] for call in calls)}."
  # One call per line, keys in the order the system prompt shows ("name", then "parameters"); the reward splits the
  # block on "\n", so no blank line and no pretty-printing.
  lines = "\n".join(json.dumps({"name": call["name"], "parameters": call["parameters"]}) for call in calls)
  return f"<think> {reason} </think>\n<tool_call>\n{lines}\n</tool_call>"


def sft_rows(seed: int, n: int) -> list[dict[str, Any]]:
  """Rows {"prompt", "completion"} of the SFT file: the first `n` rows of `tool_rows(seed, n, "train")` (so their
  prompts are the train file's first n lines; never the eval split's requests) with their `gold_completion`."""
  rows = []
  for row in tool_rows(seed, n, "train"):
    request = row["prompt"][-1]["content"]  # tool_rows' prompt: [system, user]; the user turn is the request.
    rows.append({"prompt": row["prompt"], "completion": gold_completion(request, json.loads(row["tool_calls"]))})
  return rows


def write_sft_file(folder: str | os.PathLike, seed: int, n: int) -> str:
  """Writes `folder`/toolcall_sft.jsonl = sft_rows(seed, n), one JSON row per line (the folder is created); returns
  its path. The shipped file: write_sft_file("data/tasks/toolcall", 0, 256)."""
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(os.fspath(folder), "toolcall_sft.jsonl")
  adapters.write_jsonl(path, sft_rows(seed, n))
  return path
