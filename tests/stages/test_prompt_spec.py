"""The `prompts` section of the online stages: config errors name the key and the valid choices before any compute,
and `open_prompts` reads prompt files or a preference file's prompts with the policy's tokenizer."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_chat_model  # noqa: E402  pylint: disable=g-import-not-at-top

from jaxrlhf.config import ConfigError, from_config  # noqa: E402
from jaxrlhf.data import adapters  # noqa: E402
from jaxrlhf.stages import inputs  # noqa: E402


def _spec(**kwargs):
  return from_config(kwargs, inputs.PromptSpec)


def test_config_errors_name_the_key(tmp_path):
  path = str(tmp_path / "p.jsonl")
  adapters.write_jsonl(path, [{"prompt": "hi"}])
  with pytest.raises(ConfigError, match=r"paths: required when .*source='files'"):
    _spec(source="files")
  with pytest.raises(ConfigError, match=r"paths\[0\]: file not found"):
    _spec(source="files", paths=(str(tmp_path / "missing.jsonl"),))
  with pytest.raises(ConfigError, match=r"columns.answer: unknown for config.format='prompts'; valid keys: "
                                        r"chat_template_kwargs, messages, prompt, tools$"):
    _spec(source="files", paths=(path,), columns={"answer": "a"})
  with pytest.raises(ConfigError, match=r"columns.prompt: unknown for config.format='hh'; valid keys: chosen, rejected, "
                                        r"subset$"):
    _spec(source="files", paths=(path,), format="hh", columns={"prompt": "q"})
  with pytest.raises(ConfigError, match=r"keep_columns: only the 'prompts' format"):
    _spec(source="files", paths=(path,), format="hh", keep_columns=("subset",))
  with pytest.raises(ConfigError, match=r"format.*'kway'"):
    _spec(source="files", paths=(path,), format="kway")
  with pytest.raises(ConfigError, match=r"eval_fraction: 0 leaves no held-out prompts"):
    _spec(source="files", paths=(path,), eval_fraction=0.0)


def test_open_prompts_renders_a_preference_files_prompts(tmp_path):
  model = tiny_chat_model.write_model(tmp_path / "model")
  rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "a"}],
           "rejected": [{"role": "assistant", "content": "b"}]} for i in range(10)]
  path = str(tmp_path / "pairs.jsonl")
  adapters.write_jsonl(path, rows)
  source = inputs.open_prompts(_spec(source="files", paths=(path,), format="chat", eval_fraction=0.2), model)
  held_out = source.split("eval", 0, 32)
  assert [p[0]["content"] for p in held_out.table.prompts] == ["q8", "q9"]
  assert held_out.table.columns["chosen"] == [[{"role": "assistant", "content": "a"}]] * 2
  text = source.tokenizer.decode(held_out.ids[0][held_out.mask[0] > 0], skip_special_tokens=False)
  assert text == "<|im_start|>user\nq8<|im_end|>\n<|im_start|>assistant\n"
  assert held_out.report["truncated"] == 0 and "repeated_prompt" not in held_out.report["files"]["line"]


def test_split_prints_what_it_uses_and_names_the_key_without_held_out_prompts(tmp_path, capsys):
  """Each split prints the prompts it uses and how many the budget truncates (held-out ones too); a held-out split
  that is empty is a ConfigError naming the key to change (a known error: one line from experiments.run)."""
  model = tiny_chat_model.write_model(tmp_path / "model")
  path = str(tmp_path / "p.jsonl")
  adapters.write_jsonl(path, [{"prompt": f"question {i}" + " long" * 10 * (i == 3)} for i in range(4)])
  source = inputs.open_prompts(_spec(source="files", paths=(path,)), model)  # 0.1 of 4 rounds to 0 held out.
  assert "; 4 train, 0 held out (the last 0.1)" in capsys.readouterr().out
  train = source.split("train", 3, 16)
  assert train.report["truncated"] == 0
  assert "[data] train prompts: 3 of 4 used, 0 longer than max_prompt_length=16 tokens keep their last 16 " \
         "(longest 10)" in capsys.readouterr().out
  with pytest.raises(ConfigError, match=r"^prompts\.eval_fraction: 0\.1 of the 4 prompts rounds to no held-out "
                                        r"prompt; raise it or set prompts\.eval_paths \(prompts .*kept 4"):
    source.split("eval", 2, 16)
  source = inputs.open_prompts(_spec(source="files", paths=(path,), eval_paths=(path,)), model)
  held_out = source.split("eval", 8, 16)
  assert held_out.report["truncated"] == 1
  assert "[data] held-out prompts: 4 of 4 used (asked for 8), 1 longer than max_prompt_length=16 tokens keep their " \
         "last 16 (longest 60)" in capsys.readouterr().out


def test_fewer_train_prompts_than_a_batch_is_a_config_error_naming_the_key():
  import numpy as np  # pylint: disable=g-import-not-at-top
  ids = np.ones((1, 4), np.int32)
  with pytest.raises(ConfigError, match=r"^prompts_per_step: 1 train prompts are fewer than one batch of 2 "):
    inputs.PromptIterator(ids, ids, 2, seed=0)


def test_a_row_the_rendering_settings_refuse_is_a_config_error_naming_the_row(tmp_path):
  model = tiny_chat_model.write_model(tmp_path / "model")
  path = str(tmp_path / "p.jsonl")
  adapters.write_jsonl(path, [{"prompt": "text"}, {"messages": [{"role": "user", "content": "chat"}]}])
  source = inputs.open_prompts(_spec(source="files", paths=(path,), eval_paths=(path,), chat_template="never"), model)
  with pytest.raises(ConfigError, match=r"^prompts\.chat_template='never': p\.jsonl:2: a chat prompt needs the chat "
                                        r"template, but chat_template='never'$"):
    source.split("train", 0, 16)
