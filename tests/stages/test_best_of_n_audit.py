"""The best_of_n stage against independent references: the pooled golds and reward-model scores re-scored prompt by
prompt, the curves against the brute-force mean over every n-subset of each pool (what the unbiased estimator
estimates), the analytic KL log n - (n-1)/n, the standardized and single-member selectors, what results.json and
scores.npz hold, and pool reuse (`pool_from`)."""

import itertools
import json
import types

import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import from_config
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.models import CausalLM, ModelConfig, from_pretrained, save_pretrained
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble
from jaxrlhf.sampling.best_of_n import reward_model_scorer
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import best_of_n as bon_stage

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)
WORLD = {"num_prompts": 256, "max_response_len": 12}
P, N, K = 4, 6, 3


def _subset_mean(select_PxN, value_PxN, n):
  """Mean over prompts and over all n-subsets of the pool of the value of the subset's argmax under `select`."""
  out = []
  for p in range(select_PxN.shape[0]):
    vals = [value_PxN[p, list(s)][np.argmax(select_PxN[p, list(s)])] for s in itertools.combinations(range(N), n)]
    out.append(np.mean(vals))
  return float(np.mean(out))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("bon_audit")
  world = World(WorldConfig(**WORLD))
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, **TINY)
  policy_dir = str(root / "policy")
  save_pretrained(CausalLM(config, rngs=nnx.Rngs(0)), policy_dir)
  rm = RewardEnsemble(config, HeadConfig(), K, rngs=nnx.Rngs(1))
  rm_dir = artifacts.save_reward_model(str(root / "rm"), config, HeadConfig(), K, nnx.state(rm))
  base = {"policy": policy_dir, "reward_model": rm_dir, "prompts": {"world": WORLD}, "num_prompts": P,
          "pool_size": N, "batch_size": 2, "max_new_tokens": 6, "plots": False}
  cfg = from_config({**base, "aggregations": ("mean", "min"), "standardize": True, "member_curves": True},
                    bon_stage.BestOfNConfig)
  out = bon_stage.run(cfg, str(root / "bon"), {})
  with open(out["results"]) as f:
    results = json.load(f)
  with np.load(out["pool"]) as f:
    pool = {k: f[k] for k in f.files}
  with np.load(str(root / "bon" / "scores.npz")) as f:
    scores = {k: f[k] for k in f.files}
  return types.SimpleNamespace(world=world, rm_dir=rm_dir, base=base, cfg=cfg, out=out, results=results, pool=pool,
                               scores=scores, root=root)


def _rescored(run):
  """Gold (P, N) and member scores (P, N, K), each prompt's N samples scored on their own against that prompt."""
  pool, world = run.pool, run.world
  scorer = reward_model_scorer(artifacts.load_reward_model(run.rm_dir))
  gold, members = np.zeros((P, N)), np.zeros((P, N, K))
  for p in range(P):
    ids, mask = np.repeat(pool["prompt_ids"][p:p + 1], N, 0), np.repeat(pool["prompt_mask"][p:p + 1], N, 0)
    gold[p] = np.asarray(world.gold_reward(ids, mask, pool["tokens"][p], pool["mask"][p]))
    members[p] = np.asarray(scorer(ids, mask, pool["tokens"][p], pool["mask"][p])).reshape(N, K)
  return gold, members


def test_pool_scores_match_a_per_prompt_rescoring(run):
  gold, members = _rescored(run)
  np.testing.assert_allclose(run.pool["gold"], gold, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(run.scores["gold"], gold, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(run.scores["rm_mean"], members.mean(-1), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(run.scores["rm_min"], members.min(-1), rtol=1e-4, atol=1e-5)
  z = (members - members.mean(axis=(0, 1))) / members.std(axis=(0, 1))  # each member over the whole pool
  np.testing.assert_allclose(run.scores["rmz_mean"], z.mean(-1), rtol=1e-4, atol=1e-4)
  assert set(run.scores) == {"gold", "rm_mean", "rm_min", "rmz_mean", "rmz_min"}
  lengths = np.asarray([[int(np.sum((m > 0) & (t != run.world.tokenizer.eos_id))) for t, m in zip(tp, mp)]
                        for tp, mp in zip(run.pool["tokens"], run.pool["mask"])])
  np.testing.assert_array_equal(run.pool["lengths"], lengths)


def test_curves_are_the_mean_over_all_n_subsets(run):
  gold, members = _rescored(run)
  z = (members - members.mean(axis=(0, 1))) / members.std(axis=(0, 1))
  selectors = {"gold": gold, "rm_mean": members.mean(-1), "rm_min": members.min(-1), "rmz_min": z.min(-1)}
  for name, select in selectors.items():
    curve = run.results["curves"][name]
    assert curve["n"] == list(range(1, N + 1))
    for j, n in enumerate(curve["n"]):
      n = int(n)
      assert curve["gold"][j] == pytest.approx(_subset_mean(select, gold, n), abs=1e-5), (name, n)
      assert curve["proxy"][j] == pytest.approx(_subset_mean(select, select, n), abs=1e-4), (name, n)
      assert curve["gold_oracle"][j] == pytest.approx(_subset_mean(gold, gold, n), abs=1e-5)
      assert curve["length"][j] == pytest.approx(_subset_mean(select, run.pool["lengths"].astype(float), n), abs=1e-6)
    ns = np.arange(1, N + 1)
    np.testing.assert_allclose(curve["kl"], np.log(ns) - (ns - 1) / ns, atol=1e-12)  # Beirami et al.'s formula
    assert curve["proxy_std"] == pytest.approx(np.std(select), rel=1e-4)
  m = run.results["metrics"]
  assert m["gold_std"] == pytest.approx(np.std(gold), rel=1e-5)
  assert m["rm_mean/gold@N"] == pytest.approx(_subset_mean(members.mean(-1), gold, N), abs=1e-5)
  for name in selectors:
    assert m[f"{name}/constant_pools"] == 0.0


def test_single_member_curves_are_the_member_average(run):
  gold, members = _rescored(run)
  curve = run.results["curves"]["rm_single"]
  for j, n in enumerate(curve["n"]):
    want = np.mean([_subset_mean(members[..., k], gold, int(n)) for k in range(K)])
    assert curve["gold"][j] == pytest.approx(want, abs=1e-5)
  assert curve["proxy_std"] == pytest.approx(np.mean([np.std(members[..., k]) for k in range(K)]), rel=1e-4)
  assert "rm_single/gold@N" in run.results["metrics"]


def test_pool_from_reuses_the_saved_samples(run, tmp_path):
  """A second stage scoring the first one's pool.npz gets the same samples (no generation: the policy is not read)
  and, for the same selector, the same curves."""
  cfg = from_config({**run.base, "pool_from": "stage:first"}, bon_stage.BestOfNConfig)
  out = bon_stage.run(cfg, str(tmp_path / "again"), {"first": {"pool": run.out["pool"]}})
  with np.load(out["pool"]) as f:
    for k, v in run.pool.items():
      np.testing.assert_array_equal(f[k], v)
  with open(out["results"]) as f:
    again = json.load(f)
  for name in ("gold", "rm_mean"):
    np.testing.assert_allclose(again["curves"][name]["gold"], run.results["curves"][name]["gold"], rtol=1e-6)


def test_pool_from_rejects_another_pool_size(run):
  cfg = from_config({**run.base, "pool_size": N - 1}, bon_stage.BestOfNConfig)
  held = types.SimpleNamespace(ids=run.pool["prompt_ids"], mask=run.pool["prompt_mask"])
  with pytest.raises(ValueError, match=r"\(num_prompts, pool_size\) = \(4, 5\)"):
    bon_stage.load_pools(run.out["pool"], cfg, held)


def test_each_prompt_batch_draws_with_its_own_key(run):
  """The same prompt in two generate batches must not get the same samples (one key per batch)."""
  ids = np.repeat(run.pool["prompt_ids"][:1], 4, 0)
  mask = np.repeat(run.pool["prompt_mask"][:1], 4, 0)
  cfg = from_config({**run.base, "num_prompts": 4}, bon_stage.BestOfNConfig)
  tok = run.world.tokenizer
  pools = bon_stage.generate_pools(from_pretrained(run.base["policy"])[0], types.SimpleNamespace(ids=ids, mask=mask),
                                   cfg, (tok.eos_id,), tok.pad_id)
  assert not np.array_equal(pools["tokens"][0], pools["tokens"][2])  # batch 0 vs batch 1 (batch_size 2)


def test_word_shares_count_the_tokens_before_the_end_token():
  """share = hits / (response tokens before the end token): the end token and the padding are not in the count."""
  world = World(WorldConfig(**WORLD))
  tok = world.tokenizer
  the, a, eos = tok.ids["the"], tok.encode("a")[0], tok.eos_id
  tokens = np.asarray([[[the, a, eos, 0], [the, the, a, a]]])
  mask = np.asarray([[[1, 1, 1, 0], [1, 1, 1, 1]]])
  pools = {"tokens": tokens, "mask": mask, "lengths": np.asarray([[2, 4]])}
  shares = bon_stage.word_shares(pools, tok, ("the",))
  np.testing.assert_allclose(shares["the"], [[1 / 2, 2 / 4]])
  with pytest.raises(ValueError, match=r"config.track_words\[0\]"):
    bon_stage.word_shares(pools, tok, ("the the",))
