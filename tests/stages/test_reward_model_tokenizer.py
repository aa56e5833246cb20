"""A reward model folder keeps the tokenizer it was trained with, and a stage that feeds it another tokenizer's ids
is stopped: `artifacts.check_reward_tokenizer` refuses another vocabulary naming the config key, only notes another
chat template, refuses a real-text model fed the synthetic world's tokens and ids past a model's embedding table
(folders without a tokenizer); every stage that scores with a saved reward or value model goes through it."""

import jax
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
  # A folder without a tokenizer is checked by its embedding size alone: the same size passes.
  assert artifacts.check_reward_tokenizer(without, _other_vocabulary(), "reward_model") == without


def test_world_tokens_and_ids_past_the_embedding_are_refused(rm_dirs, tmp_path):
  with_tok, _ = rm_dirs
  world = inputs_lib.make_world({})
  with pytest.raises(ConfigError, match=r"^reward_model: .* tokenized by its saved tokenizer .* synthetic world's"):
    artifacts.check_reward_tokenizer(with_tok, world.tokenizer, "reward_model")
  # A world-sized model without a tokenizer: the world's ids fit, the byte tokenizer's 258 do not.
  small = ModelConfig(vocab_size=world.tokenizer.vocab_size, **tiny_chat_model.SIZES)
  small_dir = artifacts.save_reward_model(str(tmp_path / "small"), small, HeadConfig(), 1,
                                          nnx.state(RewardEnsemble(small, HeadConfig(), 1, rngs=nnx.Rngs(0))))
  assert artifacts.reward_vocab_size(small_dir) == world.tokenizer.vocab_size
  assert artifacts.check_reward_tokenizer(small_dir, world.tokenizer, "reward_model") == small_dir
  with pytest.raises(ConfigError, match=rf"^values\[0\]\.value_model: the reward model .* embeds "
                                        rf"{world.tokenizer.vocab_size} token ids but this stage's tokenizer has 258"):
    artifacts.check_reward_tokenizer(small_dir, tiny_chat_model.byte_tokenizer(), "values[0].value_model")
  # A Hugging Face folder's size is its config.json's.
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  (hf_dir / "config.json").write_text('{"architectures": ["LlamaForSequenceClassification"], "vocab_size": 200}')
  assert artifacts.reward_vocab_size(str(hf_dir)) == 200 and artifacts.reward_vocab_size(str(tmp_path)) is None


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


def _refusal(fn, key):
  with pytest.raises(ConfigError, match="^" + key.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")
                     + r": the reward model "):
    fn()


def test_every_stage_scoring_with_a_saved_model_checks_it(rm_dirs, tmp_path):
  """reward_eval and preference_strength with an explicit data.tokenizer, the probe's targets, value_train's
  reward model, vas_decode's value models and PPO's critic: each stops on a model trained on other tokens, before
  any model runs."""
  from jaxrlhf.stages import preference_strength, probe, reward_eval, rl, value_train, vas_decode
  with_tok, _ = rm_dirs
  other_dir = str(tmp_path / "other_tokenizer")
  _other_vocabulary().save_pretrained(other_dir)
  path = str(tmp_path / "pairs.jsonl")
  adapters.write_jsonl(path, [{"prompt": "Hi", "chosen": "Hello.", "rejected": "No."}] * 2)
  data = dict(source="files", paths=(path,), max_length=32, batch_size=2, tokenizer=other_dir)
  _refusal(lambda: reward_eval.run(from_config(dict(reward_model=with_tok, data=data, split="all"),
                                               reward_eval.RewardEvalConfig), str(tmp_path / "eval"), {}),
           "reward_model")
  _refusal(lambda: preference_strength.run(from_config(dict(reward_model=with_tok, data=data),
                                                       preference_strength.PreferenceStrengthConfig),
                                           str(tmp_path / "strength"), {}), "reward_model")
  _refusal(lambda: probe.run(from_config(dict(targets=(dict(name="real", reward_model=with_tok),), num_fit=8,
                                              num_test=8), probe.ProbeConfig), str(tmp_path / "probe"), {}),
           "targets[real].reward_model")
  world = inputs_lib.make_world({})
  _refusal(lambda: value_train.reward_fn(from_config(dict(policy=str(tmp_path), reward="reward_model",
                                                          reward_model=with_tok), value_train.ValueTrainConfig),
                                         world, {}), "reward_model")
  _refusal(lambda: vas_decode.run(from_config(dict(policy=str(tmp_path), values=(dict(value_model=with_tok),)),
                                              vas_decode.VASDecodeConfig), str(tmp_path / "vas"), {}),
           "values[0].value_model")
  _refusal(lambda: rl.load_critic(with_tok, {}, _other_vocabulary()), "value_model")
  factory, params = rl.load_critic(with_tok, {}, tiny_chat_model.byte_tokenizer())
  saved = nnx.to_pure_dict(nnx.state(artifacts.load_reward_model(with_tok).member(0), nnx.Param))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(saved), strict=True))
  assert factory(jax.random.PRNGKey(0)).head.config == HeadConfig()
