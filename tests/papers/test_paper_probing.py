"""configs/papers/probing.py: the chain is the comparison the paper needs (reward models that differ only in their
training pairs, one shared best-of-N pool, one probe stage over every RM with its best-of-N results), the sweep grid
is 5 seeds (1 for smoke), and the smoke sweep runs end to end into a sane table."""

import os

import pytest
from paper_tables import smoke_table_means

from configs.papers import probing as paper
from experiments import run as run_lib
from experiments import sweep as sweep_lib
from experiments.analysis import probing as analysis
from experiments.analysis import verdicts

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "papers", "probing.py")


def test_default_chain_is_the_comparison():
  by_name = {name: cfg for name, _, cfg in run_lib.plan(paper.get_config())}
  qualities = list(paper.QUALITIES)
  assert list(by_name) == ["sft", *(f"rm_{q}" for q in qualities), *(f"bon_{q}" for q in qualities), "probe"]
  first = by_name[f"rm_{qualities[0]}"]
  for q, (num_train, flip_rate) in paper.QUALITIES.items():
    rm = by_name[f"rm_{q}"]
    assert rm.data.num_train == num_train and rm.data.world.get("flip_rate") == flip_rate
    # Same backbone size, optimizer, steps and held-out pairs: only the training pairs differ.
    assert rm.model == first.model and rm.optimizer == first.optimizer and rm.loop == first.loop
    assert rm.data.num_eval == first.data.num_eval and rm.num_members == 1
    bon = by_name[f"bon_{q}"]
    assert bon.reward_model == f"stage:rm_{q}" and bon.policy == "stage:sft"
    assert bon.pool_from == ("" if q == qualities[0] else f"stage:bon_{qualities[0]}")  # one pool for all RMs
  assert len({by_name[f"rm_{q}"].data.num_train for q in qualities}) == 4  # a range of data sizes
  probe = by_name["probe"]
  assert [(t.name, t.reward_model, t.best_of_n) for t in probe.targets] == [
      (q, f"stage:rm_{q}", f"stage:bon_{q}") for q in qualities]
  assert probe.selector == paper.SELECTOR and probe.world == {}  # probes read gold components of the default world


def test_sweep_grid_and_bad_variant():
  assert [r["seed"] for r in sweep_lib.collect(SPEC)] == [0, 1, 2, 3, 4]
  assert [r["seed"] for r in sweep_lib.collect(SPEC + ":smoke")] == [0]
  smoke = [name for name, _, _ in run_lib.plan(paper.get_config("smoke"))]
  assert smoke[-1] == "probe" and sum(name.startswith("rm_") for name in smoke) == 3
  with pytest.raises(ValueError, match="variant"):
    paper.get_config("nope")


@pytest.mark.slow
def test_smoke_sweep_end_to_end(paper_smoke):
  workdir = str(paper_smoke("probing"))
  config = paper.get_config("smoke")
  means = smoke_table_means(workdir, config)
  for metric in config.tables.metrics:
    if "/corr/" in metric:
      assert -1.0 <= means[metric] <= 1.0, (metric, means[metric])
    elif metric.endswith("bon_gold"):
      continue  # a gold reward, not a rate
    else:
      assert 0.0 <= means[metric] <= 1.0, (metric, means[metric])
  # The verdict numbers of experiments.analysis.probing come out of the same sweep (one seed: no interval yet).
  text = analysis.verdict(analysis.load(workdir))
  assert "spearman(level_mean, bon gold)" in text and "probe-confidence AUROC" in text


def test_verdicts_state_claim_2_on_a_table_metric():
  """Claim 2 (mean probe-confidence AUROC above chance) is the one paired-over-seeds rule; claim 1 is a correlation
  left to experiments.analysis.probing."""
  (rule,) = verdicts.rules_of(SPEC)
  assert (rule.sweep, rule.value, rule.baseline, rule.direction) == ("probing", "probe/conf_auroc_mean", 0.5, 1)
  assert rule.value in paper.get_config().tables.metrics
