"""Chat preference files whose responses are multi-turn continuations (assistant, tool result, assistant): the DPO
stage's held-out batches hold the ids built by hand from the ChatML template's bytes, and its logps are the numpy
log-probabilities of those ids; the sft stage refuses such a response as a target."""

import numpy as np
import pytest

from jaxrlhf.config import from_config
from jaxrlhf.data import adapters
from jaxrlhf.models import from_pretrained
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import preference, sft
import tiny_chat_model

IM_START, IM_END, NEWLINE = 256, 257, 10  # tiny_chat_model's byte tokenizer: bytes, then the two ChatML markers.


def _turn(role, content):
  return {"role": role, "content": content}


def _rows(n, offset=0):
  """n pairs: the chosen response calls a tool and answers from its result (three messages), the rejected one
  answers at once (every other row) or after a wrong call (the rest)."""
  rows = []
  for i in range(offset, offset + n):
    prompt = [_turn("system", "Use tools."), _turn("user", f"Add {i} and {i + 3}.")]
    chosen = [_turn("assistant", f"<call>add({i},{i + 3})</call>"), _turn("tool", str(2 * i + 3)),
              _turn("assistant", f"It is {2 * i + 3}.")]
    rejected = ([_turn("assistant", f"It is {2 * i}.")] if i % 2 else
                [_turn("assistant", f"<call>sub({i},{i + 3})</call>"), _turn("tool", "-3"), _turn("assistant", "-3.")])
    rows.append({"chosen": prompt + chosen, "rejected": prompt + rejected})
  return rows


def _chatml(messages):
  return [t for m in messages for t in [IM_START, *f"{m['role']}\n{m['content']}".encode(), IM_END, NEWLINE]]


def _hand_ids(messages, shared=2):
  """(prompt ids, response ids): the prompt with the generation header; the response's earlier turns with their
  markers, the last turn's header and content, then <|im_end|> (the eos)."""
  prompt, response = messages[:shared], messages[shared:]
  head = [IM_START, *b"assistant\n"]
  ids = _chatml(response[:-1])[len(head):] + head if len(response) > 1 else []
  return _chatml(prompt) + head, ids + list(response[-1]["content"].encode()) + [IM_END]


def _cfg(tmp_path, model_dir, train, held_out, stage=preference.PreferenceConfig, **extra):
  paths = {}
  for name, rows in (("train", train), ("eval", held_out)):
    paths[name] = str(tmp_path / f"{name}.jsonl")
    adapters.write_jsonl(paths[name], rows)
  section = dict(seed=0, num_devices=1, model=dict(init_from=model_dir),
                 data=dict(source="files", format="chat", paths=(paths["train"],), eval_paths=(paths["eval"],),
                           batch_size=4, max_length=128, shuffle=False),
                 optimizer=dict(learning_rate=0.0),
                 loop=dict(num_steps=1, log_every=1, checkpoint_every=1, progress=False, tensorboard=False,
                           async_checkpoints=False), **extra)
  return from_config(section, stage, path="config")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return tiny_chat_model.write_model(tmp_path_factory.mktemp("tiny_chat"))


def _numpy_logps(model, prompt_ids, response_ids):
  """sum_t log p(response_t | prompt, response_<t) from the model's logits, in float64 numpy."""
  ids = np.asarray([prompt_ids + response_ids], np.int32)
  logits = np.asarray(model(ids, np.ones_like(ids)), np.float64)[0]
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  targets = np.arange(len(prompt_ids), len(prompt_ids) + len(response_ids))
  return float(sum(logp[t - 1, ids[0, t]] for t in targets))


def test_dpo_held_out_ids_and_logps_are_those_of_the_template_rendered_continuation(tmp_path, model_dir):
  held_out = _rows(4, offset=40)
  cfg = _cfg(tmp_path, model_dir, _rows(8), held_out)
  context = inputs_lib.stage_context(cfg, {})
  _, records, report = inputs_lib.preference_records(cfg.data, context.world)
  batches = inputs_lib.eval_batches(records, context.tokenizer, cfg.data, "preference")
  expected = [(_hand_ids(row[side]), side) for row in held_out for side in ("chosen", "rejected")]
  got = []
  for batch in batches:
    for b in np.flatnonzero(batch["weight"] > 0):
      for side in ("chosen", "rejected"):
        ids = batch[f"{side}_input_ids"][b][batch[f"{side}_attention_mask"][b] > 0].tolist()
        scored = batch[f"{side}_loss_mask"][b][batch[f"{side}_attention_mask"][b] > 0]
        cut = int(np.argmax(scored))  # The first response token.
        assert scored[cut:].all() and not scored[:cut].any()
        got.append(((ids[:cut], ids[cut:]), side))
  assert got == expected
  out = preference.run(cfg, str(tmp_path / "run"), {})
  model, _ = from_pretrained(model_dir)  # learning rate 0: the evaluated policy is the initial model
  for side in ("chosen", "rejected"):
    want = np.mean([_numpy_logps(model, *_hand_ids(row[side])) for row in held_out])
    assert out["metrics"][f"eval/logps/{side}"] == pytest.approx(want, rel=1e-4)
  assert report["notes"] == {"chat_multi_turn_response": 8}
  assert report["eval"]["notes"] == {"chat_multi_turn_response": 4}


def test_sft_refuses_a_multi_turn_chosen_as_its_target(tmp_path, model_dir):
  cfg = _cfg(tmp_path, model_dir, _rows(4), _rows(2, offset=40), stage=sft.SFTConfig)
  with pytest.raises(ValueError, match=r"train\.jsonl:1: a response of 3 messages \(roles \['assistant', 'tool', "
                     r"'assistant'\]\) cannot be an SFT target.*data\.turns='all'"):
    sft.run(cfg, str(tmp_path / "sft"), {})
