"""configs/papers/pal.py: the population is a seeded Dirichlet mixture of the prototypes listed explicitly as the
world's annotators and its users genuinely disagree (one shared reward is clearly below each user's own ceiling);
the chain is the comparison PAL needs (PAL and BT on the same pairs, features, optimizer and steps; unseen users held
out); the sweep grid is 5 seeds (1 for smoke), and the smoke sweep runs end to end into a sane table."""

import dataclasses
import os

import numpy as np
import pytest
from paper_tables import smoke_table_means

from configs.papers import pal as paper
from experiments import run as run_lib
from experiments import sweep as sweep_lib
from experiments.analysis import verdicts
from jaxrlhf.data.synthetic.world import World, WorldConfig

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "papers", "pal.py")


def test_population_is_a_dirichlet_mixture_of_the_prototypes():
  users = paper.population()
  assert len(users) == paper.NUM_USERS and len({n for n, _ in users}) == paper.NUM_USERS
  mix = np.random.default_rng(paper.POPULATION_SEED).dirichlet([paper.ALPHA] * 3, size=paper.NUM_USERS)
  np.testing.assert_allclose([w for _, w in users], mix @ np.asarray(paper.PROTOTYPES), atol=5e-5)
  assert paper.population() == users  # seeded


def test_users_genuinely_disagree():
  """A single reward (the population-mean weights: what one BT model can at best agree on) is clearly below each
  user's own ceiling on the world's labels; the check behind the paper's claim being testable here."""
  users = paper.population()
  weights = np.asarray([w for _, w in users])
  pairs = World(WorldConfig(annotators=users)).preference_pairs(6000, "validation")
  diff, g, a_wins = pairs["comps_a"] - pairs["comps_b"], pairs["annotator"], pairs["a_wins"]

  def accuracy(w_N5):
    return np.asarray([np.mean(((diff[g == u] * w_N5[g == u]).sum(1) > 0) == a_wins[g == u])
                       for u in range(len(users))])

  ceiling, shared = accuracy(weights[g]), accuracy(np.broadcast_to(weights.mean(0), diff.shape))
  assert ceiling.mean() - shared.mean() > 0.08, (ceiling.mean(), shared.mean())
  assert np.mean(ceiling - shared > 0.03) > 0.5  # most users, not a few outliers


def test_default_chain_is_the_comparison():
  (name, _, cfg), = run_lib.plan(paper.get_config())
  assert name == "pal" and cfg.variant == "a" and cfg.num_prototypes == len(paper.PROTOTYPES)
  names = [n for n, _ in cfg.data.world["annotators"]]
  assert len(names) == paper.NUM_USERS and list(cfg.unseen_users) == names[-paper.NUM_UNSEEN:]
  assert cfg.shots == paper.SHOTS and cfg.features == "attributes"
  # PAL and BT are trained inside one stage on the same pairs, features, projector, optimizer and steps.
  assert cfg.data.num_train >= 200 * paper.NUM_USERS and cfg.num_steps >= 1000


def test_sweep_grid_and_bad_variant():
  assert [r["seed"] for r in sweep_lib.collect(SPEC)] == [0, 1, 2, 3, 4]
  assert [r["seed"] for r in sweep_lib.collect(SPEC + ":smoke")] == [0]
  with pytest.raises(ValueError, match="variant"):
    paper.get_config("nope")


@pytest.mark.slow
def test_smoke_sweep_end_to_end(paper_smoke):
  workdir = str(paper_smoke("pal"))
  config = paper.get_config("smoke")
  means = smoke_table_means(workdir, config)
  for metric in config.tables.metrics:
    low = -1.0 if metric.endswith("minus_bt") else 0.0
    assert low <= means[metric] <= 1.0, (metric, means[metric])


def test_backbone_variant_reads_the_frozen_backbone_cache_of_the_same_pairs():
  stages = {name: cfg for name, _, cfg in run_lib.plan(paper.get_config("backbone"))}
  assert list(stages) == ["sft", "features", "pal"]
  assert stages["features"].model.init_from == "stage:sft"
  assert stages["pal"].features == "cache" and stages["pal"].features_from == "stage:features"
  # The cache's rows index the features stage's records: both stages must read the same pairs.
  features_data = stages["features"].data
  assert dataclasses.replace(features_data, eval_batch_size=stages["pal"].data.eval_batch_size) == stages["pal"].data
  assert stages["pal"].unseen_users == paper.get_config().pal.unseen_users
  assert [r["seed"] for r in sweep_lib.collect(SPEC + ":backbone_smoke")] == [0]


def test_smollm2_variant_caches_features_once_for_five_seeded_pal_stages():
  stages = {name: cfg for name, _, cfg in run_lib.plan(paper.get_config("smollm2"))}
  assert list(stages) == ["features", *[f"pal_s{k}" for k in paper.SMOLLM2_SEEDS]]
  assert stages["features"].model.init_from.endswith(".gguf")
  assert stages["features"].data.tokenizer == stages["features"].model.init_from
  for k in paper.SMOLLM2_SEEDS:
    pal_stage = stages[f"pal_s{k}"]
    assert pal_stage.seed == k and pal_stage.features_from == "stage:features"
    assert pal_stage.data == stages["features"].data
  assert sweep_lib.collect(SPEC + ":smollm2") == [{}]


def test_verdicts_state_rules_a_and_b_on_table_metrics():
  """The section's rules (a) and (b, the n = 10 paired half) for the oracle and backbone sweeps, each naming a metric
  that the variant's table keeps."""
  rules = verdicts.rules_of(SPEC)
  assert [(r.sweep, r.claim[:3]) for r in rules] == [("pal", "(a)"), ("pal", "(b)"), ("pal_backbone", "(a)"),
                                                     ("pal_backbone", "(b)")]
  for rule in rules:
    metrics = paper.get_config("backbone" if rule.sweep == "pal_backbone" else None).tables.metrics
    assert rule.value in metrics and rule.baseline in metrics and rule.direction == 1, rule
  assert {r.value for r in rules} == {"pal/seen/pal_accuracy", "pal/unseen/pal_n10_accuracy"}
