"""Reasoning traces (`reasoning_content` on assistant messages) and chat template arguments (a row's
`chat_template_kwargs` column, `data.chat_template_kwargs` / `prompts.chat_template_kwargs`) through the stages, with
a tiny byte-level chat model whose template writes a response's reasoning as a <think> block and, with
enable_thinking false, an empty one after the generation header (Qwen3's layout): the DPO stage's held-out ids equal
ids built by hand from the template's bytes, the SFT stage trains on the think block + answer under its loss mask,
the saved policy renders with the config's arguments, the rl stage samples from prompts rendered with them, and a
template that drops reasoning, bad arguments and arguments for the world's tokenizer are refused by name."""

import dataclasses
import json

import ml_collections
import numpy as np
import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data import adapters
from jaxrlhf.models import load_tokenizer
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import preference, reward, reward_eval, rl, sft
import tiny_chat_model

IM_START, IM_END, NEWLINE = 256, 257, 10  # tiny_chat_model's byte tokenizer: bytes, then the two ChatML markers.
# Written for this test: every assistant turn with reasoning shows it; the generation header gets an empty think
# block when enable_thinking is false (as Qwen3's template does).
THINK_TEMPLATE = (
    "{%- for m in messages %}"
    "{{- '<|im_start|>' + m.role + '\\n' }}"
    "{%- if m.role == 'assistant' and m.reasoning_content is defined %}"
    "{{- '<think>\\n' + m.reasoning_content + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- m.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")
EMPTY_THINK = "<think>\n\n</think>\n\n"


def _msg(role, content, **extra):
  return {"role": role, "content": content, **extra}


def _prompt_ids(prompt, thinking_off):
  ids = [t for m in prompt for t in [IM_START, *f"{m['role']}\n{m['content']}".encode(), IM_END, NEWLINE]]
  return ids + [IM_START, *b"assistant\n", *(EMPTY_THINK.encode() if thinking_off else b"")]


def _response_ids(message):
  """The response by hand: the think block the template writes before a reasoning answer, the answer, the eos."""
  think = f"<think>\n{message['reasoning_content']}\n</think>\n\n" if "reasoning_content" in message else ""
  return [*(think + message["content"]).encode(), IM_END]


def _pairs(n, offset=0):
  """Chat pairs: chosen reasons then answers, rejected answers at once; every third row has thinking switched off
  (its chosen then answers without reasoning) and every third + 1 row asks for thinking explicitly (JSON text)."""
  rows = []
  for i in range(offset, offset + n):
    a, b = i % 7 + 1, i % 5 + 2
    prompt = [_msg("user", f"What is {a} * {b}?")]
    kwargs = [{"enable_thinking": False}, '{"enable_thinking": true}', None][i % 3]
    reasoning = {} if i % 3 == 0 else {"reasoning_content": f"{a} * {b} = {a * b}."}
    row = {"chosen": prompt + [_msg("assistant", str(a * b), **reasoning)],
           "rejected": prompt + [_msg("assistant", str(a + b))]}
    rows.append({**row, **({"chat_template_kwargs": kwargs} if kwargs else {})})
  return rows


def _thinking_off(row, default=None):
  kwargs = row.get("chat_template_kwargs", default) or {}
  kwargs = json.loads(kwargs) if isinstance(kwargs, str) else kwargs
  return kwargs.get("enable_thinking") is False


def _pair_ids(row, default=None):
  prompt = row["chosen"][:1]
  return {side: (_prompt_ids(prompt, _thinking_off(row, default)), _response_ids(row[side][1]))
          for side in ("chosen", "rejected")}


def _write(tmp_path, train, held_out):
  paths = []
  for name, rows in (("train", train), ("eval", held_out)):
    paths.append(str(tmp_path / f"{name}.jsonl"))
    adapters.write_jsonl(paths[-1], rows)
  return paths


def _cfg(tmp_path, model_dir, train, held_out, stage=preference.PreferenceConfig, fmt="chat", **data):
  return tiny_chat_model.file_stage_config(tmp_path, model_dir, train, held_out, stage, fmt, max_length=128, **data)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return tiny_chat_model.chat_model_with_template(tmp_path_factory.mktemp("think_chat"), THINK_TEMPLATE)


def _held_out_pairs(cfg):
  return tiny_chat_model.held_out_pair_ids(cfg)


def test_dpo_held_out_ids_carry_the_think_blocks_and_each_rows_arguments(tmp_path, model_dir):
  held_out = _pairs(6, offset=30)
  records, got = _held_out_pairs(_cfg(tmp_path, model_dir, _pairs(4), held_out))
  assert [r.chat_template_kwargs for r in records] == [
      {"enable_thinking": False}, {"enable_thinking": True}, None] * 2
  assert got == [_pair_ids(row) for row in held_out]
  assert sum(_thinking_off(row) for row in held_out) == 2  # both layouts were compared


def test_config_arguments_are_the_default_a_row_overrides_and_the_saved_policy_keeps(tmp_path, model_dir):
  # data.chat_template_kwargs as the command line gives it (JSON text): every row without its own setting renders
  # with thinking off; rows asking for thinking keep it (their reasoning responses need it).
  def usable(rows):
    return [row for row in rows if "chat_template_kwargs" in row or "reasoning_content" not in row["chosen"][1]]
  held_out = usable(_pairs(9, offset=30))
  cfg = _cfg(tmp_path, model_dir, usable(_pairs(6, offset=1)), held_out,
             chat_template_kwargs='{"enable_thinking": false}')
  _, got = _held_out_pairs(cfg)
  assert got == [_pair_ids(row, default={"enable_thinking": False}) for row in held_out]
  out = preference.run(cfg, str(tmp_path / "run"), {})
  saved = load_tokenizer(out["model_dir"])
  prompt = [_msg("user", "Hi")]
  assert saved.apply_chat_template(prompt, add_generation_prompt=True).endswith("assistant\n" + EMPTY_THINK)
  assert saved.apply_chat_template(prompt, add_generation_prompt=True, enable_thinking=True).endswith("assistant\n")
  assert load_tokenizer(model_dir).chat_template == THINK_TEMPLATE  # the model's own folder is untouched


def test_sft_trains_on_the_think_block_and_the_answer(tmp_path, model_dir):
  rows = [{"messages": [_msg("user", f"Name {i}."), _msg("assistant", f"N{i}", reasoning_content=f"Say N{i}.")]}
          for i in range(6)]
  cfg = _cfg(tmp_path, model_dir, rows[:4], rows[4:], stage=sft.SFTConfig, fmt="sft")
  context = inputs_lib.stage_context(cfg, {})
  records, eval_records, _ = inputs_lib.sft_records(cfg.data, context.world, context.tokenizer, cfg.seed)
  for split, split_rows in ((records, rows[:4]), (eval_records, rows[4:])):
    batches = inputs_lib.eval_batches(split, context.tokenizer, cfg.data, "sft")
    got = [(ids[mask > 0].tolist(), loss[mask > 0].tolist()) for b in batches
           for ids, mask, loss in zip(b["input_ids"], b["attention_mask"], b["loss_mask"]) if loss.any()]
    want = [(_prompt_ids(r["messages"][:1], False), _response_ids(r["messages"][1])) for r in split_rows]
    assert got == [(p + r, [0] * len(p) + [1] * len(r)) for p, r in want]


def test_rl_samples_from_prompts_rendered_with_the_arguments(tmp_path, model_dir, monkeypatch):
  rows = tiny_chat_model.arithmetic_rows(0, 6)
  rows[1]["chat_template_kwargs"] = {"enable_thinking": True}  # a row's own setting beats the config's
  paths = _write(tmp_path, rows[:4], rows[4:])
  stage = tiny_chat_model.rl_stage(model_dir, *paths, steps=1)
  stage.update(max_prompt_length=96, eval_prompts=2)
  stage["prompts"]["chat_template_kwargs"] = {"enable_thinking": False}
  cfg = from_config(stage, rl.RLConfig)
  out, seen = tiny_chat_model.run_rl_recording_prompts(cfg, str(tmp_path / "rl"), monkeypatch)
  assert seen == [[_prompt_ids(row["prompt"], i != 1) for i, row in enumerate(rows[:4])]]
  assert np.isfinite(out["metrics"]["train/loss"])


def test_a_template_without_reasoning_is_refused_naming_the_row(tmp_path):
  plain = tiny_chat_model.write_model(tmp_path / "plain")  # its ChatML template renders only role and content
  train = [row for row in _pairs(6) if "reasoning_content" in row["chosen"][1]]
  cfg = _cfg(tmp_path, plain, train, _pairs(2, offset=40))
  with pytest.raises(ValueError, match=r"train\.jsonl:1: the chat template does not render the response's "
                     r"reasoning_content \("):
    preference.run(cfg, str(tmp_path / "run"), {})


def test_reasoning_with_thinking_switched_off_is_refused(tmp_path, model_dir):
  # The prompt ends in an empty think block, the response opens its own: not a continuation of the prompt.
  row = _pairs(1, offset=1)[0]
  row["chat_template_kwargs"] = {"enable_thinking": False}
  cfg = _cfg(tmp_path, model_dir, [row] + _pairs(3, offset=3), _pairs(2, offset=40))
  with pytest.raises(ValueError, match=r"train\.jsonl:1: the chat template renders the prompt differently"):
    preference.run(cfg, str(tmp_path / "run"), {})


@pytest.mark.parametrize("key, value", [("chat_template_kwargs", {"enable_thinking": False}),
                                        ("chat_template_path", "reasoning")])
def test_settings_for_text_prompt_formats_are_refused(tmp_path, model_dir, key, value):
  # An HH file's prompts are raw dialogue text: a template setting would change nothing, silently.
  value = f"{model_dir}/chat_template.jinja" if key == "chat_template_path" else value
  hh = [{"chosen": f"\n\nHuman: Hi {i}\n\nAssistant: Hello.", "rejected": f"\n\nHuman: Hi {i}\n\nAssistant: No."}
        for i in range(4)]
  with pytest.raises(ConfigError, match=rf"^config\.data\.{key}: the 'hh' format's prompts are text"):
    _cfg(tmp_path, model_dir, hh[:2], hh[2:], fmt="hh", **{key: value})


@pytest.mark.parametrize("value, message", [
    ("{enable_thinking: false}", r"'{enable_thinking: false}' is not JSON \(Expecting property name"),
    ({"add_generation_prompt": True}, r"'add_generation_prompt' is set by the renderer itself"),
    ('["enable_thinking"]', r"expected a JSON object of template variables"),
])
def test_bad_config_arguments_name_the_key(tmp_path, model_dir, value, message):
  with pytest.raises(ConfigError, match=r"^config\.data\.chat_template_kwargs: " + message):
    _cfg(tmp_path, model_dir, _pairs(2), _pairs(2, offset=9), chat_template_kwargs=value)


def test_the_worlds_tokenizer_and_unrendered_prompts_refuse_arguments(tmp_path):
  with pytest.raises(ConfigError, match=r"prompts\.chat_template_kwargs: prompts\.chat_template='never' renders no "):
    from_config({"source": "files", "paths": (tiny_chat_model.write_prompt_files(tmp_path)[0],),
                 "chat_template": "never", "chat_template_kwargs": '{"enable_thinking": false}'}, inputs_lib.PromptSpec,
                path="prompts")
  with pytest.raises(ConfigError, match=r"prompts\.chat_template_kwargs: the synthetic world's tokenizer"):
    from_config({"prompts": {"source": "world", "chat_template_kwargs": {"enable_thinking": False}}}, rl.RLConfig,
                path="config")
  with pytest.raises(ConfigError, match=r"^config\.data\.chat_template_kwargs: the synthetic world's tokenizer"):
    from_config({"seed": 0, "num_devices": 1, "data": {"chat_template_kwargs": {"enable_thinking": False}}},
                preference.PreferenceConfig, path="config")
  # The stage's own check, for a DataSpec built in code.
  data = dataclasses.replace(inputs_lib.DataSpec(), chat_template_kwargs={"enable_thinking": False})
  world = inputs_lib.make_world(data.world)
  with pytest.raises(ConfigError, match=r"^data\.chat_template_kwargs: the synthetic world's tokenizer"):
    inputs_lib.make_tokenizer(data, world, "")
  unset = dataclasses.replace(data, chat_template_kwargs="")  # empty text, as a command line may give, is unset
  assert inputs_lib.make_tokenizer(unset, world, "") is world.tokenizer


def test_a_config_files_nested_arguments_are_plain_json(tmp_path, model_dir):
  # A config file's dict becomes nested ConfigDicts; the template gets plain dicts and lists, as from JSON text.
  nested = ml_collections.ConfigDict({"options": {"style": "short", "levels": (1, 2)}})
  cfg = _cfg(tmp_path, model_dir, _pairs(2), _pairs(2, offset=9), chat_template_kwargs=nested)
  assert inputs_lib.template_kwargs(cfg.data, "data") == {"options": {"style": "short", "levels": [1, 2]}}
  template = "{{ options.style }}|{{ options.levels | tojson }}|{{ messages[0].content }}"
  tokenizer = inputs_lib.with_template_defaults(tiny_chat_model.byte_tokenizer().with_chat_template(template),
                                                inputs_lib.template_kwargs(cfg.data, "data"), "data")
  assert tokenizer.apply_chat_template([_msg("user", "Hi")]) == "short|[1, 2]|Hi"


def test_a_reward_model_keeps_its_template_and_evaluations_score_with_it(tmp_path, model_dir):
  """The reward stage saves the tokenizer it trained with (here the think template with thinking off by default)
  beside the model; reward_eval on the same files without data.tokenizer scores the text as trained: the same
  scores as given the model's tokenizer and the same chat_template_kwargs by hand, other scores without them."""
  def usable(rows):
    return [row for row in rows if "chat_template_kwargs" in row or "reasoning_content" not in row["chosen"][1]]
  def plain(row):  # no reasoning, no arguments of its own: the stage's arguments decide how it renders
    return {side: row[side][:1] + [_msg("assistant", row[side][1]["content"])] for side in ("chosen", "rejected")}
  train, held_out = usable(_pairs(6, offset=1)), [plain(row) for row in _pairs(6, offset=30)]
  off = '{"enable_thinking": false}'
  cfg = _cfg(tmp_path, model_dir, train, held_out, stage=reward.RewardConfig, chat_template_kwargs=off)
  out = reward.run(cfg, str(tmp_path / "rm"), {})
  saved = load_tokenizer(out["rm_dir"])
  assert saved.apply_chat_template([_msg("user", "Hi")], add_generation_prompt=True).endswith(EMPTY_THINK)
  data = dict(source="files", format="chat", paths=cfg.data.paths, eval_paths=cfg.data.eval_paths, max_length=128)

  def scores(**extra):
    eval_cfg = from_config(dict(reward_model=out["rm_dir"], data={**data, **extra}), reward_eval.RewardEvalConfig,
                           path="config")
    result = reward_eval.run(eval_cfg, str(tmp_path / f"eval{len(extra)}{sorted(extra)}"), {})
    with open(result["scores"]) as f:
      return [(line["chosen"], line["rejected"]) for line in map(json.loads, f)]

  own = scores()
  assert len(own) == len(held_out)
  np.testing.assert_allclose(own, scores(tokenizer=model_dir, chat_template_kwargs=off), rtol=1e-6)
  assert not np.allclose(own, scores(tokenizer=model_dir))  # the model's template without the argument differs
