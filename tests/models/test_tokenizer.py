"""Tokenizers and chat templates vs transformers (SmolLM2 GGUF, a saved HF folder) and hand-made goldens."""

import importlib.util
import json
import os
import re

import gguf
import jinja2
import pytest
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from conftest import require_asset
from jaxrlhf.models import chat
from jaxrlhf.models.tokenizer import (Tokenizer, _bytes_to_unicode, _special_tokens_processor, byte_level_bpe,
                                      load_tokenizer)

TEXTS = [
    "Hello world",
    " leading space and trailing space ",
    "Hello  world\n\n  indented\t\ttabs   \n",
    "digits 12345 + 678 = 99.5e-3, 2024-01-01",
    "naïve café, 日本語のテキスト, emoji 😀👍🏽, Ελληνικά, русский",
    "def f(x):\n    return x**2  # square\n\nprint(f(3))\n",
    "<|im_start|>user\nhi there<|im_end|>\n<|endoftext|>",
    "it's we'll THEY'RE don't",
    "",
    "     ",
    "a\r\nb\u00a0c\u200bd",
    "<repo_name>x<file_sep>",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name a color.\nJust one."}],
]


def _transformers():
  require_asset(importlib.util.find_spec("transformers") is not None, "transformers is not installed")
  os.environ["HF_HUB_OFFLINE"] = "1"
  import transformers
  return transformers


@pytest.fixture(scope="module")
def ours(smollm2_gguf):
  return load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
  """transformers' tokenizer built from the same GGUF."""
  return _transformers().AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)


@pytest.mark.parity
@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_ids_match_transformers(ours, reference, text):
  ids = ours.encode(text)
  assert ids == reference.encode(text, add_special_tokens=False)
  assert ours.encode(text, add_special_tokens=True) == reference.encode(text, add_special_tokens=True)
  assert ours.decode(ids, skip_special_tokens=False) == text
  assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)


@pytest.mark.parity
@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_smollm2_chat_matches_transformers(ours, reference, messages, add_generation_prompt):
  text = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
  expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
  assert text == expected
  assert ours.encode(text) == reference.encode(expected, add_special_tokens=False)


def test_smollm2_special_ids_and_rendered_chat(ours):
  # Hand-checked against the GGUF metadata: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2, pad = eos.
  assert (ours.vocab_size, ours.bos_id, ours.eos_id, ours.pad_id) == (49152, 1, 2, 2)
  assert ours.supports_system_role
  prompt = ours.apply_chat_template(CHATS[0], add_generation_prompt=True)
  assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                    "<|im_start|>assistant\n")
  ids = ours.encode(prompt)
  assert ids[0] == 1 and ids.count(2) == 2  # Special tokens stay whole.
  assert ours.decode(ids) == prompt.replace("<|im_start|>", "").replace("<|im_end|>", "")


@pytest.mark.parity
def test_hf_folder_round_trip(reference, tmp_path):
  reference.save_pretrained(tmp_path)
  tok = load_tokenizer(tmp_path)
  for text in TEXTS:
    assert tok.encode(text) == reference.encode(text, add_special_tokens=False)
    assert tok.encode(text, add_special_tokens=True) == reference.encode(text, add_special_tokens=True)
  for messages in CHATS:
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (len(reference), reference.bos_token_id,
                                                                   reference.eos_token_id, reference.pad_token_id)


@pytest.mark.parity
def test_save_pretrained_round_trips_through_both_loaders(ours, reference, tmp_path):
  # A GGUF-built tokenizer saved as a HF folder (what a stage writes next to its policy) reads back identically
  # in our loader and in transformers' AutoTokenizer.
  ours.save_pretrained(tmp_path)
  mine = load_tokenizer(tmp_path)
  theirs = _transformers().AutoTokenizer.from_pretrained(str(tmp_path))
  for text in TEXTS:
    expected = reference.encode(text, add_special_tokens=False)
    assert mine.encode(text) == expected and theirs.encode(text, add_special_tokens=False) == expected
    assert mine.encode(text, add_special_tokens=True) == reference.encode(text, add_special_tokens=True)
  for messages in CHATS:
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert mine.apply_chat_template(messages, add_generation_prompt=True) == expected
    assert theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
  assert (mine.vocab_size, mine.bos_id, mine.eos_id, mine.pad_id) == (ours.vocab_size, ours.bos_id, ours.eos_id,
                                                                      ours.pad_id)
  assert (theirs.eos_token_id, theirs.bos_token_id) == (ours.eos_id, ours.bos_id)


# A template that refuses system turns (as Gemma's does) and one that silently drops them; both use the
# special-token variables and raise_exception as transformers exposes them.
REJECTING = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
             "{{ raise_exception('System role not supported') }}{% endif %}"
             "<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
             "{% if add_generation_prompt %}<assistant>{% endif %}")
DROPPING = ("{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'] }}: {{ m['content'] }}\n"
            "{% endif %}{% endfor %}")
WHITESPACE = ("{% for m in messages %}\n  {% if m.role == 'user' %}\n    [U] {{ m.content | tojson }}\n"
              "  {% else %}\n    [A] {{ m.content }}\n  {% endif %}\n{% endfor %}")


def _tiny_tokenizer(template, add_bos=False):
  """A byte-level BPE over a few tokens: bytes needed by the tests + one merge, <s> and </s> as control."""
  tokens = ["<s>", "</s>", "h", "i", "Ġ", "hi", "Ġhi", "!"]
  backend = byte_level_bpe(tokens, ["h i", "Ġ hi"], [3, 3, 1, 1, 1, 1, 1, 1], "default")
  if add_bos:
    backend.post_processor = _special_tokens_processor("<s>", None, backend)
  return Tokenizer(backend, bos_token="<s>", eos_token="</s>", chat_template=template)


def test_system_role_detection():
  assert not _tiny_tokenizer(REJECTING).supports_system_role
  assert not _tiny_tokenizer(DROPPING).supports_system_role
  assert _tiny_tokenizer(WHITESPACE).supports_system_role
  with pytest.raises(jinja2.exceptions.TemplateError, match="System role not supported"):
    _tiny_tokenizer(REJECTING).apply_chat_template([{"role": "system", "content": "x"}])


@pytest.mark.parity
@pytest.mark.parametrize("template", [REJECTING, DROPPING, WHITESPACE])
def test_templates_render_like_transformers(template):
  _transformers()
  from transformers.utils.chat_template_utils import render_jinja_template
  messages = [{"role": "user", "content": 'say "hi" <b>'}, {"role": "assistant", "content": "hi!"}]
  for add_generation_prompt in (False, True):
    expected, _ = render_jinja_template([messages], chat_template=template, bos_token="<s>", eos_token="</s>",
                                        add_generation_prompt=add_generation_prompt)
    got = chat.render_chat(template, messages, add_generation_prompt,
                           special_tokens={"bos_token": "<s>", "eos_token": "</s>"})
    assert got == expected[0]


def test_tiny_bpe_goldens():
  tok = _tiny_tokenizer(REJECTING, add_bos=True)
  assert tok.encode("hi hi!") == [5, 6, 7]  # "hi", "Ġhi", "!" by the two merges.
  assert tok.encode("hi hi!", add_special_tokens=True) == [0, 5, 6, 7]
  assert tok.encode("<s>hi</s>") == [0, 5, 1]
  assert tok.decode([0, 5, 6, 1]) == "hi hi"
  assert tok.decode([0, 5, 6, 1], skip_special_tokens=False) == "<s>hi hi</s>"
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (0, 1, 1, 8)


def test_bad_messages_and_missing_template():
  tok = _tiny_tokenizer(DROPPING)
  with pytest.raises(ValueError, match=r"messages\[1\].*'role' and 'content'"):
    tok.apply_chat_template([{"role": "user", "content": "a"}, {"text": "b"}])
  with pytest.raises(ValueError, match="no chat_template"):
    _tiny_tokenizer(None).apply_chat_template([{"role": "user", "content": "a"}])


def _write_tokenizer_gguf(path, model="gpt2", add_bos=True, pre="default"):
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tokenizer_model(model)
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(["<s>", "</s>", "h", "i", "Ġ", "hi", "Ġhi", "!"])
  writer.add_token_types([3, 3, 1, 1, 1, 1, 1, 1])
  writer.add_token_merges(["h i", "Ġ hi"])
  writer.add_bos_token_id(0)
  writer.add_eos_token_id(1)
  writer.add_add_bos_token(add_bos)
  writer.add_chat_template(REJECTING)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.close()
  return path


def test_gguf_tokenizer_flags_and_template(tmp_path):
  tok = load_tokenizer(_write_tokenizer_gguf(tmp_path / "tok.gguf"))
  assert tok.encode("hi hi!") == [5, 6, 7]
  assert tok.encode("hi hi!", add_special_tokens=True) == [0, 5, 6, 7]
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 1)
  assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True) == (
      "<s><user>hi</s>\n<assistant>")
  assert not tok.supports_system_role
  no_bos = load_tokenizer(_write_tokenizer_gguf(tmp_path / "nobos.gguf", add_bos=False))
  assert no_bos.encode("hi", add_special_tokens=True) == [5]


def test_unsupported_gguf_tokenizer_model_and_bad_path(tmp_path):
  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model 'bert'"):
    load_tokenizer(_write_tokenizer_gguf(tmp_path / "wpm.gguf", model="bert"))
  # A SentencePiece vocabulary (tests/models/test_gguf_sentencepiece.py) needs its scores.
  with pytest.raises(ValueError, match=r"GGUF metadata field 'tokenizer\.ggml\.scores' is missing"):
    load_tokenizer(_write_tokenizer_gguf(tmp_path / "spm.gguf", model="llama"))
  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.pre 'tekken'"):
    load_tokenizer(_write_tokenizer_gguf(tmp_path / "tekken.gguf", pre="tekken"))
  with pytest.raises(ValueError, match="neither a .gguf file nor a tokenizer folder"):
    load_tokenizer(tmp_path / "nothing.bin")
  with pytest.raises(ValueError, match="has no tokenizer.json"):
    load_tokenizer(tmp_path)


def test_smollm_pre_tokenizer_splits_digits_like_llama_cpp():
  # llama.cpp's "smollm" pre-tokenizer isolates every digit before GPT-2's split, so the merge "Ġ 1" (and
  # "1 2") can never apply; with GPT-2's plain split " 12" is one chunk and both could.
  tokens, merges = ["Ġ", "1", "2", "Ġ1", "12"], ["Ġ 1", "1 2"]
  smollm = byte_level_bpe(tokens, merges, [1] * 5, "smollm")
  gpt2 = byte_level_bpe(tokens, merges, [1] * 5, "default")
  assert smollm.encode(" 12").ids == [0, 1, 2]
  assert gpt2.encode(" 12").ids == [3, 2]


def test_unset_special_token_is_undefined_in_templates():
  # transformers passes only the special tokens a tokenizer has; a None bos_token rendered as the text "None".
  template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
  tok = Tokenizer(_tiny_tokenizer(None).backend, eos_token="</s>", chat_template=template)
  assert tok.bos_id is None
  assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi</s>"
  assert chat.render_chat("{{ bos_token is defined }}", [], special_tokens={"bos_token": None}) == "False"


GENERATION = ("{% for m in messages %}{% if m.role == 'assistant' %}<a>{% generation %}{% set n = m.content | length %}"
              "{{ m.content }}:{{ n }}{% endgeneration %}</a>\n{% else %}<{{ m.role }}>{{ m.content }}\n{% endif %}"
              "{% endfor %}{% if add_generation_prompt %}<a>{% endif %}")


def test_generation_blocks_render_their_body():
  # `{% generation %}` marks assistant text for transformers' assistant masks; it renders as its body (a `set` inside
  # stays local to the block).
  messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
  assert chat.render_chat(GENERATION, messages, add_generation_prompt=True) == "<user>hi\n<a>yo:2</a>\n<a>"


@pytest.mark.parity
def test_generation_blocks_render_like_transformers():
  _transformers()
  from transformers.utils.chat_template_utils import render_jinja_template
  messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
  for add_generation_prompt in (False, True):
    expected, _ = render_jinja_template([messages], chat_template=GENERATION,
                                        add_generation_prompt=add_generation_prompt)
    assert chat.render_chat(GENERATION, messages, add_generation_prompt) == expected[0]


def _write_llama3_gguf(path, add_bos=None):
  """A byte-level vocabulary whose token "Ġabc" no merge sequence reaches (merges only make "Ġa" and "bc")."""
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("llama-bpe")
  writer.add_token_list(["<|begin_of_text|>", "Ġ", "a", "b", "c", "Ġa", "bc", "Ġabc"])
  writer.add_token_types([3] + [1] * 7)
  writer.add_token_merges(["Ġ a", "b c"])
  writer.add_bos_token_id(0)
  writer.add_eos_token_id(0)
  if add_bos is not None:
    writer.add_add_bos_token(add_bos)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.close()
  return path


def test_llama3_pre_tokenizer_takes_vocabulary_words_whole(tmp_path):
  # llama.cpp's llama3 group ("llama3", "llama-v3", "llama-bpe", "falcon3") looks a pre-token up in the vocabulary
  # before merging, as Llama 3's tokenizer.json ("ignore_merges": true) does: " abc" is the one token "Ġabc" (7), not
  # the merges' "Ġa" "bc" (5, 6). Other pre-tokenizers merge as usual. It also adds BOS unless the file says not to.
  tokens, merges = ["Ġ", "a", "b", "c", "Ġa", "bc", "Ġabc"], ["Ġ a", "b c"]
  assert byte_level_bpe(tokens, merges, [1] * 7, "llama-bpe").encode(" abc").ids == [6]
  assert byte_level_bpe(tokens, merges, [1] * 7, "falcon3").encode(" abc").ids == [6]
  assert byte_level_bpe(tokens, merges, [1] * 7, "qwen2").encode(" abc").ids == [4, 5]
  assert byte_level_bpe(tokens, merges, [1] * 7, "default").encode(" abc").ids == [4, 5]
  tok = load_tokenizer(_write_llama3_gguf(tmp_path / "l3.gguf"))
  assert tok.encode(" abc") == [7] and tok.encode(" abc", add_special_tokens=True) == [0, 7]
  assert tok.encode(" abcabc") == [5, 6, 2, 6]  # "abcabc" is no token: merged as usual
  no_bos = load_tokenizer(_write_llama3_gguf(tmp_path / "nobos.gguf", add_bos=False))
  assert no_bos.encode(" abc", add_special_tokens=True) == [7]


@pytest.mark.parity
def test_llama3_vocabulary_saved_reads_back_in_transformers(tmp_path):
  # The whole-word lookup is part of the saved tokenizer.json, so transformers reads the same ids back.
  mine = load_tokenizer(_write_llama3_gguf(tmp_path / "l3.gguf"))
  mine.save_pretrained(tmp_path / "saved")
  theirs = _transformers().AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
  for text in (" abc", " abcabc", "abc abc"):
    assert theirs.encode(text, add_special_tokens=False) == mine.encode(text)
  assert theirs.encode(" abc", add_special_tokens=False) == [7]


def test_named_chat_templates_need_a_default(tmp_path):
  base = _tiny_tokenizer(DROPPING)
  named = [{"name": "tool_use", "template": REJECTING}, {"name": "default", "template": DROPPING}]
  for folder, templates in (("with", named), ("without", named[:1])):
    base.save_pretrained(tmp_path / folder)
    config_file = tmp_path / folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = templates
    config_file.write_text(json.dumps(config))
  assert load_tokenizer(tmp_path / "with").chat_template == DROPPING
  config_file = tmp_path / "with" / "tokenizer_config.json"
  config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "chat_template": {"default": DROPPING}}))
  with pytest.raises(ValueError, match=r"tokenizer_config\.json: chat_template is a JSON dict, expected a string"):
    load_tokenizer(tmp_path / "with")  # was loaded, then failed at first use with "unhashable type: 'dict'"
  # transformers refuses to render a chat for such a folder; a template-less load would silently change prompts.
  with pytest.raises(ValueError, match=r"tokenizer_config\.json.*named templates \['tool_use'\] but no 'default'"):
    load_tokenizer(tmp_path / "without")


def _write_deepseek_gguf(path):
  """A DeepSeek-R1-Distill-Qwen-style vocabulary: llama.cpp's converter writes added tokens as raw text, here
  outside GPT-2's byte alphabet (fullwidth bars, '▁', a space)."""
  writer = gguf.GGUFWriter(str(path), "qwen2")
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("deepseek-r1-qwen")
  writer.add_token_list(["a", "b", "Ġ", "ab", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>",
                         "<think>", "<tool call>"])
  writer.add_token_types([1, 1, 1, 1, 3, 3, 3, 4, 4])  # 3 control, 4 user-defined
  writer.add_token_merges(["a b"])
  writer.add_bos_token_id(4)
  writer.add_eos_token_id(5)
  writer.add_add_bos_token(True)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.close()
  return path


def test_raw_added_tokens_keep_their_ids_and_match_whole(tmp_path):
  # llama.cpp matches control and user-defined tokens whole, by their raw text, with their own ids; so does the
  # model's tokenizer.json (the same vocabulary with those tokens as added tokens). Respelled byte by byte they
  # were lost: the BOS/EOS lookup failed and '<｜User｜>' was cut into bytes.
  tok = load_tokenizer(_write_deepseek_gguf(tmp_path / "ds.gguf"))
  assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (4, 5, 9)
  text = "<｜User｜>ab <tool call><think>"
  assert tok.encode(text) == [6, 3, 2, 8, 7]
  assert tok.encode("ab", add_special_tokens=True) == [4, 3]
  assert tok.decode([4, 6, 3, 2, 8, 5]) == "ab <tool call>"  # control tokens skipped, user-defined kept
  assert tok.decode([4, 6, 3, 2, 8, 5], skip_special_tokens=False) == (
      "<｜begin▁of▁sentence｜><｜User｜>ab <tool call><｜end▁of▁sentence｜>")
  reference = tokenizers.Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "Ġ": 2, "ab": 3}, merges=[("a", "b")]))
  reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  reference.decoder = decoders.ByteLevel()
  reference.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t in ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>")])
  reference.add_tokens([AddedToken(t, normalized=False) for t in ("<think>", "<tool call>")])
  assert reference.get_vocab(with_added_tokens=True) == tok.backend.get_vocab(with_added_tokens=True)
  assert reference.encode(text).ids == tok.encode(text)


def test_saved_truncation_and_padding_do_not_cut_or_pad(tmp_path):
  # tokenizers saves enable_truncation / enable_padding into tokenizer.json; transformers' encode ignores them
  # unless asked, and so must ours (the pipeline's truncation policy owns lengths): no silent cut, no pad ids.
  for name, setup in (("cut", lambda b: b.enable_truncation(max_length=2)),
                      ("pad", lambda b: b.enable_padding(pad_id=1, pad_token="</s>", length=6))):
    _tiny_tokenizer(DROPPING).save_pretrained(tmp_path / name)
    backend = tokenizers.Tokenizer.from_file(str(tmp_path / name / "tokenizer.json"))
    setup(backend)
    backend.save(str(tmp_path / name / "tokenizer.json"))
    assert load_tokenizer(tmp_path / name).encode("hi hi! hi") == [5, 6, 7, 6], name


def test_gguf_chat_template_must_be_a_string(tmp_path):
  writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
  writer.add_tokenizer_model("gpt2")
  writer.add_token_list(["<s>", "</s>", "h", "i", "hi"])
  writer.add_token_merges(["h i"])
  writer.add_eos_token_id(1)
  writer.add_uint32("tokenizer.chat_template", 5)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.close()
  with pytest.raises(ValueError, match=r"t\.gguf: GGUF tokenizer\.chat_template is int, expected a string"):
    load_tokenizer(tmp_path / "t.gguf")


def _llama_cpp_pieces(text, patterns):
  """llama.cpp's unicode_regex_split: each pattern splits every piece of the previous one into its matches and the
  text between them."""
  import regex  # pylint: disable=g-import-not-at-top  (transformers' dependency, for \p{..} classes)
  pieces = [text]
  for pattern in patterns:
    split = []
    for piece in pieces:
      at = 0
      for match in regex.finditer(pattern, piece):
        split += [piece[at:match.start()]] if match.start() > at else []
        split.append(match.group())
        at = match.end()
      split += [piece[at:]] if at < len(piece) else []
    pieces = split
  return pieces


@pytest.mark.parity
def test_smollm2_pre_tokens_follow_llama_cpp(ours):
  # SmolLM2's "smollm" pre-tokenizer is llama.cpp's two regexes in turn (every digit alone, then GPT-2's split), as
  # the model's tokenizer.json (Digits + ByteLevel) does. transformers' GGUF loader knows no "smollm" and applies
  # GPT-2's split alone, so "  3" or "x\n\n6" tokenize differently there ("ĠĠ" vs "Ġ" "Ġ"): it is no reference here.
  require_asset(importlib.util.find_spec("regex") is not None, "regex is not installed")
  patterns = [r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"]
  byte_of = {c: b for b, c in _bytes_to_unicode().items()}
  special = re.compile(r"<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>|<repo_name>|<file_sep>")
  texts = [t for t in TEXTS if not special.search(t)]  # special tokens are split off before the pre-tokenizer
  for text in texts + ["a  3", "x\n\n6 y", "\t 42\u00a0 7", "it's  12'll"]:
    pieces = [bytes(byte_of[c] for c in piece).decode("utf-8")
              for piece, _ in ours.backend.pre_tokenizer.pre_tokenize_str(text)]
    assert pieces == _llama_cpp_pieces(text, patterns), text
  assert ours.encode("a  3") == [81, 256, 35]  # "a", "ĠĠ", "3"
