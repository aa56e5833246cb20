"""configs/papers/reward_augmented_dpo.py: the chain's structure (one goal-format SFT shared by DPO and RA-DPO,
with and without label smoothing; goal-conditioned evaluation and log-prob shifts of the RA-DPO policies), the
sweep grid (beta incl. 0.01 x 5 seeds), and the smoke sweep + tables end to end with sane, finite columns."""

import json
import math
import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from experiments import sweep as sweep_lib  # noqa: E402
from experiments import tables as tables_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402

SPEC = str(REPO_ROOT / "configs" / "papers" / "reward_augmented_dpo.py")
METHODS = ("dpo", "ra_dpo", "dpo_ls", "ra_dpo_ls", "ra_dpo_ls3", "ra_dpo_noties", "dpo_scored")


def test_default_chain_structure():
  plan = {name: (kind.name, cfg) for name, kind, cfg in run_lib.plan(config_lib.load_config(SPEC))}
  assert list(plan)[:8] == ["sft", *METHODS]
  assert plan["sft"][0] == "sft" and plan["sft"][1].data.goal_fraction == 0.5
  for m in METHODS:
    kind, cfg = plan[m]
    assert kind == "preference" and cfg.model.init_from == "stage:sft" and cfg.loss.algorithm == "dpo"
    assert cfg.data.transform == ("reward_augmented" if m.startswith("ra_") else
                                  "score_ordered" if m == "dpo_scored" else "none")
    assert cfg.data.score_ties == ("drop" if m == "ra_dpo_noties" else "keep")
    assert cfg.loss.label_smoothing == {"_ls": 0.1, "_ls3": 0.3}.get(m[m.rfind("_"):], 0.0)
    # Same optimizer and steps for every method.
    assert (cfg.loop.num_steps, cfg.optimizer.learning_rate) == (plan["dpo"][1].loop.num_steps,
                                                                 plan["dpo"][1].optimizer.learning_rate)
    evaluation, shift = plan[f"eval_{m}"][1], plan[f"shift_{m}"][1]
    assert evaluation.policy == shift.policy == f"stage:{m}"
    assert evaluation.base == shift.base == "stage:sft"
    assert evaluation.goal_conditioned == m.startswith("ra_")
    assert shift.goal == ("top" if m.startswith("ra_") else "none")
  assert plan["eval_sft_goal"][1].goal_conditioned and plan["shift_ra_dpo_plain"][1].goal == "none"



def test_verdicts_parse_and_name_table_metrics():
  from experiments.analysis import verdicts  # pylint: disable=g-import-not-at-top
  rules = verdicts.rules_of(SPEC)
  metrics = set(config_lib.load_config(SPEC).tables.metrics)
  by_beta = {b: [r.claim for r in rules if r.where == {"dpo.loss.beta": b}] for b in (0.01, 0.1)}
  assert len(rules) == 10 and len(by_beta[0.01]) == 6 and len(by_beta[0.1]) == 4
  assert "recipe RA-DPO (ls 0.3) beats its SFT in gold" in by_beta[0.01]
  for r in rules:
    assert r.sweep == "reward_augmented_dpo" and r.direction == 1
    assert {r.value, r.baseline} - {0.0} <= metrics, r.claim


def test_sweep_grid_and_seed_override():
  runs = sweep_lib.collect(SPEC)
  assert len(runs) == 10
  assert sorted({(r["seed"], r["dpo.loss.beta"]) for r in runs}) == [(s, b) for s in (0, 1, 2, 3, 4)
                                                                     for b in (0.01, 0.1)]
  assert all(len({r[f"{m}.loss.beta"] for m in METHODS}) == 1 for r in runs)
  assert sweep_lib.collect(SPEC + ":smoke") == [{"seed": 0, "dpo.loss.beta": 0.1, "ra_dpo_ls.loss.beta": 0.1}]
  config = config_lib.load_config(SPEC + ":smoke")
  with config.unlocked():
    config.seed = 5
  seeds = {name: cfg.seed for name, _, cfg in run_lib.plan(config) if hasattr(cfg, "seed")}
  assert {"sft", "dpo", "ra_dpo_ls"} <= set(seeds) and set(seeds.values()) == {5}
  with pytest.raises(ValueError, match="default, smoke"):
    config_lib.load_config(SPEC + ":full")


@pytest.mark.slow
def test_smoke_sweep_and_table(paper_smoke):
  tmp_path = paper_smoke("reward_augmented_dpo")  # the smoke sweep, shared with the notebook test
  md = tables_lib.tables(str(tmp_path))
  columns = list(config_lib.load_config(SPEC + ":smoke").tables.metrics)
  assert columns and all(c in md for c in columns)
  (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("dpo.loss.beta")]
  with open(run_dir / "results.json") as f:
    metrics = json.load(f)["metrics"]
  for c in columns:
    assert math.isfinite(metrics[c]), c
  # Like for like: the goal-conditioned RA-DPO policy is compared with the SAME base samples as DPO (the SFT on the
  # plain prompts, same key): only the policy sees the goal.
  assert metrics["eval_ra_dpo_ls/gold/base"] == metrics["eval_dpo/gold/base"]
  for m in ("dpo", "ra_dpo_ls"):
    assert metrics[f"shift_{m}/n/rejected_high"] + metrics[f"shift_{m}/n/rejected_low"] <= 32
  # The RA-DPO shift is measured with the top-score goal; the DPO one on plain prompts.
  assert metrics["shift_ra_dpo_ls/goal"] == 10.0 and "shift_dpo/goal" not in metrics
  assert (tmp_path / "results.csv").exists()
  assert all((tmp_path / "plots" / f"{p}.png").stat().st_size > 0
             for p in ("gold_gain_dpo", "rejected_high_shift_ra_dpo_ls"))
