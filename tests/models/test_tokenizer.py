"""Tokenizers and chat templates vs transformers (SmolLM2 GGUF, a saved HF folder) and hand-made goldens."""

import importlib.util
import os

import gguf
import jinja2
import pytest

from conftest import require_asset
from jaxrlhf.models import chat
from jaxrlhf.models.tokenizer import Tokenizer, _special_tokens_processor, byte_level_bpe, load_tokenizer

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
  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model 'llama'"):
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
