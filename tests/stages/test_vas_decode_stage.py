"""The vas_decode stage on tiny saved models: its `cache_bucket` and `tokens_per_iteration` reach every decode it
runs (VAS at each beta and composition weight, and the best-of-n pools), and the stage's metrics are those of
reading the whole cache one step per loop iteration."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import from_config
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.models import CausalLM, ModelConfig, save_pretrained
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble
from jaxrlhf.sampling.best_of_n import WORLD_REWARDS
from jaxrlhf.sampling.generate import content_lengths
from jaxrlhf.sampling.generate import generate as real_generate
from jaxrlhf.sampling.vas import vas_generate as real_vas_generate
from jaxrlhf.stages import artifacts, vas_decode

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)
WORLD = {"seed": 0, "num_prompts": 64}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """A saved policy and two one-member value models (random weights: the stage's plumbing, not its numbers)."""
  root = tmp_path_factory.mktemp("vas_decode")
  config = ModelConfig(vocab_size=World(WorldConfig(**WORLD)).tokenizer.vocab_size, **TINY)
  save_pretrained(CausalLM(config, rngs=nnx.Rngs(0)), str(root / "policy"))
  values = []
  for seed in (1, 2):
    ensemble = RewardEnsemble(config, HeadConfig(), 1, rngs=nnx.Rngs(seed))
    values.append(artifacts.save_reward_model(str(root / f"value{seed}"), config, HeadConfig(), 1,
                                              nnx.state(ensemble)))
  return str(root / "policy"), values


def _run(folders, tmp_path, monkeypatch, bucket, tpi, decodes=None):
  """The stage's metrics and the (function, cache_bucket, tokens_per_iteration) of every decode it ran (and, into
  `decodes`, each decode's (function, args, kwargs, output))."""
  decodes = [] if decodes is None else decodes
  calls = []

  def recording(name, fn):
    def call(*args, **kwargs):
      calls.append((name, kwargs.get("cache_bucket", "missing"), kwargs.get("tokens_per_iteration", "missing")))
      out = fn(*args, **kwargs)
      decodes.append((name, args, kwargs, out))
      return out
    return call

  monkeypatch.setattr(vas_decode, "generate", recording("generate", real_generate))
  monkeypatch.setattr(vas_decode, "vas_generate", recording("vas_generate", real_vas_generate))
  policy, values = folders
  cfg = from_config({"policy": policy, "values": ({"value_model": values[0]}, {"value_model": values[1],
                                                                              "reward": "length"}),
                     "world": WORLD, "num_prompts": 4, "batch_size": 4, "max_new_tokens": 7, "top_k": 4,
                     "betas": (0.0, 2.0), "bon_ns": (1, 2), "compose_weights": (0.0, 1.0),
                     "cache_bucket": bucket, "tokens_per_iteration": tpi}, vas_decode.VASDecodeConfig)
  out = vas_decode.run(cfg, str(tmp_path / f"b{bucket}_k{tpi}"), {})
  return out["metrics"], calls


@pytest.mark.slow
def test_the_stage_decodes_in_its_configured_phases_and_blocks(folders, tmp_path, monkeypatch):
  whole, calls = _run(folders, tmp_path, monkeypatch, 0, 1)
  # Two betas and two composition weights (VAS), one pool batch (best-of-n).
  assert sorted(calls) == [("generate", 0, 1)] + [("vas_generate", 0, 1)] * 4, calls
  for bucket, tpi in ((2, 1), (0, 3), (2, 4)):
    metrics, calls = _run(folders, tmp_path, monkeypatch, bucket, tpi)
    assert sorted(calls) == [("generate", bucket, tpi)] + [("vas_generate", bucket, tpi)] * 4, calls
    assert metrics.keys() == whole.keys()
    for key, value in whole.items():
      # Phases change float rounding only (~1e-6); blocks of steps change nothing.
      np.testing.assert_allclose(metrics[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
  assert whole["vas/beta=2/kl"] > 0 and np.isfinite(whole["bon/n=2/gold"])


@pytest.mark.slow
def test_a_length_reward_and_the_response_length_are_reported_apart(folders, tmp_path, monkeypatch):
  """A value model trained on the world's "length" component: the composition's reward/length metric is that
  component's mean on the samples, and its length metric the responses' mean token count (they once shared a key,
  and each metric averaged both)."""
  decodes = []
  metrics, _ = _run(folders, tmp_path, monkeypatch, 0, 1, decodes)
  world = World(WorldConfig(**WORLD))
  vas_calls = [d for d in decodes if d[0] == "vas_generate"]
  assert [d[2]["weights"] for d in vas_calls] == [(1.0,), (1.0,), (0.0, 1.0), (1.0, 0.0)]
  for (_, args, kwargs, gen), prefix in zip(vas_calls, ("vas/beta=0", "vas/beta=2", "compose/w=0", "compose/w=1")):
    ids, mask = np.asarray(args[2]), np.asarray(args[3])
    tokens, tmask = np.asarray(gen.tokens), np.asarray(gen.mask)
    gold = world.gold_components_np(ids, mask, tokens, tmask)
    content = np.asarray(content_lengths(tokens, tmask, kwargs["eos_ids"]))
    assert metrics[f"{prefix}/gold"] == pytest.approx(gold.sum(1).mean(), rel=1e-4, abs=1e-5)
    assert metrics[f"{prefix}/length"] == pytest.approx(np.mean(content), rel=1e-6)
    if prefix.startswith("compose"):
      assert metrics[f"{prefix}/reward/length"] == pytest.approx(gold[:, WORLD_REWARDS.index("length") - 1].mean(),
                                                                 rel=1e-4, abs=1e-5)
  (_, args, kwargs, gen), = [d for d in decodes if d[0] == "generate"]
  assert np.asarray(gen.tokens).shape[0] == 4 * 2  # the pools: 4 prompts x n_max 2
