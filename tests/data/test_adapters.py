"""Each format adapter on small hand-written files (.jsonl, .jsonl.gz, .parquet)."""

import collections
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxrlhf.data import adapters
from jaxrlhf.data.records import KWayRecord, PreferenceRecord

USER = {"role": "user", "content": "Hi there"}
SYSTEM = {"role": "system", "content": "Be brief."}


def _jsonl(path, rows):
  adapters.write_jsonl(path, rows)
  return path


def test_pairwise_all_fields_and_renamed_columns(tmp_path):
  path = _jsonl(tmp_path / "p.jsonl", [
      {"q": "2+2?", "good": "4", "bad": "5", "chosen_score": 9, "rejected_score": 2.5, "margin": 1.5,
       "subset": "math", "annotator": "a7", "chosen_attributes": [1, 2], "rejected_attributes": [0, 1.5]},
      {"q": "Capital of France?", "good": "Paris", "bad": "Lyon"},
      {"q": "1+1?", "good": "2", "bad": "3", "annotator": 12},
  ])
  config = adapters.AdapterConfig("pairwise", columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
  records, report = adapters.read_records(path, config)
  assert records[0] == PreferenceRecord(
      prompt="2+2?", chosen="4", rejected="5", chosen_score=9.0, rejected_score=2.5, margin=1.5,
      chosen_attributes=(1.0, 2.0), rejected_attributes=(0.0, 1.5), annotator="a7", subset="math",
      source="p.jsonl:1")
  assert records[1] == PreferenceRecord(prompt="Capital of France?", chosen="Paris", rejected="Lyon",
                                        source="p.jsonl:2")
  assert records[2].annotator == "12"
  assert report.kept == 3 and report.skipped == 0


def test_pairwise_gzip_and_parquet_read_the_same_records(tmp_path):
  rows = [{"prompt": f"q{i}", "chosen": f"yes {i}", "rejected": f"no {i}", "chosen_score": float(i)}
          for i in range(5)]
  gz = _jsonl(tmp_path / "p.jsonl.gz", rows)
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
  from_gz, _ = adapters.read_records(gz, "pairwise")
  from_pq, _ = adapters.read_records(tmp_path / "p.parquet", "pairwise")
  strip = lambda rs: [(r.prompt, r.chosen, r.rejected, r.chosen_score) for r in rs]
  assert strip(from_gz) == strip(from_pq) == [(f"q{i}", f"yes {i}", f"no {i}", float(i)) for i in range(5)]
  assert from_pq[3].source == "p.parquet:4"


def test_chat_prompt_is_the_shared_leading_messages(tmp_path):
  chosen = [SYSTEM, USER, {"role": "assistant", "content": "Hello!"}]
  rejected = [SYSTEM, USER, {"role": "assistant", "content": "Go away."}]
  multi_turn = [USER, {"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Joke?"},
                {"role": "assistant", "content": "Knock knock."}]
  multi_turn_rej = multi_turn[:3] + [{"role": "assistant", "content": "No."}]
  path = _jsonl(tmp_path / "c.jsonl", [{"chosen": chosen, "rejected": rejected, "chosen_score": 1},
                                       {"chosen": multi_turn, "rejected": multi_turn_rej}])
  records, _ = adapters.read_records(path, "chat")
  assert records[0].prompt == [SYSTEM, USER]
  assert records[0].chosen == [{"role": "assistant", "content": "Hello!"}]
  assert records[0].rejected == [{"role": "assistant", "content": "Go away."}]
  assert records[0].chosen_score == 1.0
  assert records[1].prompt == multi_turn[:3]
  assert records[1].chosen == [multi_turn[3]]
  # Nested message lists survive parquet (list<struct>) too.
  pq.write_table(pa.Table.from_pylist([{"chosen": multi_turn, "rejected": multi_turn_rej}]), tmp_path / "c.parquet")
  (from_parquet,), _ = adapters.read_records(tmp_path / "c.parquet", "chat")
  assert (from_parquet.prompt, from_parquet.chosen) == (records[1].prompt, records[1].chosen)


def test_chat_explicit_prompt_column(tmp_path):
  # UltraFeedback-binarized layout: a prompt string, and full conversations (user turn included).
  path = _jsonl(tmp_path / "c.jsonl", [{
      "prompt": "Hi there", "chosen": [USER, {"role": "assistant", "content": "Hello!"}],
      "rejected": [USER, {"role": "assistant", "content": "Bye."}]}])
  (record,), _ = adapters.read_records(path, "chat")
  assert record.prompt == "Hi there"
  assert record.chosen == [{"role": "assistant", "content": "Hello!"}]
  assert record.rejected == [{"role": "assistant", "content": "Bye."}]


def test_hh_prompt_ends_with_last_assistant_marker_and_strips_one_space(tmp_path):
  dialogue = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell me a joke\n\nAssistant:"
  path = _jsonl(tmp_path / "hh.jsonl", [
      {"chosen": dialogue + " Why did the  chicken cross?", "rejected": dialogue + "  No."},
  ])
  (record,), report = adapters.read_records(path, "hh")
  assert record.prompt == dialogue
  assert record.chosen == "Why did the  chicken cross?"
  assert record.rejected == " No."  # Exactly one leading space is removed.
  assert not report.notes


def test_hh_diverging_dialogues_fall_back_to_the_shared_prefix(tmp_path):
  start = "\n\nHuman: Q1\n\nAssistant:"
  chosen = start + " A1\n\nHuman: Q2\n\nAssistant: A2"
  rejected = start + " B1"
  (record,), report = adapters.read_records(_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen,
                                                                             "rejected": rejected}]), "hh")
  assert (record.prompt, record.chosen, record.rejected) == (start, "A1\n\nHuman: Q2\n\nAssistant: A2", "B1")
  assert report.notes == collections.Counter(hh_diverging_dialogue=1)


def test_ultrafeedback_dict_completions_top_score_and_seeded_rejected(tmp_path):
  completions = [{"response": f"answer {i}", "overall_score": s} for i, s in enumerate([3, 8, 8, 1, 5])]
  rows = [{"instruction": f"task {n}", "completions": completions} for n in range(40)]
  path = _jsonl(tmp_path / "uf.jsonl", rows)
  records, _ = adapters.read_records(path, adapters.AdapterConfig("ultrafeedback", seed=1))
  # Ties at the top (8, 8): the lowest index wins; rejected is one of the strictly lower ones.
  assert {r.chosen for r in records} == {"answer 1"} and {r.chosen_score for r in records} == {8.0}
  drawn = collections.Counter(r.rejected for r in records)
  assert set(drawn) == {"answer 0", "answer 3", "answer 4"}  # 40 draws from 3: all appear (p_miss ~ 3e-7).
  for r in records:
    assert r.rejected_score == {"answer 0": 3.0, "answer 3": 1.0, "answer 4": 5.0}[r.rejected]
  again, _ = adapters.read_records(path, adapters.AdapterConfig("ultrafeedback", seed=1))
  other, _ = adapters.read_records(path, adapters.AdapterConfig("ultrafeedback", seed=2))
  assert [r.rejected for r in again] == [r.rejected for r in records]
  assert [r.rejected for r in other] != [r.rejected for r in records]
  lowest, _ = adapters.read_records(path, adapters.AdapterConfig("ultrafeedback", rejected="lowest"))
  assert {(r.chosen, r.rejected) for r in lowest} == {("answer 1", "answer 3")}


def test_ultrafeedback_text_completions_with_scores_column_and_all_tied_row(tmp_path):
  path = _jsonl(tmp_path / "uf.jsonl", [
      {"prompt": "p", "completions": ["a", "b"], "scores": [1, 2]},
      {"prompt": "p", "completions": ["a", "b"], "scores": [4, 4]},
  ])
  config = adapters.AdapterConfig("ultrafeedback", columns={"prompt": "prompt"}, strict=False)
  records, report = adapters.read_records(path, config)
  assert [(r.chosen, r.rejected, r.chosen_score, r.rejected_score) for r in records] == [("b", "a", 2.0, 1.0)]
  assert report.counts == collections.Counter(no_preference=1)
  with pytest.raises(ValueError, match=r"uf.jsonl:2: no_preference"):
    adapters.read_records(path, adapters.AdapterConfig("ultrafeedback", columns={"prompt": "prompt"}))


def test_kway_scores_best_index_and_messages(tmp_path):
  path = _jsonl(tmp_path / "k.jsonl", [
      {"prompt": "p", "completions": ["a", "b", "c"], "scores": [0.1, 0.9, 0.5], "subset": "s"},
      {"prompt": [USER], "completions": [[{"role": "assistant", "content": "x"}],
                                         [{"role": "assistant", "content": "y"}]], "best_index": 1},
  ])
  records, _ = adapters.read_records(path, "kway")
  assert records[0] == KWayRecord(prompt="p", completions=("a", "b", "c"), scores=(0.1, 0.9, 0.5), subset="s",
                                  source="k.jsonl:1")
  assert records[1].best_index == 1 and records[1].scores is None
  assert records[1].completions[0] == [{"role": "assistant", "content": "x"}]


def test_unknown_format_and_columns_are_rejected():
  with pytest.raises(ValueError, match="format must be one of"):
    adapters.AdapterConfig("csv")
  with pytest.raises(ValueError, match=r"columns: unknown keys \['answer'\]"):
    adapters.AdapterConfig("pairwise", columns={"answer": "x"})


def test_unknown_file_extension(tmp_path):
  (tmp_path / "x.csv").write_text("a,b\n")
  with pytest.raises(ValueError, match="expected a .jsonl"):
    adapters.read_records(tmp_path / "x.csv", "pairwise")


def test_multiple_files_keep_order(tmp_path):
  a = _jsonl(tmp_path / "a.jsonl", [{"prompt": "1", "chosen": "x", "rejected": "y"}])
  b = _jsonl(tmp_path / "b.jsonl", [{"prompt": "2", "chosen": "x", "rejected": "y"}])
  records, _ = adapters.read_records([b, a], "pairwise")
  assert [r.source for r in records] == ["b.jsonl:1", "a.jsonl:1"]


def test_kway_scores_and_best_index_must_agree(tmp_path):
  path = _jsonl(tmp_path / "k.jsonl", [
      {"prompt": "p", "completions": ["a", "b", "c"], "scores": [0.1, 0.9, 0.5], "best_index": 1},  # Agree.
      {"prompt": "p", "completions": ["a", "b", "c"], "scores": [0.1, 0.9, 0.5], "best_index": 2},  # Disagree.
      {"prompt": "p", "completions": ["a", "b"], "scores": [0.7, 0.7], "best_index": 1},  # A top-score tie: agree.
      {"prompt": "p", "completions": ["a", "b"], "scores": [0.1, 0.9], "best_index": 5},  # Out of range.
  ])
  records, report = adapters.read_records(path, adapters.AdapterConfig("kway", strict=False))
  assert [(r.source, r.scores) for r in records] == [("k.jsonl:1", (0.1, 0.9, 0.5)), ("k.jsonl:3", (0.7, 0.7))]
  assert dict(report.counts) == {"bad_field": 2}
  assert report.examples["bad_field"][0] == ("k.jsonl:2: best_index=2 disagrees with scores=[0.1, 0.9, 0.5] (best: 1); "
                                            "give one, or make them agree")
  with pytest.raises(ValueError, match=rf"^{tmp_path}/k\.jsonl:2: bad_field: best_index=2 disagrees"):
    adapters.read_records(path, "kway")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_byte_order_mark_does_not_cost_the_first_row(tmp_path, suffix):
  rows = [{"prompt": "1", "chosen": "x", "rejected": "y"}, {"prompt": "2", "chosen": "x", "rejected": "y"}]
  data = b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode()  # A BOM, then the rows.
  path = tmp_path / f"bom{suffix}"
  path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
  records, report = adapters.read_records(path, adapters.AdapterConfig("pairwise", strict=False))
  assert [r.prompt for r in records] == ["1", "2"] and report.skipped == 0


def test_malformed_json_names_the_file_line_and_only_the_column(tmp_path):
  path = tmp_path / "prefs.jsonl"
  path.write_text('{"prompt": "p", "chosen": "x", "rejected": "y"}\r\n{"prompt": "the cat", "chosen": \r\n')
  with pytest.raises(ValueError, match=rf"^{tmp_path}/prefs\.jsonl:2: malformed_json: Expecting value at column 33$"):
    adapters.read_records(path, "pairwise")
