"""TFDS builders: array_record round trip through a data source, without TensorFlow."""

import subprocess
import sys
import textwrap
import types

import pytest

import jaxrlhf.data
from jaxrlhf.data import adapters, tfds_builders
from jaxrlhf.data.records import PreferenceRecord, SFTRecord, record_from_json, record_to_json

CHAT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Héllo ✓"}]


def _records():
  return [
      PreferenceRecord(prompt=CHAT, chosen=[{"role": "assistant", "content": "Hi!"}],
                       rejected=[{"role": "assistant", "content": "No."}], chosen_score=9.0, rejected_score=1.5,
                       margin=2.0, chosen_attributes=(1.0, 0.5), rejected_attributes=(0.0, -1.0), annotator="a",
                       subset="chat", source="x.jsonl:1"),
      PreferenceRecord(prompt="plain", chosen="a", rejected="b", source="x.jsonl:2"),
  ]


def test_record_json_round_trip():
  for record in _records():
    assert record_from_json(record_to_json(record)) == record


def test_preference_files_round_trip_and_lenient_report(tmp_path):
  rows = [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected, "chosen_score": r.chosen_score,
           "rejected_score": r.rejected_score, "margin": r.margin, "annotator": r.annotator, "subset": r.subset,
           "chosen_attributes": r.chosen_attributes, "rejected_attributes": r.rejected_attributes}
          for r in _records()]
  chat_file = tmp_path / "chat.jsonl"
  adapters.write_jsonl(chat_file, rows[:1] + [{"chosen": [], "rejected": []}])  # Second row is bad.
  config = tfds_builders.PreferenceFilesConfig(splits={"train": [chat_file]}, format="chat", strict=False)
  builder = tfds_builders.prepare(tfds_builders.PreferenceFiles, config, tmp_path / "tfds")
  source = tfds_builders.record_source(builder, "train")
  assert len(source) == 1
  expected = _records()[0]
  assert source[0] == expected.__class__(**{**expected.__dict__, "source": "chat.jsonl:1"})
  assert tfds_builders.skip_report(builder, "train") == {"kept": 1, "skipped": 1, "skipped/empty_field": 1}
  assert list((tmp_path / "tfds" / "preference_files" / config.name / "1.0.0").glob("*.array_record*"))
  # A fresh builder over the same data_dir reads the stored files and metadata.
  again = tfds_builders.prepare(tfds_builders.PreferenceFiles, config, tmp_path / "tfds")
  assert tfds_builders.skip_report(again, "train")["skipped"] == 1


def test_preference_files_keeps_order_and_several_splits(tmp_path):
  train, test = tmp_path / "train.jsonl.gz", tmp_path / "test.jsonl"
  adapters.write_jsonl(train, [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(7)])
  adapters.write_jsonl(test, [{"prompt": "t", "chosen": "a", "rejected": "b"}])
  config = tfds_builders.PreferenceFilesConfig(splits={"train": [train], "test": test}, format="pairwise")
  builder = tfds_builders.prepare(tfds_builders.PreferenceFiles, config, tmp_path / "tfds")
  source = tfds_builders.record_source(builder, "train")
  assert [source[i].prompt for i in range(len(source))] == [f"q{i}" for i in range(7)]
  assert len(tfds_builders.record_source(builder, "test")) == 1


def test_sft_files_round_trip(tmp_path):
  answer = [{"role": "assistant", "content": "Hi! ✓"}]
  path = tmp_path / "sft.jsonl"
  adapters.write_jsonl(path, [{"messages": CHAT[:1] + [{"role": "user", "content": "Hello"}] + answer},
                              {"prompt": "plain", "completion": "text"}])
  config = tfds_builders.PreferenceFilesConfig(splits={"train": [path]}, format="sft")
  source = tfds_builders.record_source(tfds_builders.prepare(tfds_builders.PreferenceFiles, config,
                                                             tmp_path / "tfds"), "train")
  assert [source[i] for i in range(len(source))] == [
      SFTRecord(CHAT[:1] + [{"role": "user", "content": "Hello"}], answer, "sft.jsonl:1"),
      SFTRecord("plain", "text", "sft.jsonl:2")]


def test_preference_files_strict_build_fails_on_bad_row(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"prompt": "p", "chosen": "a"}\n')
  config = tfds_builders.PreferenceFilesConfig(splits={"train": [path]}, format="pairwise")
  with pytest.raises(ValueError, match=r"bad.jsonl:1: missing_field"):
    tfds_builders.prepare(tfds_builders.PreferenceFiles, config, tmp_path / "tfds")


def test_a_split_without_records_is_a_clear_error(tmp_path):
  # TFDS itself stops with a bare AssertionError "No examples were yielded", naming neither file nor reason.
  path = tmp_path / "all_bad.jsonl"
  path.write_text('{"prompt": "p", "chosen": "a"}\n{"prompt": "q", "chosen": "a"}\n')
  config = tfds_builders.PreferenceFilesConfig(splits={"train": [path]}, format="pairwise", strict=False)
  with pytest.raises(ValueError, match=r"splits\['train'\]: no record to store \(pairwise .*all_bad.jsonl'\]: kept 0, "
                                       r"skipped 2 \(missing_field=2"):
    tfds_builders.prepare(tfds_builders.PreferenceFiles, config, tmp_path / "tfds")
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  config = tfds_builders.PreferenceFilesConfig(splits={"train": [empty]}, format="pairwise")
  with pytest.raises(ValueError, match=r"no record to store .*kept 0, skipped 0"):
    tfds_builders.prepare(tfds_builders.PreferenceFiles, config, tmp_path / "tfds")


def test_text_without_a_utf8_form_is_named_or_counted(tmp_path):
  # JSON may escape half of a surrogate pair ("\ud83d" of a cut emoji); UTF-8 cannot store it, so the adapters
  # refuse the field (strict) or count the row (lenient).
  path = tmp_path / "cut.jsonl"
  path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
                  '{"prompt": "emoji \\ud83d", "chosen": "a", "rejected": "b"}\n'
                  '{"prompt": "r \\ud83d\\ude00", "chosen": "a", "rejected": "b"}\n')
  strict = tfds_builders.PreferenceFilesConfig(splits={"train": [path]}, format="pairwise")
  with pytest.raises(ValueError, match=r"cut.jsonl:2: bad_field: prompt is not valid Unicode: surrogates not "
                     r"allowed \('\\ud83d' at character 6\)"):
    tfds_builders.prepare(tfds_builders.PreferenceFiles, strict, tmp_path / "tfds")
  lenient = tfds_builders.PreferenceFilesConfig(splits={"train": [path]}, format="pairwise", strict=False)
  builder = tfds_builders.prepare(tfds_builders.PreferenceFiles, lenient, tmp_path / "tfds")
  source = tfds_builders.record_source(builder, "train")
  assert [source[i].prompt for i in range(len(source))] == ["p", "r \U0001F600"]
  assert tfds_builders.skip_report(builder, "train") == {"kept": 2, "skipped": 1, "skipped/bad_field": 1}


def test_config_validation(tmp_path):
  with pytest.raises(ValueError, match="file not found"):
    tfds_builders.PreferenceFilesConfig(splits={"train": [tmp_path / "nope.jsonl"]}, format="pairwise")
  with pytest.raises(ValueError, match="format must be one of"):
    tfds_builders.PreferenceFilesConfig(splits={"train": []}, format="xml")
  with pytest.raises(ValueError, match=r"num_pairs\['train'\] must be a positive integer"):
    tfds_builders.SyntheticWorldConfig(num_pairs={"train": 0})


def test_synthetic_world_builder_with_fake_world(tmp_path, monkeypatch):
  calls = []

  class WorldConfig:
    def __init__(self, seed, **kwargs):
      self.seed, self.kwargs = seed, kwargs

  class World:
    def __init__(self, config):
      self.config = config

    def preference_records(self, num_pairs, split):
      calls.append((self.config.seed, self.config.kwargs, num_pairs, split))
      return [PreferenceRecord(prompt=f"{split} {i}", chosen="good", rejected="bad", chosen_score=float(i),
                               rejected_score=0.0) for i in range(num_pairs)]

  fake = types.SimpleNamespace(World=World, WorldConfig=WorldConfig)
  monkeypatch.setattr(jaxrlhf.data, "synthetic", fake, raising=False)
  monkeypatch.setitem(sys.modules, "jaxrlhf.data.synthetic", fake)
  config = tfds_builders.SyntheticWorldConfig(seed=3, num_pairs={"train": 5, "test": 2},
                                              world_kwargs={"num_topics": 4})
  builder = tfds_builders.prepare(tfds_builders.SyntheticWorld, config, tmp_path / "tfds")
  assert sorted(calls) == [(3, {"num_topics": 4}, 2, "test"), (3, {"num_topics": 4}, 5, "train")]
  train = tfds_builders.record_source(builder, "train")
  assert [train[i].prompt for i in range(5)] == [f"train {i}" for i in range(5)]
  assert train[4].chosen_score == 4.0


def test_synthetic_world_builder_with_real_world(tmp_path):
  from jaxrlhf.data import synthetic
  world = synthetic.World(synthetic.WorldConfig(seed=1))
  expected = world.preference_records(16, "test")
  config = tfds_builders.SyntheticWorldConfig(seed=1, num_pairs={"test": 16})
  builder = tfds_builders.prepare(tfds_builders.SyntheticWorld, config, tmp_path / "tfds")
  source = tfds_builders.record_source(builder, "test")
  assert [source[i] for i in range(len(source))] == expected


def test_build_and_read_never_import_tensorflow(tmp_path):
  """In a fresh interpreter: build, read through data sources (also tfds.data_source), then check sys.modules."""
  data = tmp_path / "d.jsonl"
  adapters.write_jsonl(data, [{"prompt": "p", "chosen": "a", "rejected": "b"}])
  script = textwrap.dedent(f"""
      import sys
      import tensorflow_datasets as tfds
      from jaxrlhf.data import tfds_builders as tb
      config = tb.PreferenceFilesConfig(splits={{"train": [{str(data)!r}]}}, format="pairwise", name="tiny")
      builder = tb.prepare(tb.PreferenceFiles, config, {str(tmp_path / "tfds")!r})
      assert tb.record_source(builder, "train")[0].chosen == "a"
      ds = tfds.data_source("preference_files/tiny", data_dir={str(tmp_path / "tfds")!r}, split="train")
      assert len(ds) == 1
      print("TF_IMPORTED" if any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
            else "NO_TF")
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == "NO_TF"
