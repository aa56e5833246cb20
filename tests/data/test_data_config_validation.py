"""The data sections' config boundary: bad `columns` and `paths` / `eval_paths` of `data` (DataSpec) and `prompts`
(PromptSpec) are ConfigErrors naming the key and what was expected, raised by `from_config` (before any weights
load); held-out files without a usable pair are an error, and their skip reasons are reported."""

import gzip
import json

import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data.errors import DataFileError
from jaxrlhf.stages import inputs

PAIR = {"prompt": "the cat", "chosen": "sat on a mat", "rejected": "ran"}


@pytest.fixture
def files(tmp_path):
  """Paths of a valid .jsonl, .jsonl.gz and .parquet pair file, a .json file and a directory."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  out = {"jsonl": tmp_path / "pairs.jsonl", "gz": tmp_path / "pairs.jsonl.gz", "parquet": tmp_path / "pairs.parquet",
         "json": tmp_path / "pairs.json", "dir": tmp_path / "folder"}
  out["jsonl"].write_text(json.dumps(PAIR) + "\n")
  with gzip.open(out["gz"], "wt") as f:
    f.write(json.dumps(PAIR) + "\n")
  pq.write_table(pa.Table.from_pylist([PAIR]), out["parquet"])
  out["json"].write_text(json.dumps([PAIR]))
  out["dir"].mkdir()
  return {k: str(v) for k, v in out.items()}


def _data(files, **kw):
  return from_config({"source": "files", "paths": (files["jsonl"],), **kw}, inputs.DataSpec, path="config.data")


def test_valid_files_and_columns_pass(files):
  spec = _data(files, paths=(files["jsonl"], files["gz"], files["parquet"]), eval_paths=(files["jsonl"],),
               columns={"prompt": "question", "chosen_score": "score_a"})
  assert spec.columns == {"prompt": "question", "chosen_score": "score_a"}
  spec = _data(files, format="hh", columns={"chosen": "good"})
  assert spec.columns == {"chosen": "good"}


@pytest.mark.parametrize("kw, match", [
    (dict(columns={"promt": "prompt"}),
     r"^config\.data\.columns\.promt: unknown for config\.data\.format='pairwise' \(did you mean 'prompt'\?\); "
     r"valid keys: .*chosen, .*prompt, rejected"),
    (dict(format="hh", columns={"prompt": "question"}),
     r"^config\.data\.columns\.prompt: unknown for config\.data\.format='hh'; valid keys: chosen, rejected, subset$"),
    (dict(columns={"prompt": 3}), r"^config\.data\.columns\.prompt: expected the file's column name \(a non-empty "
     r"string\), got 3$"),
    (dict(columns={"chosen": " "}), r"^config\.data\.columns\.chosen: expected the file's column name"),
    (dict(paths="dir"), r"^config\.data\.paths\[0\]: '.*folder' is a directory, not a file; expected a \.jsonl, "
     r"\.jsonl\.gz or \.parquet file"),
    (dict(paths="json"), r"^config\.data\.paths\[0\]: '.*pairs\.json' has an unsupported file type; expected a "
     r"\.jsonl, \.jsonl\.gz or \.parquet file$"),
    (dict(eval_paths="dir"), r"^config\.data\.eval_paths\[0\]: '.*folder' is a directory"),
    (dict(eval_paths="json"), r"^config\.data\.eval_paths\[0\]: .*unsupported file type"),
    (dict(paths="missing"), r"^config\.data\.paths\[0\]: file not found: '.*nope\.jsonl'$"),
])
def test_bad_columns_and_paths_are_config_errors_naming_the_key(files, tmp_path, kw, match):
  files = {**files, "missing": str(tmp_path / "nope.jsonl")}
  kw = {k: ((files[v],) if k.endswith("paths") else v) for k, v in kw.items()}
  with pytest.raises(ConfigError, match=match):
    _data(files, **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(paths="dir"), r"^config\.prompts\.paths\[0\]: '.*folder' is a directory, not a file"),
    (dict(paths="json"), r"^config\.prompts\.paths\[0\]: .*unsupported file type; expected a \.jsonl, \.jsonl\.gz or "
     r"\.parquet file$"),
    (dict(eval_paths="dir"), r"^config\.prompts\.eval_paths\[0\]: '.*folder' is a directory"),
    (dict(columns={"prompt": ""}), r"^config\.prompts\.columns\.prompt: expected the file's column name"),
    (dict(columns={"chosen": "x"}), r"^config\.prompts\.columns\.chosen: unknown for config\.prompts\.format="
     r"'prompts'; valid keys: chat_template_kwargs, messages, prompt, tools$"),
])
def test_bad_prompt_files_are_config_errors_naming_the_key(files, kw, match):
  kw = {k: ((files[v],) if k.endswith("paths") else v) for k, v in kw.items()}
  with pytest.raises(ConfigError, match=match):
    from_config({"source": "files", "paths": (files["jsonl"],), **kw}, inputs.PromptSpec, path="config.prompts")


def test_an_eval_file_without_a_usable_pair_is_an_error_naming_eval_paths(files, tmp_path):
  bad = tmp_path / "held_out.jsonl"
  bad.write_text('{"prompt": "the cat", "chosen": \n' + json.dumps({**PAIR, "rejected": PAIR["chosen"]}) + "\n")
  spec = _data(files, eval_paths=(str(bad),))
  with pytest.raises(ValueError, match=r"^data\.eval_paths: no usable records in \['.*held_out\.jsonl'\] \(.*kept 0, "
                     r"skipped 2 \(identical_responses=1, malformed_json=1; first: held_out\.jsonl:2: .*"
                     r"held_out\.jsonl:1: Expecting value at column 33\)"):
    inputs.read_files(spec)


def test_the_eval_files_skip_reasons_are_reported(files, tmp_path, capsys):
  held_out = tmp_path / "held_out.jsonl"
  held_out.write_text(json.dumps(PAIR) + "\n" + "{oops\n")
  train, evaluation, summary = inputs.read_files(_data(files, eval_paths=(str(held_out),)))
  assert (len(train), len(evaluation)) == (1, 1)
  assert summary["eval"]["kept"] == 1 and summary["eval"]["counts"] == {"malformed_json": 1}
  assert summary["eval_skipped"] == 1
  assert "[data] pairwise eval" in capsys.readouterr().out and "held_out.jsonl:2" in summary["eval"]["line"]


def test_the_split_accounts_for_every_record_read(files, tmp_path, capsys):
  """The caps leave records out: the report and the printed line say how many (train + held out + unused = kept);
  an eval_paths file is used whole (num_eval caps only a held-out fraction, e.g. reward_eval scores every pair)."""
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text("".join(json.dumps({**PAIR, "prompt": f"q{i}"}) + "\n" for i in range(12)))
  train, held_out, summary = inputs.read_files(_data(files, paths=(str(pairs),), num_train=8, num_eval=4,
                                                     eval_fraction=0.05))
  assert ([r.prompt for r in train], [r.prompt for r in held_out]) == ([f"q{i}" for i in range(8)], ["q11"])
  assert summary["split"] == {"train": 8, "held_out": 1, "unused_train": 3, "line": summary["split"]["line"]}
  line = ("split: 8 train, 1 held out (the last 1 of 12: data.eval_fraction=0.05, data.num_eval=4); 3 of 11 train "
          "records unused (data.num_train=8)")
  assert summary["split"]["line"] == line and f"[data] {line}\n" in capsys.readouterr().out
  _, held_out, summary = inputs.read_files(_data(files, paths=(str(pairs),), eval_paths=(str(pairs),), num_eval=4))
  assert len(held_out) == 12 and summary["split"]["held_out"] == 12 and summary["split"]["unused_train"] == 0


def test_a_file_without_a_usable_record_is_a_data_file_error(files, tmp_path):
  """A known error (experiments.run prints one line naming the stage), not a bare ValueError's traceback."""
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(DataFileError, match=r"^data\.paths: no usable records in \['.*empty\.jsonl'\] \(pairwise .*"
                                          r"kept 0, skipped 0\)"):
    inputs.read_files(_data(files, paths=(str(empty),)))
  with pytest.raises(DataFileError, match=r"^data\.eval_paths: no usable records"):
    inputs.read_files(_data(files, eval_paths=(str(empty),)))
