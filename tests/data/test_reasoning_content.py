"""A reasoning model's thinking in chat data (an assistant message's `reasoning_content`, Qwen3 / DeepSeek-R1
style): what the file adapters keep and refuse, the text a reasoning response is trained on (the template's <think>
block, then the answer), and TRL 1.16's own `apply_chat_template` on SmolLM2's tokenizer with a Qwen3-like template
(tests/fixtures/reasoning_chat_template.jinja) as the reference; templates that drop the thinking are refused."""

import functools
import importlib.util
import json
import os
import pathlib

import pytest

from conftest import require_asset
from jaxrlhf.data import adapters, errors, tokenize
from jaxrlhf.data.records import PreferenceRecord, SFTRecord, record_from_json, record_to_json, response_text

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
TEMPLATE = FIXTURES / "reasoning_chat_template.jinja"
TOOL_TEMPLATE = FIXTURES / "tool_use_chat_template.jinja"  # Shows tool calls, never reasoning.
SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Capital of France?"}
PROMPT = [SYSTEM, USER]
THOUGHT = "The capital of France is Paris."
REASONED = {"role": "assistant", "content": "Paris.", "reasoning_content": THOUGHT}
PLAIN = {"role": "assistant", "content": "Lyon."}
CALL = {"role": "assistant", "content": "", "reasoning_content": "I should look it up.", "tool_calls": [
    {"type": "function", "function": {"name": "lookup", "arguments": {"country": "France"}}}]}
RESULT = {"role": "tool", "content": '{"capital": "Paris"}', "tool_call_id": "call_0", "name": "lookup"}
EMPTY_THINK = "<think>\n\n</think>\n\n"  # What a Qwen3-like template writes for a last turn without reasoning.


# ------------------------------------------------------------------------------------------------ tokenizers
@functools.lru_cache(maxsize=None)
def _smollm2(gguf):
  """SmolLM2's tokenizer read from the GGUF once per test session (the slow part), shared by the test modules."""
  from jaxrlhf.models.tokenizer import load_tokenizer
  return load_tokenizer(gguf)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
  """Ours with SmolLM2's own template (ChatML of role and content only)."""
  return _smollm2(smollm2_gguf)


@pytest.fixture(scope="module")
def ours(smollm2):
  """Ours with the Qwen3-like reasoning template."""
  return smollm2.with_chat_template(TEMPLATE.read_text())


def hf_tokenizer(smollm2, folder, template: str | None):
  """transformers' tokenizer of the same SmolLM2 folder (skips without TRL and transformers, fails in CI)."""
  require_asset(importlib.util.find_spec("trl") is not None and importlib.util.find_spec("transformers") is not None,
                "trl / transformers are not installed")
  os.environ["HF_HUB_OFFLINE"] = "1"
  import transformers
  smollm2.save_pretrained(folder)
  reference = transformers.AutoTokenizer.from_pretrained(str(folder))
  if template is not None:
    reference.chat_template = template
  return reference


def _thinks_only_with_reasoning() -> str:
  """The fixture template, but writing a think block only for turns that have reasoning (no empty block before a
  plain last answer): a template under which a plain answer is its content and a reasoning one is not."""
  source = TEMPLATE.read_text()
  assert source.count("(loop.last or reasoning)") == 1
  return source.replace("(loop.last or reasoning)", "reasoning")


@pytest.fixture(scope="module")
def reference(smollm2, tmp_path_factory):
  return hf_tokenizer(smollm2, tmp_path_factory.mktemp("smollm2_reasoning"), TEMPLATE.read_text())


@pytest.fixture(scope="module")
def reasoning_only(smollm2, tmp_path_factory):
  """(ours, transformers') with `_thinks_only_with_reasoning`."""
  source = _thinks_only_with_reasoning()
  return (smollm2.with_chat_template(source),
          hf_tokenizer(smollm2, tmp_path_factory.mktemp("smollm2_reasoning_only"), source))


def _trl(example, reference):
  from trl.data_utils import apply_chat_template
  return apply_chat_template(example, reference)


# ------------------------------------------------------------------------------------------------ adapters
def _read(tmp_path, rows, fmt="chat", strict=True):
  path = tmp_path / "rows.jsonl"
  adapters.write_jsonl(path, rows)
  return adapters.read_records(path, adapters.AdapterConfig(fmt, strict=strict))


def test_chat_rows_keep_reasoning_and_template_kwargs(tmp_path):
  rows = [{"chosen": [SYSTEM, USER, REASONED], "rejected": [SYSTEM, USER, PLAIN],
           "chat_template_kwargs": json.dumps({"enable_thinking": True})},
          # A parquet-like null reasoning carries nothing and is dropped; a multi-turn reasoning continuation.
          {"prompt": [USER], "chosen": [CALL, RESULT, REASONED], "rejected": [{**PLAIN, "reasoning_content": None}]}]
  (first, second), report = _read(tmp_path, rows)
  assert (first.prompt, first.chosen, first.rejected) == (PROMPT, [REASONED], [PLAIN])
  assert first.chat_template_kwargs == {"enable_thinking": True} and second.chat_template_kwargs is None
  assert (second.chosen, second.rejected) == ([CALL, RESULT, REASONED], [PLAIN])
  assert report.kept == 2
  assert record_from_json(record_to_json(first)) == first and record_from_json(record_to_json(second)) == second
  (sft,), _ = _read(tmp_path, [{"messages": [USER, REASONED]}], "sft")
  assert (sft.prompt, sft.response) == ([USER], [REASONED])


@pytest.mark.parametrize("fmt, row, reason, detail", [
    ("chat", {"chosen": [{**USER, "reasoning_content": "hm"}, PLAIN], "rejected": [USER, REASONED]},
     "bad_messages", "chosen[0] (role 'user') has key(s) ['reasoning_content']"),
    ("sft", {"messages": [USER, {**REASONED, "reasoning_content": 7}]},
     "non_string_content", "messages[1].reasoning_content must be a string, got int"),
])
def test_misplaced_or_bad_reasoning_makes_a_bad_row(tmp_path, fmt, row, reason, detail):
  with pytest.raises(errors.DataFileError) as e:
    _read(tmp_path, [row], fmt)
  assert str(e.value).startswith(f"{tmp_path / 'rows.jsonl'}:1: {reason}: {detail}")


def test_a_reasoning_response_has_no_text_without_a_template(ours):
  with pytest.raises(ValueError, match="a response with reasoning_content has no text without a chat template"):
    response_text([REASONED])
  for prompt in (None, "Capital of France?"):
    with pytest.raises(ValueError, match="needs the prompt's messages"):
      tokenize.response_text_under_template(ours, [REASONED], prompt)


# ------------------------------------------------------------------------------------------------ rendering
def test_a_reasoning_response_is_the_think_block_then_the_answer(ours, smollm2):
  # Hand-written from the template's rule: <think>\n + reasoning.strip('\n') + \n</think>\n\n + content.lstrip('\n').
  assert tokenize.response_text_under_template(ours, [REASONED], PROMPT) == f"<think>\n{THOUGHT}\n</think>\n\nParis."
  padded = {**REASONED, "reasoning_content": f"\n{THOUGHT}\n\n", "content": "\nParis."}
  assert tokenize.response_text_under_template(ours, [padded], PROMPT) == f"<think>\n{THOUGHT}\n</think>\n\nParis."
  # Encoded, then the end token (<|im_end|>, id 2); the prompt stops at the generation header.
  ids = tokenize.encode_response(ours, [REASONED], PROMPT)
  assert ids[-1] == ours.eos_id == 2 and ours.decode(ids, skip_special_tokens=False) == (
      f"<think>\n{THOUGHT}\n</think>\n\nParis.<|im_end|>")
  assert ours.decode(tokenize.encode_prompt(ours, PROMPT), skip_special_tokens=False).endswith(
      "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n")
  # A plain answer under this template (which wraps every last answer in a think block, empty here) is the
  # template's rendering too; under SmolLM2's, which writes the content alone, it is the content.
  assert tokenize.response_text_under_template(ours, [PLAIN], PROMPT) == EMPTY_THINK + "Lyon."
  assert tokenize.response_text_under_template(ours, [PLAIN], PROMPT, template_kwargs={"enable_thinking": True}
                                               ) == EMPTY_THINK + "Lyon."
  assert tokenize.response_text_under_template(smollm2, [PLAIN], PROMPT) == "Lyon."
  sft = tokenize.tokenize_sft(SFTRecord(PROMPT, [REASONED]), ours, tokenize.TruncationConfig(max_length=200))
  assert sft["response"].tolist() == ids


def test_a_template_that_thinks_only_with_reasoning_renders_reasoning_turns_only(smollm2):
  tok = smollm2.with_chat_template(_thinks_only_with_reasoning())
  assert tokenize.response_text_under_template(tok, [REASONED], PROMPT) == f"<think>\n{THOUGHT}\n</think>\n\nParis."
  assert tokenize.response_text_under_template(tok, [PLAIN], PROMPT) == "Lyon."
  assert tokenize.encode_response(tok, [PLAIN], PROMPT) == tok.encode("Lyon.") + [tok.eos_id]
  # A multi-turn response whose last turn reasons: rendered to that turn's end.
  assert tokenize.response_text_under_template(tok, [CALL, RESULT, REASONED], PROMPT).endswith(
      f"</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n{THOUGHT}\n</think>\n\nParis.")


def test_reasoning_in_prompt_turns_goes_to_the_template_unchecked(ours, smollm2):
  # An earlier assistant turn's thinking: the Qwen3-like template leaves it out (it is before the last user turn),
  # and so does SmolLM2's; neither is refused, since the model is not trained on the prompt.
  prompt = [USER, {**PLAIN, "reasoning_content": "A guess."}, {"role": "user", "content": "Sure?"}]
  plain = [USER, PLAIN, prompt[2]]
  for tok in (ours, smollm2):
    assert tokenize.encode_prompt(tok, prompt) == tokenize.encode_prompt(tok, plain)
  assert "A guess." not in ours.decode(tokenize.encode_prompt(ours, prompt), skip_special_tokens=False)


def test_templates_that_drop_the_responses_reasoning_are_refused(smollm2):
  with pytest.raises(ValueError, match="does not render the response's reasoning_content"):
    tokenize.encode_response(smollm2, [REASONED], PROMPT)
  pair = PreferenceRecord(PROMPT, [REASONED], [PLAIN])
  with pytest.raises(ValueError, match="does not render the response's reasoning_content"):
    tokenize.tokenize_pair(pair, smollm2, tokenize.TruncationConfig(max_length=200))
  # A template that writes tool calls but no thinking, with the thinking on an earlier turn of the response: still
  # trained on (it is after the prompt), so still refused, though the last turn is plain.
  tools_only = smollm2.with_chat_template(TOOL_TEMPLATE.read_text())
  with pytest.raises(ValueError, match="does not render the response's reasoning_content"):
    tokenize.encode_response(tools_only, [CALL, RESULT, PLAIN], [USER])
  # Without the thinking the same response is fine under that template.
  no_thought = {k: v for k, v in CALL.items() if k != "reasoning_content"}
  assert "<tool_call>" in tokenize.response_text_under_template(tools_only, [no_thought, RESULT, PLAIN], [USER])


# ------------------------------------------------------------------------------------------------ TRL parity
@pytest.mark.parity
@pytest.mark.parametrize("prompt", [
    PROMPT,
    # An earlier reasoning turn in the prompt (Qwen3 drops its thinking) before the last user turn.
    [SYSTEM, {"role": "user", "content": "Hi."}, {**PLAIN, "reasoning_content": "A greeting."}, USER],
])
def test_reasoning_response_matches_trls_rendering(ours, reference, prompt):
  trl = _trl({"prompt": prompt, "chosen": [REASONED], "rejected": [PLAIN]}, reference)
  assert tokenize.encode_prompt(ours, prompt) == reference.encode(trl["prompt"], add_special_tokens=False)
  assert trl["chosen"] == f"<think>\n{THOUGHT}\n</think>\n\nParis.<|im_end|>\n"
  # TRL's chosen is our text, then the "<|im_end|>\n" our end token (eos = <|im_end|>) stands for.
  assert trl["chosen"] == tokenize.response_text_under_template(ours, [REASONED], prompt) + "<|im_end|>\n"
  assert tokenize.encode_response(ours, [REASONED], prompt) + ours.encode("\n") == reference.encode(
      trl["chosen"], add_special_tokens=False)


@pytest.mark.parity
@pytest.mark.parametrize("response", [[REASONED], [PLAIN], [CALL, RESULT, REASONED], [CALL, RESULT, PLAIN]])
def test_responses_match_trl_under_a_template_that_thinks_only_with_reasoning(reasoning_only, response):
  ours, reference = reasoning_only
  trl = _trl({"prompt": PROMPT, "chosen": response, "rejected": [{**PLAIN, "content": "Nice."}]}, reference)
  assert ("<think>" in trl["chosen"]) == (response[-1] is REASONED or response[0] is CALL)
  assert tokenize.encode_prompt(ours, PROMPT) == reference.encode(trl["prompt"], add_special_tokens=False)
  assert trl["chosen"] == tokenize.response_text_under_template(ours, response, PROMPT) + "<|im_end|>\n"
  assert trl["rejected"] == "Nice.<|im_end|>\n"


@pytest.mark.parity
def test_multi_turn_reasoning_tool_response_matches_trls_rendering(ours, reference):
  chosen = [CALL, RESULT, REASONED]
  trl = _trl({"prompt": PROMPT, "chosen": chosen, "rejected": [PLAIN]}, reference)
  # Both turns after the user's show their thinking; the tool result is a user turn of <tool_response>.
  assert trl["chosen"] == ("<think>\nI should look it up.\n</think>\n\n<tool_call>\n"
                           '{"name": "lookup", "arguments": {"country": "France"}}\n</tool_call><|im_end|>\n'
                           '<|im_start|>user\n<tool_response>\n{"capital": "Paris"}\n</tool_response><|im_end|>\n'
                           f"<|im_start|>assistant\n<think>\n{THOUGHT}\n</think>\n\nParis.<|im_end|>\n")
  assert trl["chosen"] == tokenize.response_text_under_template(ours, chosen, PROMPT) + "<|im_end|>\n"
  assert tokenize.encode_response(ours, chosen, PROMPT) + ours.encode("\n") == reference.encode(
      trl["chosen"], add_special_tokens=False)


@pytest.mark.parity
@pytest.mark.parametrize("response", [[PLAIN], [CALL, RESULT, PLAIN]])
def test_a_plain_last_turn_gets_the_empty_think_block_trl_writes(ours, reference, response):
  # A Qwen3-like template writes an empty think block before the content of the conversation's last assistant turn
  # when it has no reasoning; TRL renders prompt + response and cuts the prompt off, so its response has the block.
  trl = _trl({"prompt": PROMPT, "chosen": [REASONED], "rejected": response}, reference)
  assert trl["rejected"].endswith(EMPTY_THINK + "Lyon.<|im_end|>\n")
  assert trl["rejected"] == tokenize.response_text_under_template(ours, response, PROMPT) + "<|im_end|>\n"
  assert tokenize.encode_response(ours, response, PROMPT) + ours.encode("\n") == reference.encode(
      trl["rejected"], add_special_tokens=False)


@pytest.mark.parity
def test_a_reasoning_file_row_tokenizes_like_trls_rendering(ours, reference, tmp_path):
  row = {"chosen": [SYSTEM, USER, REASONED], "rejected": [SYSTEM, USER, PLAIN],
         "chat_template_kwargs": json.dumps({"enable_thinking": True})}
  (record,), _ = _read(tmp_path, [row])
  example = tokenize.tokenize_pair(record, ours, tokenize.TruncationConfig(max_length=200))
  trl = _trl({"prompt": PROMPT, "chosen": [REASONED], "rejected": [PLAIN],
              "chat_template_kwargs": {"enable_thinking": True}}, reference)
  assert example["prompt"].tolist() == reference.encode(trl["prompt"], add_special_tokens=False)
  # TRL's chosen ends "<|im_end|>\n": our ids are its ids without the newline after the end token.
  assert trl["chosen"].endswith("<|im_end|>\n")
  assert example["chosen"].tolist() == reference.encode(trl["chosen"][:-1], add_special_tokens=False)
  assert example["chosen"].tolist()[-1] == ours.eos_id
  assert trl["rejected"] == EMPTY_THINK + "Lyon.<|im_end|>\n"
  assert example["rejected"].tolist() == reference.encode(trl["rejected"][:-1], add_special_tokens=False)
