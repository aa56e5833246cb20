"""Chat template arguments (transformers' `apply_chat_template(..., **kwargs)`, TRL's per-row `chat_template_kwargs`,
e.g. Qwen3's enable_thinking): per-row arguments read from files and passed to every rendering of the row, defaults
baked into a tokenizer's template (`Tokenizer.with_template_defaults`) that a per-call value overrides and that a
saved tokenizer carries, and the refusals. References: transformers' and TRL 1.16's renderings of SmolLM2's tokenizer
with the Qwen3-like template tests/fixtures/reasoning_chat_template.jinja."""

import json

import pytest

from test_reasoning_content import (PLAIN, PROMPT, REASONED, THOUGHT, USER, _read, _trl, hf_tokenizer,
                                    ours, reference, smollm2)  # pylint: disable=unused-import  (fixtures)
from jaxrlhf.data import tokenize
from jaxrlhf.data.records import PreferenceRecord, PromptRecord, SFTRecord
from jaxrlhf.data.synthetic import WorldTokenizer
from jaxrlhf.models import chat

NO_THINKING = {"enable_thinking": False}
EMPTY_THINK = "<think>\n\n</think>\n\n"
HEADER = "<|im_start|>assistant\n"


def _text(tok, ids):
  return tok.decode(ids, skip_special_tokens=False)


# ------------------------------------------------------------------------------------------------ per-row arguments
def test_per_row_arguments_reach_the_prompt_and_the_responses(ours):
  with_kwargs = tokenize.encode_prompt(ours, PROMPT, template_kwargs=NO_THINKING)
  assert _text(ours, with_kwargs).endswith(USER["content"] + "<|im_end|>\n" + HEADER + EMPTY_THINK)
  without = _text(ours, tokenize.encode_prompt(ours, PROMPT))
  assert without.endswith(USER["content"] + "<|im_end|>\n" + HEADER) and "<think>" not in without
  assert _text(ours, tokenize.encode_prompt(ours, PROMPT, template_kwargs={"enable_thinking": True})) == without
  # Records carry them to tokenize_pair / tokenize_sft; a plain answer follows the closed think block.
  config = tokenize.TruncationConfig(max_length=200)
  pair = tokenize.tokenize_pair(PreferenceRecord(PROMPT, [PLAIN], [{**PLAIN, "content": "Nice."}],
                                                 chat_template_kwargs=NO_THINKING), ours, config)
  assert pair["prompt"].tolist() == with_kwargs
  assert _text(ours, pair["chosen"]) == "Lyon.<|im_end|>" and _text(ours, pair["rejected"]) == "Nice.<|im_end|>"
  sft = tokenize.tokenize_sft(SFTRecord(PROMPT, [PLAIN], chat_template_kwargs=NO_THINKING), ours, config)
  assert sft["prompt"].tolist() == with_kwargs
  assert tokenize.tokenize_sft({"prompt": PROMPT, "response": [PLAIN], "chat_template_kwargs": NO_THINKING}, ours,
                               config)["prompt"].tolist() == with_kwargs
  # A reasoning response renders its think block under the record's arguments too (enable_thinking=True here).
  assert tokenize.response_text_under_template(ours, [REASONED], PROMPT, template_kwargs={"enable_thinking": True}
                                               ) == f"<think>\n{THOUGHT}\n</think>\n\nParis."


def test_file_rows_carry_template_kwargs_in_every_chat_format(tmp_path):
  text = json.dumps(NO_THINKING)
  (pair,), _ = _read(tmp_path, [{"prompt": PROMPT, "chosen": "Paris.", "rejected": "Lyon.",
                                 "chat_template_kwargs": text}], "pairwise")
  (kway,), _ = _read(tmp_path, [{"prompt": PROMPT, "completions": [[PLAIN], [REASONED]], "best_index": 0,
                                 "chat_template_kwargs": NO_THINKING}], "kway")
  (prompt,), _ = _read(tmp_path, [{"prompt": PROMPT, "chat_template_kwargs": text}], "prompts")
  (sft,), _ = _read(tmp_path, [{"messages": [USER, PLAIN], "chat_template_kwargs": text}], "sft")
  for record in (pair, kway, prompt, sft):
    assert record.chat_template_kwargs == NO_THINKING, record
  assert (pair.prompt, pair.chosen, pair.rejected) == (PROMPT, "Paris.", "Lyon.")
  assert kway.completions == ([PLAIN], [REASONED])
  assert isinstance(prompt, PromptRecord) and prompt.prompt == PROMPT


def test_reasoning_under_enable_thinking_false_is_refused(ours):
  # The prompt closes an empty think block, the reasoning response opens a full one: the prompt's text is not the
  # start of the conversation's, so there is no continuation to train on. (TRL instead cuts the prompt back to the
  # common prefix, "...<|im_start|>assistant\n<think>\n", see the parity test below.)
  with pytest.raises(ValueError, match="not a continuation of the prompt's text"):
    tokenize.encode_response(ours, [REASONED], PROMPT, template_kwargs=NO_THINKING)
  with pytest.raises(ValueError, match="not a continuation of the prompt's text"):
    tokenize.tokenize_pair(PreferenceRecord(PROMPT, [REASONED], [PLAIN], chat_template_kwargs=NO_THINKING), ours,
                           tokenize.TruncationConfig(max_length=200))


def test_tokenizers_without_template_arguments_and_bad_arguments_are_refused():
  world = WorldTokenizer()  # Its apply_chat_template takes (messages, add_generation_prompt, tools) only.
  assert tokenize.encode_prompt(world, [USER])  # Without arguments it renders.
  with pytest.raises(ValueError, match="WorldTokenizer.apply_chat_template takes no chat template arguments"):
    tokenize.encode_prompt(world, [USER], template_kwargs=NO_THINKING)
  with pytest.raises(ValueError, match="chat_template_kwargs need a chat prompt"):
    tokenize.encode_prompt(world, "Capital of France?", template_kwargs=NO_THINKING)
  with pytest.raises(ValueError, match="chat_template_kwargs need a chat prompt"):
    PreferenceRecord("Capital of France?", "Paris.", "Lyon.", chat_template_kwargs=NO_THINKING)
  with pytest.raises(ValueError, match="'add_generation_prompt' is set by the renderer itself"):
    PromptRecord(PROMPT, chat_template_kwargs={"add_generation_prompt": False})
  with pytest.raises(ValueError, match=r"\['messages'\] are set by the renderer itself"):
    chat.render_chat("{{ messages }}", [USER], template_kwargs={"messages": []})
  assert PreferenceRecord(PROMPT, [PLAIN], [REASONED], chat_template_kwargs={}).chat_template_kwargs is None


# ------------------------------------------------------------------------------------------------ template defaults
def test_template_defaults_render_like_per_call_arguments(ours, smollm2):
  defaults = ours.with_template_defaults(NO_THINKING)
  assert defaults.apply_chat_template(PROMPT, True) == ours.apply_chat_template(PROMPT, True, enable_thinking=False)
  assert defaults.apply_chat_template(PROMPT, True).endswith(HEADER + EMPTY_THINK)
  # A per-call value (a row's chat_template_kwargs) overrides the default.
  assert defaults.apply_chat_template(PROMPT, True, enable_thinking=True) == ours.apply_chat_template(PROMPT, True)
  assert tokenize.encode_prompt(defaults, PROMPT, template_kwargs={"enable_thinking": True}) == (
      tokenize.encode_prompt(ours, PROMPT))
  assert ours.with_template_defaults({}) is ours
  # The lines the defaults add render nothing: a template that starts with text of its own (SmolLM2's, no
  # whitespace control) renders exactly as before.
  smol = smollm2.with_template_defaults({"unused": 1})
  for gen in (False, True):
    assert smol.apply_chat_template(PROMPT + [PLAIN], gen) == smollm2.apply_chat_template(PROMPT + [PLAIN], gen)
  # Values of every JSON kind, as template literals, render as the same value passed per call.
  source = "{{ a }}|{{ b }}|{{ c }}|{{ d | tojson }}|{{ e }}|{{ messages[0].content }}"
  values = {"a": 'say "hi"\n\\ é\t', "b": None, "c": 2.5, "d": {"k": [1, True, None, "é"]}, "e": -3}
  assert chat.render_chat(chat.template_with_defaults(source, values), [USER]) == chat.render_chat(
      source, [USER], template_kwargs=values)
  with pytest.raises(ValueError, match="is not a template variable name"):
    ours.with_template_defaults({"enable-thinking": False})


@pytest.mark.parity
def test_a_saved_tokenizer_carries_its_template_defaults(ours, tmp_path):
  from jaxrlhf.models.tokenizer import load_tokenizer
  defaults = ours.with_template_defaults(NO_THINKING)
  defaults.save_pretrained(tmp_path)
  reloaded = load_tokenizer(tmp_path)
  transformers_tok = hf_tokenizer(defaults, tmp_path, None)  # Its own saved template, not overridden.
  expected = ours.apply_chat_template(PROMPT, True, enable_thinking=False)
  assert reloaded.apply_chat_template(PROMPT, True) == expected
  assert transformers_tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True) == expected
  assert transformers_tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True,
                                              enable_thinking=True) == ours.apply_chat_template(PROMPT, True)
  conversation = PROMPT + [REASONED]
  assert transformers_tok.apply_chat_template(conversation, tokenize=False) == ours.apply_chat_template(conversation)


# ------------------------------------------------------------------------------------------------ TRL parity
@pytest.mark.parity
def test_enable_thinking_false_matches_transformers_and_trl(ours, reference, tmp_path):
  expected = reference.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True, enable_thinking=False)
  assert expected.endswith(HEADER + EMPTY_THINK)
  ids = tokenize.encode_prompt(ours, PROMPT, template_kwargs=NO_THINKING)
  assert ids == reference.encode(expected, add_special_tokens=False)
  nice = {**PLAIN, "content": "Nice."}
  trl = _trl({"prompt": PROMPT, "chosen": [PLAIN], "rejected": [nice], "chat_template_kwargs": NO_THINKING},
             reference)
  assert trl["prompt"] == expected
  # With thinking off, plain answers follow the closed think block in the prompt: TRL's responses are exactly ours
  # plus the "\n" after the end token.
  assert (trl["chosen"], trl["rejected"]) == ("Lyon.<|im_end|>\n", "Nice.<|im_end|>\n")
  # The same row read from a file (arguments as JSON text) and tokenized.
  (record,), _ = _read(tmp_path, [{"chosen": PROMPT + [PLAIN], "rejected": PROMPT + [nice],
                                   "chat_template_kwargs": json.dumps(NO_THINKING)}])
  example = tokenize.tokenize_pair(record, ours, tokenize.TruncationConfig(max_length=200))
  assert example["prompt"].tolist() == ids
  assert example["chosen"].tolist() == reference.encode(trl["chosen"][:-1], add_special_tokens=False)
  assert example["rejected"].tolist() == reference.encode(trl["rejected"][:-1], add_special_tokens=False)
  # Without the argument neither TRL's prompt nor ours has the think block.
  plain = _trl({"prompt": PROMPT, "chosen": [PLAIN], "rejected": [nice]}, reference)
  assert EMPTY_THINK not in plain["prompt"] and plain["prompt"].endswith(HEADER)
  assert tokenize.encode_prompt(ours, PROMPT) == reference.encode(plain["prompt"], add_special_tokens=False)
