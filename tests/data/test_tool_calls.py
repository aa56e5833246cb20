"""Structured tool use in chat data (transformers' format: an assistant's `tool_calls`, a tool message's
`tool_call_id` / `name`, a record's `tools`): what the file adapters keep and refuse, the text a template gives a
tool-calling response (hand-rendered goldens with a bracket template), the refusal of templates that would drop the
tools or the calls, and TRL 1.16's own `apply_chat_template(..., tools=...)` on SmolLM2's tokenizer with a tool-use
template (tests/fixtures/tool_use_chat_template.jinja) as the reference for prompts and responses."""

import importlib.util
import json
import os
import pathlib
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import require_asset
from test_multi_turn_responses import _read
from jaxrlhf.data import adapters, errors, tokenize
from jaxrlhf.data.records import (PreferenceRecord, PromptRecord, SFTRecord, record_from_json, record_to_json,
                                  response_text)

TEMPLATE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "tool_use_chat_template.jinja"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOLS = [WEATHER, {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}]
USER = {"role": "user", "content": "Weather in Paris?"}
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
RESULT = {"role": "tool", "content": '{"sky": "sunny"}', "tool_call_id": "call_0", "name": "get_weather"}
ANSWER = {"role": "assistant", "content": "Sunny."}
GUESS = {"role": "assistant", "content": "Probably rain."}


# ------------------------------------------------------------------------------------------------ adapters
def test_chat_rows_keep_tool_calls_tool_ids_and_tools(tmp_path):
  # OpenAI's layout: the call has no content key at all; tools given as JSON text (the usual dataset column).
  openai_call = {"role": "assistant", "tool_calls": CALL["tool_calls"]}
  rows = [{"chosen": [USER, openai_call, RESULT, ANSWER], "rejected": [USER, GUESS], "tools": json.dumps(TOOLS)},
          {"prompt": [USER], "chosen": [CALL], "rejected": [GUESS], "tools": TOOLS}]
  (first, second), report = _read(tmp_path, rows)
  assert (first.prompt, first.chosen, first.rejected) == ([USER], [CALL, RESULT, ANSWER], [GUESS])
  assert first.tools == second.tools == tuple(TOOLS)
  assert second.chosen == [CALL]
  assert report.kept == 2 and dict(report.notes) == {"chat_multi_turn_response": 1}
  # Records survive the array_record round trip, tools included.
  assert record_from_json(record_to_json(first)) == first


def test_parquet_rows_with_json_arguments_and_null_fields(tmp_path):
  # A parquet struct column: every message has every field (nulls), arguments are JSON text.
  def full(m, calls=None, call_id=None):
    return {"role": m["role"], "content": m.get("content"), "tool_calls": calls, "tool_call_id": call_id}
  calls = [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
  row = {"chosen": [full(USER), full({"role": "assistant"}, calls), full(RESULT, call_id="call_0"), full(ANSWER)],
         "rejected": [full(USER), full(GUESS)], "tools": json.dumps([WEATHER])}
  path = tmp_path / "rows.parquet"
  pq.write_table(pa.Table.from_pylist([row]), path)
  (record,), report = adapters.read_records(path, "chat")
  assert record.chosen == [{"role": "assistant", "content": "", "tool_calls": calls},
                           {"role": "tool", "content": RESULT["content"], "tool_call_id": "call_0"}, ANSWER]
  assert record.tools == (WEATHER,) and report.kept == 1 and not report.counts


@pytest.mark.parametrize("fmt, row, reason, detail", [
    ("chat", {"chosen": [USER, {**CALL, "tool_calls": [{"function": {"name": "get_weather", "arguments": "{city"}}]}],
              "rejected": [USER, GUESS]},
     "bad_messages", "chosen[1].tool_calls[0]: arguments of 'get_weather' are text but not JSON"),
    ("chat", {"chosen": [USER, {**CALL, "tool_calls": [{"function": {"arguments": {}}}]}], "rejected": [USER, GUESS]},
     "bad_messages", "chosen[1].tool_calls[0]: expected a non-empty function name, got None"),
    ("chat", {"chosen": [USER, {**CALL, "tool_calls": [{"name": "f", "arguments": [1]}]}], "rejected": [USER, GUESS]},
     "bad_messages", "chosen[1].tool_calls[0]: arguments of 'f' must be a JSON object"),
    ("chat", {"chosen": [USER, ANSWER], "rejected": [USER, GUESS], "tools": "[{"},
     "bad_field", "tools is text but not JSON"),
    ("chat", {"chosen": [USER, ANSWER], "rejected": [USER, GUESS], "tools": [{"description": "no name"}]},
     "bad_field", "tools: tools[0] must be a dict with a non-empty 'name'"),
    ("chat", {"chosen": [USER, ANSWER], "rejected": [USER, GUESS], "tools": [WEATHER, WEATHER]},
     "bad_field", "tools: function name(s) ['get_weather'] appear more than once"),
    ("pairwise", {"prompt": "Weather in Paris?", "chosen": "Sunny.", "rejected": "Rain.", "tools": TOOLS},
     "bad_field", "tools need a chat prompt (messages)"),
    ("kway", {"prompt": "Weather?", "completions": [[CALL], [GUESS]], "best_index": 0},
     "bad_messages", "completions[0]: an assistant message with tool_calls after a text prompt"),
    ("sft", {"messages": [USER, {**ANSWER, "tool_call_id": "x"}]},
     "bad_messages", "messages[1] (role 'assistant') has key(s) ['tool_call_id']"),
    # TRL renders this row with enable_thinking=False; a format whose prompts are not chat messages cannot.
    ("hh", {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi\n\nAssistant: Go.",
            "chat_template_kwargs": {"enable_thinking": False}},
     "bad_field", "chat_template_kwargs is not read in the 'hh' format"),
    ("sft", {"messages": [USER, ANSWER], "chat_template_kwargs": {"messages": []}},
     "bad_field", "chat_template_kwargs: 'messages' is set by the renderer itself"),
    ("prompts", {"prompt": [USER], "chat_template_kwargs": "{enable_thinking: false}"},
     "bad_field", "chat_template_kwargs is text but not JSON"),
    ("prompts", {"prompt": [USER], "chat_template_kwargs": {"enable-thinking": False}},
     "bad_field", "chat_template_kwargs: 'enable-thinking' is not a template variable name"),
    ("pairwise", {"prompt": "Weather?", "chosen": "Sunny.", "rejected": "Rain.",
                  "chat_template_kwargs": {"enable_thinking": False}},
     "bad_field", "chat_template_kwargs need a chat prompt (messages)"),
])
def test_bad_tool_use_rows_name_the_field(tmp_path, fmt, row, reason, detail):
  with pytest.raises(errors.DataFileError) as e:
    _read(tmp_path, [row], fmt)
  assert str(e.value).startswith(f"{tmp_path / 'rows.jsonl'}:1: {reason}: {detail}")
  records, report = _read(tmp_path, [row], fmt, strict=False)
  assert (records, dict(report.counts)) == ([], {reason: 1})


def test_sft_kway_and_prompt_files_carry_tools(tmp_path):
  (sft,), _ = _read(tmp_path, [{"messages": [USER, CALL], "tools": TOOLS}], "sft")
  assert (sft.prompt, sft.response, sft.tools) == ([USER], [CALL], tuple(TOOLS))
  (kway,), _ = _read(tmp_path, [{"prompt": [USER], "completions": [[CALL], [GUESS]], "best_index": 0,
                                 "tools": TOOLS}], "kway")
  assert kway.completions == ([CALL], [GUESS]) and kway.tools == tuple(TOOLS)
  # An empty chat_template_kwargs (a parquet column's null or {}) asks for nothing and is read as absent.
  (prompt,), _ = _read(tmp_path, [{"prompt": [USER, CALL, RESULT], "tools": TOOLS, "answer": "sunny",
                                   "chat_template_kwargs": {}}], "prompts")
  assert prompt.prompt == [USER, CALL, RESULT] and prompt.tools == tuple(TOOLS)
  # Reward functions may read the schemas too.
  assert prompt.columns == {"tools": TOOLS, "answer": "sunny", "chat_template_kwargs": {}}


def test_records_built_in_code_are_checked():
  with pytest.raises(ValueError, match="x:1: tools need a chat prompt"):
    PreferenceRecord("Q", "a", "b", tools=TOOLS, source="x:1")
  with pytest.raises(ValueError, match=r"message 0 \(role 'user'\) has key\(s\) \['tool_calls'\]"):
    SFTRecord([{**USER, "tool_calls": CALL["tool_calls"]}], [ANSWER])
  with pytest.raises(ValueError, match="tools: expected a non-empty list"):
    PromptRecord([USER], tools=[])
  # Without a template a call has no text: taking the content alone would drop it.
  with pytest.raises(ValueError, match="a response with tool_calls has no text without a chat template"):
    response_text([CALL])


# ------------------------------------------------------------------------------------------------ rendering
class _Brackets:
  """A tool-use template in brackets, one id per character: "[tools:a,b]" when there are tools, "[role]content"
  and "{name(arguments)}" per call, "|" ends a turn and is the end token."""
  eos_id = ord("|")

  def __init__(self, shows_tools=True, shows_calls=True, end="|"):
    self.shows_tools, self.shows_calls, self.end = shows_tools, shows_calls, end

  def apply_chat_template(self, messages, add_generation_prompt=False, tools=None):
    out = f"[tools:{','.join(t.get('function', t)['name'] for t in tools)}]" if tools and self.shows_tools else ""
    for m in messages:
      calls = "".join(f"{{{c['function']['name']}({json.dumps(c['function']['arguments'])})}}"
                      for c in m.get("tool_calls", [])) if self.shows_calls else ""
      out += f"[{m['role']}]{m['content']}{calls}{self.end}"
    return out + ("[assistant]" if add_generation_prompt else "")

  def encode(self, text, add_special_tokens=False):
    return [ord(ch) for ch in text]

  def decode(self, ids, skip_special_tokens=True):
    return "".join(chr(i) for i in ids)


def test_a_tool_calling_response_is_what_the_template_writes_up_to_the_end_token():
  tok = _Brackets()
  call_text = '{get_weather({"city": "Paris"})}'
  assert tokenize.response_text_under_template(tok, [CALL], [USER], TOOLS) == call_text
  # Calls then an answer: the earlier turns with their markers, the answer after its header.
  assert tokenize.response_text_under_template(tok, [CALL, RESULT, ANSWER], [USER], TOOLS) == (
      f'{call_text}|[tool]{RESULT["content"]}|[assistant]Sunny.')
  example = tokenize.tokenize_pair(PreferenceRecord([USER], [CALL], [GUESS], tools=TOOLS), tok,
                                   tokenize.TruncationConfig(max_length=400))
  head = "[tools:get_weather,add][user]Weather in Paris?|[assistant]"
  assert example["prompt"].tolist() == [ord(c) for c in head]
  assert example["chosen"].tolist() == [ord(c) for c in call_text + "|"]
  assert example["rejected"].tolist() == [ord(c) for c in "Probably rain.|"]
  sft = tokenize.tokenize_sft(SFTRecord([USER], [CALL], tools=TOOLS), tok, tokenize.TruncationConfig(max_length=400))
  assert (sft["prompt"].tolist(), sft["response"].tolist()) == (example["prompt"].tolist(), example["chosen"].tolist())
  # Without tools the prompt has no tools block (and the template is not asked for one).
  assert tokenize.encode_prompt(tok, [USER]) == [ord(c) for c in "[user]Weather in Paris?|[assistant]"]


def test_templates_that_drop_tools_or_calls_are_refused():
  with pytest.raises(ValueError, match="the chat template does not render tools"):
    tokenize.encode_prompt(_Brackets(shows_tools=False), [USER], TOOLS)
  with pytest.raises(ValueError, match="the chat template does not render tool_calls"):
    tokenize.encode_response(_Brackets(shows_calls=False), [CALL], [USER])
  with pytest.raises(ValueError, match="the chat template does not render tool_calls"):
    tokenize.encode_prompt(_Brackets(shows_calls=False), [USER, CALL, RESULT])
  with pytest.raises(ValueError, match="does not close the last assistant turn .* with the end token '|'"):
    tokenize.encode_response(_Brackets(end="."), [CALL], [USER])
  with pytest.raises(ValueError, match="tools need a chat prompt"):
    tokenize.encode_prompt(_Brackets(), "Weather in Paris?", TOOLS)

  class NoTools(_Brackets):
    def apply_chat_template(self, messages, add_generation_prompt=False):
      return super().apply_chat_template(messages, add_generation_prompt)
  with pytest.raises(ValueError, match="NoTools.apply_chat_template takes no tools"):
    tokenize.encode_prompt(NoTools(), [USER], TOOLS)


# ------------------------------------------------------------------------------------------------ TRL parity
@pytest.fixture(scope="module")
def smollm2_tool_tokenizers(smollm2_gguf, tmp_path_factory):
  """(ours, transformers') SmolLM2 tokenizers with the tool-use template, read from one HF folder."""
  require_asset(importlib.util.find_spec("trl") is not None, "trl is not installed")
  os.environ["HF_HUB_OFFLINE"] = "1"
  import transformers
  from jaxrlhf.models.tokenizer import load_tokenizer
  folder = tmp_path_factory.mktemp("smollm2_tools")
  load_tokenizer(smollm2_gguf).save_pretrained(folder)
  shutil.copy(TEMPLATE, folder / "chat_template.jinja")
  return load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parity
@pytest.mark.parametrize("chosen", [
    [CALL], [CALL, RESULT, ANSWER],
    # Arguments as JSON text, two calls in one turn, and content before the calls.
    [{"role": "assistant", "content": "Checking.", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}]}],
])
def test_prompt_and_responses_match_trls_rendering(smollm2_tool_tokenizers, chosen):
  from trl.data_utils import apply_chat_template
  ours, reference = smollm2_tool_tokenizers
  prompt = [{"role": "system", "content": "Be brief."}, USER]
  trl = apply_chat_template({"prompt": prompt, "chosen": chosen, "rejected": [GUESS]}, reference, tools=TOOLS)
  assert "<tools>" in trl["prompt"] and "<tool_call>" in trl["chosen"]  # The template shows both.
  assert tokenize.encode_prompt(ours, prompt, TOOLS) == reference.encode(trl["prompt"], add_special_tokens=False)
  # TRL's chosen is our text, then the "<|im_end|>\n" our end token (eos = <|im_end|>) stands for.
  assert trl["chosen"] == tokenize.response_text_under_template(ours, chosen, prompt, TOOLS) + "<|im_end|>\n"
  assert trl["rejected"] == GUESS["content"] + "<|im_end|>\n"
  assert tokenize.encode_response(ours, chosen, prompt, TOOLS) + ours.encode("\n") == reference.encode(
      trl["chosen"], add_special_tokens=False)


@pytest.mark.parity
def test_smollm2s_own_template_is_refused_for_tools_and_calls(smollm2_gguf):
  from jaxrlhf.models.tokenizer import load_tokenizer
  tok = load_tokenizer(smollm2_gguf)  # Its ChatML template prints role and content only.
  with pytest.raises(ValueError, match="does not render tools"):
    tokenize.encode_prompt(tok, [USER], TOOLS)
  with pytest.raises(ValueError, match="does not render tool_calls"):
    tokenize.encode_response(tok, [CALL], [USER])


def test_prompts_differing_only_in_tools_or_calls_are_distinct():
  from jaxrlhf.data import prompts
  pairs = [PreferenceRecord([USER], [ANSWER], [GUESS], tools=TOOLS, source="f:1"),
           PreferenceRecord([USER], [ANSWER], [GUESS], tools=TOOLS[:1], source="f:2"),  # other tools
           PreferenceRecord([USER], [ANSWER], [GUESS], source="f:3"),  # none
           PreferenceRecord([USER, CALL, RESULT], [ANSWER], [GUESS], tools=TOOLS, source="f:4"),  # a call in the prompt
           PreferenceRecord([USER], [ANSWER], [GUESS], tools=TOOLS, source="f:5")]  # a repeat of f:1
  report = errors.SkipReport()
  out = prompts.prompts_of_preferences(pairs, report)
  assert [p.source for p in out] == ["f:1", "f:2", "f:3", "f:4"]
  assert [p.tools for p in out] == [tuple(TOOLS), tuple(TOOLS[:1]), None, tuple(TOOLS)]
  assert dict(report.notes) == {"repeated_prompt": 1}
