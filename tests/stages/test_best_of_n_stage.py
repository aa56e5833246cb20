"""The best_of_n stage: summary metrics from hand-made curves, and a run on a tiny random policy and reward model
whose results.json agrees with a direct recomputation from its pools."""

import dataclasses
import json
import os
import types

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.evaluation import best_of_n as bon_metrics
from jaxrlhf.stages import best_of_n as best_of_n_stage
from jaxrlhf.stages import inputs
from jaxrlhf.models import CausalLM, ModelConfig, from_pretrained, save_pretrained
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble
from jaxrlhf.sampling.best_of_n import best_of_n_kl
from jaxrlhf.stages import artifacts

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)
WORLD = {"num_prompts": 256, "max_response_len": 12}


def test_curve_metrics_by_hand():
  curves = {"n": np.asarray([1.0, 2.0, 4.0]), "gold": np.asarray([0.0, 1.0, 0.5]),
            "proxy": np.asarray([1.0, 3.0, 5.0])}
  m = bon_metrics.curve_metrics(curves, gold_std=0.5, proxy_std=2.0)
  assert m["gold_gain_std"] == pytest.approx(1.0)  # (0.5 - 0) / 0.5
  assert m["proxy_gain_std"] == pytest.approx(2.0)  # (5 - 1) / 2
  assert m["gap_std"] == pytest.approx(1.0)
  assert m["gold_slope_std"] == pytest.approx(-1.0)  # n = 2 -> 4: (0.5 - 1) / 0.5
  assert m["proxy_slope_std"] == pytest.approx(1.0)
  assert m["gold_monotone"] == 0.0


def test_config_errors():
  with pytest.raises(ConfigError, match="policy"):
    from_config({}, best_of_n_stage.BestOfNConfig)
  with pytest.raises(ConfigError, match="aggregations"):
    from_config({"policy": "stage:sft", "aggregations": ("mode",)}, best_of_n_stage.BestOfNConfig)
  for bad in ("mean_minus_var", "mean_minus_var:x", "mode:0.5", "min:-1"):
    with pytest.raises(ConfigError, match=r"config.extra_aggregations\[0\]: .*'<aggregation>:<lam>'"):
      from_config({"policy": "stage:sft", "extra_aggregations": (bad,)}, best_of_n_stage.BestOfNConfig, path="config")
  assert best_of_n_stage.parse_extra_aggregation("mean_minus_var:0.5") == ("mean_minus_var", 0.5,
                                                                            "rm_mean_minus_var_lam0.5")


@pytest.mark.slow
def test_stage_on_tiny_models(tmp_path):
  world = World(WorldConfig(**WORLD))
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, **TINY)
  policy_dir = str(tmp_path / "policy")
  save_pretrained(CausalLM(config, rngs=nnx.Rngs(0)), policy_dir)
  rm = RewardEnsemble(config, HeadConfig(), 2, rngs=nnx.Rngs(1))
  rm_dir = artifacts.save_reward_model(str(tmp_path / "rm"), config, HeadConfig(), 2, nnx.state(rm))
  cfg = from_config({"policy": policy_dir, "reward_model": rm_dir, "aggregations": ("mean", "min"),
                     "extra_aggregations": ("mean_minus_var:0.5",), "track_words": ("the",),
                     "prompts": {"world": WORLD}, "num_prompts": 4, "pool_size": 8, "batch_size": 4,
                     "max_new_tokens": 6},
                    best_of_n_stage.BestOfNConfig)
  workdir = str(tmp_path / "bon")
  out = best_of_n_stage.run(cfg, workdir, {})
  with open(out["results"]) as f:
    results = json.load(f)
  assert set(results["curves"]) == {"gold", "rm_mean", "rm_min", "rm_mean_minus_var_lam0.5"}
  for name in results["curves"]:
    assert os.path.getsize(os.path.join(workdir, f"best_of_n_{name}.png")) > 0
  gold_curve = results["curves"]["gold"]
  assert np.all(np.diff(gold_curve["gold"]) >= -1e-9)  # selecting by gold itself never lowers gold
  np.testing.assert_allclose(gold_curve["kl"], best_of_n_kl(gold_curve["n"]))
  # Recompute the pools and check n = 1 (pool mean) and n = N (the proxy argmax's gold) by hand.
  prompts = inputs.open_prompts(cfg.prompts, "").split("eval", cfg.num_prompts, cfg.max_prompt_length,
                                                      world_split="test")
  pools = best_of_n_stage.generate_pools(from_pretrained(policy_dir)[0], prompts, cfg, (world.tokenizer.eos_id,),
                                         world.tokenizer.pad_id, jax.jit(world.gold_reward))
  gold = pools["gold"]
  rm_scores = best_of_n_stage.score_pools(artifacts.load_reward_model(rm_dir), pools, cfg.batch_size)
  proxy = rm_scores.min(axis=-1)
  curve = results["curves"]["rm_min"]
  assert curve["gold"][0] == pytest.approx(gold.mean(), rel=1e-5)
  best = gold[np.arange(gold.shape[0]), proxy.argmax(axis=1)]
  assert curve["gold"][-1] == pytest.approx(best.mean(), rel=1e-5)
  assert curve["proxy"][-1] == pytest.approx(proxy.max(axis=1).mean(), rel=1e-5)
  # The tracked word's share in the selected response (tokens before the end token), recomputed by hand.
  the = world.tokenizer.ids["the"]
  share = np.zeros(gold.shape)
  for p in range(gold.shape[0]):
    for n in range(gold.shape[1]):
      row = [t for t, keep in zip(pools["tokens"][p, n], pools["mask"][p, n]) if keep and t != world.tokenizer.eos_id]
      share[p, n] = row.count(the) / max(len(row), 1)
  assert results["metrics"]["rm_min/share_the@N"] == pytest.approx(share[np.arange(gold.shape[0]),
                                                                         proxy.argmax(axis=1)].mean(), abs=1e-9)
  assert results["metrics"]["gold/share_the@1"] == pytest.approx(share.mean(), abs=1e-9) and share.mean() > 0
  uwo = rm_scores.mean(axis=-1) - 0.5 * rm_scores.var(axis=-1)  # the extra selector, at its own lambda
  curve = results["curves"]["rm_mean_minus_var_lam0.5"]
  assert curve["proxy"][-1] == pytest.approx(uwo.max(axis=1).mean(), rel=1e-5)
  assert curve["gold"][-1] == pytest.approx(gold[np.arange(gold.shape[0]), uwo.argmax(axis=1)].mean(), rel=1e-5)


def test_pool_from_must_hold_this_stages_prompts(tmp_path):
  """A saved pool is reused only on the prompts it was drawn on (compared without their left padding); a pool of
  the same shape drawn on other prompts would score its samples against the wrong prompts and references."""
  ids = np.asarray([[0, 5, 6], [7, 8, 9]], np.int32)
  mask = np.asarray([[0, 1, 1], [1, 1, 1]], np.int32)
  pool = {"prompt_ids": ids, "prompt_mask": mask, "tokens": np.ones((2, 3, 4), np.int32),
          "mask": np.ones((2, 3, 4), np.int32), "lengths": np.full((2, 3), 4)}
  path = str(tmp_path / "pool.npz")
  np.savez_compressed(path, **pool)
  cfg = best_of_n_stage.BestOfNConfig(policy="p", num_prompts=2, pool_size=3)
  held = lambda i, m: types.SimpleNamespace(ids=np.asarray(i), mask=np.asarray(m))  # noqa: E731
  loaded = best_of_n_stage.load_pools(path, cfg, held(ids, mask))
  np.testing.assert_array_equal(loaded["tokens"], pool["tokens"])
  # The same prompts at a wider padding compare equal.
  best_of_n_stage.load_pools(path, cfg, held([[0, 0, 5, 6], [0, 7, 8, 9]], [[0, 0, 1, 1], [0, 1, 1, 1]]))
  for other_ids, other_mask in (([[0, 5, 6], [7, 8, 4]], mask), ([[0, 7, 8], [0, 5, 6]], [[0, 1, 1], [0, 1, 1]])):
    with pytest.raises(ValueError, match=r"pool_from: .*pool\.npz.* other prompts .*prompts differ \(first: prompt"):
      best_of_n_stage.load_pools(path, cfg, held(other_ids, other_mask))
  with pytest.raises(ValueError, match=r"pool_from: .*\(num_prompts, pool_size\) = \(3, 3\)"):
    best_of_n_stage.load_pools(path, dataclasses.replace(cfg, num_prompts=3), held(ids, mask))
