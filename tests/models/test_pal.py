"""jaxrlhf.models.pal and jaxrlhf.losses.pal against hand-computed values of PAL's definitions (Chen et al. 2024,
arXiv:2406.08469): mixture weights on the simplex, ideal points in the prototypes' convex hull, distance and cosine
rewards, the per-user Bradley-Terry likelihood; gradients reach exactly the parameters they should; the few-shot
fit moves only the new users' logits and recovers a user's prototype."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.losses import pal as pal_losses
from jaxrlhf.models import pal


def _linear_model(variant="a", num_users=3, k=2, d=2, distance="euclidean"):
  """A PALModel with an identity linear f (features = preference space), so rewards are hand-computable."""
  model = pal.PALModel(d, d, k, num_users, variant=variant, projector="linear", distance=distance,
                       rngs=nnx.Rngs(0))
  model.f.out.kernel[...] = jnp.eye(d)
  model.f.out.bias[...] = jnp.zeros(d)
  return model


def test_simplex_weights_and_ideal_points_golden():
  w = pal.simplex_weights(jnp.log(jnp.asarray([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])))
  np.testing.assert_allclose(w, [[1 / 6, 2 / 6, 3 / 6], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(w, -1), 1.0, rtol=1e-6)
  # a = 0.25 * (0, 0) + 0.75 * (4, 8) = (3, 6): a point of the segment between the prototypes.
  np.testing.assert_allclose(pal.ideal_points(jnp.asarray([[0.25, 0.75]]), jnp.asarray([[0.0, 0.0], [4.0, 8.0]])),
                             [[3.0, 6.0]], rtol=1e-6)


def test_distance_and_cosine_rewards_golden():
  z, a = jnp.asarray([[3.0, 4.0], [1.0, 1.0]]), jnp.asarray([[0.0, 0.0], [1.0, 1.0]])
  np.testing.assert_allclose(pal.distance_reward(z, a), [-5.0, 0.0], atol=1e-5)
  np.testing.assert_allclose(pal.distance_reward(z, a, "squared"), [-25.0, 0.0], atol=1e-6)
  # The gradient stays finite where z sits on the ideal point.
  assert np.all(np.isfinite(jax.grad(lambda z: pal.distance_reward(z, a).sum())(z)))
  with pytest.raises(ValueError, match="distance"):
    pal.distance_reward(z, a, "manhattan")
  zc, ac = jnp.asarray([[1.0, 0.0]]), jnp.asarray([[2.0, 2.0]])
  np.testing.assert_allclose(pal.cosine_reward(zc, ac, math.log(2.0)), [2.0 / math.sqrt(2.0)], rtol=1e-5)
  np.testing.assert_allclose(pal.cosine_reward(zc, ac, math.log(1000.0)), [100.0 / math.sqrt(2.0)], rtol=1e-5)


def test_pal_a_reward_is_negative_distance_to_the_users_mixture_of_prototypes():
  model = _linear_model()
  model.prototypes[...] = jnp.asarray([[0.0, 0.0], [4.0, 0.0]])
  model.user_logits[...] = jnp.log(jnp.asarray([[1.0, 1.0], [1.0, 3.0], [3.0, 1.0]]))
  x = jnp.asarray([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0]])
  # Ideal points: (2, 0), (3, 0), (1, 0); distances from (3, 4): sqrt(17), 4, sqrt(20).
  np.testing.assert_allclose(model(x, jnp.asarray([0, 1, 2])), [-math.sqrt(17), -4.0, -math.sqrt(20)], rtol=1e-5)
  squared = _linear_model(distance="squared")
  squared.prototypes[...], squared.user_logits[...] = model.prototypes[...], model.user_logits[...]
  np.testing.assert_allclose(squared(x, jnp.asarray([0, 1, 2])), [-17.0, -16.0, -20.0], rtol=1e-5)


def test_pal_b_reward_is_scaled_cosine_to_the_prompt_conditioned_ideal_point():
  model = _linear_model("b", num_users=1, k=2, d=2)
  # g(c) = c @ G: prototype k's point for prompt c is (c @ G)[k*d:(k+1)*d].
  model.g.out.kernel[...] = jnp.asarray([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
  model.g.out.bias[...] = jnp.zeros(4)
  model.user_logits[...] = jnp.zeros((1, 2))  # w = (1/2, 1/2)
  model.log_scale[...] = jnp.log(3.0)
  prompt, x = jnp.asarray([[2.0, 5.0]]), jnp.asarray([[1.0, 0.0]])
  # g_1 = (2, 0), g_2 = (0, 2); a = (1, 1); cos((1, 0), (1, 1)) = 1/sqrt(2).
  np.testing.assert_allclose(model(x, jnp.asarray([0]), prompt), [3.0 / math.sqrt(2.0)], rtol=1e-5)
  with pytest.raises(ValueError, match="prompt features"):
    model(x, jnp.asarray([0]))


def test_pal_loss_golden_and_user_balancing():
  losses, metrics = pal_losses.pal_loss(jnp.asarray([1.0, 0.0, 2.0]), jnp.asarray([0.0, 0.0, 3.0]))
  np.testing.assert_allclose(losses, [math.log1p(math.exp(-1.0)), math.log(2.0), math.log1p(math.e)], rtol=1e-6)
  np.testing.assert_allclose(metrics["rewards/accuracy"], 1 / 3, rtol=1e-6)
  # Users (0, 0, 1) with 2 and 1 training pairs: weights 1/2, 1/2, 1, rescaled to sum to 3.
  np.testing.assert_allclose(pal_losses.user_balanced_weights(jnp.asarray([0, 0, 1]), jnp.asarray([2.0, 1.0])),
                             [0.75, 0.75, 1.5], rtol=1e-6)
  balanced, _ = pal_losses.pal_loss(jnp.asarray([1.0, 0.0, 2.0]), jnp.asarray([0.0, 0.0, 3.0]),
                                    jnp.asarray([0, 0, 1]), jnp.asarray([2.0, 1.0]))
  np.testing.assert_allclose(balanced, np.asarray(losses) * [0.75, 0.75, 1.5], rtol=1e-6)
  with pytest.raises(ValueError, match="user_B"):
    pal_losses.pal_loss(jnp.ones(2), jnp.ones(2), None, jnp.ones(2))
  np.testing.assert_allclose(pal_losses.prototype_norm_penalty(jnp.asarray([[3.0, 4.0], [1.0, 0.0]]), 2.0), 3.0)


def test_bt_likelihood_per_user_gradients_reach_the_right_parameters():
  model = pal.PALModel(4, 3, 2, 5, rngs=nnx.Rngs(1))
  graphdef, params = nnx.split(model, nnx.Param)
  c, r = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 4))
  users = jnp.asarray([0, 0, 2, 2, 2, 0])

  def loss(params):
    m = nnx.merge(graphdef, params)
    return jnp.mean(pal_losses.pal_loss(m(c, users), m(r, users))[0])

  # The loss is the mean of -log sigmoid(r_u(c) - r_u(r)) computed independently from the definitions.
  w = jax.nn.softmax(model.user_logits[...][users], -1)
  a = w @ model.prototypes[...]
  f = lambda x: model.f.out(jax.nn.gelu(model.f.hidden(x)))
  ref = jnp.mean(-jax.nn.log_sigmoid(-jnp.linalg.norm(f(c) - a, axis=-1) + jnp.linalg.norm(f(r) - a, axis=-1)))
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(value, ref, rtol=1e-5)
  grads = nnx.to_pure_dict(grads)
  g_users = np.asarray(grads["user_logits"])
  assert np.all(np.abs(g_users[[0, 2]]).sum(-1) > 0)  # users with pairs in the batch move ...
  np.testing.assert_array_equal(g_users[[1, 3, 4]], 0.0)  # ... the others do not
  assert np.abs(np.asarray(grads["prototypes"])).sum() > 0
  assert all(np.abs(np.asarray(v)).sum() > 0 for v in jax.tree.leaves(grads["f"]))


def test_few_shot_fit_moves_only_new_users_and_recovers_their_prototype():
  model = _linear_model(num_users=2, k=3, d=2)
  model.prototypes[...] = jnp.asarray([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0]])
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
  rng = np.random.default_rng(0)
  x1, x2 = rng.normal(size=(2, 2, 20, 2)).astype(np.float32) * 2
  # New user 0 answers as prototype 1 (ideal point (0, 2)), new user 1 as prototype 2 (ideal point (-2, 0)).
  ideal = np.asarray([[0.0, 2.0], [-2.0, 0.0]])[:, None, :]
  first_wins = (np.linalg.norm(x1 - ideal, axis=-1) < np.linalg.norm(x2 - ideal, axis=-1))[..., None]
  chosen, rejected = np.where(first_wins, x1, x2), np.where(first_wins, x2, x1)
  logits = pal.fit_user_logits(model, chosen, rejected, np.ones((2, 20), np.float32), steps=300,
                               learning_rate=0.1)
  w = np.asarray(pal.simplex_weights(logits))
  assert w[0].argmax() == 1 and w[1].argmax() == 2 and w[0, 1] > 0.8 and w[1, 2] > 0.8, w
  after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
  jax.tree.map(np.testing.assert_array_equal, before, after)  # the trained model is frozen
  # No pair: the uniform mixture.
  none = pal.fit_user_logits(model, chosen, rejected, np.zeros((2, 20), np.float32), steps=5, learning_rate=0.1)
  np.testing.assert_array_equal(none, 0.0)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="variant"):
    pal.PALModel(2, 2, 2, 2, variant="c", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="projector"):
    pal.PALModel(2, 2, 2, 2, projector="conv", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_prototypes"):
    pal.PALModel(2, 2, 0, 2, rngs=nnx.Rngs(0))


def test_init_scales_follow_the_authors_code():
  """Prototypes start N(0, 1 / d) per entry (unit-norm-sized points in R^d), user logits N(0, 1) (torch.randn)."""
  model = pal.PALModel(4, 16, 64, 64, rngs=nnx.Rngs(0))
  prototypes, logits = np.asarray(model.prototypes[...]), np.asarray(model.user_logits[...])
  assert prototypes.shape == (64, 16) and logits.shape == (64, 64)
  assert abs(prototypes.std() * math.sqrt(16) - 1) < 0.1
  assert abs(logits.std() - 1) < 0.1
