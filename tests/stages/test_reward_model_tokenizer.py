"""A reward model folder keeps the tokenizer it was trained with, and a stage that feeds it another tokenizer's ids
is stopped: `artifacts.check_reward_tokenizer` refuses another vocabulary naming the config key, only notes another
chat template, and skips folders without a tokenizer; the preference stage's reward-model margins go through it."""

import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data import adapters
from jaxrlhf.models import load_tokenizer
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble
from jaxrlhf.models.tokenizer import Tokenizer, _bytes_to_unicode, byte_level_bpe
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import inputs as inputs_lib
import tiny_chat_model


def _other_vocabulary() -> Tokenizer:
  """The tiny chat model's byte tokenizer with its two markers swapped: the same tokens, other ids."""
  byte_chars = _bytes_to_unicode()
  tokens = [byte_chars[b] for b in range(256)] + ["<|im_end|>", "<|im_start|>"]
  return Tokenizer(byte_level_bpe(tokens, [], [1] * 256 + [3, 3], "default"), eos_token="<|im_end|>",
                   chat_template=tiny_chat_model.CHATML)


@pytest.fixture(scope="module")
def rm_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("rm_tokenizer")
  tok = tiny_chat_model.byte_tokenizer()
  config = ModelConfig(vocab_size=tok.vocab_size, **tiny_chat_model.SIZES)
  state = nnx.state(RewardEnsemble(config, HeadConfig(), 1, rngs=nnx.Rngs(0)))
  with_tok = artifacts.save_reward_model(str(root / "with"), config, HeadConfig(), 1, state, tokenizer=tok)
  without = artifacts.save_reward_model(str(root / "without"), config, HeadConfig(), 1, state)
  return with_tok, without


def test_the_folder_keeps_the_tokenizer_it_was_given(rm_dirs):
  with_tok, without = rm_dirs
  saved = load_tokenizer(with_tok)
  tok = tiny_chat_model.byte_tokenizer()
  assert saved.backend.get_vocab() == tok.backend.get_vocab() and saved.chat_template == tok.chat_template
  assert artifacts.saved_tokenizer(with_tok) == with_tok and artifacts.saved_tokenizer(without) == ""


def test_another_vocabulary_is_refused_another_template_noted(rm_dirs, capsys):
  with_tok, without = rm_dirs
  tok = tiny_chat_model.byte_tokenizer()
  assert artifacts.check_reward_tokenizer(with_tok, tok, "rewards[0].reward_model") == with_tok
  assert "note" not in capsys.readouterr().out
  with pytest.raises(ConfigError, match=r"^rewards\[1\]\.reward_model: the reward model .* another vocabulary"):
    artifacts.check_reward_tokenizer(with_tok, _other_vocabulary(), "rewards[1].reward_model")
  artifacts.check_reward_tokenizer(with_tok, tok.with_chat_template("{{ messages[0].content }}"), "reward_model")
  assert "[reward_model] note: the reward model" in capsys.readouterr().out
  # Nothing to compare against: a folder without a tokenizer, or the world's tokenizer (no vocabulary object).
  assert artifacts.check_reward_tokenizer(without, _other_vocabulary(), "reward_model") == without
  assert artifacts.check_reward_tokenizer(with_tok, object(), "reward_model") == with_tok


def test_reward_model_margins_refuse_another_vocabulary(rm_dirs, tmp_path):
  with_tok, _ = rm_dirs
  path = str(tmp_path / "pairs.jsonl")
  adapters.write_jsonl(path, [{"prompt": "Hi", "chosen": "Hello.", "rejected": "No."}] * 2)
  data = from_config(dict(source="files", paths=(path,), max_length=32, batch_size=2), inputs_lib.DataSpec)
  records = inputs_lib.read_files(data)[0]
  margins = inputs_lib.reward_margins(with_tok, records, tiny_chat_model.byte_tokenizer(), data)
  assert margins.shape == (len(records),) and np.isfinite(margins).all()
  with pytest.raises(ConfigError, match=r"^data\.reward_model: the reward model .* another vocabulary"):
    inputs_lib.reward_margins(with_tok, records, _other_vocabulary(), data)
