"""constant_pool_fraction: the share of prompts whose pooled samples all score the same (hand-computed cases)."""

import numpy as np
import pytest

from jaxrlhf.evaluation.best_of_n import constant_pool_fraction


def test_counts_pools_without_spread():
  scores = np.array([[1.0, 1.0, 1.0],    # constant
                     [0.0, 3.0, 0.0],    # varies
                     [2.0, 2.0, 2.0],    # constant
                     [0.5, 0.5, 0.25]])  # varies
  assert constant_pool_fraction(scores) == 0.5


def test_tolerance_and_unscorable_samples():
  scores = np.array([[1.0, 1.0 + 1e-9, np.nan],  # scorable samples within atol
                     [np.nan, 4.0, np.nan],        # one scorable sample: no ranking
                     [np.nan, np.nan, np.nan],     # nothing scorable
                     [0.0, np.nan, 1.0]])          # varies among the scorable ones
  assert constant_pool_fraction(scores) == 0.5
  assert constant_pool_fraction(scores, atol=1e-6) == 0.75


def test_rejects_a_bad_shape():
  with pytest.raises(ValueError, match=r"\(B, N\)"):
    constant_pool_fraction(np.zeros(4))
