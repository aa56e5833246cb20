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
  with pytest.raises(ConfigError, match=r"columns.answer: unknown for config.format='prompts'; valid keys: messages, "
                                        r"prompt$"):
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
