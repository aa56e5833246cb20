"""configs/sft.py:files: one sft stage from SmolLM2's GGUF on an SFT file (the shipped tool-call answers by default),
whose path and format a user overrides; a format the sft stage cannot read fails before compute naming the key."""

import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402


def _load(variant):
  return config_lib.load_config(f"{REPO_ROOT / 'configs' / 'sft.py'}:{variant}")


@pytest.mark.parametrize("variant", ["files", "files_smoke"])
def test_files_variants_plan_one_sft_stage_on_the_sft_file(variant, smollm2_gguf):
  plan = run_lib.plan(_load(variant))
  assert [kind.name for _, kind, _ in plan] == ["sft"]
  cfg = plan[0][2]
  assert cfg.model.init_from == str(smollm2_gguf)
  assert (cfg.data.source, cfg.data.format, cfg.data.turns) == ("files", "sft", "last")
  assert cfg.data.paths == (str(REPO_ROOT / "data" / "tasks" / "toolcall" / "toolcall_sft.jsonl"),)


def test_a_users_file_and_format_override_the_defaults(tmp_path, smollm2_gguf):
  del smollm2_gguf
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text('{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}\n')
  config = _load("files")
  config.data.paths, config.data.format = (str(pairs),), "pairwise"
  cfg = run_lib.plan(config)[0][2]
  assert cfg.data.paths == (str(pairs),) and cfg.data.format == "pairwise"
  config.data.format = "kway"
  with pytest.raises(config_lib.ConfigError, match=r"config\.data\.format.*'kway'"):
    run_lib.plan(config)
