"""configs/papers/dr_irl.py: GRPO vs DR-IRL's GRPO-S (Cheng et al. 2025) from one SFT at matched settings, the seed
sweep, and the smoke variant run end to end (the GRPO-S stage computes its per-prompt hardness, trains, evaluates
and logs finite coefficients)."""

import json
import math
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from experiments import sweep as sweep_lib  # noqa: E402
from experiments import tables as tables_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402

SPEC = str(REPO_ROOT / "configs" / "papers" / "dr_irl.py")


def test_chain_structure_and_sweep():
  plan = {name: (kind.name, cfg) for name, kind, cfg in run_lib.plan(config_lib.load_config(SPEC))}
  assert list(plan) == ["sft", "grpo", "grpo_s"]
  grpo, grpo_s = plan["grpo"][1], plan["grpo_s"][1]
  assert grpo.loss.difficulty_scaling == "none" and grpo_s.loss.difficulty_scaling == "grpo_s"
  # Like for like: only the difficulty scaling differs between the arms.
  import dataclasses  # pylint: disable=g-import-not-at-top
  assert dataclasses.replace(grpo_s, loss=dataclasses.replace(grpo_s.loss, difficulty_scaling="none")) == grpo
  assert grpo.model.init_from == "stage:sft" and grpo.rewards[0].kind == "gold"
  assert sweep_lib.collect(SPEC) == [{"seed": s} for s in range(5)]
  assert sweep_lib.collect(SPEC + ":smoke") == [{"seed": 0}]


def test_smoke_sweep_and_table(paper_smoke):
  tmp_path = paper_smoke("dr_irl")  # the smoke sweep + tables, shared with the reproductions notebook test
  md = tables_lib.tables(str(tmp_path))
  columns = list(config_lib.load_config(SPEC + ":smoke").tables.metrics)
  assert columns and all(c in md for c in columns)
  with open(tmp_path / "seed=0" / "results.json") as f:
    metrics = json.load(f)["metrics"]
  for c in columns:
    assert math.isfinite(metrics[c]), c
  assert metrics["grpo_s/train/difficulty/alpha_data"] > 0 and metrics["grpo_s/train/difficulty/alpha_model"] > 0
  with open(tmp_path / "seed=0" / "grpo_s" / "prompt_hardness.json") as f:
    hardness = json.load(f)
  assert len(hardness["delta"]) == 8 and all(0.0 <= d <= 2.0 for d in hardness["delta"])


def test_verdicts_state_the_section_rule():
  from experiments.analysis import verdicts  # pylint: disable=g-import-not-at-top
  (rule,) = verdicts.rules_of(SPEC)
  # Delta_s = grpo_s/eval/gold - grpo/eval/gold, claimed positive; both metrics are table columns of the sweep.
  assert (rule.sweep, rule.value, rule.baseline, rule.direction) == ("dr_irl", "grpo_s/eval/gold", "grpo/eval/gold", 1)
  assert {rule.value, rule.baseline} <= set(config_lib.load_config(SPEC).tables.metrics)
