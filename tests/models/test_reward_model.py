"""Reward heads, RewardModel and stacked ensembles against hand-computed references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import CausalLM
from jaxrlhf.models.heads import HeadConfig, gather_last, last_token_index
from jaxrlhf.models.reward_model import RewardEnsemble, RewardModel

CONFIG = ModelConfig(vocab_size=97, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                     mlp_dim=64, tie_word_embeddings=False)


def _ids(batch=3, length=7, seed=1):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, CONFIG.vocab_size)


def _np(x):
  return np.asarray(x[...] if isinstance(x, nnx.Variable) else x, np.float64)


def test_last_token_index_left_and_right_padding():
  mask = jnp.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(last_token_index(mask), [2, 4, 4, 0])
  hidden = jnp.arange(4 * 5 * 2, dtype=jnp.float32).reshape(4, 5, 2)
  np.testing.assert_array_equal(gather_last(hidden, mask), hidden[jnp.arange(4), jnp.array([2, 4, 4, 0])])


def test_linear_head_reads_last_token_hidden_state():
  rm = RewardModel(CONFIG, HeadConfig("linear"), rngs=nnx.Rngs(0))
  assert not hasattr(rm.backbone, "lm_head")  # the LM head is dropped
  ids = _ids()
  hidden = _np(rm.backbone.hidden_states(ids))[:, -1]
  expected = hidden @ _np(rm.head.kernel)[0] + _np(rm.head.bias)[0]
  np.testing.assert_allclose(rm(ids), expected, rtol=1e-5, atol=1e-5)


def test_mlp_head_matches_numpy_two_layer():
  rm = RewardModel(CONFIG, HeadConfig("mlp", hidden_dim=16), rngs=nnx.Rngs(0))
  ids = _ids()
  h = _np(rm.backbone.hidden_states(ids))[:, -1]
  z = h @ _np(rm.head.hidden_kernel)[0] + _np(rm.head.bias)[0] * 0 + _np(rm.head.hidden_bias)[0]
  z = z / (1 + np.exp(-z))  # SiLU
  expected = z @ _np(rm.head.kernel)[0] + _np(rm.head.bias)[0]
  np.testing.assert_allclose(rm(ids), expected, rtol=1e-5, atol=1e-5)


def test_reward_is_padding_invariant():
  rm = RewardModel(CONFIG, HeadConfig("linear"), rngs=nnx.Rngs(0))
  ids = _ids(batch=1, length=5)
  pad = jnp.zeros((1, 3), ids.dtype)
  ones, zeros = jnp.ones((1, 5), bool), jnp.zeros((1, 3), bool)
  plain = rm(ids)
  right = rm(jnp.concatenate([ids, pad], 1), jnp.concatenate([ones, zeros], 1))
  left = rm(jnp.concatenate([pad, ids], 1), jnp.concatenate([zeros, ones], 1))
  np.testing.assert_allclose(right, plain, atol=1e-5)
  np.testing.assert_allclose(left, plain, atol=1e-5)


def test_attribute_head_scalarizes_with_weights():
  weights = (0.5, -1.0, 2.0)
  rm = RewardModel(CONFIG, HeadConfig("attributes", num_outputs=3, attribute_weights=weights),
                   rngs=nnx.Rngs(0))
  ids = _ids()
  attrs = rm.attributes(ids)
  assert attrs.shape == (3, 3)
  np.testing.assert_allclose(rm(ids), _np(attrs) @ np.array(weights), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="attribute_weights"):
    HeadConfig("attributes", num_outputs=3, attribute_weights=(1.0,))


def test_multihead_gives_one_reward_per_head_on_a_shared_backbone():
  rm = RewardModel(CONFIG, HeadConfig("multihead", num_outputs=4), rngs=nnx.Rngs(0))
  ids = _ids()
  rewards = rm(ids)
  assert rewards.shape == (3, 4)
  h = _np(rm.backbone.hidden_states(ids))[:, -1]
  np.testing.assert_allclose(rewards, h @ _np(rm.head.kernel).T + _np(rm.head.bias), rtol=1e-5, atol=1e-5)
  assert np.std(np.asarray(rewards), axis=1).min() > 0  # heads are initialized differently


def test_bad_head_kind_names_choices():
  with pytest.raises(ValueError, match="head.kind must be one of"):
    HeadConfig("quadratic")


def test_ensemble_members_equal_standalone_reward_models():
  ensemble = RewardEnsemble(CONFIG, HeadConfig("mlp"), 3, rngs=nnx.Rngs(0))
  ids = _ids()
  mask = jnp.ones(ids.shape, bool).at[0, -2:].set(False)
  rewards = jax.jit(lambda m, i, a: m(i, a))(ensemble, ids, mask)
  assert rewards.shape == (3, 3)
  graphdef, state = nnx.split(ensemble.members)
  for k in range(3):
    member = nnx.merge(graphdef, jax.tree.map(lambda x, k=k: x[k], state))
    np.testing.assert_allclose(rewards[:, k], member(ids, mask), rtol=1e-5, atol=1e-5)
  # Different init seeds give different members.
  assert not np.allclose(rewards[:, 0], rewards[:, 1])


def test_ensemble_from_pretrained_backbone_shares_backbone_not_heads():
  lm = CausalLM(CONFIG, rngs=nnx.Rngs(7))
  embed = np.asarray(lm.embed[...])
  ensemble = RewardEnsemble.from_pretrained_backbone(lm, HeadConfig("linear"), 4, seed=3)
  stacked = np.asarray(ensemble.members.backbone.embed[...])
  assert stacked.shape == (4, *embed.shape)
  for k in range(4):
    np.testing.assert_array_equal(stacked[k], embed)
  kernels = np.asarray(ensemble.members.head.kernel[...])
  assert not np.allclose(kernels[0], kernels[1])
  assert ensemble(_ids()).shape == (3, 4)


def test_attribute_head_default_weights_average_the_attributes():
  """Without attribute_weights the scalar reward is the mean of the K attribute outputs (weights 1/K)."""
  rm = RewardModel(CONFIG, HeadConfig("attributes", num_outputs=4), rngs=nnx.Rngs(0))
  ids = _ids()
  attrs = _np(rm.attributes(ids))
  assert np.std(attrs, axis=1).min() > 0
  np.testing.assert_allclose(rm(ids), attrs.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_head_init_scale_follows_trl():
  """Score-head kernels start N(0, 1 / (D + 1)), as the RLHF reward models of TRL's scripts
  (`layer_init(model.score, std=1 / np.sqrt(hidden_size + 1))`, after Stiennon et al. 2020, p. 11), and the mlp
  head's output layer N(0, 1 / (F + 1)); biases start at zero."""
  head = RewardModel(CONFIG, HeadConfig("multihead", num_outputs=64), rngs=nnx.Rngs(0)).head
  kernel = _np(head.kernel)  # (64, D = 32)
  assert abs(kernel.std() * np.sqrt(CONFIG.embed_dim + 1) - 1) < 0.1
  assert not _np(head.bias).any()
  mlp = RewardModel(CONFIG, HeadConfig("multihead", num_outputs=64, member_kind="mlp", hidden_dim=16),
                    rngs=nnx.Rngs(0)).head
  assert abs(_np(mlp.hidden_kernel).std() * np.sqrt(CONFIG.embed_dim + 1) - 1) < 0.1
  assert abs(_np(mlp.kernel).std() * np.sqrt(16 + 1) - 1) < 0.1


@pytest.mark.parametrize("kwargs, match", [(dict(num_outputs=0), "num_outputs"),
                                           (dict(member_kind="attention"), "member_kind")])
def test_bad_head_config_names_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    HeadConfig("multihead", **kwargs)


def test_head_biases_enter_as_in_the_formulas():
  """Nonzero biases (they start at zero, so an init-time check cannot see them): r = h W + b for "linear",
  r = SiLU(h W1 + b1) W2 + b2 for "mlp"."""
  ids = _ids()
  linear = RewardModel(CONFIG, HeadConfig("linear"), rngs=nnx.Rngs(0))
  linear.head.bias[...] = jnp.array([0.7])
  h = _np(linear.backbone.hidden_states(ids))[:, -1]
  np.testing.assert_allclose(linear(ids), h @ _np(linear.head.kernel)[0] + 0.7, rtol=1e-5, atol=1e-5)
  mlp = RewardModel(CONFIG, HeadConfig("mlp", hidden_dim=16), rngs=nnx.Rngs(0))
  mlp.head.bias[...] = jnp.array([-0.4])
  b1 = np.linspace(-1.0, 1.0, 16)[None]
  mlp.head.hidden_bias[...] = jnp.asarray(b1, jnp.float32)
  h = _np(mlp.backbone.hidden_states(ids))[:, -1]
  z = h @ _np(mlp.head.hidden_kernel)[0] + b1
  expected = (z / (1 + np.exp(-z))) @ _np(mlp.head.kernel)[0] - 0.4
  np.testing.assert_allclose(mlp(ids), expected, rtol=1e-5, atol=1e-5)
