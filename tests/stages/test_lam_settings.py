"""lam, the uncertainty penalty of the mean-minus aggregations, is refused where nothing reads it (a setting that
would silently change nothing), in reward sources and in best-of-N selectors; it is accepted where it is read."""

import numpy as np
import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.losses import aggregation
from jaxrlhf.stages import best_of_n as best_of_n_stage
from jaxrlhf.stages import reward_sources


def test_lam_methods_are_exactly_the_aggregations_that_read_lam():
  # Independent check of the list: an aggregation reads lam iff its result changes with lam.
  rewards_BxK = np.array([[0.1, 0.9, -0.4], [1.5, 1.0, 2.5]], np.float32)
  reads = {m for m in aggregation.AGGREGATION_METHODS
           if not np.allclose(aggregation.aggregate(rewards_BxK, m, 0.0), aggregation.aggregate(rewards_BxK, m, 2.0))}
  assert reads == set(aggregation.LAM_METHODS)


@pytest.mark.parametrize("method", ["mean", "median", "min"])
def test_reward_source_lam_without_a_lam_aggregation_is_refused(method):
  spec = reward_sources.RewardSourceSpec(kind="reward_model", reward_model="stage:rm", aggregation=method, lam=0.5)
  with pytest.raises(ConfigError, match=rf"rl.rewards\[0\].lam: 0.5 is not used by aggregation '{method}'"):
    spec.validate("rl.rewards[0]")


@pytest.mark.parametrize("method", ["mean_minus_std", "mean_minus_var", "mean_minus_var_unbiased"])
def test_reward_source_lam_with_a_lam_aggregation_is_accepted(method):
  reward_sources.RewardSourceSpec(kind="reward_model", reward_model="stage:rm", aggregation=method,
                                  lam=0.5).validate("rl.rewards[0]")
  # The default lam stays accepted with every aggregation.
  reward_sources.RewardSourceSpec(kind="reward_model", reward_model="stage:rm",
                                  aggregation="mean").validate("rl.rewards[0]")


def test_best_of_n_lam_needs_an_aggregation_that_reads_it():
  base = {"policy": "stage:sft", "reward_model": "stage:rm"}
  with pytest.raises(ConfigError, match=r"bon.lam: 0.5 is not used by any of the aggregations \['mean', 'min'\]"):
    from_config(dict(base, aggregations=("mean", "min"), lam=0.5), best_of_n_stage.BestOfNConfig, path="bon")
  cfg = from_config(dict(base, aggregations=("mean", "mean_minus_std"), lam=0.5), best_of_n_stage.BestOfNConfig,
                    path="bon")
  assert cfg.lam == 0.5


@pytest.mark.parametrize("spec", ["mean:0.5", "median:2", "min:0"])
def test_extra_selector_with_an_aggregation_that_ignores_lam_is_refused(spec):
  with pytest.raises(ValueError, match="an aggregation that reads lam"):
    best_of_n_stage.parse_extra_aggregation(spec)
  assert best_of_n_stage.parse_extra_aggregation("mean_minus_var_unbiased:0.1") == (
      "mean_minus_var_unbiased", 0.1, "rm_mean_minus_var_unbiased_lam0.1")
