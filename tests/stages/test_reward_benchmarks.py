"""M-RewardBench and RAG-RewardBench in the reward_eval stage: the adapters read the released layouts (per-language
parquet files; per-scenario JSONL files) with file:line errors and counted skips, the metrics match hand-computed
values (per language / scenario, M-RewardBench's category scores with its example counts, ensembles' members and
aggregates, ties wrong), and the stage end to end scores each pair as the sequences scored alone."""

import json

import numpy as np
import pytest
from flax import nnx

from benchmark_files import (FIXTURES, LANGUAGE_WORDS, ENGLISH, fixture_rows, m_rewardbench_rows,
                             rag_rewardbench_rows, write_jsonl, write_parquet)
from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data import adapters, errors
from jaxrlhf.data.records import BenchmarkRecord, PreferenceRecord
from jaxrlhf.evaluation import benchmarks
from jaxrlhf.models import from_pretrained, load_tokenizer
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble
from jaxrlhf.stages import artifacts, reward_eval, reward_heads
from tiny_reward_files import CONFIG, WORDS, model_folder, sequence_reward

M_COUNTS = benchmarks.M_REWARDBENCH_EXAMPLE_COUNTS

# ------------------------------------------------------------------------------------------------ rules
# Two members; row 3 ties for both members, rows 0 and 6 tie for the mean, several for the min.
CHOSEN = np.array([[2, 0], [1, 3], [0, 2], [1, 1], [3, 0], [0, 0], [0, 1]], np.float64)
REJECTED = np.array([[1, 1], [0, 1], [1, 0], [1, 1], [0, 2], [1, 1], [1, 0]], np.float64)
LANGUAGES = ["deu_Latn"] * 3 + ["jpn_Jpan"] * 3 + ["deu_Latn"]
SOURCES = ["alpacaeval-easy", "mt-bench-easy", "math-prm", "alpacaeval-easy", "refusals-dangerous", None,
           "hep-python"]


def test_m_rewardbench_category_scores_use_its_example_counts():
  scores = benchmarks.m_rewardbench_scores({"alpacaeval-easy": 0.5, "mt-bench-easy": 1.0, "math-prm": 1.0,
                                            "hep-python": 0.0, "refusals-dangerous": 0.25, "translation": 1.0})
  # Count-weighted within a category (alpacaeval-easy 79, mt-bench-easy 24; math-prm 983, hep-python 163).
  assert scores["Chat"] == pytest.approx((0.5 * 79 + 24) / 103)
  assert scores["Reasoning"] == pytest.approx(983 / (983 + 163))
  assert scores["Safety"] == 0.25 and np.isnan(scores["Chat Hard"])
  # The language score is the unweighted mean of its categories (no prior sets); "translation" is no subset.
  assert scores["Score"] == pytest.approx(((0.5 * 79 + 24) / 103 + 983 / 1146 + 0.25) / 3)
  assert sum(M_COUNTS.values()) - M_COUNTS["math-prm"] + 447 == 2869  # the release's pairs per language
  with pytest.raises(ValueError, match="fractions"):
    benchmarks.m_rewardbench_scores({"alpacaeval-easy": 2.0})


def test_m_rewardbench_metrics_match_hand_computation():
  m, credit = reward_eval.benchmark_metrics(CHOSEN, REJECTED, LANGUAGES, SOURCES, "m_rewardbench",
                                            num_resamples=200)
  # Member means: chosen (1, 2, 1, 1, 1.5, 0, .5) vs rejected (1, .5, .5, 1, 1, 1, .5): rows 0, 3, 6 tie.
  np.testing.assert_array_equal(credit, [0, 1, 1, 0, 1, 0, 0])
  assert m["m_rewardbench/accuracy"] == pytest.approx(3 / 7) and m["m_rewardbench/n"] == 7
  assert m["m_rewardbench/language/deu_Latn/accuracy"] == 0.5 and m["m_rewardbench/language/deu_Latn/n"] == 4
  assert m["m_rewardbench/language/jpn_Jpan/accuracy"] == pytest.approx(1 / 3)
  # Members alone: member 0 right on rows 0, 1, 4; member 1 on rows 1, 2, 6.
  assert m["m_rewardbench/member_0/accuracy"] == pytest.approx(3 / 7)
  assert m["m_rewardbench/member_0/language/deu_Latn/accuracy"] == 0.5
  assert m["m_rewardbench/member_1/language/deu_Latn/accuracy"] == 0.75
  assert m["m_rewardbench/member_1/language/jpn_Jpan/accuracy"] == 0.0
  # Per language: subsets, categories (M-RewardBench's counts) and their mean.
  assert m["m_rewardbench/language/deu_Latn/subset/math-prm/accuracy"] == 1.0
  assert m["m_rewardbench/language/jpn_Jpan/subset/(none)/n"] == 1
  deu_chat, deu_reasoning = 24 / 103, 983 / 1146
  assert m["m_rewardbench/language/deu_Latn/section/Chat"] == pytest.approx(deu_chat)
  assert m["m_rewardbench/language/deu_Latn/section/Reasoning"] == pytest.approx(deu_reasoning)
  assert "m_rewardbench/language/deu_Latn/section/Safety" not in m
  assert m["m_rewardbench/language/deu_Latn/score"] == pytest.approx((deu_chat + deu_reasoning) / 2)
  assert m["m_rewardbench/language/jpn_Jpan/section/Safety"] == 1.0
  assert m["m_rewardbench/language/jpn_Jpan/score"] == pytest.approx(0.5)
  assert m["m_rewardbench/score"] == pytest.approx(((deu_chat + deu_reasoning) / 2 + 0.5) / 2)
  for key in ("m_rewardbench/accuracy", "m_rewardbench/language/jpn_Jpan/accuracy",
              "m_rewardbench/member_1/language/deu_Latn/accuracy"):
    assert m[f"{key}_lower"] <= m[key] <= m[f"{key}_upper"]
  # Worst-case aggregation: mins (0, 1, 0, 1, 0, 0, 0) vs (1, 0, 0, 1, 0, 1, 0): only row 1 is right.
  m_min, credit_min = reward_eval.benchmark_metrics(CHOSEN, REJECTED, LANGUAGES, SOURCES, "m_rewardbench",
                                                    aggregation="min", num_resamples=200)
  np.testing.assert_array_equal(credit_min, [0, 1, 0, 0, 0, 0, 0])
  assert m_min["m_rewardbench/language/deu_Latn/accuracy"] == 0.25


def test_rag_rewardbench_metrics_per_scenario():
  scenarios = ["multi-hop reasoning"] * 2 + ["appropriate abstain"] * 4 + ["conflict robustness"]
  m, _ = reward_eval.benchmark_metrics(CHOSEN, REJECTED, scenarios, ["hotpotqa"] * 7, "rag_rewardbench",
                                       num_resamples=200)
  # Aggregate credit (0, 1 | 1, 0, 1, 0 | 0).
  assert m["rag_rewardbench/scenario/multi-hop reasoning/accuracy"] == 0.5
  assert m["rag_rewardbench/scenario/appropriate abstain/accuracy"] == 0.5
  assert m["rag_rewardbench/scenario/conflict robustness/accuracy"] == 0.0
  assert m["rag_rewardbench/macro_accuracy"] == pytest.approx(1 / 3)
  assert m["rag_rewardbench/accuracy"] == pytest.approx(3 / 7)
  assert m["rag_rewardbench/scenario/appropriate abstain/subset/hotpotqa/n"] == 4
  assert not any("/section/" in k or k.endswith("/score") for k in m)  # no RewardBench categories here
  # A single reward (K = 1): no member rows; ties are wrong.
  same = np.ones((3, 1))
  m1, credit = reward_eval.benchmark_metrics(same, same.copy(), ["a"] * 3, [None] * 3, "rag_rewardbench",
                                             num_resamples=50)
  assert not credit.any() and m1["rag_rewardbench/accuracy_upper"] == 0.0
  assert not any("member_" in k for k in m1)

# ------------------------------------------------------------------------------------------------ adapters
def test_adapters_read_the_released_layouts(tmp_path):
  deu = write_parquet(tmp_path / "deu_Latn" / "test-00000-of-00001.parquet",
                      m_rewardbench_rows("deu_Latn", LANGUAGE_WORDS["deu_Latn"], per_subset=1, seed=1))
  records, report = adapters.read_records([deu], "m_rewardbench")
  rows = m_rewardbench_rows("deu_Latn", LANGUAGE_WORDS["deu_Latn"], per_subset=1, seed=1)
  assert report.kept == len(rows) == len(records) == 5
  assert records[2] == BenchmarkRecord(
      pair=PreferenceRecord(prompt=rows[2]["prompt"], chosen=rows[2]["chosen"], rejected=rows[2]["rejected"],
                            subset="refusals-dangerous", source="test-00000-of-00001.parquet:3"),
      group="deu_Latn", id="2")
  # The v1 files named the subset column "subset": a rename reads them.
  v1 = write_jsonl(tmp_path / "filtered.jsonl", [{**{k: v for k, v in rows[0].items() if k != "source"},
                                                  "subset": "alpacaeval-easy"}])
  records, _ = adapters.read_records(v1, adapters.AdapterConfig("m_rewardbench", columns={"subset": "subset"}))
  assert records[0].pair.subset == "alpacaeval-easy"
  # RAG-RewardBench: the file names the scenario; a `scenario` column, where a file has one, wins.
  reason = write_jsonl(tmp_path / "Dataset" / "reason.jsonl", rag_rewardbench_rows(2))
  mine = write_jsonl(tmp_path / "mine.jsonl", [{**rag_rewardbench_rows(1)[0], "scenario": "conflict robustness"},
                                               rag_rewardbench_rows(1)[0]])
  bare = write_jsonl(tmp_path / "abstain.jsonl",
                     [{**rag_rewardbench_rows(1)[0], "prompt": "what?", "question": "what?"}])
  records, report = adapters.read_records([reason, mine, bare], "rag_rewardbench")
  assert [r.group for r in records] == ["multi-hop reasoning"] * 2 + ["conflict robustness", "mine",
                                                                       "appropriate abstain"]
  assert report.notes == {"rag_prompt_is_question": 1}  # kept, but the documents are not in what is scored
  assert records[0].pair.prompt.startswith("Answer the question") and "References:" in records[0].pair.prompt
  assert records[0].pair.subset == "hotpotqa" and records[0].id is None
  assert [adapters.rag_rewardbench_scenario(f"Dataset/{n}.jsonl") for n in ("citation", "abstain", "harmless")] == [
      "fine-grained citation", "appropriate abstain", "harmlessness"]


def test_committed_fixtures_are_the_generators_rows():
  for relative, rows in fixture_rows().items():
    fmt = "m_rewardbench" if relative.startswith("m_") else "rag_rewardbench"
    records, report = adapters.read_records(FIXTURES / relative, fmt)
    assert report.kept == len(rows) and [r.pair.chosen for r in records] == [row["chosen"] for row in rows]


def test_bad_rows_name_file_and_line_or_are_counted(tmp_path):
  rows = m_rewardbench_rows("deu_Latn", LANGUAGE_WORDS["deu_Latn"], per_subset=1)
  rows[1]["language"] = None                          # missing
  rows[2]["rejected"] = rows[2]["chosen"]             # identical
  rows[3]["id"] = 7
  path = write_parquet(tmp_path / "deu" / "test-00000-of-00001.parquet", rows)
  with pytest.raises(ValueError, match=rf"{path}:2: missing_field: column 'language' is missing"):
    adapters.read_records(path, "m_rewardbench")
  records, report = adapters.read_records(path, adapters.AdapterConfig("m_rewardbench", strict=False))
  assert len(records) == 3 and records[1].id == "7"
  assert report.counts == {errors.MISSING_FIELD: 1, errors.IDENTICAL_RESPONSES: 1}
  rag = rag_rewardbench_rows(3)
  rag[2]["chosen"] = ["not", "text"]
  jsonl = write_jsonl(tmp_path / "citation.jsonl", rag)
  with jsonl.open("a") as f:
    f.write("{not json\n")
  with pytest.raises(ValueError, match=rf"{jsonl}:3: non_string_content: chosen must be a string"):
    adapters.read_records(jsonl, "rag_rewardbench")
  records, report = adapters.read_records(jsonl, adapters.AdapterConfig("rag_rewardbench", strict=False))
  assert len(records) == 2 and report.counts == {errors.NON_STRING_CONTENT: 1, errors.MALFORMED_JSON: 1}
  assert report.examples[errors.MALFORMED_JSON][0].startswith("citation.jsonl:4: ")

# ------------------------------------------------------------------------------------------------ the stage
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("benchmarks")
  folder = model_folder(root / "model", seed=2)
  lm, config = from_pretrained(str(folder))
  backbone = {k: v for k, v in nnx.to_pure_dict(nnx.state(lm, nnx.Param)).items() if k != "lm_head"}
  heads = nnx.to_pure_dict(nnx.state(reward_heads.stacked_heads(CONFIG.embed_dim, HeadConfig(), 3, 1)))
  single = RewardEnsemble(config, HeadConfig(), 1, rngs=nnx.Rngs(5))
  languages = {}
  for i, language in enumerate(("deu_Latn", "jpn_Jpan")):  # The tiny tokenizer's words in both "languages".
    rows = m_rewardbench_rows(language, ["big", "small"] + WORDS, per_subset=2, seed=i)
    languages[language] = write_parquet(root / language / "test-00000-of-00001.parquet", rows)
  rag = {name: rag_rewardbench_rows(3, ENGLISH, seed=i) for i, name in enumerate(("reason", "abstain"))}
  rag["abstain"][1]["prompt"] += " the" * 40  # Longer than max_length: dropped and counted.
  rag = {name: write_jsonl(root / "Dataset" / f"{name}.jsonl", rows) for name, rows in rag.items()}
  with rag["abstain"].open("a") as f:
    f.write('{"prompt": "q", "chosen": "a"}\n')  # No "rejected": skipped and counted (data.strict is off).
  return {"root": root, "tokenizer": folder, "languages": languages, "rag": rag,
          "shared": reward_heads.save_heads(str(root / "shared"), config, HeadConfig(), backbone, heads),
          "single": artifacts.save_reward_model(str(root / "single"), config, HeadConfig(), 1, nnx.state(single))}


def _cfg(assets, model, benchmark, paths, **overrides):
  data = dict(tokenizer=str(assets["tokenizer"]), batch_size=4, max_length=overrides.pop("max_length", 40))
  return from_config(dict(reward_model=assets[model], split="none", benchmark=benchmark,
                          benchmark_paths=tuple(str(p) for p in paths), data=data, num_resamples=100, **overrides),
                     reward_eval.RewardEvalConfig)


def _lines(out):
  with open(out["scores"]) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("model,aggregation", [("shared", "min"), ("single", "mean")])
def test_m_rewardbench_end_to_end_per_language(assets, tmp_path, model, aggregation):
  paths = list(assets["languages"].values())
  out = reward_eval.run(_cfg(assets, model, "m_rewardbench", paths, aggregation=aggregation), str(tmp_path), {})
  rm = artifacts.load_reward_model(assets[model])
  tok = load_tokenizer(str(assets["tokenizer"]))
  rows = [row for language, path in assets["languages"].items()
          for row in m_rewardbench_rows(language, ["big", "small"] + WORDS, per_subset=2,
                                        seed=list(assets["languages"]).index(language))]
  lines = _lines(out)
  assert len(lines) == len(rows) == 20 and all(line["kind"] == "m_rewardbench" for line in lines)
  reduce = min if aggregation == "min" else (lambda x: float(np.mean(x)))
  credit = {}
  for row, line in zip(rows, lines):
    assert line["group"] == row["language"] and line["subset"] == row["source"] and line["id"] == str(row["id"])
    for side in ("chosen", "rejected"):
      np.testing.assert_allclose(line[side], sequence_reward(rm, tok, row["prompt"], row[side], 40), atol=1e-5)
    right = reduce(line["chosen"]) > reduce(line["rejected"])
    assert line["correct"] == right
    credit.setdefault(row["language"], []).append(right)
  m = out["metrics"]
  for language, values in credit.items():
    assert m[f"m_rewardbench/language/{language}/accuracy"] == pytest.approx(np.mean(values))
    assert m[f"m_rewardbench/language/{language}/n"] == 10
    assert 0 <= m[f"m_rewardbench/language/{language}/score"] <= 1
  assert m["m_rewardbench/accuracy"] == pytest.approx(np.mean([v for vs in credit.values() for v in vs]))
  assert ("m_rewardbench/member_2/accuracy" in m) == (model == "shared")
  report = out["data_report"]["m_rewardbench"]
  assert report["kept"] == 20 and report["skipped"] == 0 and m["m_rewardbench/dropped_too_long"] == 0
  assert [f["kept"] for f in report["files"].values()] == [10, 10]  # per file: the languages' files share a name


def test_rag_rewardbench_end_to_end_counts_dropped_pairs(assets, tmp_path):
  paths = list(assets["rag"].values())
  out = reward_eval.run(_cfg(assets, "single", "rag_rewardbench", paths, max_length=48), str(tmp_path), {})
  m, lines = out["metrics"], _lines(out)
  rm = artifacts.load_reward_model(assets["single"])
  tok = load_tokenizer(str(assets["tokenizer"]))
  rows = [json.loads(line) for path in paths for line in open(path)][:-1]
  report = out["data_report"]["rag_rewardbench"]
  assert report["kept"] == 6 and report["skipped"] == 1
  assert report["files"][str(assets["rag"]["abstain"])]["counts"] == {errors.MISSING_FIELD: 1}
  assert [line.get("dropped", False) for line in lines] == [False] * 4 + [True, False]
  assert m["rag_rewardbench/dropped_too_long"] == 1 and m["rag_rewardbench/n"] == 5
  by_scenario = {}
  for row, line in zip(rows, lines):
    if line.get("dropped"):
      continue
    chosen, rejected = (sequence_reward(rm, tok, row["prompt"], row[side], 48)[0] for side in ("chosen", "rejected"))
    assert line["chosen"][0] == pytest.approx(chosen, abs=1e-5) and line["correct"] == (chosen > rejected)
    by_scenario.setdefault(line["group"], []).append(chosen > rejected)
  assert set(by_scenario) == {"multi-hop reasoning", "appropriate abstain"}
  for scenario, values in by_scenario.items():
    assert m[f"rag_rewardbench/scenario/{scenario}/accuracy"] == pytest.approx(np.mean(values))
  assert m["rag_rewardbench/scenario/appropriate abstain/n"] == 2
  assert m["rag_rewardbench/macro_accuracy"] == pytest.approx(np.mean([np.mean(v) for v in by_scenario.values()]))


def test_config_errors_name_the_key(assets):
  rag = (str(assets["rag"]["reason"]),)
  with pytest.raises(ConfigError, match=r"config\.benchmark: 'none' with 1 config\.benchmark_paths"):
    from_config(dict(reward_model=assets["single"], split="none", benchmark_paths=rag,
                     data=dict(tokenizer=str(assets["tokenizer"]))), reward_eval.RewardEvalConfig)
  with pytest.raises(ConfigError, match=r"config\.benchmark: 'm_rewardbench' with 0"):
    from_config(dict(reward_model=assets["single"], benchmark="m_rewardbench"), reward_eval.RewardEvalConfig)
  with pytest.raises(ConfigError, match=r"config\.benchmark_paths\[0\]: file not found"):
    from_config(dict(reward_model=assets["single"], split="none", benchmark="rag_rewardbench",
                     benchmark_paths=("nope.jsonl",), data=dict(tokenizer=str(assets["tokenizer"]))),
                reward_eval.RewardEvalConfig)
  with pytest.raises(ConfigError, match=r"config\.benchmark_columns: columns: unknown keys \['documents'\]"):
    from_config(dict(reward_model=assets["single"], split="none", benchmark="rag_rewardbench", benchmark_paths=rag,
                     benchmark_columns={"documents": "docs"}, data=dict(tokenizer=str(assets["tokenizer"]))),
                reward_eval.RewardEvalConfig)
  with pytest.raises(ConfigError, match=r"config\.data\.tokenizer: required for config\.benchmark='rag_rewardbench'"):
    from_config(dict(reward_model=assets["single"], split="none", benchmark="rag_rewardbench", benchmark_paths=rag),
                reward_eval.RewardEvalConfig)
