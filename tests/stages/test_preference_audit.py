"""The preference stage's reference when the policy starts from saved weights: with a resident reference, BOTH the
trained policy and the frozen reference copy must be the saved model (DPO's reference is the initial policy), so
the reference log-ratio starts at 0; with precomputed reference log-probs the policy alone is the saved model."""

import numpy as np
import pytest
from flax import nnx
from random_models import random_model

from jaxrlhf.models import ModelConfig, save_pretrained
from jaxrlhf.stages import common
from jaxrlhf.stages import preference
from jaxrlhf.train import optim

CONFIG = ModelConfig(vocab_size=32, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32)


@pytest.mark.parametrize("reference", ["resident", "precompute"])
def test_policy_and_reference_start_from_the_saved_weights(tmp_path, reference):
  saved = random_model(CONFIG, seed=3, scale=0.5)
  save_pretrained(saved, str(tmp_path / "sft"))
  cfg = preference.PreferenceConfig(model=common.ModelSpec(init_from=str(tmp_path / "sft")), reference=reference)
  model_config, pretrained, _ = common.load_weights(cfg.model, {}, None)
  setup = preference.preference_setup(cfg, model_config, pretrained, optim.make_optimizer(cfg.optimizer), None)
  state = setup.init()
  model = nnx.merge(setup.graphdef, state.params, state.extra)
  ids = np.random.default_rng(0).integers(0, 32, (2, 7)).astype(np.int32)
  want = np.asarray(saved(ids))
  if reference == "resident":
    assert preference.resident_reference(cfg)
    np.testing.assert_allclose(np.asarray(model.policy(ids)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.reference(ids)), want, rtol=1e-5, atol=1e-5)
  else:
    assert not preference.resident_reference(cfg)
    np.testing.assert_allclose(np.asarray(model(ids)), want, rtol=1e-5, atol=1e-5)
