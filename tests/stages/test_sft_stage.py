"""SFT: the loss equals a numpy NLL from the logits, training lowers it on the synthetic world, and one
run gives the same losses on 1 and on 8 devices."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import from_config
from jaxrlhf.models import CausalLM, ModelConfig
from jaxrlhf.stages import common, inputs
from jaxrlhf.stages import sft
from jaxrlhf.train import optim

TINY = dict(vocab_size=32, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32)


def _batch(rng, b=3, t=7, vocab=32):
  ids = rng.integers(0, vocab, (b, t)).astype(np.int32)
  attention = np.ones((b, t), np.int32)
  attention[0, 5:] = 0  # right padding
  loss = np.zeros((b, t), np.int32)
  loss[:, 3:] = 1  # response from position 3
  loss *= attention
  return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}


def _numpy_nll(logits, batch):
  """mean over target tokens of -log softmax(logits[t-1])[ids[t]] where loss_mask[t] = 1."""
  logits = np.asarray(logits, np.float64)
  logp = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  total, count = 0.0, 0
  for b in range(logits.shape[0]):
    for t in range(1, logits.shape[1]):
      if batch["loss_mask"][b, t]:
        total -= logp[b, t - 1, batch["input_ids"][b, t]]
        count += 1
  return total, count


@pytest.mark.parametrize("chunk_size", [0, 5])
def test_sft_loss_is_token_mean_nll(chunk_size):
  model = CausalLM(ModelConfig(**TINY), rngs=nnx.Rngs(0))
  batch = _batch(np.random.default_rng(0))
  total, weight, metrics = sft.sft_loss_fn(chunk_size)(model, jax.tree.map(jnp.asarray, batch), None)
  ref_total, ref_count = _numpy_nll(model(batch["input_ids"], batch["attention_mask"]), batch)
  assert float(weight) == ref_count == 3 * 4 - 2
  np.testing.assert_allclose(float(total), ref_total, rtol=1e-5)
  assert float(metrics["tokens"].value) == ref_count


def _world_cfg(**overrides):
  section = dict(seed=0, model=dict(config=dict(embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=2,
                                                 head_dim=16, mlp_dim=64)),
                 data=dict(num_train=256, num_eval=32, batch_size=16, max_length=40),
                 optimizer=dict(learning_rate=1e-2),
                 loop=dict(num_steps=4, log_every=1, checkpoint_every=4, progress=False, tensorboard=False,
                           async_checkpoints=False))
  section.update(overrides)
  return from_config(section, sft.SFTConfig, path="config")


def test_sft_training_lowers_loss_on_world():
  cfg = _world_cfg()
  world = inputs.make_world(cfg.data.world)
  records, _, _ = inputs.sft_records(cfg.data, world)
  data_iter = inputs.train_iterator(records, world.tokenizer, cfg.data, "sft", 0)
  mc = common.model_config(cfg.model, world.tokenizer.vocab_size)
  optimizer = optim.make_optimizer(cfg.optimizer)
  setup = common.policy_setup(mc, None, optimizer, 0, None)
  step = jax.jit(sft.make_sft_step(setup.graphdef, cfg.optimizer))
  state = setup.init()
  losses = []
  for _ in range(40):
    state, m = step(state, next(data_iter))
    losses.append(float(m["loss"].total / m["loss"].count))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses


def _losses(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(l)["train/loss"] for l in f if "train/loss" in l]


def test_sft_same_losses_on_1_and_8_devices(tmp_path):
  runs = {}
  for n in (1, 8):
    out = sft.run(_world_cfg(num_devices=n), str(tmp_path / f"d{n}"), {})
    runs[n] = _losses(tmp_path / f"d{n}")
    assert (tmp_path / f"d{n}" / "model" / "config.json").exists() and out["model_dir"]
  assert len(runs[1]) == 4
  np.testing.assert_allclose(runs[1], runs[8], rtol=1e-5, atol=1e-5)


def test_packed_stage_trains_on_more_tokens_per_row(tmp_path):
  """data.pack=True reaches the pipeline: a packed step sees more target tokens than a padded one."""
  loop = dict(num_steps=1, log_every=1, checkpoint_every=1, progress=False, tensorboard=False,
              async_checkpoints=False)
  tokens = {}
  for pack in (False, True):
    cfg = _world_cfg(data=dict(num_train=64, num_eval=0, batch_size=8, max_length=40, pack=pack), loop=loop)
    out = sft.run(cfg, str(tmp_path / f"pack_{pack}"), {})
    assert np.isfinite(out["metrics"]["train/loss"])
    tokens[pack] = out["metrics"]["train/tokens"]
  assert tokens[True] > tokens[False]


def test_init_from_previous_stage(tmp_path):
  cfg = _world_cfg(loop=dict(num_steps=1, log_every=1, checkpoint_every=1, progress=False, tensorboard=False,
                             async_checkpoints=False))
  first = sft.run(cfg, str(tmp_path / "a"), {})
  cfg2 = _world_cfg(model=dict(init_from="stage:a"),
                    loop=dict(num_steps=1, log_every=1, checkpoint_every=1, progress=False, tensorboard=False,
                              async_checkpoints=False), optimizer=dict(learning_rate=0.0))
  second = sft.run(cfg2, str(tmp_path / "b"), {"a": first})
  # lr 0: the second stage's saved weights are the first stage's.
  from jaxrlhf.models import from_pretrained
  m1, _ = from_pretrained(first["model_dir"])
  m2, _ = from_pretrained(second["model_dir"])
  for a, b in zip(jax.tree.leaves(nnx.state(m1)), jax.tree.leaves(nnx.state(m2))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)
  with pytest.raises(ValueError, match="no finished stage 'zz'"):
    common.resolve_path("stage:zz", {"a": first})


def test_packed_rows_give_the_same_loss_as_padded_rows():
  """Two examples packed in one row (segment mask + per-example positions) score exactly as two padded rows."""
  import numpy as np
  from flax import nnx
  from jaxrlhf.models.config import ModelConfig
  from jaxrlhf.models.decoder import CausalLM
  from jaxrlhf.stages.sft import sft_loss_fn

  model = CausalLM(ModelConfig(vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                               mlp_dim=64), rngs=nnx.Rngs(0))
  a, b = [5, 6, 7, 8, 9], [11, 12, 13, 14]
  a_loss, b_loss = [0, 0, 1, 1, 1], [0, 1, 1, 1]
  padded = dict(input_ids=np.array([a, b + [0]], np.int32), attention_mask=np.array([[1] * 5, [1] * 4 + [0]]),
                loss_mask=np.array([a_loss, b_loss + [0]]))
  packed = dict(input_ids=np.array([a + b], np.int32), attention_mask=np.ones((1, 9), np.int32),
                loss_mask=np.array([a_loss + b_loss]), segment_ids=np.array([[1] * 5 + [2] * 4]),
                positions=np.array([list(range(5)) + list(range(4))]))
  loss_fn = sft_loss_fn()
  total_padded, tokens_padded, _ = loss_fn(model, padded, None)
  total_packed, tokens_packed, _ = loss_fn(model, packed, None)
  assert float(tokens_packed) == float(tokens_padded) == 6.0
  np.testing.assert_allclose(float(total_packed), float(total_padded), rtol=1e-5)
  # Without the segment mask the second example would see the first: the loss changes.
  unmasked = {k: v for k, v in packed.items() if k != "segment_ids"}
  total_unmasked, _, _ = loss_fn(model, unmasked, None)
  assert abs(float(total_unmasked) - float(total_padded)) > 1e-4
