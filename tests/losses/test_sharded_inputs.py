"""The loss library on inputs sharded over 8 CPU devices (batch axis): jitted results equal unsharded ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrlhf.losses import aggregation, logps, policy_gradient, reward
from jaxrlhf.parallel import MeshConfig, make_mesh

B, T, V, D, K = 16, 6, 40, 8, 4


def _inputs():
  rng = np.random.default_rng(0)
  return dict(
      logits=jnp.asarray(rng.normal(size=(B, T, V)) * 3, jnp.float32),
      hidden=jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32),
      head=jnp.asarray(rng.normal(size=(D, V)), jnp.float32),
      targets=jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32),
      mask=jnp.asarray(rng.random((B, T)) > 0.2, jnp.float32),
      chosen=jnp.asarray(rng.normal(size=B), jnp.float32),
      rejected=jnp.asarray(rng.normal(size=B), jnp.float32),
      members=jnp.asarray(rng.normal(size=(B, K)), jnp.float32),
      logps_a=jnp.asarray(-rng.random((B, T)) * 3, jnp.float32),
      logps_b=jnp.asarray(-rng.random((B, T)) * 3, jnp.float32),
  )


def _all_losses(x):
  token_logps, seq = logps.sequence_logps(x["logits"], x["targets"], x["mask"])
  _, chunked = logps.chunked_sequence_logps(x["hidden"], x["head"], x["targets"], x["mask"], chunk_size=7)
  bt, _ = reward.bradley_terry_loss(x["chosen"], x["rejected"], label_smoothing=0.1, center_coeff=0.01)
  advantages = policy_gradient.group_advantages(x["chosen"], group_size=4)
  pg, _ = policy_gradient.clipped_policy_loss(x["logps_a"], x["logps_b"], advantages, x["mask"],
                                              ref_logps_BxT=x["logps_b"], kl_coeff=0.05)
  return dict(token_logps=token_logps, seq=seq, chunked=chunked, bt=bt, advantages=advantages,
              rloo=policy_gradient.rloo_advantages(x["chosen"], group_size=4),
              kl=policy_gradient.kl_divergence(x["logps_a"], x["logps_b"], x["mask"], estimator="k3"),
              pg=pg, mean_minus_std=aggregation.aggregate(x["members"], "mean_minus_std", lam=0.5),
              median=aggregation.aggregate(x["members"], "median"))


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1)])
def test_sharded_batch_gives_unsharded_results(shape):
  x = _inputs()
  expected = jax.jit(_all_losses)(x)
  mesh = make_mesh(MeshConfig(*shape))
  sharded = {k: jax.device_put(v, NamedSharding(mesh, P(("data", "fsdp"), *([None] * (v.ndim - 1)))))
             if k != "head" else jax.device_put(v, NamedSharding(mesh, P())) for k, v in x.items()}
  assert len(sharded["logits"].sharding.device_set) == 8
  got = jax.jit(_all_losses)(sharded)
  for name in expected:
    np.testing.assert_allclose(np.asarray(got[name]), np.asarray(expected[name]), rtol=1e-5, atol=1e-5,
                               err_msg=name)
