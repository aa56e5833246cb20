"""Best-of-n additions for the ensemble reproduction: the selected-length curve and the single-member average
against brute-force enumeration of every n-subset, the peak / drop metrics by hand, the shared-backbone
("finetune-seed") ensemble init, and the best_of_n stage scoring a saved pool (pool_from) on tiny models."""

import itertools
import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import from_config
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.evaluation import best_of_n as bon_metrics
from jaxrlhf.stages import best_of_n as best_of_n_stage
from jaxrlhf.models import CausalLM, ModelConfig, save_pretrained
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble
from jaxrlhf.sampling.best_of_n import best_of_n_curves, best_of_n_kl
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import reward
from jaxrlhf.train import optim

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)
WORLD = {"num_prompts": 256, "max_response_len": 12}


def _brute_force(proxy_N, value_N, n):
  """Mean over all n-subsets of value[argmax proxy] (distinct proxies: no ties)."""
  return np.mean([value_N[max(s, key=lambda i: proxy_N[i])] for s in itertools.combinations(range(len(proxy_N)), n)])


def test_length_curve_by_hand():
  proxy, lengths = np.array([1.0, 3.0, 2.0]), np.array([10.0, 20.0, 30.0])
  curves = best_of_n_curves(proxy[None], proxy[None], ns=[1, 2, 3], lengths_BxN=lengths[None])
  # n = 1: the mean; n = 2: subsets {1,3} -> 20, {1,2} -> 30, {3,2} -> 20; n = 3: the proxy argmax's 20.
  np.testing.assert_allclose(curves["length"], [20.0, 70.0 / 3.0, 20.0])


def test_length_curve_matches_subset_enumeration():
  rng = np.random.default_rng(0)
  proxy, lengths = rng.normal(size=(3, 9)), rng.integers(1, 33, size=(3, 9)).astype(np.float64)
  ns = [1, 2, 4, 7, 9]
  got = best_of_n_curves(proxy, rng.normal(size=(3, 9)), ns=ns, lengths_BxN=lengths)["length"]
  want = [np.mean([_brute_force(proxy[b], lengths[b], n) for b in range(3)]) for n in ns]
  np.testing.assert_allclose(got, want, rtol=1e-10)
  with pytest.raises(ValueError, match="lengths_BxN"):
    best_of_n_curves(proxy, proxy, lengths_BxN=lengths[:, :4])


def test_member_average_curves_match_enumeration():
  rng = np.random.default_rng(1)
  scores, gold, lengths = rng.normal(size=(2, 6, 3)), rng.normal(size=(2, 6)), rng.integers(1, 20, (2, 6))
  curves, proxy_std = bon_metrics.member_average_curves(scores, gold, lengths)
  ns = curves["n"].astype(int)
  for key, values in (("gold", gold), ("length", lengths)):
    want = [np.mean([_brute_force(scores[b, :, k], values[b], n) for b in range(2) for k in range(3)]) for n in ns]
    np.testing.assert_allclose(curves[key], want, rtol=1e-10)
  want_proxy = [np.mean([_brute_force(scores[b, :, k], scores[b, :, k], n) for b in range(2) for k in range(3)])
                for n in ns]
  np.testing.assert_allclose(curves["proxy"], want_proxy, rtol=1e-10)
  assert proxy_std == pytest.approx(np.mean([scores[..., k].std() for k in range(3)]))


def test_peak_and_drop_metrics_by_hand():
  curves = {"n": np.array([1.0, 2.0, 4.0, 8.0]), "gold": np.array([0.0, 2.0, 1.5, -1.0]),
            "proxy": np.array([0.0, 1.0, 2.0, 3.0]), "length": np.array([8.0, 10.0, 14.0, 20.0])}
  m = bon_metrics.curve_metrics(curves, gold_std=1.0, proxy_std=1.0)
  assert m["gold_peak"] == 2.0 and m["gold_drop"] == pytest.approx(3.0)
  assert m["gold_peak_kl"] == pytest.approx(np.log(2.0) - 0.5)  # n = 2
  assert m["length@1"] == 8.0 and m["length@N"] == 20.0
  monotone = dict(curves, gold=np.array([0.0, 1.0, 1.0, 2.0]))
  assert bon_metrics.curve_metrics(monotone, 1.0, 1.0)["gold_drop"] == 0.0
  assert bon_metrics.curve_metrics(monotone, 1.0, 1.0)["gold_monotone"] == 1.0  # a flat step is not a decrease
  # Gains in units of each reward's own std (gold 2, proxy 4); the slope is over the last doubling, n = 4 -> 8.
  m = bon_metrics.curve_metrics(curves, gold_std=2.0, proxy_std=4.0)
  assert m["gold_monotone"] == 0.0
  assert (m["gold@1"], m["gold@N"], m["proxy@1"], m["proxy@N"]) == (0.0, -1.0, 0.0, 3.0)
  assert m["gold_gain_std"] == pytest.approx(-0.5) and m["proxy_gain_std"] == pytest.approx(0.75)
  assert m["gold_slope_std"] == pytest.approx((-1.0 - 1.5) / 2) and m["proxy_slope_std"] == pytest.approx(0.25)
  assert m["gap_std"] == pytest.approx(0.75 + 0.5)  # proxy gain - gold gain: > 0 is overoptimization
  np.testing.assert_allclose(best_of_n_kl([8.0]), [np.log(8.0) - 7.0 / 8.0])


def test_standardize_members_by_hand():
  scores = np.array([[[1.0, 10.0, 5.0], [3.0, 30.0, 5.0]]])  # (B=1, N=2, K=3); member 2 is constant
  z = bon_metrics.standardize_members(scores)
  np.testing.assert_allclose(z[..., 0], [[-1.0, 1.0]])  # mean 2, std 1
  np.testing.assert_allclose(z[..., 1], [[-1.0, 1.0]])  # mean 20, std 10: the scale is removed too
  np.testing.assert_allclose(z[..., 2], [[0.0, 0.0]])
  with pytest.raises(ValueError, match="scores_BxNxK"):
    bon_metrics.standardize_members(scores[0])


@pytest.mark.parametrize("shared", [False, True])
def test_shared_backbone_members_differ_only_by_head(shared):
  config = ModelConfig(vocab_size=32, **TINY)
  setup = reward.ensemble_setup(config, HeadConfig(), 3, optim.make_optimizer(optim.OptimizerConfig()), 0, None,
                                shared_backbone=shared)
  members = nnx.to_pure_dict(setup.init().params)["members"]
  # Member 0 is exactly the member a default ensemble (and a member trained alone) starts from.
  alone = nnx.to_pure_dict(nnx.state(reward.member_model(config, HeadConfig(), 0, 0), nnx.Param))
  np.testing.assert_allclose(np.asarray(members["backbone"]["embed"])[0],
                             np.asarray(alone["backbone"]["embed"]), rtol=1e-6)
  for leaf in jax.tree.leaves(members["backbone"]):
    leaf = np.asarray(leaf)
    same = all(np.array_equal(leaf[0], leaf[k]) for k in range(1, 3))
    assert same == shared or np.allclose(leaf[0], leaf.mean(0))  # constant inits (norm scales) always agree
  kernel = np.asarray(members["head"]["kernel"])
  assert not np.allclose(kernel[0], kernel[1])
  embed = np.asarray(members["backbone"]["embed"])
  assert np.array_equal(embed[0], embed[2]) == shared


@pytest.mark.slow
def test_stage_reuses_a_saved_pool(tmp_path):
  world = World(WorldConfig(**WORLD))
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, **TINY)
  policy_dir = str(tmp_path / "policy")
  save_pretrained(CausalLM(config, rngs=nnx.Rngs(0)), policy_dir)
  rm_dirs = [artifacts.save_reward_model(str(tmp_path / f"rm{i}"), config, HeadConfig(), 3,
                                        nnx.state(RewardEnsemble(config, HeadConfig(), 3, rngs=nnx.Rngs(i + 1))))
             for i in range(2)]
  base = {"policy": policy_dir, "aggregations": ("mean", "min"), "prompts": {"world": WORLD}, "num_prompts": 3,
          "pool_size": 8, "batch_size": 2, "max_new_tokens": 6, "plots": False, "member_curves": True,
          "standardize": True}
  first = best_of_n_stage.run(from_config(dict(base, reward_model=rm_dirs[0]),
                                                    best_of_n_stage.BestOfNConfig), str(tmp_path / "a"), {})
  cfg2 = from_config(dict(base, reward_model=rm_dirs[1], pool_from="stage:a"), best_of_n_stage.BestOfNConfig)
  second = best_of_n_stage.run(cfg2, str(tmp_path / "b"), {"a": first})
  r1, r2 = (json.load(open(o["results"])) for o in (first, second))
  assert r1["curves"]["gold"] == r2["curves"]["gold"]  # the same samples
  pools = dict(np.load(first["pool"]))
  assert pools["tokens"].shape[:2] == (3, 8) and pools["gold"].shape == (3, 8)
  scores = best_of_n_stage.score_pools(artifacts.load_reward_model(rm_dirs[1]), pools, batch_size=3)
  best = pools["gold"][np.arange(3), scores.min(-1).argmax(1)]
  assert r2["curves"]["rm_min"]["gold"][-1] == pytest.approx(best.mean(), rel=1e-6)
  single = np.mean([pools["gold"][np.arange(3), scores[..., k].argmax(1)].mean() for k in range(3)])
  assert r2["metrics"]["rm_single/gold@N"] == pytest.approx(single, rel=1e-6)
  assert r2["metrics"]["rm_min/length@N"] == pytest.approx(
      pools["lengths"][np.arange(3), scores.min(-1).argmax(1)].mean())
  z_best = pools["gold"][np.arange(3), bon_metrics.standardize_members(scores).min(-1).argmax(1)]
  assert r2["metrics"]["rmz_min/gold@N"] == pytest.approx(z_best.mean(), rel=1e-6)
  with pytest.raises(ValueError, match="pool_from"):
    best_of_n_stage.run(from_config(dict(base, reward_model=rm_dirs[1], pool_from="stage:a", num_prompts=4),
                                              best_of_n_stage.BestOfNConfig), str(tmp_path / "c"), {"a": first})
