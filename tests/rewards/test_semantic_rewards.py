"""jaxrlhf.rewards.encoder and semantic: the encoder's mask-aware mean pooling against a manual numpy pooling of the
model's own hidden states (one unpadded row at a time) and against transformers' last_hidden_state of the same
folder; R^3's factors and cases (the echo and repetition hacks of Kim & Seo 2024) on hand-built embeddings; the
SQL semantic-similarity mappings; the kind table's rows and option errors."""

import os
import sys

import numpy as np
import pytest
import torch
import transformers

from jaxrlhf.config import ConfigError
from jaxrlhf.models import ModelConfig
from jaxrlhf.rewards import encoder as encoder_lib
from jaxrlhf.rewards import kinds
from jaxrlhf.rewards import semantic
from jaxrlhf.rewards.calling import call_reward_function
from random_models import random_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "stages"))
import tiny_chat_model  # noqa: E402  pylint: disable=g-import-not-at-top

# "hello world" and "x" share a batch (right-padded to 16 tokens); "hello there" is as long as "hello world".
TEXTS = ["hello world", "x", "", "hello world", "hello there"]


def manual_embeddings(model, rows):
  """Means of the model's hidden states of equally long UNPADDED rows (one eager call), L2-normalized, in numpy."""
  hidden_BxTxD = np.asarray(model.hidden_states(np.asarray(rows, np.int32))).astype(np.float64)
  mean_BxD = hidden_BxTxD.mean(axis=1)
  return mean_BxD / np.linalg.norm(mean_BxD, axis=-1, keepdims=True)


def test_mean_pooling_matches_a_manual_pooling_per_row():
  tokenizer = tiny_chat_model.byte_tokenizer()
  model = random_model(ModelConfig(vocab_size=tokenizer.vocab_size, **tiny_chat_model.SIZES), seed=3)
  # Batches of 2 rows right-padded to 16 tokens: padding and batch neighbours must not change a row.
  encoder = encoder_lib.TextEncoder(model, tokenizer, max_length=40, batch_size=2)
  out = encoder.encode(TEXTS)
  assert out.shape == (5, tiny_chat_model.SIZES["embed_dim"]) and out.dtype == np.float32
  ids = [tokenizer.encode(t) for t in TEXTS]
  np.testing.assert_allclose(out[[0, 4]], manual_embeddings(model, [ids[0], ids[4]]), atol=2e-5)
  np.testing.assert_allclose(out[1], manual_embeddings(model, [ids[1]])[0], atol=2e-5)
  assert np.isnan(out[2]).all()  # No tokens: not scorable.
  np.testing.assert_array_equal(out[3], out[0])
  # Encoded texts are cached: a second call returns the same rows (in its own order) without recomputing them.
  assert set(encoder._cache) == {"hello world", "x", "hello there"}  # pylint: disable=protected-access
  np.testing.assert_array_equal(encoder.encode(TEXTS[::-1]), out[::-1])
  # max_length keeps the first tokens only ("hello").
  short = encoder_lib.TextEncoder(model, tokenizer, max_length=5, batch_size=2).encode([TEXTS[0]])[0]
  np.testing.assert_allclose(short, manual_embeddings(model, [ids[0][:5]])[0], atol=2e-5)
  assert not np.allclose(short, out[0], atol=1e-3)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  return tiny_chat_model.write_model(tmp_path_factory.mktemp("encoder_model"))


def test_encoder_of_a_folder_matches_transformers_last_hidden_state(tiny_model):
  hf = transformers.AutoModel.from_pretrained(tiny_model)  # The bare decoder: last_hidden_state is post-norm.
  tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
  tokenizer.pad_token = tokenizer.eos_token  # Padding is masked out of the mean.
  texts = ["What is the capital of France?", "Paris is the capital.", "ok"]
  ids = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
  with torch.no_grad():
    hidden = hf(**ids).last_hidden_state.double()
  mask = ids["attention_mask"][..., None].double()
  mean = (hidden * mask).sum(1) / mask.sum(1)
  expected = (mean / mean.norm(dim=-1, keepdim=True)).numpy()
  encoder = encoder_lib.load_encoder(tiny_model)
  assert encoder_lib.load_encoder(tiny_model) is encoder  # Loaded once per path.
  np.testing.assert_allclose(encoder.encode(texts), expected, atol=2e-5)
  # Through the kind table: a prompt echoed back has relevance 1 (the hack R^3 guards against).
  fn = kinds.make_reward("relevance", {"model": tiny_model})
  out = call_reward_function(fn, [texts[0]] * 3, [texts[0], texts[1], ""])
  assert out[0] == pytest.approx(1.0, abs=1e-5)
  assert out[1] == pytest.approx(float(expected[0] @ expected[1]), abs=2e-5)
  assert np.isnan(out[2])


# ------------------------------------------------------------------------------------------------ hand-built cases
class StubEncoder:
  """Hand-built embeddings: every text maps to a given vector (normalized), unknown texts to NaN rows."""

  def __init__(self, vectors):
    self.vectors = {t: np.asarray(v, np.float32) / np.linalg.norm(v) for t, v in vectors.items()}

  def encode(self, texts):
    return np.stack([self.vectors.get(t, np.full(2, np.nan, np.float32)) for t in texts])


QUESTION = "what is the capital of france"  # 6 words
ECHO_5 = " ".join([QUESTION] * 5)  # 30 words, 28 trigrams, 6 distinct (period 6)
ANSWER = ("the capital of france is paris , a city on the seine known for its museums and its long history "
          "as the seat of government")  # 25 words, no repeated trigram
OFF_TOPIC = " ".join(f"w{i}" for i in range(60))  # 60 distinct words
REFERENCE = "paris"
VECTORS = {QUESTION: [1.0, 0.0], ECHO_5: [1.0, 0.0], ANSWER: [0.6, 0.8], OFF_TOPIC: [0.0, 1.0],
           REFERENCE: [0.8, 0.6], "paris": [0.8, 0.6], "it is paris paris paris paris": [0.8, 0.6]}


@pytest.fixture
def stub(monkeypatch):
  monkeypatch.setattr(encoder_lib, "load_encoder", lambda path, max_length, batch_size: StubEncoder(VECTORS))


def test_r3_factors():
  assert semantic.length_incentive(ANSWER) == pytest.approx(0.25)
  assert semantic.length_incentive(ANSWER, scale=50) == pytest.approx(0.5)
  assert semantic.repetition_penalty(ECHO_5) == pytest.approx(6 / 28)
  assert semantic.repetition_penalty(ANSWER) == 1.0
  assert semantic.repetition_penalty("a b") == 1.0  # No trigram.
  assert semantic.repetition_penalty("a b a b a") == pytest.approx(2 / 3)  # (a b a), (b a b), (a b a)
  assert semantic.interpolate(0.5) == 0.5
  assert semantic.interpolate(0.9, (0.8, 1.0, 0.0, 2.0)) == pytest.approx(1.0)
  assert semantic.interpolate(0.1, (0.8, 1.0, 0.0, 2.0)) == 0.0 and semantic.interpolate(3.0, (0.8, 1, 0, 2)) == 2.0


def test_plain_relevance_prefers_the_echo_and_r3_does_not(stub):
  candidates = [QUESTION, ECHO_5, ANSWER, OFF_TOPIC]
  plain = call_reward_function(kinds.make_reward("relevance", {"model": "stub"}), [QUESTION] * 4, candidates)
  np.testing.assert_allclose(plain, [1.0, 1.0, 0.6, 0.0], atol=1e-6)
  r3 = call_reward_function(kinds.make_reward("r3_relevance", {"model": "stub"}), [QUESTION] * 4, candidates)
  # r_x * LI * RP: echo 1 * 0.06 * 1; echo x5 1 * 0.30 * 6/28; answer 0.6 * 0.25 * 1; off-topic 0 * 0.6 * 1.
  np.testing.assert_allclose(r3, [0.06, 0.3 * 6 / 28, 0.15, 0.0], atol=1e-6)
  assert int(np.argmax(plain)) in (0, 1) and int(np.argmax(r3)) == 2
  # Without RP (the paper's intermediate step), the repeated echo would win: 1 * 0.3 > 0.15.
  assert 1.0 * semantic.length_incentive(ECHO_5) > r3[2]


def test_r3_closed_ended_rows_use_the_reference(stub):
  fn = kinds.make_reward("r3_relevance", {"model": "stub", "type_column": "query_type",
                                          "reference_column": "answer", "interpolation": (0.0, 1.0, 0.0, 2.0)})
  completions = ["paris", "it is paris paris paris paris", QUESTION, ANSWER, ""]
  columns = {"query_type": ["closed", "Closed-Ended", "ce", None, "closed"],
             "answer": [REFERENCE, [None, REFERENCE], REFERENCE, None, REFERENCE]}
  out = call_reward_function(fn, [QUESTION] * 5, completions, columns)
  # F(r_y) * RP with F doubling: "paris" r_y 1 -> 2; the repeated one 2 * RP (4 trigrams, 3 distinct: "paris paris
  # paris" twice); the echoed question r_y = 0.8 -> 1.6; row 3 has no type: open-ended 0.6 * 0.25 * 1; an empty
  # closed-ended answer has no embedding: None.
  np.testing.assert_allclose(out[:4], [2.0, 2.0 * 3 / 4, 1.6, 0.15], atol=1e-6)
  assert np.isnan(out[4])
  with pytest.raises(ValueError, match=r"column 'query_type' row 0: query type 'maybe'"):
    fn([QUESTION], ["paris"], query_type=["maybe"], answer=[REFERENCE])
  with pytest.raises(ValueError, match=r"reference column 'answer' not among the columns"):
    fn([QUESTION], ["paris"], query_type=["closed"])
  with pytest.raises(ValueError, match=r"type column 'query_type' not among"):
    fn([QUESTION], ["paris"])
  # A missing reference on a closed-ended row: not scorable.
  assert np.isnan(call_reward_function(fn, [QUESTION], ["paris"], {"query_type": ["closed"], "answer": [None]})[0])


def test_sql_semantic_mappings(stub):
  gold = "paris"
  completions = ["<answer>paris</answer>", "```sql\nit is paris paris paris paris\n```", "no query here",
                 f"<answer>{QUESTION}</answer>", "<answer>paris</answer>"]
  columns = {"gold_sql": [gold, "what is the capital of france", gold, gold, None]}
  for mapping, expected in (("unit", [1.0, (1 + 0.8) / 2, 0.0, (1 + 0.8) / 2]), ("cosine", [1.0, 0.8, 0.0, 0.8]),
                            ("positive", [1.0, 0.8, 0.0, 0.8])):
    fn = kinds.make_reward("sql_semantic", {"model": "stub", "mapping": mapping})
    out = call_reward_function(fn, [""] * 5, completions, columns)
    np.testing.assert_allclose(out[:4], expected, atol=1e-6)
    assert np.isnan(out[4])  # No gold query.
  opposite = StubEncoder({"a": [1.0, 0.0], "b": [-1.0, 0.0]})
  for mapping, value in (("unit", 0.0), ("cosine", -1.0), ("positive", 0.0)):
    with pytest.MonkeyPatch.context() as m:
      m.setattr(encoder_lib, "load_encoder", lambda *a: opposite)
      fn = semantic.sql_semantic(model="stub", mapping=mapping)
      assert fn([""], ["<answer>a</answer>"], gold_sql=["b"]) == [pytest.approx(value)]
  # A weighted term beside Reasoning-SQL's reward (kind "weighted_sum").
  total = kinds.make_reward("weighted_sum", {"terms": [{"kind": "sql_ngram"}, {"kind": "sql_semantic", "weight": 2.0,
                                                                                "options": {"model": "stub"}}]})
  assert call_reward_function(total, [""], ["<answer>paris</answer>"], {"gold_sql": ["paris"]})[0] == pytest.approx(2.0)


def test_kind_rows_and_option_errors(tmp_path):
  assert kinds.REWARDS["relevance"] is semantic.relevance and kinds.REWARDS["r3_relevance"] is semantic.r3_relevance
  assert kinds.REWARDS["sql_semantic"] is semantic.sql_semantic
  assert kinds.options_of("r3_relevance") == {
      "model": "", "reference_column": "references", "type_column": "", "length_scale": 100.0,
      "interpolation": (0.0, 1.0, 0.0, 1.0), "max_length": 256, "batch_size": 16}
  cases = [
      ("relevance", {}, r"relevance.model: required"),
      ("relevance", {"model": str(tmp_path / "missing")}, r"relevance.model: .*does not exist"),
      ("relevance", {"model": "stage:rl"}, r"do not resolve stage references"),
      ("relevance", {"model": "m", "max_length": 0}, r"relevance.max_length: expected an integer >= 1"),
      ("relevance", {"model": "m", "pooling": "cls"}, r"unknown option\(s\) \['pooling'\]"),
      ("r3_relevance", {"model": "m", "length_scale": 0}, r"r3_relevance.length_scale"),
      ("r3_relevance", {"model": "m", "interpolation": (1.0, 0.0, 0.0, 1.0)}, r"r3_relevance.interpolation"),
      ("r3_relevance", {"model": "m", "interpolation": (0.0, 1.0)}, r"r3_relevance.interpolation"),
      ("r3_relevance", {"model": "m", "type_column": 3}, r"r3_relevance.type_column"),
      ("sql_semantic", {"model": "m", "mapping": "sigmoid"}, r"sql_semantic.mapping: expected one of"),
      ("sql_semantic", {"model": "m", "gold_column": ""}, r"sql_semantic.gold_column"),
  ]
  for kind, options, message in cases:
    with pytest.raises(ConfigError, match=r"^rewards\[2\]\.options.*" + message):
      kinds.make_reward(kind, options, "rewards[2]")
