"""value_train / vas_decode details the other VAS tests leave open: a reward model given with a world reward is
refused (it would be silently ignored), and gold_at_kl's range flag is the closed KL interval."""

import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.stages import value_train
from jaxrlhf.stages.vas_decode import gold_at_kl


def test_value_train_refuses_a_reward_model_with_a_world_reward():
  with pytest.raises(ConfigError, match=r"config\.reward_model"):
    from_config({"policy": "stage:sft", "reward": "gold", "reward_model": "stage:rm"}, value_train.ValueTrainConfig,
                path="config")
  with pytest.raises(ConfigError, match=r"config\.reward_model"):
    from_config({"policy": "stage:sft", "reward": "reward_model"}, value_train.ValueTrainConfig, path="config")
  from_config({"policy": "stage:sft", "reward": "reward_model", "reward_model": "stage:rm"},
              value_train.ValueTrainConfig, path="config")


def test_gold_at_kl_endpoints_are_inside_the_curve():
  kl, gold = [0.0, 1.0, 3.0], [0.5, 1.0, 2.0]
  assert gold_at_kl(kl, gold, 0.0) == (0.5, True)
  assert gold_at_kl(kl, gold, 3.0) == (2.0, True)
  assert gold_at_kl(kl, gold, 2.0) == (pytest.approx(1.5), True)
  assert gold_at_kl(kl, gold, 3.5) == (2.0, False)


def test_value_train_eval_reads_the_value_of_the_whole_response(tmp_path):
  """eval/mse_final compares V(s_n), the value of the state after all n generated tokens (the end token included),
  with the reward: recomputed from each held-out sample alone, unpadded, at its last slot."""
  import jax
  import numpy as np
  from flax import nnx

  from jaxrlhf.data.padding import encode_prompts
  from jaxrlhf.models import CausalLM, ModelConfig, save_pretrained
  from jaxrlhf.stages import artifacts
  from jaxrlhf.stages.inputs import make_world
  from jaxrlhf.train import scoring

  world_cfg = {"num_prompts": 256, "max_response_len": 12}
  world = make_world(world_cfg)
  tok = world.tokenizer
  config = ModelConfig(vocab_size=tok.vocab_size, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2,
                       head_dim=8, mlp_dim=32, max_position_embeddings=64)
  policy = CausalLM(config, rngs=nnx.Rngs(0))
  save_pretrained(policy, str(tmp_path / "policy"))
  cfg = from_config({"policy": str(tmp_path / "policy"), "world": world_cfg, "num_steps": 1, "prompts_per_step": 2,
                     "num_prompts": 8, "eval_prompts": 6, "max_new_tokens": 5, "epochs": 1},
                    value_train.ValueTrainConfig)
  out = value_train.run(cfg, str(tmp_path / "vt"), {})
  value = artifacts.load_reward_model(out["value_dir"]).member(0)
  ids, mask = encode_prompts(tok, world.prompts(6, "validation"), cfg.max_prompt_length)
  score = value_train.reward_fn(cfg, world, {})
  batch = value_train._samples(policy, ids, mask, cfg, jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 2**31 - 1),
                               (tok.eos_id,), tok.pad_id, score)
  finals = []
  for i in range(len(batch["reward"])):
    p = batch["prompt_ids"][i][batch["prompt_mask"][i] > 0][None]
    r = batch["tokens"][i][batch["mask"][i] > 0][None]
    v = np.asarray(scoring.state_values(value, p, np.ones_like(p), r, np.ones_like(r)), np.float64)[0]
    assert v.shape == (r.shape[1] + 1,) and r.shape[1] == batch["lengths"][i]
    finals.append(v[-1])
  mse = float(np.mean((np.asarray(finals) - batch["reward"].astype(np.float64)) ** 2))
  assert out["metrics"]["eval/mse_final"] == pytest.approx(mse, rel=1e-4, abs=1e-6)


def test_vas_decode_matched_kl_gain_is_vas_minus_the_baseline(tmp_path):
  """matched/<baseline>/gain = VAS's gold interpolated at the baseline's KL minus the baseline's gold; at KL 0 the
  VAS curve's gold is beta 0's (the base policy: KL 0)."""
  from flax import nnx

  from jaxrlhf.data.synthetic import World, WorldConfig
  from jaxrlhf.models import CausalLM, ModelConfig, save_pretrained
  from jaxrlhf.models.heads import HeadConfig
  from jaxrlhf.models.reward_model import RewardEnsemble
  from jaxrlhf.stages import artifacts, vas_decode

  world = {"seed": 0, "num_prompts": 64}
  config = ModelConfig(vocab_size=World(WorldConfig(**world)).tokenizer.vocab_size, embed_dim=16, num_layers=1,
                       num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32, max_position_embeddings=64)
  save_pretrained(CausalLM(config, rngs=nnx.Rngs(0)), str(tmp_path / "policy"))
  value = artifacts.save_reward_model(str(tmp_path / "value"), config, HeadConfig(), 1,
                                      nnx.state(RewardEnsemble(config, HeadConfig(), 1, rngs=nnx.Rngs(1))))
  cfg = from_config({"policy": str(tmp_path / "policy"), "values": ({"value_model": value},), "world": world,
                     "num_prompts": 4, "batch_size": 4, "max_new_tokens": 5, "top_k": 4, "betas": (0.0, 4.0),
                     "bon_ns": (), "baselines": ("ep",)}, vas_decode.VASDecodeConfig)
  inputs = {"ep": {"metrics": {"kl": 0.0, "gold/policy": 0.125}}}
  m = vas_decode.run(cfg, str(tmp_path / "vas"), inputs)["metrics"]
  assert m["vas/beta=0/kl"] == pytest.approx(0.0, abs=1e-5) and m["vas/beta=4/kl"] > 1e-4
  assert m["matched/ep/vas_gold"] == pytest.approx(m["vas/beta=0/gold"], abs=1e-4)
  assert m["matched/ep/gain"] == pytest.approx(m["matched/ep/vas_gold"] - 0.125)
  assert m["matched/ep/gold"] == 0.125 and m["matched/ep/in_range"] == 1.0
  with pytest.raises(ValueError, match="baselines"):
    vas_decode.run(cfg, str(tmp_path / "vas2"), {})
