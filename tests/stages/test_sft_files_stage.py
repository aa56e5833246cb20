"""The sft stage on SFT files (`data.format="sft"`): its held-out loss equals a numpy NLL over token ids built by
hand from the ChatML template's bytes, it trains exactly as on the same examples written as preference pairs, and
the stages that need pairs refuse the format at the config boundary."""


import numpy as np
import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data import adapters
from jaxrlhf.models import from_pretrained
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import reward, sft
from test_sft_stage import _losses, _numpy_nll
import tiny_chat_model

IM_START, IM_END = 256, 257  # tiny_chat_model's byte tokenizer: ids 0-255 are the bytes, then the ChatML markers.
SYSTEM = {"role": "system", "content": "Add."}


def _question(i):
  return f"What is {i} + {i + 3}?"


def _rows(n, offset=0, layouts=5):
  """n examples cycling through the format's layouts: text prompt + completion, chat prompt + text completion,
  chat prompt + assistant-message completion, a messages conversation, and (layouts=5) plain text."""
  rows = []
  for i in range(offset, offset + n):
    user, answer = {"role": "user", "content": _question(i)}, str(2 * i + 3)
    rows.append([{"prompt": _question(i) + " ", "completion": answer},
                 {"prompt": [user], "completion": answer},
                 {"prompt": [SYSTEM, user], "completion": [{"role": "assistant", "content": answer}]},
                 {"messages": [SYSTEM, user, {"role": "assistant", "content": answer}]},
                 {"text": f"{_question(i)} {answer}"}][i % layouts])
  return rows


def _hand_ids(row):
  """(prompt ids, response ids) of a row: ChatML rendered byte by byte, the response's bytes + <|im_end|>."""
  if "text" in row:  # Language modeling: no prompt.
    return [], list(row["text"].encode()) + [IM_END]
  if "messages" in row:
    prompt, response = row["messages"][:-1], row["messages"][-1]["content"]
  else:
    prompt, response = row["prompt"], row["completion"]
    response = response if isinstance(response, str) else response[0]["content"]
  if isinstance(prompt, str):
    prompt_ids = list(prompt.encode())
  else:
    prompt_ids = [t for m in prompt for t in [IM_START, *f"{m['role']}\n{m['content']}".encode(), IM_END, 10]]
    prompt_ids += [IM_START, *b"assistant\n"]
  return prompt_ids, list(response.encode()) + [IM_END]


def _cfg(tmp_path, model_dir, train, held_out, fmt="sft", learning_rate=0.0, steps=1, **data):
  paths = {}
  for name, rows in (("train", train), ("eval", held_out)):
    paths[name] = str(tmp_path / f"{fmt}_{name}.jsonl")
    adapters.write_jsonl(paths[name], rows)
  section = dict(seed=0, num_devices=1, model=dict(init_from=model_dir),
                 data={**dict(source="files", format=fmt, paths=(paths["train"],), eval_paths=(paths["eval"],),
                              batch_size=4, max_length=64, shuffle=False), **data},
                 optimizer=dict(learning_rate=learning_rate),
                 loop=dict(num_steps=steps, log_every=1, checkpoint_every=steps, progress=False, tensorboard=False,
                           async_checkpoints=False))
  return from_config(section, sft.SFTConfig, path="config")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return tiny_chat_model.write_model(tmp_path_factory.mktemp("tiny_chat"))


def test_held_out_batches_hold_the_hand_built_ids_and_the_loss_is_their_nll(tmp_path, model_dir):
  held_out = _rows(6, offset=40)
  cfg = _cfg(tmp_path, model_dir, _rows(8), held_out)
  context = inputs_lib.stage_context(cfg, {})
  _, records, _ = inputs_lib.sft_records(cfg.data, context.world, context.tokenizer, cfg.seed)
  batches = inputs_lib.eval_batches(records, context.tokenizer, cfg.data, "sft")
  rows = [(ids[mask > 0].tolist(), loss[mask > 0].tolist()) for b in batches
          for ids, mask, loss in zip(b["input_ids"], b["attention_mask"], b["loss_mask"]) if loss.any()]
  expected = [(p + r, [0] * len(p) + [1] * len(r)) for p, r in map(_hand_ids, held_out)]
  assert rows == expected
  out = sft.run(cfg, str(tmp_path / "run"), {})
  model, _ = from_pretrained(out["model_dir"])  # learning rate 0: the evaluated weights
  total, count = 0.0, 0
  for row in held_out:
    prompt_ids, response_ids = _hand_ids(row)
    ids = np.asarray([prompt_ids + response_ids], np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "loss_mask": np.asarray([[0] * len(prompt_ids) + [1] * len(response_ids)], np.int32)}
    t, c = _numpy_nll(model(batch["input_ids"], batch["attention_mask"]), batch)
    total, count = total + t, count + c
  # A text row's first token has no context: not a target.
  assert count == sum(len(str(2 * i + 3)) + 1 if i % 5 != 4 else len(held_out[i - 40]["text"]) for i in range(40, 46))
  assert out["metrics"]["eval/loss"] == pytest.approx(total / count, rel=1e-4)
  assert out["data_report"]["kept"] == 8 and out["data_report"]["eval"]["kept"] == 6


def _chatml_ids(messages):
  """ChatML rendered byte by byte, the generation prompt appended."""
  return [t for m in messages for t in [IM_START, *f"{m['role']}\n{m['content']}".encode(), IM_END, 10]] + [
      IM_START, *b"assistant\n"]


def test_turns_all_trains_every_assistant_turn_of_a_conversation(tmp_path, model_dir):
  """data.turns="all": a held-out conversation with two assistant turns is two examples, each turn the response to
  the messages before it (ids built by hand); "last" keeps only the final turn."""
  u1, a1 = {"role": "user", "content": "What is 1 + 4?"}, {"role": "assistant", "content": "5"}
  u2, a2 = {"role": "user", "content": "And doubled?"}, {"role": "assistant", "content": "10"}
  held_out = [{"messages": [SYSTEM, u1, a1, u2, a2]}]
  expected = {"all": [(_chatml_ids([SYSTEM, u1]), b"5"), (_chatml_ids([SYSTEM, u1, a1, u2]), b"10")],
              "last": [(_chatml_ids([SYSTEM, u1, a1, u2]), b"10")]}
  for turns, examples in expected.items():
    cfg = _cfg(tmp_path, model_dir, _rows(4) + held_out, held_out, turns=turns, max_length=128)
    context = inputs_lib.stage_context(cfg, {})
    train, records, report = inputs_lib.sft_records(cfg.data, context.world, context.tokenizer, cfg.seed)
    batches = inputs_lib.eval_batches(records, context.tokenizer, cfg.data, "sft")
    rows = [(ids[mask > 0].tolist(), loss[mask > 0].tolist()) for b in batches
            for ids, mask, loss in zip(b["input_ids"], b["attention_mask"], b["loss_mask"]) if loss.any()]
    assert rows == [(p + list(r) + [IM_END], [0] * len(p) + [1] * (len(r) + 1)) for p, r in examples]
    assert len(train) == (6 if turns == "all" else 5)
    if turns == "all":
      assert report["turns"]["train"] == {"conversations": 5, "examples": 6, "unanswerable_turns": 0,
                                          "line": report["turns"]["train"]["line"]}
      assert report["turns"]["eval"]["examples"] == 2
      assert "(train): 5 conversations -> 6 examples" in report["turns"]["train"]["line"]
      assert "(eval): 1 conversations -> 2 examples" in report["turns"]["eval"]["line"]


def _as_pairs(rows):
  """The same examples as preference pairs: chosen = the completion, a rejected the sft stage never reads."""
  pairs = []
  for row in rows:
    if "messages" in row:
      prompt, chosen = row["messages"][:-1], row["messages"][-1]["content"]
    else:
      prompt, chosen = row["prompt"], row["completion"]
      chosen = chosen if isinstance(chosen, str) else chosen[0]["content"]
    pairs.append({"prompt": prompt, "chosen": chosen, "rejected": "no idea"})
  return pairs


def test_trains_exactly_as_on_the_same_examples_as_pairs(tmp_path, model_dir):
  train, held_out = _rows(12, layouts=4), _rows(4, offset=40, layouts=4)
  losses = {}
  for fmt, (tr, ho) in (("sft", (train, held_out)), ("pairwise", (_as_pairs(train), _as_pairs(held_out)))):
    cfg = _cfg(tmp_path, model_dir, tr, ho, fmt=fmt, learning_rate=1e-2, steps=3)
    out = sft.run(cfg, str(tmp_path / fmt), {})
    losses[fmt] = _losses(tmp_path / fmt) + [out["metrics"]["eval/loss"]]
  assert len(losses["sft"]) == 4 and losses["sft"][2] < losses["sft"][0]
  np.testing.assert_allclose(losses["sft"], losses["pairwise"], rtol=1e-6)


def test_stages_that_need_pairs_refuse_the_format(tmp_path):
  path = tmp_path / "sft.jsonl"
  adapters.write_jsonl(path, _rows(2))
  data = dict(source="files", format="sft", paths=(str(path),))
  with pytest.raises(ConfigError, match=r"config\.data\.format.*'sft'.*pairwise"):
    from_config(dict(data=data), reward.RewardConfig, path="config")
  assert from_config(dict(data=data), sft.SFTConfig, path="config").data.format == "sft"
  with pytest.raises(ConfigError, match=r"config\.data\.turns: 'all' splits SFT conversations"):
    from_config(dict(data=dict(data, format="chat", turns="all")), sft.SFTConfig, path="config")
  with pytest.raises(ConfigError, match=r"config\.data\.columns\.answer: unknown for config\.data\.format='sft'"):
    from_config(dict(data=dict(data, columns={"answer": "a"})), sft.SFTConfig, path="config")
