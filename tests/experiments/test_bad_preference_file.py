"""A bad preference file through `python -m experiments.run`: strict mode stops before training with file:line
and the reason; lenient mode trains on the good pairs and reports every skipped line in the run's results."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
WORDS = "the cat dog sat ran on a mat log big small red blue fast slow".split()


def _tokenizer_folder(path: pathlib.Path) -> pathlib.Path:
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  path.mkdir()
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}))
  return path


def _preference_file(path: pathlib.Path) -> pathlib.Path:
  good = [{"prompt": f"the {a} sat", "chosen": f"a {b} cat ran", "rejected": f"the {c} log"}
          for a, b, c in zip(WORDS * 3, WORDS[3:] * 3 + WORDS, WORDS[5:] * 3 + WORDS)][:24]
  lines = [json.dumps(r) for r in good[:2]]
  lines.append('{"prompt": "the cat", "chosen": ')                              # line 3: malformed JSON
  lines.append(json.dumps({"prompt": "the dog", "chosen": "a mat", "rejected": "a mat"}))  # line 4: identical
  lines += [json.dumps(r) for r in good[2:]]
  path.write_text("\n".join(lines) + "\n")
  return path


def _run(tmp_path, strict: bool):
  tok = _tokenizer_folder(tmp_path / f"tok_{strict}")
  data = _preference_file(tmp_path / f"prefs_{strict}.jsonl")
  workdir = tmp_path / f"run_{strict}"
  cmd = [sys.executable, "-m", "experiments.run", "--config", "configs/reward.py:smoke", "--workdir", str(workdir),
         "--config.data.source=files", f"--config.data.paths=('{data}',)", "--config.data.format=pairwise",
         f"--config.data.tokenizer={tok}", f"--config.data.strict={strict}", "--config.data.num_train=0",
         "--config.data.num_eval=0", "--config.data.eval_fraction=0.25"]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600), workdir, data


@pytest.mark.slow
def test_strict_mode_fails_with_file_line_and_reason(tmp_path):
  proc, workdir, data = _run(tmp_path, strict=True)
  assert proc.returncode != 0
  assert f"{data.name}:3" in proc.stderr and "malformed_json" in proc.stderr, proc.stderr[-2000:]
  assert not (workdir / "DONE.json").exists()


@pytest.mark.slow
def test_lenient_mode_trains_and_reports_each_skip(tmp_path):
  proc, workdir, _ = _run(tmp_path, strict=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.dumps(json.loads((workdir / "results.json").read_text())["stages"]["main"]["data_report"])
  assert "malformed_json" in report and "identical_responses" in report, report


def _budget_files(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """A train file of 24 short + 8 too long pairs and an eval file of 6 short + 4 too long pairs (the smoke
  configs' data.max_length is 40 tokens; a long pair's prompt has 45)."""
  short = [{"prompt": f"the {a} sat", "chosen": f"a {b} cat ran", "rejected": f"the {c} log"}
           for a, b, c in zip(WORDS * 3, WORDS[3:] * 3 + WORDS, WORDS[5:] * 3 + WORDS)]
  long = [{"prompt": " ".join(WORDS[i:] + WORDS * 3)[:400], "chosen": "a cat", "rejected": "the log"}
          for i in range(8)]
  train, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
  train.write_text("".join(json.dumps(r) + "\n" for r in short[:12] + long[:8] + short[12:24]))
  held_out.write_text("".join(json.dumps(r) + "\n" for r in short[24:27] + long[:4] + short[27:30]))
  return train, held_out


@pytest.mark.slow
@pytest.mark.parametrize("config, sections", [("configs/reward.py:smoke", ("",)),
                                              ("configs/dpo.py:smoke", ("sft.", "preference."))])
def test_too_long_pairs_are_reported_for_train_and_held_out(tmp_path, config, sections):
  tok = _tokenizer_folder(tmp_path / "tok")
  train, held_out = _budget_files(tmp_path)
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "experiments.run", "--config", config, "--workdir", str(workdir)]
  for s in sections:
    cmd += [f"--config.{s}data.source=files", f"--config.{s}data.paths=('{train}',)",
            f"--config.{s}data.eval_paths=('{held_out}',)", f"--config.{s}data.tokenizer={tok}",
            f"--config.{s}data.num_train=0", f"--config.{s}data.num_eval=0"]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  unit = {"": "pairs", "sft.": "examples", "preference.": "pairs"}
  for s in sections:
    assert f"[data] train: 32 {unit[s]}, 24 kept, 8 dropped as too long" in proc.stdout, proc.stdout[-3000:]
    assert f"[data] eval: 10 {unit[s]}, 6 kept, 4 dropped as too long" in proc.stdout, proc.stdout[-3000:]
  stages = json.loads((workdir / "results.json").read_text())["stages"]
  for s in sections:
    budget = stages[s.rstrip(".") or "main"]["data_report"]["token_budget"]
    assert (budget["train"]["dropped_too_long"], budget["train"]["kept"]) == (8, 24), (s, budget)
    assert (budget["eval"]["dropped_too_long"], budget["eval"]["kept"]) == (4, 6), (s, budget)
