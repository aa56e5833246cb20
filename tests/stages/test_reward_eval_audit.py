"""Audit of the reward_eval stage's rules that the main tests leave open: the aggregation's lambda reaches the
headline numbers, scores.jsonl's aggregates and dropped records, and per-group / per-subset benchmark counts."""

import numpy as np
import pytest

from jaxrlhf.config import from_config
from jaxrlhf.stages import reward_eval


def test_ensemble_aggregation_uses_its_lambda():
  # mean_minus_var (UWO, population variance) with lam = 0.1, by hand:
  #   pair 0: chosen (3, -1) -> 1 - 0.1 * 4 = 0.6 > rejected (0.5, 0.5) -> 0.5: right (with lam = 1: -3, wrong);
  #   pair 1: chosen (1, 1) -> 1 > rejected (2, 0) -> 1 - 0.1 * 1 = 0.9: right.
  chosen, rejected = np.array([[3.0, -1.0], [1.0, 1.0]]), np.array([[0.5, 0.5], [2.0, 0.0]])
  m, credit = reward_eval.pair_metrics(chosen, rejected, [None, None], aggregation="mean_minus_var", lam=0.1,
                                       num_resamples=50)
  np.testing.assert_array_equal(credit, [1.0, 1.0])
  assert m["accuracy"] == 1.0
  m1, _ = reward_eval.pair_metrics(chosen, rejected, [None, None], aggregation="mean_minus_var", lam=1.0,
                                   num_resamples=50)
  assert m1["accuracy"] == 0.5


def test_score_lines_hold_each_records_aggregates_and_mark_dropped_ones():
  cfg = from_config(dict(reward_model="stage:rm", aggregation="mean_minus_var", lam=0.1),
                    reward_eval.RewardEvalConfig)
  chosen, rejected = np.array([[3.0, -1.0], [1.0, 1.0]]), np.array([[0.5, 0.5], [2.0, 0.0]])
  heads = [{"kind": "pair", "index": i} for i in range(3)]
  lines = reward_eval.score_lines(heads, chosen, rejected, np.array([0, 2]), np.array([1.0, 0.0]), cfg)
  assert lines[1] == {"kind": "pair", "index": 1, "dropped": True}
  assert lines[0]["chosen"] == [3.0, -1.0] and lines[0]["rejected"] == [0.5, 0.5] and lines[0]["correct"] is True
  assert lines[0]["chosen_aggregate"] == pytest.approx(0.6) and lines[0]["rejected_aggregate"] == pytest.approx(0.5)
  assert lines[2]["chosen_aggregate"] == pytest.approx(1.0) and lines[2]["rejected_aggregate"] == pytest.approx(0.9)
  assert lines[2]["correct"] is False and "dropped" not in lines[2]


def test_kway_record_with_one_dropped_pair_is_dropped_whole():
  # Two k = 3 records -> pairs (correct, other) in order: record 0: pairs 0, 1; record 1: pairs 2, 3. Pair 2 (a
  # completion too long to score) is missing: record 1 cannot be ranked and is dropped, record 0 is kept.
  from jaxrlhf.data.records import KWayRecord
  records = [KWayRecord(prompt="p", completions=("a", "b", "c"), best_index=1),
             KWayRecord(prompt="q", completions=("d", "e", "f"), best_index=0)]
  best = np.array([1, 0])
  chosen = np.array([[5.0], [5.0], [7.0]])  # the correct completion's score, in each scored pair
  rejected = np.array([[1.0], [2.0], [3.0]])  # completions a, c of record 0; f of record 1
  scores, dropped = reward_eval.kway_scores(records, best, chosen, rejected, np.array([0, 1, 3]))
  assert dropped == 1 and scores[1] is None
  np.testing.assert_array_equal(scores[0], [[1.0], [5.0], [2.0]])  # per completion a, b (correct), c


def test_benchmark_subsets_are_scored_within_their_group():
  # alpacaeval-easy appears in both languages: right in deu (rows 0, 1), wrong in jpn (row 2).
  chosen, rejected = np.array([[1.0], [1.0], [0.0], [1.0]]), np.array([[0.0], [0.0], [1.0], [0.0]])
  languages = ["deu_Latn", "deu_Latn", "jpn_Jpan", "jpn_Jpan"]
  subsets = ["alpacaeval-easy", "alpacaeval-easy", "alpacaeval-easy", "math-prm"]
  m, credit = reward_eval.benchmark_metrics(chosen, rejected, languages, subsets, "m_rewardbench", num_resamples=50)
  np.testing.assert_array_equal(credit, [1, 1, 0, 1])
  assert m["m_rewardbench/language/deu_Latn/subset/alpacaeval-easy/accuracy"] == 1.0
  assert m["m_rewardbench/language/jpn_Jpan/subset/alpacaeval-easy/accuracy"] == 0.0
  assert m["m_rewardbench/language/jpn_Jpan/subset/alpacaeval-easy/n"] == 1
  assert m["m_rewardbench/language/deu_Latn/section/Chat"] == 1.0  # Chat of deu = its own alpacaeval-easy only
  assert m["m_rewardbench/language/jpn_Jpan/section/Chat"] == 0.0
  assert m["m_rewardbench/language/jpn_Jpan/score"] == pytest.approx(0.5)  # mean of Chat 0 and Reasoning 1


def test_score_pairs_returns_record_order(tmp_path):
  # Pairs are batched shortest first; score_pairs hands them back in record order (index ascending), each row the
  # rewards of that record's responses scored alone.
  from flax import nnx
  from jaxrlhf.models import from_pretrained, load_tokenizer
  from jaxrlhf.models.heads import HeadConfig
  from jaxrlhf.models.reward_model import RewardEnsemble
  from jaxrlhf.stages import inputs
  from tiny_reward_files import model_folder, preference_rows, sequence_reward, write_jsonl
  folder = model_folder(tmp_path / "model", seed=2)
  _, config = from_pretrained(str(folder))
  rm = RewardEnsemble(config, HeadConfig(), 2, rngs=nnx.Rngs(1))
  tok = load_tokenizer(str(folder))
  rows = preference_rows(10, seed=7, subsets=())
  rows[0]["prompt"] = " ".join(["dog"] * 12)  # the longest pair first: the batches reorder the pairs
  data = from_config(dict(source="files", paths=(str(write_jsonl(tmp_path / "p.jsonl", rows)),), max_length=24,
                          batch_size=4), inputs.DataSpec)
  records = inputs.read_files(data)[0]
  chosen, rejected, index, _ = reward_eval.score_pairs(rm, records, tok, data)
  np.testing.assert_array_equal(index, np.arange(10))
  for i in (0, 4, 9):
    np.testing.assert_allclose(chosen[i], sequence_reward(rm, tok, rows[i]["prompt"], rows[i]["chosen"], 24),
                               atol=1e-5)
    np.testing.assert_allclose(rejected[i], sequence_reward(rm, tok, rows[i]["prompt"], rows[i]["rejected"], 24),
                               atol=1e-5)
