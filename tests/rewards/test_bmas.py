"""jaxrlhf.rewards.bmas: Mixed-R1's BMAS against hand-computed cosine tables (identical texts, orthogonal tokens, the
two directions, duplicates, zero rows, empty texts), against torch's cosine_similarity on a random table, and the
reward on a real tokenizer + the tiny chat model's embedding table read back by transformers (an independent
loader); the SmolLM2 GGUF's embedding table against the full GGUF reader; column errors; make_reward("bmas")."""

import os
import sys

import numpy as np
import pytest
import torch
import transformers

from jaxrlhf.config import ConfigError
from jaxrlhf.rewards import bmas as bmas_lib
from jaxrlhf.rewards import kinds
from jaxrlhf.rewards.calling import call_reward_function

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "stages"))
import tiny_chat_model  # noqa: E402  pylint: disable=g-import-not-at-top

bmas = bmas_lib.bmas

# Rows: 0 = x, 1 = y (orthogonal unit vectors), 2 = (3, 4) (cos 0.6 with x, 0.8 with y; norm 5), 3 = -x,
# 4 = (6, 8) (the direction of row 2, twice the norm), 5 = a zero row.
TABLE = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [-1.0, 0.0], [6.0, 8.0], [0.0, 0.0]], np.float32)


def test_identical_texts_score_one():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(50, 8)).astype(np.float32)
  ids = [3, 17, 42, 8]
  assert bmas(ids, ids, table) == pytest.approx(1.0, abs=1e-12)
  assert bmas(ids[::-1], ids, table) == pytest.approx(1.0, abs=1e-12)  # Order does not matter.
  assert bmas([2], [4], TABLE) == pytest.approx(1.0)  # Cosine ignores the norm.


def test_orthogonal_and_opposite_tokens():
  assert bmas([0], [1], TABLE) == 0.0
  assert bmas([0, 0], [1, 1, 1], TABLE) == 0.0
  assert bmas([3], [0], TABLE) == pytest.approx(-1.0)  # No clipping: cosines below 0 count.


def test_both_directions_count():
  # Response (3, 4) against reference {x, y}: the response's only token finds y (0.8), so the response -> reference
  # mean is 0.8; the reference's tokens find it with 0.6 (x) and 0.8 (y), mean 0.7; BMAS = 0.75.
  assert bmas([2], [0, 1], TABLE) == pytest.approx((0.8 + 0.7) / 2)
  # Response {x} covers only half of the reference {x, y}: 1 one way, (1 + 0) / 2 the other.
  assert bmas([0], [0, 1], TABLE) == pytest.approx((1.0 + 0.5) / 2)
  # Response {x, y, (3, 4)} covers all of {x, y} but adds a token whose best match is 0.8.
  assert bmas([0, 1, 2], [0, 1], TABLE) == pytest.approx(((1 + 1 + 0.8) / 3 + 1.0) / 2)
  # Swapping the texts swaps the two means: BMAS is symmetric.
  assert bmas([0, 1], [2], TABLE) == pytest.approx(bmas([2], [0, 1], TABLE))


def test_duplicate_tokens_weigh_in_the_means():
  # Response (3,4), (3,4), x against {x, y}: response -> reference (0.8 + 0.8 + 1) / 3; reference -> response:
  # x finds itself (1), y finds (3, 4) (0.8).
  assert bmas([2, 2, 0], [0, 1], TABLE) == pytest.approx(((0.8 + 0.8 + 1.0) / 3 + (1.0 + 0.8) / 2) / 2)
  assert bmas([0, 0, 0], [0, 1], TABLE) == pytest.approx(bmas([0], [0, 1], TABLE))
  assert bmas([0, 0, 1], [0, 1, 1, 1], TABLE) == pytest.approx(1.0)


def test_edge_cases():
  assert bmas([], [0], TABLE) is None and bmas([0], [], TABLE) is None
  assert bmas([5], [5], TABLE) == 0.0  # A zero row has cosine 0 with everything, itself included.
  assert bmas([5, 0], [0], TABLE) == pytest.approx(((0 + 1) / 2 + 1) / 2)
  with pytest.raises(ValueError, match=r"response_ids: token ids must lie in \[0, 6\)"):
    bmas([6], [0], TABLE)
  with pytest.raises(ValueError, match=r"reference_ids: token ids must lie in \[0, 6\)"):
    bmas([0], [-1], TABLE)


def test_against_torch_cosine_similarity():
  rng = np.random.default_rng(1)
  table = rng.normal(size=(40, 16)).astype(np.float32)
  for _ in range(5):
    resp, ref = rng.integers(0, 40, size=rng.integers(1, 12)), rng.integers(0, 40, size=rng.integers(1, 12))
    e = torch.tensor(table, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(e[resp][:, None, :], e[ref][None, :, :], dim=-1)
    expected = (cos.max(dim=1).values.mean() + cos.max(dim=0).values.mean()) / 2
    assert bmas(resp, ref, table) == pytest.approx(float(expected), abs=1e-12)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  return tiny_chat_model.write_model(tmp_path_factory.mktemp("bmas_model"))


def test_reward_on_the_tiny_chat_model(tiny_model):
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model)
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
  table = hf_model.get_input_embeddings().weight.detach().numpy()
  np.testing.assert_array_equal(np.asarray(bmas_lib.embedding_table(tiny_model), np.float32), table)

  def expected(completion, reference):
    return bmas(hf_tokenizer.encode(completion, add_special_tokens=False),
                hf_tokenizer.encode(reference, add_special_tokens=False), table)

  fn = bmas_lib.bmas_reward(model=tiny_model)
  completions = ["a cat sat", "The cat sat on the mat.", "", "dog", "the mat", "x"]
  refs = ["the cat sat on the mat", "The cat sat on the mat.", "the cat", None, ["a dog", "the mat"], []]
  out = call_reward_function(fn, ["p"] * 6, completions, {"references": refs})
  assert out[0] == pytest.approx(expected("a cat sat", "the cat sat on the mat"), abs=1e-6)
  assert 0.0 < out[0] < 1.0
  assert out[1] == pytest.approx(1.0, abs=1e-6)  # Identical text.
  assert np.isnan(out[2]) and np.isnan(out[3]) and np.isnan(out[5])  # Empty completion, no reference.
  assert out[4] == pytest.approx(1.0, abs=1e-6)  # The best of a list of references (an exact one here).
  assert expected("the mat", "a dog") < 1.0
  # The options by name, with a different column.
  fn = kinds.make_reward("bmas", {"model": tiny_model, "column": "gt"})
  assert call_reward_function(fn, ["p"], ["dog"], {"gt": ["a dog"]})[0] == pytest.approx(expected("dog", "a dog"),
                                                                                          abs=1e-6)


def test_empty_option_scores_only_empty_completions_against_a_reference(tiny_model):
  fn = bmas_lib.bmas_reward(model=tiny_model, empty=-1.0)
  plain = bmas_lib.bmas_reward(model=tiny_model)
  completions = ["", "", "", "a cat"]
  refs = ["the cat", None, "", "the cat"]
  out = call_reward_function(fn, ["p"] * 4, completions, {"references": refs})
  assert out[0] == -1.0  # An empty completion against a reference: the fixed score.
  assert np.isnan(out[1]) and np.isnan(out[2])  # No (or an empty) reference: still not scorable.
  assert out[3] == call_reward_function(plain, ["p"], ["a cat"], {"references": ["the cat"]})[0]
  assert kinds.make_reward("bmas", {"model": tiny_model, "empty": 0})(["p"], [""], references=["x"]) == [0.0]
  for bad in (float("nan"), "low", True):
    with pytest.raises(ConfigError, match=r"bmas.empty: expected None or a finite number"):
      kinds.make_reward("bmas", {"model": tiny_model, "empty": bad})


def test_column_errors_name_the_column_and_row(tiny_model):
  fn = bmas_lib.bmas_reward(model=tiny_model)
  with pytest.raises(ValueError, match=r"bmas: reference column 'references' not among the columns \['answer'\]"):
    fn(["p"], ["c"], answer=["x"])
  with pytest.raises(ValueError, match=r"bmas: column 'references' row 1: expected a reference string or a list of "
                                       r"strings, got 7"):
    fn(["p", "q"], ["c", "d"], references=["c", 7])
  with pytest.raises(ValueError, match=r"column 'references' row 0: .*got \['a', 3\]"):
    fn(["p"], ["c"], references=[["a", 3]])


def test_config_errors(tmp_path, tiny_model):
  with pytest.raises(ConfigError, match=r"reward.options: bmas.model: required"):
    kinds.make_reward("bmas")
  with pytest.raises(ConfigError, match=r"reward.options: bmas.model: '.*nowhere' does not exist"):
    kinds.make_reward("bmas", {"model": str(tmp_path / "nowhere")})
  (tmp_path / "empty").mkdir()
  with pytest.raises(ConfigError, match=r"reward.options: .*expected a Hugging Face model folder with config.json"):
    kinds.make_reward("bmas", {"model": str(tmp_path / "empty")})
  with pytest.raises(ConfigError, match=r"unknown option\(s\) \['modle'\] for kind 'bmas'"):
    kinds.make_reward("bmas", {"modle": tiny_model})


def test_gguf_embedding_table(smollm2_gguf):
  from jaxrlhf.models.gguf import read_gguf  # pylint: disable=g-import-not-at-top
  table = bmas_lib.embedding_table(str(smollm2_gguf))
  _, tensors = read_gguf(smollm2_gguf)
  np.testing.assert_array_equal(table, tensors["model.embed_tokens.weight"])
  fn = bmas_lib.bmas_reward(model=str(smollm2_gguf))
  out = call_reward_function(fn, ["p"] * 3, ["A cat sits on a mat.", "A cat sits on a mat.", "Stock prices fell."],
                             {"references": ["A cat sits on a mat.", "A kitten is sitting on the rug.",
                                             "A kitten is sitting on the rug."]})
  assert out[0] == pytest.approx(1.0, abs=1e-6)
  assert out[1] > out[2]  # The paraphrase scores above the unrelated sentence.
