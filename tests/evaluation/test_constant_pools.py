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


def test_a_constant_selector_has_undefined_std_gains_without_a_warning():
  import warnings

  from jaxrlhf.evaluation.best_of_n import curve_metrics
  curves = {"proxy": np.zeros(4), "n": np.arange(1, 5), "length": np.full(4, 7.0)}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    m = curve_metrics(curves, None, 0.0)
  assert np.isnan(m["proxy_gain_std"]) and np.isnan(m["proxy_slope_std"])
  assert m["proxy@N"] == 0.0 and m["length@N"] == 7.0


def test_a_constant_gold_reward_has_undefined_std_gains_without_a_warning():
  """gold_std 0 (every pooled sample has the same gold reward) gets the proxy's guard: NaN gold gains, not the
  0/0 or +-inf of a division by 0 (a gold curve off its constant by float rounding would give +-inf)."""
  import warnings

  from jaxrlhf.evaluation.best_of_n import curve_metrics
  # The last point is off the constant by float rounding of the curve's average.
  curves = {"proxy": np.asarray([0.0, 1.0, 2.0, 3.0]), "gold": np.asarray([0.5, 0.5, 0.5, np.nextafter(0.5, 1.0)]),
            "n": np.arange(1, 5)}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    m = curve_metrics(curves, 0.0, 1.5)
  for key in ("gold_gain_std", "gold_slope_std", "gap_std"):
    assert np.isnan(m[key]), key
  assert m["proxy_gain_std"] == pytest.approx(2.0)  # (3 - 0) / 1.5: the proxy keeps its scale
  assert m["gold@1"] == 0.5 and m["gold_drop"] == 0.0
