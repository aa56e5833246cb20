"""Tool use (transformers' chat format: a `tools` column of function schemas, assistant `tool_calls`, tool results)
through the stages, with a tiny chat model whose chat_template.jinja renders tools: the DPO stage's held-out
prompt / chosen / rejected ids equal ids built by hand from the template's bytes (the tools block via json.dumps,
the calls after the assistant header) and its eval logps the numpy log-probs of those ids; the sft stage's
targets are the hand-built call text + <|im_end|> under its loss mask and its eval loss their numpy NLL; the rl
stage samples from the hand-built tool-laden prompt ids and finishes a step; and the plain ChatML template, which
drops tools and tool_calls, is refused naming the file:line of the first row."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data import adapters
from jaxrlhf.models import from_pretrained, load_tokenizer
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import preference, rl, sft
from test_multi_turn_pairs_stage import _numpy_logps
from test_sft_stage import _numpy_nll
import tiny_chat_model

IM_START, IM_END, NEWLINE = 256, 257, 10  # tiny_chat_model's byte tokenizer: bytes, then the two ChatML markers.
HEAD = [IM_START, *b"assistant\n"]  # The generation header.
# The tool-use template of tests/data/test_tool_calls.py (there checked against transformers' rendering).
TOOL_TEMPLATE = (pathlib.Path(__file__).resolve().parents[1] / "fixtures" /
                 "tool_use_chat_template.jinja").read_text(encoding="utf-8")
PREAMBLE = ('You may call these functions. Write each call as <tool_call>{"name": ..., "arguments": ...}</tool_call>.'
            '\n<tools>\n')
WEATHER = {"name": "weather", "description": "Météo.", "parameters": {"city": {"type": "string"}}}  # é: 2 bytes
ADD = {"type": "function", "function": {"name": "add", "parameters": {"a": "int", "b": "int"}}}


def _msg(role, content, **extra):
  return {"role": role, "content": content, **extra}


def _call(name, arguments):
  return {"type": "function", "id": "call_1", "function": {"name": name, "arguments": arguments}}


def _call_text(call):
  f = call["function"]
  arguments = f["arguments"] if isinstance(f["arguments"], str) else json.dumps(f["arguments"], ensure_ascii=False)
  return f'\n<tool_call>{{"name": "{f["name"]}", "arguments": {arguments}}}</tool_call>'


def _turns(messages):
  body = lambda m: m["content"] + "".join(map(_call_text, m.get("tool_calls", [])))  # noqa: E731
  return [t for m in messages for t in [IM_START, *f"{m['role']}\n{body(m)}".encode(), IM_END, NEWLINE]]


def _prompt_ids(prompt, tools):
  """The template by hand: a system block with the tools (one json.dumps line each) or the plain system turn, the
  other turns, the generation header."""
  system, rest = (prompt[0]["content"], prompt[1:]) if prompt[0]["role"] == "system" else (None, prompt)
  if tools:
    text = "system\n" + (system + "\n\n" if system else "") + PREAMBLE + "".join(
        json.dumps(t, ensure_ascii=False) + "\n" for t in tools) + "</tools>"
    head = [IM_START, *text.encode(), IM_END, NEWLINE]
  else:
    head = _turns([_msg("system", system)]) if system else []
  return head + _turns(rest) + HEAD


def _hand_ids(prompt, response, tools):
  """(prompt ids, response ids): the response is its turns after the generation header, up to its last <|im_end|>
  (the eos), the last turn's tool calls included."""
  return _prompt_ids(prompt, tools), _turns(response)[len(HEAD):-1]


def _tools_column(i, tools):
  return [{}, {"tools": list(tools)}, {"tools": json.dumps(tools)}][i % 3]  # none, a list, its JSON text


def _pairs(n, offset=0, with_tools=True):
  """Chat pairs: chosen calls the weather tool (dict or compact-text arguments) and answers from its result, or
  (every other row) only calls it; rejected answers at once."""
  rows = []
  for i in range(offset, offset + n):
    city = f"City{i}"
    args = {"city": city} if i % 2 else f'{{"city":"{city}"}}'
    prompt = [_msg("system", "Use tools."), _msg("user", f"Weather in {city}?")]
    call = _msg("assistant", "", tool_calls=[_call("weather", args)])
    chosen = [call, _msg("tool", f"{i}C", tool_call_id="call_1"), _msg("assistant", f"{i}C.")] if i % 2 else [call]
    row = {"chosen": prompt + chosen, "rejected": prompt + [_msg("assistant", "Sunny.")]}
    rows.append({**row, **(_tools_column(i, [WEATHER]) if with_tools else {})})
  return rows


def _pair_ids(row):
  prompt = row["chosen"][:2]
  tools = json.loads(row["tools"]) if isinstance(row.get("tools"), str) else row.get("tools")
  return {side: _hand_ids(prompt, row[side][2:], tools) for side in ("chosen", "rejected")}


def _cfg(tmp_path, model_dir, train, held_out, stage=preference.PreferenceConfig, fmt="chat"):
  return tiny_chat_model.file_stage_config(tmp_path, model_dir, train, held_out, stage, fmt)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return tiny_chat_model.chat_model_with_template(tmp_path_factory.mktemp("tool_chat"), TOOL_TEMPLATE)


def test_dpo_held_out_ids_and_logps_are_those_of_the_tool_template(tmp_path, model_dir):
  held_out = _pairs(6, offset=40)
  cfg = _cfg(tmp_path, model_dir, _pairs(4), held_out)
  records, got = tiny_chat_model.held_out_pair_ids(cfg)
  assert [r.tools for r in records] == [(WEATHER,) if "tools" in row else None for row in held_out]
  assert got == [_pair_ids(row) for row in held_out]
  out = preference.run(cfg, str(tmp_path / "run"), {})
  model, _ = from_pretrained(model_dir)  # learning rate 0: the evaluated policy is the initial model
  for side in ("chosen", "rejected"):
    want = np.mean([_numpy_logps(model, *_pair_ids(row)[side]) for row in held_out])
    assert out["metrics"][f"eval/logps/{side}"] == pytest.approx(want, rel=1e-4)


def _sft_rows(n, offset=0):
  """SFT rows cycling through: messages ending in a call (content ""), messages whose prompt holds a call and its
  result (the answer is the target), a chat prompt with a call as the completion (JSON-text arguments)."""
  rows = []
  for i in range(offset, offset + n):
    user, call = _msg("user", f"Add {i} and 3."), _call("add", {"a": i, "b": 3})
    text_call = _msg("assistant", "Adding.", tool_calls=[_call("add", f'{{"a": {i}, "b": 3}}')])
    rows.append([{"messages": [_msg("system", "Be exact."), user, _msg("assistant", "", tool_calls=[call])]},
                 {"messages": [user, _msg("assistant", "", tool_calls=[call]), _msg("tool", str(i + 3), name="add"),
                               _msg("assistant", f"{i + 3}.")]},
                 {"prompt": [user], "completion": [text_call]}][i % 3])
    rows[-1].update(_tools_column(i + 1, [ADD]))  # a list, its JSON text, none
  return rows


def _sft_ids(row):
  prompt, response = (row["messages"][:-1], row["messages"][-1:]) if "messages" in row else (row["prompt"],
                                                                                               row["completion"])
  tools = json.loads(row["tools"]) if isinstance(row.get("tools"), str) else row.get("tools")
  return _hand_ids(prompt, response, tools)


def test_sft_targets_are_the_template_rendered_calls(tmp_path, model_dir):
  train, held_out = _sft_rows(6), _sft_rows(3, offset=40)
  cfg = _cfg(tmp_path, model_dir, train, held_out, stage=sft.SFTConfig, fmt="sft")
  context = inputs_lib.stage_context(cfg, {})
  records, eval_records, _ = inputs_lib.sft_records(cfg.data, context.world, context.tokenizer, cfg.seed)
  for split, rows in ((records, train), (eval_records, held_out)):
    batches = inputs_lib.eval_batches(split, context.tokenizer, cfg.data, "sft")
    got = [(ids[mask > 0].tolist(), loss[mask > 0].tolist()) for b in batches
           for ids, mask, loss in zip(b["input_ids"], b["attention_mask"], b["loss_mask"]) if loss.any()]
    assert got == [(p + r, [0] * len(p) + [1] * len(r)) for p, r in map(_sft_ids, rows)]
  out = sft.run(cfg, str(tmp_path / "run"), {})
  model, _ = from_pretrained(model_dir)  # learning rate 0: the evaluated policy is the initial model
  total, count = 0.0, 0
  for prompt_ids, response_ids in map(_sft_ids, held_out):
    ids = np.asarray([prompt_ids + response_ids], np.int32)
    mask = np.asarray([[0] * len(prompt_ids) + [1] * len(response_ids)], np.int32)
    t, c = _numpy_nll(model(ids, np.ones_like(ids)), {"input_ids": ids, "loss_mask": mask})
    total, count = total + t, count + c
  assert out["metrics"]["eval/loss"] == pytest.approx(total / count, rel=1e-4)


def test_rl_samples_from_prompts_rendered_with_their_tools(tmp_path, model_dir, monkeypatch):
  rows = tiny_chat_model.arithmetic_rows(0, 6)
  for i, row in enumerate(rows):
    row.update(_tools_column(i, [ADD, WEATHER]))
  paths = [str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl")]
  adapters.write_jsonl(paths[0], rows[:4])
  adapters.write_jsonl(paths[1], rows[4:])
  stage = tiny_chat_model.rl_stage(model_dir, *paths, steps=1)
  stage.update(max_prompt_length=384, eval_prompts=2)
  cfg = from_config(stage, rl.RLConfig)
  out, seen = tiny_chat_model.run_rl_recording_prompts(cfg, str(tmp_path / "rl"), monkeypatch)
  tools = lambda row: json.loads(row["tools"]) if isinstance(row.get("tools"), str) else row.get("tools")  # noqa
  expected = [_prompt_ids(row["prompt"], tools(row)) for row in rows[:4]]
  assert seen == [expected]
  assert out["prompts"]["truncated"] == 0 and out["prompts"]["max_length"] == max(map(len, expected))
  metrics = {k: v for k, v in out["metrics"].items() if isinstance(v, (int, float))}
  assert "train/loss" in metrics and "eval/reward/total" in metrics
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  assert load_tokenizer(out["model_dir"]).chat_template == TOOL_TEMPLATE  # the saved policy still renders tools


@pytest.mark.parametrize("with_tools, what", [(True, "tools"), (False, "tool_calls")])
def test_a_template_without_tool_use_is_refused_naming_the_row(tmp_path, with_tools, what):
  plain = tiny_chat_model.write_model(tmp_path / "plain")  # its ChatML template renders only role and content
  cfg = _cfg(tmp_path, plain, _pairs(4, offset=1, with_tools=with_tools), _pairs(2, offset=40))
  with pytest.raises(ValueError, match=rf"train\.jsonl:1: the chat template does not render {what} \("):
    preference.run(cfg, str(tmp_path / "run"), {})


def test_prompt_files_refused_name_the_tokenizer_and_a_new_template_file_is_read(tmp_path):
  folder = tmp_path / "plain"
  tiny_chat_model.write_model(folder)
  rows = tiny_chat_model.arithmetic_rows(0, 6)
  for row in rows:
    row["tools"] = [ADD]
  paths = [str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl")]
  adapters.write_jsonl(paths[0], rows[:4])
  adapters.write_jsonl(paths[1], rows[4:])
  stage = tiny_chat_model.rl_stage(str(folder), *paths, steps=1)
  stage.update(max_prompt_length=384, eval_prompts=2)
  cfg = from_config(stage, rl.RLConfig)
  with pytest.raises(ValueError, match=r"^prompts\.tokenizer: .*train\.jsonl:1: the chat template does not render "
                     "tools"):
    rl.run(cfg, str(tmp_path / "refused"), {})
  # The stages read a folder's tokenizer once per process; a chat_template.jinja added to it afterwards (the route
  # the refusal names) must be read, not the cached template.
  assert "tools" not in inputs_lib.cached_tokenizer(str(folder)).chat_template
  (folder / "chat_template.jinja").write_text(TOOL_TEMPLATE, encoding="utf-8")
  assert inputs_lib.cached_tokenizer(str(folder)).chat_template == TOOL_TEMPLATE


def _with_template(cfg, path):
  return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, chat_template_path=path))


def test_a_template_file_given_by_config_is_the_one_rendered_and_saved(tmp_path):
  """data.chat_template_path / prompts.chat_template_path (TRL's chat_template_path) on the plain ChatML model: the
  held-out ids are the hand-built tool-template ids, the policy is saved with that template, and a broken file or
  one given to the world's tokenizer is a ConfigError naming the key."""
  plain = tiny_chat_model.write_model(tmp_path / "plain")
  template = str(pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "tool_use_chat_template.jinja")
  held_out = _pairs(2, offset=40)
  cfg = _with_template(_cfg(tmp_path, plain, _pairs(4, offset=1), held_out), template)
  context = inputs_lib.stage_context(cfg, {})
  _, records, _ = inputs_lib.preference_records(cfg.data, context.world)
  batches = inputs_lib.eval_batches(records, context.tokenizer, cfg.data, "preference")
  got = [batch["chosen_input_ids"][b][batch["chosen_attention_mask"][b] > 0].tolist()
         for batch in batches for b in np.flatnonzero(batch["weight"] > 0)]
  assert got == [sum(_pair_ids(row)["chosen"], []) for row in held_out]
  out = preference.run(cfg, str(tmp_path / "run"), {})
  assert load_tokenizer(out["model_dir"]).chat_template == TOOL_TEMPLATE
  assert "tools" not in load_tokenizer(plain).chat_template  # the model's own folder is untouched
  broken = tmp_path / "broken.jinja"
  broken.write_text("{% for m in messages %}\n{{ m.content }\n", encoding="utf-8")
  with pytest.raises(ConfigError, match=rf"^data\.chat_template_path: {broken}:2: not a Jinja chat template"):
    inputs_lib.stage_context(_with_template(cfg, str(broken)), {})
  train, _ = tiny_chat_model.write_prompt_files(tmp_path / "prompts")
  spec = from_config({"source": "files", "paths": (train,), "chat_template_path": template}, inputs_lib.PromptSpec,
                     path="prompts")
  assert inputs_lib.open_prompts(spec, plain).tokenizer.chat_template == TOOL_TEMPLATE
  with pytest.raises(ConfigError, match=r"prompts\.chat_template_path: the synthetic world's tokenizer"):
    from_config({"prompts": {"source": "world", "chat_template_path": template}}, rl.RLConfig, path="config")
