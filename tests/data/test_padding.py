"""jaxrlhf/data/padding.py against hand-written goldens: left / right padding, bucket widths at their boundaries, and
truncation that keeps the right end and is logged, never silent."""

import logging

import numpy as np
import pytest

from jaxrlhf.data import padding
from jaxrlhf.data.synthetic import WorldTokenizer


def test_pad_rows_right_pads_golden():
  ids, mask = padding.pad_rows([[5, 6, 7], [8], []], pad_id=-1)
  assert ids.tolist() == [[5, 6, 7], [8, -1, -1], [-1, -1, -1]] and ids.dtype == np.int32
  assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]] and mask.dtype == np.int32
  ids, mask = padding.pad_rows([[5, 6]], width=4)
  assert ids.tolist() == [[5, 6, 0, 0]] and mask.tolist() == [[1, 1, 0, 0]]
  with pytest.raises(ValueError, match=r"rows\[1\] has 3 ids, more than width 2"):
    padding.pad_rows([[1], [1, 2, 3]], width=2)


def test_pad_prompts_left_pads_golden():
  ids, mask = padding.pad_prompts([[5, 6, 7], [8]], pad_id=9, width=4)
  assert ids.tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]] and mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
  with pytest.raises(ValueError, match="more than width=2"):
    padding.pad_prompts([[5, 6, 7]], width=2)
  with pytest.raises(ValueError, match="non-empty"):
    padding.pad_prompts([[5], []])


@pytest.mark.parametrize("length,multiple,buckets,width", [
    (1, 16, None, 16), (15, 16, None, 16), (16, 16, None, 16), (17, 16, None, 32), (32, 16, None, 32),
    (5, 4, None, 8), (8, 4, None, 8),
    (16, 16, (32, 16), 16), (17, 16, (32, 16), 32), (32, 16, (64, 32, 16), 32), (1, 16, (8,), 8)])
def test_bucket_width_at_the_boundaries(length, multiple, buckets, width):
  assert padding.bucket_width(length, buckets, multiple) == width


def test_bucket_width_errors():
  with pytest.raises(ValueError, match="exceeds the largest bucket 32"):
    padding.bucket_width(33, (16, 32))
  with pytest.raises(ValueError, match="length must be >= 1"):
    padding.bucket_width(0)
  with pytest.raises(ValueError, match="multiple must be >= 1, got 0"):
    padding.bucket_width(5, multiple=0)
  with pytest.raises(ValueError, match="multiple must be >= 1, got -4"):  # Was width 4, shorter than the prompt.
    padding.bucket_width(5, multiple=-4)
  ids, _ = padding.pad_prompts([[1] * 17], buckets=(16, 32))
  assert ids.shape == (1, 32)


def test_encode_prompts_keeps_the_end_and_logs_the_cut(caplog):
  tok = WorldTokenizer()
  text = " ".join(tok.decode([i]) for i in range(10, 30))  # 20 tokens
  full = tok.encode(text)
  assert len(full) == 20
  with caplog.at_level(logging.WARNING):
    ids, mask = padding.encode_prompts(tok, [text, tok.decode([10])], 8)
  assert ids[0].tolist() == full[-8:] and mask[0].all()
  assert ids[1].tolist() == [tok.pad_id] * 7 + [10] and mask[1].tolist() == [0] * 7 + [1]
  assert "1 of 2 prompts are longer than 8 tokens and keep their last 8 (longest 20)" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    padding.encode_prompts(tok, [text], 20)  # exactly at the width: nothing cut, nothing logged
  assert not caplog.text
  with pytest.raises(ValueError, match="width must be >= 1"):
    padding.encode_prompts(tok, [text], 0)


def test_encode_responses_keep_the_start_and_log_the_cut(caplog):
  tok = WorldTokenizer()
  text = " ".join(tok.decode([i]) for i in range(10, 17))  # 7 tokens + eos = 8
  full = tok.encode(text) + [tok.eos_id]
  with caplog.at_level(logging.WARNING):
    ids, mask = padding.encode_responses(tok, [text], 8)  # exactly at the width: eos kept, nothing logged
  assert ids[0].tolist() == full and mask[0].all() and not caplog.text
  with caplog.at_level(logging.WARNING):
    ids, mask = padding.encode_responses(tok, [text, tok.decode([10])], 5)
  assert ids.tolist() == [full[:5], [10, tok.eos_id] + [tok.pad_id] * 3]
  assert mask.tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
  assert "1 of 2 responses are longer than 5 tokens" in caplog.text and "(longest 8)" in caplog.text
