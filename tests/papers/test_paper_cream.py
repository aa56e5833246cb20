"""configs/papers/cream.py: the chain is the comparison CREAM (Wang et al. 2024, arXiv:2410.12735) needs (the two
self-rewarding arms differ only in the consistency regularization and share M0, M1, prompts and sampling), the sweep
grid is 5 seeds (1 for smoke), and the smoke sweep runs end to end into a sane table."""

import os

import pytest
from paper_tables import smoke_table_means

from configs.papers import cream as paper
from experiments import run as run_lib
from experiments.analysis import verdicts
from experiments import sweep as sweep_lib

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "papers", "cream.py")


@pytest.mark.parametrize("variant", ["default", "smoke"])
def test_chain_is_the_comparison(variant):
  by_name = {name: (kind, cfg) for name, kind, cfg in run_lib.plan(paper.get_config(variant))}
  assert list(by_name) == ["sft", "seed_dpo", "cream", "srlm"]
  assert by_name["seed_dpo"][1].model.init_from == "stage:sft" and by_name["seed_dpo"][1].loss.algorithm == "dpo"
  cream, srlm = by_name["cream"][1], by_name["srlm"][1]
  assert cream.consistency == "average" and srlm.consistency == "off"
  # M1 = the seed DPO policy, M0 = the SFT base, for both arms; every other hyperparameter matched.
  for arm in (cream, srlm):
    assert arm.model.init_from == "stage:seed_dpo" and arm.reference == "stage:sft"
  assert {**vars(cream), "consistency": None} == {**vars(srlm), "consistency": None}
  if variant == "default":
    assert cream.num_iterations >= 3 and cream.num_samples >= 4 and cream.num_prompts >= 200


def test_sweep_grid_and_bad_variant():
  assert [r["seed"] for r in sweep_lib.collect(SPEC)] == [0, 1, 2, 3, 4]
  assert [r["seed"] for r in sweep_lib.collect(SPEC + ":smoke")] == [0]
  with pytest.raises(ValueError, match="variant"):
    paper.get_config("nope")


def test_verdicts_are_the_stated_rule_on_tabled_metrics():
  # The section's rule: (a) CREAM - SRLM at the last iteration > 0; (b) CREAM t=T - t=0 > 0, SRLM's not (T = 4).
  rules = verdicts.rules_of(SPEC)
  assert [(c.sweep, c.value, c.baseline, c.direction) for c in rules] == [
      ("cream", "cream/iter4/gold", "srlm/iter4/gold", 1), ("cream", "cream/iter4/gold", "cream/iter0/gold", 1),
      ("cream", "srlm/iter4/gold", "srlm/iter0/gold", -1)]
  metrics = paper.get_config().tables.metrics
  assert all(c.value in metrics and c.baseline in metrics for c in rules)


@pytest.mark.slow
def test_smoke_sweep_end_to_end(paper_smoke):
  workdir = str(paper_smoke("cream"))
  config = paper.get_config("smoke")
  means = smoke_table_means(workdir, config)
  for arm in paper.ARMS:
    assert means[f"{arm}/iter0/gold"] == means["cream/iter0/gold"]  # the same start policy and eval samples
    for t in (1, 2):
      assert 0.0 <= means[f"{arm}/iter{t}/consistency"] <= 1.0
      assert 0.0 <= means[f"{arm}/iter{t}/label_agreement"] <= 1.0
  # Iteration 1 samples and labels the same pairs in both arms (only the loss's C differs).
  assert means["cream/iter1/consistency"] == means["srlm/iter1/consistency"]
