"""data.attribute_noise (inputs.noisy_attributes): per-attribute Gaussian noise in units of each attribute's std over
the training responses, from a fixed stream; its report says how often the noisy sums still order pairs like the
exact ones (for the world's components, whose sum is gold: about the labels' 0.80 at noise 0.6)."""

import numpy as np
import pytest

from jaxrlhf.config import from_config
from jaxrlhf.data.records import PreferenceRecord
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.stages import inputs as inputs_lib


def test_noise_scale_determinism_and_passthrough():
  records = World(WorldConfig()).preference_records(3000, "train")
  plain = PreferenceRecord(prompt="p", chosen="a", rejected="b")
  out, report = inputs_lib.noisy_attributes(records + [plain], 0.5)
  again, _ = inputs_lib.noisy_attributes(records + [plain], 0.5)
  assert out == again and out[-1] == plain
  exact = np.asarray([v for r in records for v in (r.chosen_attributes, r.rejected_attributes)])
  noisy = np.asarray([v for r in out[:-1] for v in (r.chosen_attributes, r.rejected_attributes)])
  std = exact.std(axis=0)
  np.testing.assert_allclose(report["std"], std, rtol=1e-9)
  # (noisy - exact) / std_k is N(0, 0.5^2) per attribute: 6000 draws each.
  z = (noisy - exact) / std
  np.testing.assert_allclose(z.std(axis=0), 0.5, rtol=0.05)
  np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=0.03)
  # Ordering agreement of the noisy sums with the exact sums (= gold here), recomputed by hand.
  d_exact = np.asarray([sum(r.chosen_attributes) - sum(r.rejected_attributes) for r in records])
  d_noisy = np.asarray([sum(r.chosen_attributes) - sum(r.rejected_attributes) for r in out[:-1]])
  keep = d_exact != 0
  assert report["gold_agreement"] == pytest.approx(np.mean((d_noisy[keep] > 0) == (d_exact[keep] > 0)))
  assert 0.80 < report["gold_agreement"] < 0.90  # noise 0.5: between exact (1.0) and the labels (0.80)
  _, calibrated = inputs_lib.noisy_attributes(records, 0.6)
  assert 0.76 < calibrated["gold_agreement"] < 0.84
  with pytest.raises(ValueError, match="data.attribute_noise: no training pair has attributes"):
    inputs_lib.noisy_attributes([plain], 0.5)


def test_spec_field():
  spec = from_config(dict(attribute_noise=0.6), inputs_lib.DataSpec, path="config.data")
  assert spec.attribute_noise == 0.6
  with pytest.raises(Exception, match="attribute_noise"):
    from_config(dict(attribute_noise=-1.0), inputs_lib.DataSpec, path="config.data")
