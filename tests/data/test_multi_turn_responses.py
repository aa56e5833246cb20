"""Multi-turn responses (assistant, tool results or user turns, assistant) in chat preference and k-way files: which
role layouts are kept, the text the chat template gives them (hand-rendered goldens, and TRL's own
`apply_chat_template` suffix on SmolLM2's template), and the refusals."""

import importlib.util
import os

import pytest

from conftest import require_asset
from jaxrlhf.data import adapters, errors, tokenize
from jaxrlhf.data.records import KWayRecord, PreferenceRecord, SFTRecord, response_text

SYSTEM = {"role": "system", "content": "Use tools."}
USER = {"role": "user", "content": "Weather in Paris?"}
CALL = {"role": "assistant", "content": '<tool_call>{"name": "get_weather", "city": "Paris"}</tool_call>'}
RESULT = {"role": "tool", "content": '{"sky": "sunny", "celsius": 21}'}
ANSWER = {"role": "assistant", "content": "Sunny, 21 C."}
GUESS = {"role": "assistant", "content": "Probably rain."}


def _read(tmp_path, rows, fmt="chat", strict=True):
  path = tmp_path / "rows.jsonl"
  adapters.write_jsonl(path, rows)
  return adapters.read_records(path, adapters.AdapterConfig(fmt, strict=strict))


def test_a_continuation_is_kept_whole_and_counted(tmp_path):
  ask = {"role": "assistant", "content": "For which city?"}
  rows = [{"chosen": [SYSTEM, USER, CALL, RESULT, ANSWER], "rejected": [SYSTEM, USER, GUESS]},
          # A user turn inside the continuation (the assistant asks back), and an explicit prompt column.
          {"prompt": [USER], "chosen": [USER, ask, {"role": "user", "content": "Paris."}, ANSWER],
           "rejected": [USER, GUESS]},
          {"chosen": [USER, ANSWER], "rejected": [USER, GUESS]}]
  records, report = _read(tmp_path, rows)
  assert [(r.prompt, r.chosen, r.rejected) for r in records] == [
      ([SYSTEM, USER], [CALL, RESULT, ANSWER], [GUESS]),
      ([USER], [ask, {"role": "user", "content": "Paris."}, ANSWER], [GUESS]),
      ([USER], [ANSWER], [GUESS])]
  assert report.kept == 3 and dict(report.notes) == {"chat_multi_turn_response": 2} and not report.counts


@pytest.mark.parametrize("row, detail", [
    ({"chosen": [USER, CALL, RESULT], "rejected": [USER, GUESS]},
     "chosen after the shared prefix: roles ['assistant', 'tool']: a response starts and ends with the assistant's "
     "turn"),
    ({"chosen": [USER, CALL, SYSTEM, ANSWER], "rejected": [USER, GUESS]},
     "chosen after the shared prefix: roles ['assistant', 'system', 'assistant']: a system message inside a "
     "response"),
    ({"prompt": "Weather in Paris?", "chosen": [CALL, RESULT, ANSWER], "rejected": [GUESS]},
     "chosen after the shared prefix: 3 messages (roles ['assistant', 'tool', 'assistant']) after a text prompt: a "
     "multi-turn response continues a chat, so the prompt must be messages (the turn markers come from the chat "
     "template)"),
    ({"chosen": [USER, RESULT, ANSWER], "rejected": [USER, GUESS]},
     "chosen after the shared prefix: roles ['tool', 'assistant']: a response starts and ends with the assistant's "
     "turn"),
])
def test_other_role_layouts_are_counted_bad_rows(tmp_path, row, detail):
  with pytest.raises(errors.DataFileError) as e:
    _read(tmp_path, [row])
  assert str(e.value) == f"{tmp_path / 'rows.jsonl'}:1: bad_messages: {detail}"
  records, report = _read(tmp_path, [row, {"chosen": [USER, ANSWER], "rejected": [USER, GUESS]}], strict=False)
  assert len(records) == 1 and dict(report.counts) == {"bad_messages": 1}


def test_kway_completions_follow_the_same_rule(tmp_path):
  (record,), _ = _read(tmp_path, [{"prompt": [USER], "completions": [[CALL, RESULT, ANSWER], [GUESS]],
                                   "best_index": 0}], fmt="kway")
  assert record.completions == ([CALL, RESULT, ANSWER], [GUESS])
  with pytest.raises(errors.DataFileError, match=r"bad_messages: completions\[0\]: 3 messages .* after a text "
                     "prompt"):
    _read(tmp_path, [{"prompt": "Q", "completions": [[CALL, RESULT, ANSWER], [GUESS]], "best_index": 0}], fmt="kway")
  with pytest.raises(errors.DataFileError, match=r"bad_messages: completions\[1\]: roles \['user'\]: a response "
                     "starts and ends"):
    _read(tmp_path, [{"prompt": [USER], "completions": [[ANSWER], [USER]], "best_index": 0}], fmt="kway")


def test_records_built_in_code_are_checked_too():
  with pytest.raises(ValueError, match=r"x:1: rejected: roles \['assistant', 'tool'\]"):
    PreferenceRecord(prompt=[USER], chosen=[ANSWER], rejected=[CALL, RESULT], source="x:1")
  with pytest.raises(ValueError, match=r"record: completions\[0\]: 2 messages .* after a text prompt"):
    KWayRecord(prompt="Q", completions=([CALL, ANSWER], "b"), best_index=1)
  with pytest.raises(ValueError, match=r"response: expected text or one assistant message"):
    SFTRecord(prompt=[USER], response=[CALL, RESULT, ANSWER])


class _Template:
  """A tokenizer with a bracket chat template ("[role]content|" per turn, "[assistant]" as the generation prompt)
  and one id per character."""
  eos_id = 0

  def __init__(self, marks_last_turn=False):
    self.marks_last_turn = marks_last_turn

  def apply_chat_template(self, messages, add_generation_prompt=False):
    turns = [f"[{m['role']}]{m['content']}|" for m in messages]
    if self.marks_last_turn:  # A template that renders the final turn differently (as some reasoning ones do).
      turns[-1] = "*" + turns[-1]
    return "".join(turns) + ("[assistant]" if add_generation_prompt else "")

  def encode(self, text, add_special_tokens=False):
    return [ord(ch) for ch in text]


def test_the_text_of_a_continuation_is_what_the_template_puts_between_the_prompt_and_the_end():
  tok = _Template()
  text = tokenize.response_text_under_template(tok, [CALL, RESULT, ANSWER], [SYSTEM, USER])
  assert text == f"{CALL['content']}|[tool]{RESULT['content']}|[assistant]{ANSWER['content']}"
  assert tokenize.encode_response(tok, [CALL, RESULT, ANSWER], [SYSTEM, USER]) == [ord(c) for c in text] + [0]
  # One message, or text: the content as it is, whatever the template (the single-turn rule is unchanged).
  assert tokenize.response_text_under_template(tok, [ANSWER], [USER]) == ANSWER["content"]
  assert tokenize.encode_response(tok, "plain") == [ord(c) for c in "plain"] + [0]
  example = tokenize.tokenize_pair(PreferenceRecord([SYSTEM, USER], [CALL, RESULT, ANSWER], [GUESS]), tok,
                                   tokenize.TruncationConfig(max_length=400))
  assert example["chosen"].tolist() == [ord(c) for c in text] + [0]
  assert example["rejected"].tolist() == [ord(c) for c in GUESS["content"]] + [0]
  assert example["prompt"].tolist() == [ord(c) for c in tok.apply_chat_template([SYSTEM, USER], True)]


def test_a_template_that_rewrites_the_prompt_is_refused_and_text_has_no_join():
  with pytest.raises(ValueError, match="renders the prompt differently once the response's turns follow it"):
    tokenize.response_text_under_template(_Template(marks_last_turn=True), [CALL, RESULT, ANSWER], [USER])
  with pytest.raises(ValueError, match="needs the prompt's messages"):
    tokenize.encode_response(_Template(), [CALL, RESULT, ANSWER])
  # Without a template there is no text to give: joining the contents would drop the turn markers.
  with pytest.raises(ValueError, match="has no text without a chat template"):
    response_text([CALL, RESULT, ANSWER])
  assert response_text([ANSWER]) == ANSWER["content"] and response_text("x") == "x"


@pytest.mark.parity
def test_smollm2_continuation_is_trls_chosen_suffix_up_to_the_last_end_of_turn(smollm2_gguf):
  require_asset(importlib.util.find_spec("trl") is not None, "trl is not installed")
  os.environ["HF_HUB_OFFLINE"] = "1"
  import transformers
  from trl.data_utils import apply_chat_template
  from jaxrlhf.models.tokenizer import load_tokenizer
  ours = load_tokenizer(smollm2_gguf)
  reference = transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
  prompt, chosen, rejected = [SYSTEM, USER], [CALL, RESULT, ANSWER], [GUESS]
  trl = apply_chat_template({"prompt": prompt, "chosen": chosen, "rejected": rejected}, reference)
  # TRL's chosen is the rendered prompt + chosen minus the rendered prompt: ours, then the closing "<|im_end|>\n"
  # that our end token (eos = <|im_end|>) stands for.
  assert trl["chosen"] == tokenize.response_text_under_template(ours, chosen, prompt) + "<|im_end|>\n"
  assert trl["rejected"] == GUESS["content"] + "<|im_end|>\n"
  assert tokenize.encode_response(ours, chosen, prompt) + ours.encode("\n") == reference.encode(
      trl["chosen"], add_special_tokens=False)
  assert tokenize.encode_prompt(ours, prompt) == reference.encode(trl["prompt"], add_special_tokens=False)
