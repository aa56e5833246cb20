"""Hand-computed goldens for input-layer rules the other tests/data/ files leave open (found by a mutation audit:
each test below fails under a plausible one-line bug that the rest of tests/data/ let pass)."""

import dataclasses

import numpy as np

from jaxrlhf.data import adapters, pipeline, tokenize
from jaxrlhf.data.records import PreferenceRecord


def test_chat_response_is_the_one_assistant_message_after_the_shared_prefix(tmp_path):
  user = {"role": "user", "content": "Book a table."}
  chosen = [user, {"role": "user", "content": "For four."}, {"role": "assistant", "content": "Booked for four."}]
  rejected = [user, {"role": "user", "content": "For four."}, {"role": "assistant", "content": "No."}]
  path = tmp_path / "c.jsonl"
  adapters.write_jsonl(path, [{"chosen": chosen, "rejected": rejected}])
  (record,), _ = adapters.read_records(path, "chat")
  assert record.prompt == chosen[:2]  # every shared leading message, not only the first
  assert (record.chosen, record.rejected) == (chosen[2:], rejected[2:])


class _Words:
  """A word-level tokenizer (protocol of docs/design.md): word i of VOCAB is id i; eos 1."""
  VOCAB = ["<pad>", "<eos>", "hello", "good", "bad", "answer"]
  pad_id, eos_id, bos_id = 0, 1, None

  def encode(self, text, add_special_tokens=False):
    return [self.VOCAB.index(w) for w in text.split()]


def test_sft_on_a_preference_record_trains_on_the_chosen_response():
  record = PreferenceRecord(prompt="hello", chosen="good answer", rejected="bad")
  example = tokenize.tokenize_sft(record, _Words(), tokenize.TruncationConfig(max_length=8))
  assert example["prompt"].tolist() == [2]
  assert example["response"].tolist() == [3, 5, 1]  # "good answer" + eos, not "bad"


@dataclasses.dataclass(frozen=True)
class _WeightedRecord(PreferenceRecord):
  weight: float = 1.0


def test_a_record_weight_reaches_the_example_and_defaults_to_one():
  config = tokenize.TruncationConfig(max_length=8)
  weighted = tokenize.tokenize_pair(_WeightedRecord(prompt="hello", chosen="good", rejected="bad", weight=0.25),
                                    _Words(), config)
  plain = tokenize.tokenize_pair(PreferenceRecord(prompt="hello", chosen="good", rejected="bad"), _Words(), config)
  assert weighted["weight"] == np.float32(0.25) and plain["weight"] == np.float32(1.0)


def test_hh_diverging_dialogues_split_at_the_last_shared_assistant_turn(tmp_path):
  shared = "\n\nHuman: Q1\n\nAssistant: A1\n\nHuman: Q2\n\nAssistant:"
  chosen = shared + " X\n\nHuman: Q3\n\nAssistant: Y"
  rejected = shared + " Z"
  path = tmp_path / "hh.jsonl"
  adapters.write_jsonl(path, [{"chosen": chosen, "rejected": rejected}])
  (record,), _ = adapters.read_records(path, "hh")
  assert (record.prompt, record.chosen, record.rejected) == (shared, "X\n\nHuman: Q3\n\nAssistant: Y", "Z")


def test_packing_fills_a_row_to_exactly_max_length():
  # Two SFT examples of 4 tokens each ("hello good answer <eos>", "hello bad answer <eos>") fill max_length 8
  # exactly: one row, not two.
  records = [{"prompt": "hello", "response": "good answer"}, {"prompt": "hello", "response": "bad answer"}]
  config = pipeline.PipelineConfig(kind="sft", batch_size=2, max_length=8, buckets=(8,), shuffle=False,
                                   num_epochs=1, pack=True, num_threads=0, prefetch=0)
  batch = next(pipeline.make_pipeline(records, _Words(), config))
  np.testing.assert_array_equal(batch["input_ids"], [[2, 3, 5, 1, 2, 4, 5, 1], [0] * 8])
  np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 1, 2, 2, 2, 2], [0] * 8])
