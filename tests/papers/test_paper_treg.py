"""configs/papers/treg.py: the chain's structure (one SFT shared by DPO and three T-REG alphas, their evaluations
and token-credit stages), the sweep grid, and the smoke sweep + tables end to end with sane, finite columns."""

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

SPEC = str(REPO_ROOT / "configs" / "papers" / "treg.py")


def test_default_chain_shares_one_sft_and_sweeps_only_seeds():
  config = config_lib.load_config(SPEC)
  plan = {name: (kind.name, cfg) for name, kind, cfg in run_lib.plan(config)}
  policies = ("dpo", "treg_0p1", "treg_0p25", "treg_0p5")
  assert list(plan)[:5] == ["sft", *policies]
  assert plan["sft"][1].data.contrastive_sft
  assert plan["dpo"][1].loss.algorithm == "dpo"
  alphas = {name: plan[name][1].loss.treg_alpha for name in policies[1:]}
  assert alphas == {"treg_0p1": 0.1, "treg_0p25": 0.25, "treg_0p5": 0.5}
  for name in policies:
    _, cfg = plan[name]
    assert cfg.model.init_from == "stage:sft" and cfg.loss.beta == 0.1
    assert plan[f"eval_{name}"][1].policy == f"stage:{name}" and plan[f"eval_{name}"][1].base == "stage:sft"
    credit = plan[f"credit_{name}"][1]
    assert (credit.policy, credit.reference, credit.beta) == (f"stage:{name}", "stage:sft", 0.1)
  assert plan["credit_sft"][1].policy == "stage:sft" and not plan["credit_sft"][1].reference
  assert [o for o in sweep_lib.collect(SPEC)] == [{"seed": s} for s in range(5)]
  assert sweep_lib.collect(SPEC + ":smoke") == [{"seed": 0}]


def test_seed_override_reseeds_every_training_stage():
  config = config_lib.load_config(SPEC + ":smoke")
  with config.unlocked():
    config.seed = 7
  seeds = {name: cfg.seed for name, _, cfg in run_lib.plan(config) if hasattr(cfg, "seed")}
  assert seeds and set(seeds.values()) == {7}
  assert {"sft", "dpo", "treg_0p5"} <= set(seeds)


def test_unknown_variant_names_the_choices():
  with pytest.raises(ValueError, match="default, smoke"):
    config_lib.load_config(SPEC + ":full")


def test_verdicts_parse_and_name_table_metrics():
  from experiments.analysis import verdicts  # pylint: disable=g-import-not-at-top
  claims = verdicts.rules_of(SPEC)
  metrics = set(config_lib.load_config(SPEC).tables.metrics)
  assert {c.sweep for c in claims} == {"treg"} and all(c.direction == 1 for c in claims)
  assert {(c.value, c.baseline) for c in claims} == {
      *((f"eval_{m}/gold/gain", "eval_dpo/gold/gain") for m in ("treg_0p1", "treg_0p25", "treg_0p5")),
      *((f"credit_{m}/implicit/pearson_seq", "credit_dpo/implicit/pearson_seq")
        for m in ("treg_0p1", "treg_0p25", "treg_0p5"))}
  assert all(c.value in metrics and c.baseline in metrics for c in claims)


@pytest.mark.slow
def test_smoke_sweep_and_table(paper_smoke):
  tmp_path = paper_smoke("treg")  # the smoke sweep, shared with the notebook test
  md = tables_lib.tables(str(tmp_path))
  config = config_lib.load_config(SPEC + ":smoke")
  columns = list(config.tables.metrics)
  assert columns and all(c in md for c in columns)
  with open(tmp_path / "seed=0" / "results.json") as f:
    metrics = json.load(f)["metrics"]
  for c in columns:
    assert math.isfinite(metrics[c]), c
    if "pearson" in c or "spearman" in c:
      assert -1.0 <= metrics[c] <= 1.0, c
    if "accuracy" in c:
      assert 0.0 <= metrics[c] <= 1.0, c
  # Like for like: DPO and T-REG are evaluated against the same base samples (same SFT, prompts and key).
  assert metrics["eval_dpo/gold/base"] == metrics["eval_treg_0p5/gold/base"]
  assert (tmp_path / "results.csv").exists()
  assert (tmp_path / "seed=0" / "credit_treg_0p5" / "token_credit.png").stat().st_size > 0
