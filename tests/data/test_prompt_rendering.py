"""Prompt records -> left-padded generation ids with SmolLM2's own chat template (checked against transformers'
rendering of the same GGUF), the reported truncation, and completions decoded back to text."""

import logging
import os

import numpy as np
import pytest

from jaxrlhf.data import padding, prompts
from jaxrlhf.data.records import PromptRecord
from jaxrlhf.data.synthetic.tokenizer import WorldTokenizer
from jaxrlhf.models.tokenizer import Tokenizer, load_tokenizer

CHATS = [
    [{"role": "user", "content": "Tom has 3 apples. He gets 4 more apples. How many apples does Tom have now? "
                                 "Answer with just the number."}],
    [{"role": "system", "content": "You are a calculator."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
]
TEXT = "The capital of France is"


@pytest.fixture(scope="module")
def ours(smollm2_gguf):
  return load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
  """transformers' tokenizer built from the same GGUF (its own Jinja rendering of the GGUF's chat template)."""
  os.environ["HF_HUB_OFFLINE"] = "1"
  import transformers  # pylint: disable=g-import-not-at-top
  return transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)


def _rows(ids, mask):
  return [row[m > 0].tolist() for row, m in zip(ids, mask)]


@pytest.mark.parity
def test_chat_and_text_prompts_render_like_the_template(ours, reference):
  records = [PromptRecord(c, source=f"f.jsonl:{i + 1}") for i, c in enumerate(CHATS)] + [PromptRecord(TEXT)]
  ids, mask, report = prompts.encode_prompt_records(ours, records, 128)
  expected_texts = [reference.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CHATS]
  assert expected_texts[0].endswith("<|im_start|>assistant\n")
  assert [prompts.prompt_text(ours, r) for r in records] == expected_texts + [TEXT]
  expected = [reference.encode(t, add_special_tokens=False) for t in expected_texts + [TEXT]]
  assert _rows(ids, mask) == expected
  # Left-padded to max_length with the pad id (SmolLM2: pad = eos = 2), prompts flush right.
  assert ids.shape == mask.shape == (3, 128) and ids.dtype == mask.dtype == np.int32
  for row, m, e in zip(ids, mask, expected):
    assert m.tolist() == [0] * (128 - len(e)) + [1] * len(e)
    assert (row[:128 - len(e)] == ours.pad_id).all()
  lengths = [len(e) for e in expected]
  assert report == {"num_prompts": 3, "truncated": 0, "max_length": max(lengths), "mean_length": np.mean(lengths),
                    "limit": 128, "width": 128}
  # "always" wraps a text prompt as one user message; "never" encodes it raw, as "auto" does.
  always, always_mask, _ = prompts.encode_prompt_records(ours, [TEXT], 128, chat_template="always")
  assert _rows(always, always_mask) == [reference.apply_chat_template(
      [{"role": "user", "content": TEXT}], tokenize=True, add_generation_prompt=True)["input_ids"]]
  never, never_mask, _ = prompts.encode_prompt_records(ours, [TEXT], 128, chat_template="never")
  assert _rows(never, never_mask) == [expected[2]]


def test_pad_to_longest_is_a_multiple_of_16(ours):
  ids, mask, report = prompts.encode_prompt_records(ours, [TEXT, CHATS[0]], 256, pad_to="longest")
  longest = max(int(m.sum()) for m in mask)
  assert ids.shape[1] == report["width"] == -(-longest // 16) * 16 and mask[:, 0].sum() < 2
  ids, _, report = prompts.encode_prompt_records(ours, [CHATS[1]], 20, pad_to="longest")
  assert ids.shape[1] == report["width"] == 20  # Capped at max_length.


def test_truncation_keeps_the_tail_and_is_reported(ours, caplog):
  full = ours.encode(ours.apply_chat_template(CHATS[1], add_generation_prompt=True))
  short = ours.encode(TEXT)
  limit = len(full) - 5
  assert len(short) < limit
  with caplog.at_level(logging.WARNING):
    ids, mask, report = prompts.encode_prompt_records(ours, [CHATS[1], TEXT, CHATS[1]], limit)
  assert _rows(ids, mask) == [full[-limit:], short, full[-limit:]]
  tail = ours.encode("<|im_start|>assistant\n")
  assert mask[0].all() and _rows(ids, mask)[0][-len(tail):] == tail
  assert report == {"num_prompts": 3, "truncated": 2, "max_length": len(full),
                    "mean_length": (2 * len(full) + len(short)) / 3, "limit": limit, "width": limit}
  assert f"2 of 3 prompts are longer than {limit} tokens" in caplog.text


def test_rendering_errors_name_the_record(ours):
  record = PromptRecord(CHATS[0], source="q.jsonl:7")
  with pytest.raises(ValueError, match=r"q\.jsonl:7: a chat prompt needs the chat template"):
    prompts.encode_prompt_records(ours, [PromptRecord(TEXT), record], 64, chat_template="never")
  no_template = Tokenizer(ours.backend, eos_token="<|im_end|>")
  with pytest.raises(ValueError, match=r"q\.jsonl:7: this tokenizer has no chat_template"):
    prompts.encode_prompt_records(no_template, [record], 64)
  with pytest.raises(ValueError, match=r"prompts\[0\]: .*no chat_template"):
    prompts.encode_prompt_records(no_template, [CHATS[0]], 64)
  with pytest.raises(ValueError, match="chat_template must be one of"):
    prompts.encode_prompt_records(ours, [TEXT], 64, chat_template="yes")
  with pytest.raises(ValueError, match="pad_to must be one of"):
    prompts.encode_prompt_records(ours, [TEXT], 64, pad_to="bucket")


@pytest.mark.parity
def test_decode_completions_round_trip(ours, reference):
  texts = ["12", "The answer is 7.", " naïve café 😀\nsecond line", ""]
  rows = [ours.encode(t) + [ours.eos_id] for t in texts]
  tokens, mask = padding.pad_rows(rows, width=32, pad_id=ours.pad_id)
  # A row that ran out of tokens before its end token decodes whole; tokens after an end token are cut.
  cut = ours.encode("Seven") + [ours.eos_id] + ours.encode(" junk")
  tokens = np.concatenate([tokens, padding.pad_rows([ours.encode("no end 5"), cut], 32, ours.pad_id)[0]])
  mask = np.concatenate([mask, np.ones((2, 32), np.int32) * (np.arange(32) < [[3], [len(cut)]])])
  decoded = prompts.decode_completions(ours, tokens, mask)
  assert decoded == texts + [reference.decode(ours.encode("no end 5")[:3]), "Seven"]
  assert decoded[:4] == [reference.decode(r, skip_special_tokens=True) for r in rows]
  # Other end tokens ("<|endoftext|>" = 0) cut too when named.
  other = np.asarray([ours.encode("ab") + [0] + ours.encode("cd")], np.int32)
  assert prompts.decode_completions(ours, other, np.ones_like(other), eos_ids=(0, ours.eos_id)) == ["ab"]
  with pytest.raises(ValueError, match=r"must be \(R, N\) of equal shape"):
    prompts.decode_completions(ours, tokens, mask[:, :3])


def test_decode_completions_equals_the_previous_reward_decoding_on_the_world():
  # reward_sources decoded every masked token with skip_special_tokens=True; the world's eos is special, so
  # stripping it changes nothing there (the BLEU / Python rewards of the world runs stay bit-identical).
  tok = WorldTokenizer()
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, tok.vocab_size, (16, 12))
  tokens[tokens == tok.eos_id] = tok.unk_id  # generate emits no token after an end token.
  lengths = rng.integers(0, 13, 16)
  mask = (np.arange(12) < lengths[:, None]).astype(np.int32)
  for r, n in enumerate(lengths):
    if n and r % 2:
      tokens[r, n - 1] = tok.eos_id  # Rows end with eos as generate lays them out, or run out.
  previous = [tok.decode([int(t) for t, m in zip(row, mrow) if m > 0], skip_special_tokens=True)
              for row, mrow in zip(tokens, mask)]
  assert prompts.decode_completions(tok, tokens, mask) == previous
