"""Pairs too long for the token budget (data.max_length / data.max_prompt_length): an epoch in which every example
is dropped fails with a ValueError naming the budget instead of spinning forever, and every drop and truncation of
the train and held-out records is counted and reported (`inputs.budgeted_records`)."""

import threading

import pytest

from jaxrlhf.config import ConfigError
from jaxrlhf.data import pipeline
from jaxrlhf.data.records import PreferenceRecord
from jaxrlhf.stages import inputs


class SpaceTokenizer:
  """One token per whitespace-separated word (ids assigned on first sight), the protocol of docs/design.md."""

  supports_system_role = True
  bos_id = None
  pad_id, eos_id = 0, 1

  def __init__(self):
    self._ids = {}
    self.vocab_size = 1000

  def encode(self, text, add_special_tokens=False):
    del add_special_tokens
    return [self._ids.setdefault(w, 2 + len(self._ids)) for w in text.split()]

  def decode(self, ids, skip_special_tokens=True):
    del skip_special_tokens
    words = {i: w for w, i in self._ids.items()}
    return " ".join(words.get(i, "") for i in ids)

  def apply_chat_template(self, messages, add_generation_prompt=False):
    text = " ".join(f"<{m['role']}> {m['content']}" for m in messages)
    return text + " <assistant>" if add_generation_prompt else text


TOK = SpaceTokenizer()


def _pairs(n, prompt_words):
  """n pairs whose prompt has `prompt_words` tokens and whose responses have 2 and 3 (with eos)."""
  return [PreferenceRecord(prompt=" ".join(f"p{i}w{j}" for j in range(prompt_words)), chosen="good answer",
                           rejected="bad answer two") for i in range(n)]


def _next_within(iterator, seconds=30.0):
  """next(iterator) in a daemon thread: its value or exception, or TimeoutError if it is still running (a hang)."""
  out = {}

  def target():
    try:
      out["value"] = next(iterator)
    except Exception as e:  # pylint: disable=broad-except
      out["error"] = e

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    raise TimeoutError(f"next() still running after {seconds} s")
  if "error" in out:
    raise out["error"]
  return out["value"]


@pytest.mark.parametrize("kind, pack", [("preference", False), ("sft", False), ("sft", True)])
def test_a_train_iterator_whose_every_pair_is_too_long_raises_instead_of_hanging(kind, pack):
  data = inputs.DataSpec(max_length=16, batch_size=2, pack=pack)
  iterator = inputs.train_iterator(_pairs(4, 30), TOK, data, kind, seed=0)
  with pytest.raises(ValueError, match=r"data\.max_length.*all 4 .*data\.max_prompt_length") as info:
    _next_within(iterator)
  assert "max_length=16" in str(info.value)
  assert iterator.stats["dropped_too_long"] == 4  # One epoch is enough to know: tokenization is deterministic.


def test_a_prompt_budget_keeps_the_same_pairs_with_truncated_prompts():
  data = inputs.DataSpec(max_length=16, max_prompt_length=8, batch_size=2)
  iterator = inputs.train_iterator(_pairs(4, 30), TOK, data, "preference", seed=0)
  batch = _next_within(iterator)
  assert batch["weight"].tolist() == [1.0, 1.0]
  assert iterator.stats["truncated_prompts"] == 2 and iterator.stats["dropped_too_long"] == 0


def test_runs_of_drops_across_an_epoch_boundary_do_not_raise_while_one_pair_fits():
  # 1 short pair among 9 long ones, reshuffled each epoch: the drops between two reads of the short pair often
  # number more than the 10 records (the short pair early in one epoch and late in the next), which is not a
  # whole epoch of drops. 40 one-pair batches = 40 epochs.
  records = _pairs(9, 30) + _pairs(1, 2)
  data = inputs.DataSpec(max_length=16, batch_size=1)
  iterator = inputs.train_iterator(records, TOK, data, "preference", seed=3)
  for _ in range(40):
    assert _next_within(iterator)["weight"].tolist() == [1.0]
  assert 9 * 39 <= iterator.stats["dropped_too_long"] < 9 * 40  # 39 whole epochs, and part of the 40th.


def test_a_resumed_iterator_still_raises_on_an_all_dropped_epoch():
  config = inputs.pipeline_config(inputs.DataSpec(max_length=16, batch_size=1), "preference", seed=0)
  iterator = pipeline.make_pipeline(_pairs(2, 2) + _pairs(3, 30), TOK, config)
  _next_within(iterator)
  state = iterator.get_state()
  all_long = pipeline.make_pipeline(_pairs(5, 30), TOK, config)
  all_long.set_state(state)  # The stream position carries over; the run of drops starts mid-epoch.
  with pytest.raises(ValueError, match=r"all 5 preference examples are dropped as too long"):
    _next_within(all_long)


def test_held_out_batches_of_only_too_long_pairs_raise():
  data = inputs.DataSpec(max_length=16, batch_size=2)
  with pytest.raises(ValueError, match=r"data\.max_length"):
    inputs.eval_batches(_pairs(4, 30), TOK, data, "preference")


@pytest.mark.parametrize("kind", ["preference", "sft"])
def test_budgeted_records_counts_and_prints_every_drop(capsys, kind):
  short, long = _pairs(6, 3), _pairs(4, 30)
  records = short[:3] + long[:2] + short[3:] + long[2:]
  data = inputs.DataSpec(max_length=16, batch_size=4)
  kept, report = inputs.budgeted_records(records, TOK, data, kind, "eval")
  assert kept == short  # In order: the held-out rows line up with per-pair labels (e.g. gold).
  assert {k: report[k] for k in ("records", "kept", "dropped_too_long", "truncated_prompts")} == {
      "records": 10, "kept": 6, "dropped_too_long": 4, "truncated_prompts": 0}
  unit = "pairs" if kind == "preference" else "examples"
  assert f"[data] eval: 10 {unit}, 6 kept, 4 dropped as too long" in capsys.readouterr().out
  batches = inputs.eval_batches(kept, TOK, data, kind)
  rows = sum(int((b["weight"] > 0).sum()) if kind == "preference" else int(b["loss_mask"].any(-1).sum())
             for b in batches)
  assert rows == 6


def test_budgeted_records_counts_truncation_and_raises_when_nothing_fits():
  data = inputs.DataSpec(max_length=16, max_prompt_length=8, batch_size=2)
  kept, report = inputs.budgeted_records(_pairs(4, 30) + _pairs(2, 3), TOK, data, "preference", "train")
  assert len(kept) == 6 and report["truncated_prompts"] == 4 and report["dropped_too_long"] == 0
  assert "data.max_prompt_length=8" in report["line"]
  # A ConfigError: experiments.run prints it as one line naming the stage (a known error), not a traceback.
  with pytest.raises(ConfigError, match=r"data\.max_length: all 4 train pairs are too long.*data\.max_prompt_length"):
    inputs.budgeted_records(_pairs(4, 30), TOK, inputs.DataSpec(max_length=16), "preference", "train")
