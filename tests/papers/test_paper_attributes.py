"""configs/papers/attributes_vs_bt.py: the four reward models are set up as the paper comparison needs (BT on
labels, attribute regression scalarized with r*'s weights and with the fixed paper-like weights, regression +
BT), the sweep grid is 3 seeds (1 for smoke), and the smoke sweep runs end to end into a sane table."""

import os

import pytest
from paper_tables import smoke_table_means

from configs.papers import attributes_vs_bt as paper
from experiments import run as run_lib
from experiments import sweep as sweep_lib

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "papers", "attributes_vs_bt.py")


def test_default_chain_is_the_comparison():
  by_name = {name: cfg for name, _, cfg in run_lib.plan(paper.get_config())}
  assert list(by_name) == list(paper.STAGES)
  assert by_name["bt"].head.kind == "linear"
  for name in ("attr_rstar", "attr_paper", "attr_bt", "attr_likert"):
    assert by_name[name].head.kind == "attributes" and by_name[name].head.num_outputs == 5
  assert by_name["attr_rstar"].head.attribute_weights == (1.0,) * 5  # the world's r* is the plain sum
  assert by_name["attr_paper"].head.attribute_weights == paper.PAPER_WEIGHTS
  assert by_name["attr_rstar"].loss.bt_weight == by_name["attr_paper"].loss.bt_weight == 0.0
  assert by_name["attr_bt"].loss.bt_weight > 0 and by_name["attr_bt"].loss.attribute_weight > 0
  assert by_name["attr_likert"].data.attribute_levels == 5 and by_name["attr_likert"].loss.bt_weight == 0.0
  assert by_name["attr_noisy"].data.attribute_noise == paper.ATTRIBUTE_NOISE > 0
  assert by_name["attr_noisy"].data.attribute_levels == 0 and by_name["attr_noisy"].loss.bt_weight == 0.0
  assert (by_name["attr_noisy_likert"].data.attribute_noise, by_name["attr_noisy_likert"].data.attribute_levels) == (
      paper.ATTRIBUTE_NOISE, 5)
  # Same pairs, model and optimizer for every reward model: only head, loss (and the rating scale) differ.
  for name in paper.STAGES[1:]:
    assert by_name[name].data.world == by_name["bt"].data.world and by_name[name].model == by_name["bt"].model
    assert by_name[name].data.num_train == by_name["bt"].data.num_train
    assert by_name[name].optimizer == by_name["bt"].optimizer and by_name[name].loop == by_name["bt"].loop


def test_sweep_grid_and_bad_variant():
  assert [r["seed"] for r in sweep_lib.collect(SPEC)] == [0, 1, 2, 3, 4]
  assert [r["seed"] for r in sweep_lib.collect(SPEC + ":smoke")] == [0]
  assert [name for name, _, _ in run_lib.plan(paper.get_config("smoke"))] == ["bt", "attr_likert"]
  with pytest.raises(ValueError, match="variant"):
    paper.get_config("nope")


@pytest.mark.slow
def test_smoke_sweep_end_to_end(paper_smoke, tmp_path):
  workdir = str(paper_smoke("attributes_vs_bt"))  # the smoke sweep, shared with the notebook test
  config = paper.get_config("smoke")
  means = smoke_table_means(workdir, config)
  for metric in config.tables.metrics:
    assert 0.0 <= means[metric] <= 1.0, (metric, means[metric])


def test_verdicts_state_the_section_rule():
  from experiments.analysis import verdicts  # pylint: disable=g-import-not-at-top
  rules = verdicts.rules_of(SPEC)
  metrics = set(paper.get_config().tables.metrics)
  # Every regression arm against BT on held-out gold agreement, the like-for-like (noisy-target) arms first.
  assert [r.value for r in rules] == [f"{arm}/eval/gold_agreement" for arm in (
      "attr_noisy", "attr_noisy_likert", "attr_rstar", "attr_bt", "attr_likert", "attr_paper")]
  assert all((r.sweep, r.baseline, r.direction) == ("attributes_vs_bt", "bt/eval/gold_agreement", 1) for r in rules)
  assert all({r.value, r.baseline} <= metrics for r in rules)
