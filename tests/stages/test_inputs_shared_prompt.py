"""data.shared_prompt="auto": shared-prompt rows are chosen exactly when the FLOPs estimate says they pay."""

import pytest

from jaxrlhf.config import from_config
from jaxrlhf.data.records import PreferenceRecord
from jaxrlhf.models import ModelConfig
from jaxrlhf.stages import inputs

MODEL = ModelConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16, mlp_dim=64)


class CharTokenizer:
  """One token per character (ids 2..), eos 1, pad 0."""
  eos_id, pad_id, bos_id = 1, 0, None

  def encode(self, text, add_special_tokens=False):
    return [2 + (ord(ch) % 60) for ch in text]


def _data(**kw):
  return from_config(dict(batch_size=4, **kw), inputs.DataSpec, path="config.data")


def _records(prompt_len, response_len, n=8):
  return [PreferenceRecord(prompt="p" * prompt_len, chosen="c" * response_len, rejected="r" * response_len)
          for _ in range(n)]


@pytest.mark.parametrize("with_lm_head", [False, True])
def test_auto_shares_long_prompts_and_not_long_responses(with_lm_head):
  # Buckets as tight as the data: only the prompt's repetition can be saved.
  data = _data(max_length=64, buckets=(16, 32, 48, 64))
  long_prompt = inputs.choose_shared_prompt(data, _records(40, 7), CharTokenizer(), MODEL,
                                              with_lm_head=with_lm_head)
  long_responses = inputs.choose_shared_prompt(data, _records(2, 29), CharTokenizer(), MODEL,
                                                 with_lm_head=with_lm_head)
  assert long_prompt[0] and long_prompt[1]["cost_ratio"] < inputs.SHARED_PROMPT_MAX_COST
  # 2 + 30 = 32 fits the bucket 32 exactly; shared 2 + 30 + 30 = 62 pads to 64: no saving, more attention.
  assert not long_responses[0] and long_responses[1]["cost_ratio"] > 1.0
  assert long_prompt[1]["mode"] == "auto"


def test_on_and_off_are_obeyed_without_measuring():
  for mode in ("on", "off"):
    used, report = inputs.choose_shared_prompt(_data(shared_prompt=mode), [], CharTokenizer(), MODEL,
                                                 with_lm_head=False)
    assert used == (mode == "on") and report == {"mode": mode, "used": mode == "on"}


def test_invalid_mode_names_the_key():
  with pytest.raises(Exception, match="shared_prompt"):
    _data(shared_prompt="always")
