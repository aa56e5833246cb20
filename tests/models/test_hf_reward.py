"""Reward models in the Hugging Face sequence-classification format against transformers (and TRL), both ways:
transformers' *ForSequenceClassification saved with save_pretrained -> reward_model_from_pretrained, and a jaxrlhf
RewardModel -> save_reward_model_pretrained -> AutoModelForSequenceClassification; right- and left-padded batches
of different lengths, fp32 within 1e-4; the reading rules where they differ; multi-label heads; errors.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_fixtures import VOCAB, make_hf_model
from random_models import random_model

from jaxrlhf.models import (HeadConfig, RewardEnsemble, RewardModel, from_pretrained, reward_model_from_pretrained,
                            save_pretrained, save_reward_model_pretrained, transformers_rewards)
from jaxrlhf.models.hf import read_hf_folder, write_safetensors
from jaxrlhf.models.hf_reward import ATTRIBUTE_WEIGHTS_KEY, hf_last_token_index
from jaxrlhf.models.reward_model import LoraRewardEnsemble

TOL = 1e-4
PAD = 0
LENGTHS = (16, 11, 7, 3)  # one unpadded row, three padded ones
# hf_fixtures family -> its transformers sequence-classification class.
FAMILIES = {
    "llama3_untied_scaled": "LlamaForSequenceClassification",
    "mistral_sliding": "MistralForSequenceClassification",
    "phi3_longrope_partial": "Phi3ForSequenceClassification",
    "qwen2_bias": "Qwen2ForSequenceClassification",
    "qwen3_untied": "Qwen3ForSequenceClassification",
    "gemma2": "Gemma2ForSequenceClassification",
    "gemma3_untied": "Gemma3TextForSequenceClassification",
    "gpt2": "GPT2ForSequenceClassification",
}


def _hf_rm(name, seed=0, **changes):
  """A random transformers reward model (num_labels 1, as TRL makes them; transformers' default is 2)."""
  return make_hf_model(name, seed, model_cls=FAMILIES[name], **{"pad_token_id": PAD, "num_labels": 1, **changes})


def _batch(side, lengths=LENGTHS, seed=0):
  """(ids, mask) int64 (B, max(lengths)): the same token rows padded on `side` with PAD; real ids never PAD."""
  T = max(lengths)
  rng = np.random.default_rng(seed)
  ids = np.full((len(lengths), T), PAD, np.int64)
  mask = np.zeros((len(lengths), T), np.int64)
  for r, n in enumerate(lengths):
    span = slice(0, n) if side == "right" else slice(T - n, T)
    ids[r, span] = rng.integers(3, VOCAB, n)
    mask[r, span] = 1
  return ids, mask


def _hf_rewards(model, ids, mask=None):
  """transformers' sequence-classification logits (B, num_labels), called as TRL and pipelines call it."""
  with torch.no_grad():
    kwargs = {} if mask is None else {"attention_mask": torch.from_numpy(mask)}
    return model(input_ids=torch.from_numpy(ids), **kwargs).logits.float().numpy()


@nnx.jit
def _rewards(rm, ids, mask):
  return rm(ids, mask)


@nnx.jit
def _attributes(rm, ids, mask):
  return rm.attributes(ids, mask)


@nnx.jit
def _hf_rule(rm, ids, mask):
  return transformers_rewards(rm, ids, mask)


def _ours(fn, rm, ids, mask):
  return np.asarray(fn(rm, jnp.asarray(ids), jnp.asarray(mask)))


def _native_rm(config, head=HeadConfig(), seed=1):
  """A jaxrlhf RewardModel with random backbone weights (biases, norm scales) and a random head kernel."""
  rm = RewardModel.from_causal_lm(random_model(config, seed=seed), head, seed=seed)
  kernel = rm.head.kernel[...]
  rm.head.kernel[...] = 0.3 * jax.random.normal(jax.random.key(seed), kernel.shape, kernel.dtype)
  return rm


def _qwen2_config(tmp_path):
  """The tiny Qwen2 ModelConfig the import produces (pad id PAD)."""
  _hf_rm("qwen2_bias").save_pretrained(tmp_path / "qwen2")
  return reward_model_from_pretrained(tmp_path / "qwen2").config


@pytest.fixture(scope="module", params=list(FAMILIES))
def imported(request, tmp_path_factory):
  """(family, transformers model, our RewardModel read from the folder transformers saved)."""
  hf_model = _hf_rm(request.param)
  folder = tmp_path_factory.mktemp(request.param)
  hf_model.save_pretrained(folder)
  return request.param, hf_model, reward_model_from_pretrained(folder)


# --------------------------------------------------------------------------------------------------- parity
@pytest.mark.parity
def test_import_matches_transformers_right_and_left_padding(imported):
  name, hf_model, rm = imported
  assert rm.config.pad_token_id == PAD  # transformers' reading rule is recorded
  assert rm.head.config == HeadConfig("linear")
  diffs = {}
  for side in ("right", "left"):
    ids, mask = _batch(side)
    ref = _hf_rewards(hf_model, ids, mask)[:, 0]
    assert np.abs(ref).max() > 0.3 and np.ptp(ref) > 0.1  # rewards are not trivially small or constant
    # transformers' own rule, reproduced exactly (its pad rule and its 0..T-1 positions), on every family.
    np.testing.assert_allclose(_ours(_hf_rule, rm, ids, mask), ref, atol=TOL, rtol=0)
    diffs[side] = np.abs(_ours(_rewards, rm, ids, mask) - ref).max()
  print(f"import {name}: max|reward diff| right {diffs['right']:.3g}, left {diffs['left']:.3g}")
  assert diffs["right"] <= TOL
  if name == "gpt2":
    # Learned positions: transformers positions left-padded rows 0..T-1 (pads first), jaxrlhf by cumsum(mask) - 1
    # (module docstring of models.hf_reward); the rules agree on right padding only.
    assert diffs["left"] > 1e-2
  else:
    assert diffs["left"] <= TOL


@pytest.mark.parity
def test_export_loads_in_transformers_right_and_left_padding(imported, tmp_path):
  name, _, imported_rm = imported
  rm = _native_rm(imported_rm.config)
  save_reward_model_pretrained(rm, tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["architectures"] == [FAMILIES[name]] and config["pad_token_id"] == PAD
  hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, dtype=torch.float32).eval()
  assert type(hf_model).__name__ == FAMILIES[name] and hf_model.config.num_labels == 1
  diffs = {}
  for side in ("right", "left"):
    ids, mask = _batch(side)
    ref = _hf_rewards(hf_model, ids, mask)[:, 0]
    assert np.abs(ref).max() > 0.3 and np.ptp(ref) > 0.1
    np.testing.assert_allclose(_ours(_hf_rule, rm, ids, mask), ref, atol=TOL, rtol=0)
    diffs[side] = np.abs(_ours(_rewards, rm, ids, mask) - ref).max()
  print(f"export {name}: max|reward diff| right {diffs['right']:.3g}, left {diffs['left']:.3g}")
  assert diffs["right"] <= TOL
  assert diffs["left"] > 1e-2 if name == "gpt2" else diffs["left"] <= TOL


@pytest.mark.parity
def test_multi_label_heads_both_ways(tmp_path):
  """num_labels = 3 imports as a linear multihead (B, 3); multihead and attributes heads export to 3 logits."""
  hf_model = _hf_rm("qwen2_bias", num_labels=3)
  hf_model.save_pretrained(tmp_path / "hf")
  rm = reward_model_from_pretrained(tmp_path / "hf")
  assert rm.head.config == HeadConfig("multihead", num_outputs=3, member_kind="linear")
  ids, mask = _batch("right")
  ref = _hf_rewards(hf_model, ids, mask)
  assert ref.shape == (4, 3)
  np.testing.assert_allclose(_ours(_rewards, rm, ids, mask), ref, atol=TOL, rtol=0)

  save_reward_model_pretrained(_native_rm(rm.config, HeadConfig("multihead", num_outputs=3)), tmp_path / "multi")
  exported = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "multi").eval()
  multi = reward_model_from_pretrained(tmp_path / "multi")
  np.testing.assert_allclose(_ours(_rewards, multi, ids, mask), _hf_rewards(exported, ids, mask), atol=TOL, rtol=0)

  weights = (0.5, -0.25, 2.0)
  rm_attr = _native_rm(rm.config, HeadConfig("attributes", num_outputs=3, attribute_weights=weights))
  save_reward_model_pretrained(rm_attr, tmp_path / "attr")
  exported = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "attr").eval()
  assert exported.config.num_labels == 3
  ref = _hf_rewards(exported, ids, mask)
  np.testing.assert_allclose(_ours(_attributes, rm_attr, ids, mask), ref, atol=TOL, rtol=0)
  back = reward_model_from_pretrained(tmp_path / "attr")  # the weights travel in config.json
  assert back.head.config.kind == "attributes" and back.head.config.attribute_weights == weights
  np.testing.assert_allclose(_ours(_rewards, back, ids, mask), ref @ np.asarray(weights), atol=TOL, rtol=0)


# ----------------------------------------------------------------------------------- where the rules differ
def test_hf_last_token_index_rule():
  ids = jnp.array([[5, 6, 0, 0], [0, 0, 5, 6], [5, 0, 6, 0], [0, 0, 0, 0], [5, 6, 7, 8]])
  np.testing.assert_array_equal(hf_last_token_index(ids, 0), [1, 3, 2, 0, 3])
  np.testing.assert_array_equal(hf_last_token_index(ids, None), [3] * 5)


@pytest.mark.parity
def test_pad_id_equal_to_last_real_token_reads_differently(tmp_path):
  """With pad == eos and rows ending in eos, transformers reads the token before the eos; RewardModel reads the
  last attended token (the eos); transformers_rewards reproduces transformers."""
  eos = 2
  hf_model = _hf_rm("llama3_untied_scaled", pad_token_id=eos)
  hf_model.save_pretrained(tmp_path)
  rm = reward_model_from_pretrained(tmp_path)
  ids, mask = _batch("right")
  ids = ids.copy()
  for r, n in enumerate(LENGTHS):
    ids[r, n - 1] = eos  # the last real token is the eos ...
    ids[r, n:] = eos  # ... and the padding is eos too
  ref = _hf_rewards(hf_model, ids, mask)[:, 0]
  np.testing.assert_allclose(_ours(_hf_rule, rm, ids, mask), ref, atol=TOL, rtol=0)
  assert np.abs(_ours(_rewards, rm, ids, mask) - ref).min() > 1e-3
  # What transformers reads is RewardModel's reward of the rows without their final eos.
  shorter = mask.copy()
  for r, n in enumerate(LENGTHS):
    shorter[r, n - 1] = 0
  np.testing.assert_allclose(_ours(_rewards, rm, ids, shorter), ref, atol=TOL, rtol=0)


@pytest.mark.parity
def test_pad_token_id_none_reads_last_position(tmp_path):
  hf_model = _hf_rm("qwen2_bias", pad_token_id=None)
  hf_model.save_pretrained(tmp_path)
  rm = reward_model_from_pretrained(tmp_path)
  assert rm.config.pad_token_id is None
  ids, mask = _batch("right", lengths=(9,))
  ref = _hf_rewards(hf_model, ids)[:, 0]
  np.testing.assert_allclose(np.asarray(transformers_rewards(rm, jnp.asarray(ids))), ref, atol=TOL, rtol=0)
  np.testing.assert_allclose(_ours(_rewards, rm, ids, mask), ref, atol=TOL, rtol=0)
  two, _ = _batch("right", lengths=(9, 9))
  with pytest.raises(ValueError, match="Cannot handle batch sizes > 1"):
    _hf_rewards(hf_model, two)
  with pytest.raises(ValueError, match="more than one row without a pad_token_id"):
    transformers_rewards(rm, jnp.asarray(two))
  with pytest.raises(ValueError, match=r"pad_token_id is None .*pass pad_token_id="):
    save_reward_model_pretrained(rm, tmp_path / "out")
  save_reward_model_pretrained(rm, tmp_path / "out", pad_token_id=PAD)
  assert json.loads((tmp_path / "out" / "config.json").read_text())["pad_token_id"] == PAD


# ------------------------------------------------------------------------------------------------- TRL
def _word_tokenizer():
  """A word-level tokenizer whose token "t<i>" is id i ("<pad>" = PAD): TRL's trainer wants a processing class."""
  from tokenizers import Tokenizer, models, pre_tokenizers

  vocab = {f"t{i}": i for i in range(VOCAB)}
  del vocab[f"t{PAD}"], vocab["t1"]
  vocab["<pad>"], vocab["<eos>"] = PAD, 1
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


@pytest.mark.parity
def test_trl_reward_trainer_evaluates_the_export(tmp_path):
  """TRL's RewardTrainer loads the exported folder by path; its eval loss, accuracy and margin are the
  Bradley-Terry statistics of the jaxrlhf rewards (its collator right-pads a batch of different lengths)."""
  from datasets import Dataset
  from trl import RewardConfig, RewardTrainer

  rm = _native_rm(_qwen2_config(tmp_path), seed=3)
  save_reward_model_pretrained(rm, tmp_path / "rm")
  rng = np.random.default_rng(1)
  chosen = [rng.integers(3, VOCAB, n).tolist() for n in (5, 9, 12, 3)]
  rejected = [rng.integers(3, VOCAB, n).tolist() for n in (7, 4, 12, 10)]
  data = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
  args = RewardConfig(output_dir=str(tmp_path / "trl"), per_device_eval_batch_size=4, report_to="none",
                      use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, bf16=False, fp16=False)
  trainer = RewardTrainer(model=str(tmp_path / "rm"), args=args, train_dataset=data, eval_dataset=data,
                          processing_class=_word_tokenizer())
  metrics = trainer.evaluate()

  def score(rows):
    ids, mask = np.full((4, 12), PAD), np.zeros((4, 12), np.int64)
    for r, row in enumerate(rows):
      ids[r, :len(row)], mask[r, :len(row)] = row, 1
    return _ours(_rewards, rm, ids, mask).astype(np.float64)

  margin = score(chosen) - score(rejected)
  assert np.ptp(margin) > 0.1
  np.testing.assert_allclose(metrics["eval_loss"], np.mean(np.logaddexp(0.0, -margin)), atol=TOL)
  np.testing.assert_allclose(metrics["eval_margin"], margin.mean(), atol=TOL)
  assert metrics["eval_accuracy"] == pytest.approx(np.mean(margin > 0))


# ------------------------------------------------------------------------------------- dtype, mesh, ensemble
def test_bfloat16_and_mesh_import(tmp_path):
  rm = _native_rm(_qwen2_config(tmp_path))
  save_reward_model_pretrained(rm, tmp_path / "rm")
  bf16 = reward_model_from_pretrained(tmp_path / "rm", dtype=jnp.bfloat16)
  assert bf16.head.kernel[...].dtype == jnp.bfloat16 and bf16.config.dtype == "bfloat16"
  save_reward_model_pretrained(bf16, tmp_path / "bf16")
  _, tensors = read_hf_folder(tmp_path / "bf16")
  assert str(tensors["score.weight"].dtype) == "bfloat16"
  assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"

  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))  # Explicit axes (the default) work too
  sharded = reward_model_from_pretrained(tmp_path / "rm", mesh=mesh)
  leaves = jax.tree.leaves(nnx.to_pure_dict(nnx.state(sharded)))
  assert all(len(x.sharding.device_set) == 8 for x in leaves)
  assert any(not x.sharding.is_fully_replicated for x in leaves)
  ids, mask = _batch("left")
  np.testing.assert_allclose(_ours(_rewards, sharded, ids, mask), _ours(_rewards, rm, ids, mask), atol=1e-5)


def test_ensemble_stack_member_and_export(tmp_path):
  config = _qwen2_config(tmp_path)
  models = [_native_rm(config, seed=s) for s in (1, 2)]
  ensemble = RewardEnsemble.stack(models)
  assert ensemble.num_members == 2
  ids, mask = _batch("right")
  got = _ours(_rewards, ensemble, ids, mask)
  for k, model in enumerate(models):
    np.testing.assert_allclose(got[:, k], _ours(_rewards, model, ids, mask), atol=1e-5)
    np.testing.assert_allclose(_ours(_rewards, ensemble.member(k), ids, mask), got[:, k], atol=1e-5)
  with pytest.raises(ValueError, match=r"ensemble of 2 members; pass member=k"):
    save_reward_model_pretrained(ensemble, tmp_path / "x")
  save_reward_model_pretrained(ensemble, tmp_path / "m1", member=1)
  back = reward_model_from_pretrained(tmp_path / "m1")
  np.testing.assert_allclose(_ours(_rewards, back, ids, mask), got[:, 1], atol=1e-5)
  with pytest.raises(ValueError, match="member index 2 is out of range"):
    ensemble.member(2)
  with pytest.raises(ValueError, match="member=0 applies to a RewardEnsemble"):
    save_reward_model_pretrained(models[0], tmp_path / "y", member=0)
  other = _native_rm(config.replace(num_layers=1))
  with pytest.raises(ValueError, match=r"models\[1\] has a different model or head config"):
    RewardEnsemble.stack([models[0], other])


LORA = dict(rank=2, alpha=4.0, targets=("q", "v", "up"))


def _trained_lora(module, seed):
  """Sets every LoRA B of `module` (a RewardModel, or the stacked members of a LoraRewardEnsemble) to a random
  draw, as training would (B = 0 at init makes the adapters a no-op)."""
  for k, name in enumerate(sorted(n for n in vars(module.backbone.lora) if n.endswith("_b"))):
    b = getattr(module.backbone.lora, name)
    b[...] = 0.5 * jax.random.normal(jax.random.key(seed + k), b[...].shape, b[...].dtype)


@pytest.mark.parity
@pytest.mark.parametrize("frozen", [False, True], ids=["params", "frozen_base"])
def test_lora_reward_model_exports_merged(tmp_path, frozen):
  """A LoRA RewardModel with trained adapters (nonzero B), its base weights Params or FrozenParams (as the reward
  stage holds them), exports what it scores: transformers' logits equal ours, not the base model's."""
  from jaxrlhf.stages.common import frozen_base

  config = _qwen2_config(tmp_path)
  rm = RewardModel(config, HeadConfig("linear"), rngs=nnx.Rngs(3), lora=LORA)
  _trained_lora(rm, seed=5)
  if frozen:
    rm = frozen_base(rm, nnx.Any(nnx.PathContains("lora"), nnx.PathContains("head")))
  save_reward_model_pretrained(rm, tmp_path / "out")
  exported = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
  base = RewardModel(config, HeadConfig("linear"), rngs=nnx.Rngs(3), lora=LORA)  # the same base, B = 0
  for side in ("right", "left"):
    ids, mask = _batch(side)
    ref = _hf_rewards(exported, ids, mask)[:, 0]
    ours = _ours(_rewards, rm, ids, mask)
    np.testing.assert_allclose(ref, ours, atol=TOL, rtol=0)
    assert np.abs(ours - _ours(_rewards, base, ids, mask)).max() > 1e-2  # the adapters change the rewards


@pytest.mark.parity
def test_lora_reward_ensemble_exports_one_merged_member(tmp_path):
  """A LoraRewardEnsemble's member k exports as its own merged RewardModel (shared base + member k's adapters and
  head); K > 1 needs member=k."""
  config = _qwen2_config(tmp_path)
  ensemble = LoraRewardEnsemble(config, HeadConfig("linear"), LORA, jax.random.split(jax.random.key(0), 2))
  _trained_lora(ensemble.members, seed=7)
  with pytest.raises(ValueError, match=r"ensemble of 2 members; pass member=k"):
    save_reward_model_pretrained(ensemble, tmp_path / "x")
  save_reward_model_pretrained(ensemble, tmp_path / "m1", member=1)
  exported = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "m1").eval()
  ids, mask = _batch("right")
  got = _ours(_rewards, ensemble, ids, mask)
  np.testing.assert_allclose(_hf_rewards(exported, ids, mask)[:, 0], got[:, 1], atol=TOL, rtol=0)
  assert np.abs(got[:, 1] - got[:, 0]).max() > 1e-2  # member 1 is not member 0


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("head, pattern", [
    (HeadConfig("mlp"), r"head kind 'mlp' cannot be exported: transformers' sequence-classification score is one "
                        r"bias-free linear layer"),
    (HeadConfig("multihead", num_outputs=2, member_kind="mlp"), r"head kind 'multihead' of mlp members cannot be "
                                                                r"exported"),
])
def test_export_refuses_mlp_heads(tmp_path, head, pattern):
  config = _qwen2_config(tmp_path)
  with pytest.raises(ValueError, match=pattern):
    save_reward_model_pretrained(RewardModel(config, head, rngs=nnx.Rngs(0)), tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_export_pad_token_id_argument_overrides_the_models(tmp_path):
  """pad_token_id= is the tokenizer's pad id transformers will search for; it wins over rm.config.pad_token_id."""
  config = _qwen2_config(tmp_path)
  assert config.pad_token_id == PAD
  save_reward_model_pretrained(_native_rm(config), tmp_path / "out", pad_token_id=5)
  assert json.loads((tmp_path / "out" / "config.json").read_text())["pad_token_id"] == 5
  assert reward_model_from_pretrained(tmp_path / "out").config.pad_token_id == 5
  save_reward_model_pretrained(_native_rm(config), tmp_path / "default")
  assert json.loads((tmp_path / "default" / "config.json").read_text())["pad_token_id"] == PAD


def test_export_refuses_a_multihead_with_any_nonzero_bias(tmp_path):
  """One nonzero entry among K biases is enough to refuse: transformers' score layer has no bias for any label."""
  from jaxrlhf.models import ModelConfig

  config = ModelConfig(family="qwen2", vocab_size=VOCAB, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=1,
                       head_dim=8, mlp_dim=24, qkv_bias=True, pad_token_id=PAD)
  rm = _native_rm(config, HeadConfig("multihead", num_outputs=2))
  rm.head.bias[...] = jnp.array([0.5, 0.0], rm.head.bias[...].dtype)
  with pytest.raises(ValueError, match=r"head bias is nonzero \(max \|bias\| = 0\.5\)"):
    save_reward_model_pretrained(rm, tmp_path / "out")
  assert not (tmp_path / "out").exists()


@pytest.mark.parity
def test_export_bias_needs_drop_bias(tmp_path):
  config = _qwen2_config(tmp_path)
  rm = _native_rm(config)
  rm.head.bias[...] = jnp.array([0.75], rm.head.bias[...].dtype)
  with pytest.raises(ValueError, match=r"head bias is nonzero \(max \|bias\| = 0\.75\).*drop_bias=True"):
    save_reward_model_pretrained(rm, tmp_path / "out")
  save_reward_model_pretrained(rm, tmp_path / "out", drop_bias=True)
  exported = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
  ids, mask = _batch("right")
  np.testing.assert_allclose(_hf_rewards(exported, ids, mask)[:, 0], _ours(_rewards, rm, ids, mask) - 0.75,
                             atol=TOL, rtol=0)


def _edit_folder(src, dst, config_edit=None, tensors_edit=None):
  """A copy of HF folder `src` at `dst` with config.json / the tensors changed."""
  hf_config, tensors = read_hf_folder(src)
  hf_config, tensors = dict(hf_config), {k: np.asarray(v) for k, v in tensors.items()}
  if config_edit:
    config_edit(hf_config)
  if tensors_edit:
    tensors_edit(tensors)
  dst.mkdir()
  (dst / "config.json").write_text(json.dumps(hf_config))
  write_safetensors(dst / "model.safetensors", tensors)
  return dst


def test_import_errors_name_the_file_and_the_expectation(tmp_path):
  config = _qwen2_config(tmp_path)
  src = tmp_path / "src"
  save_reward_model_pretrained(_native_rm(config), src)
  cases = [
      (dict(config_edit=lambda c: c.update(architectures=["Qwen2ForCausalLM"])),
       r"config\.json: architectures=\['Qwen2ForCausalLM'\] names no sequence-classification model; expected one "
       r"of .*a \*ForCausalLM folder is a policy"),
      (dict(config_edit=lambda c: c.update(architectures=["LlamaForSequenceClassification"])),
       r"config\.json: architecture 'LlamaForSequenceClassification' with model_type='qwen2' is not supported"),
      (dict(config_edit=lambda c: c.update(model_type="gemma3", architectures=["Gemma3ForSequenceClassification"])),
       r"'Gemma3ForSequenceClassification' with model_type='gemma3' is not supported"),
      (dict(tensors_edit=lambda t: t.pop("score.weight")),
       r"no 'score\.weight' tensor \(the reward head, shape \(num_labels, 32\)\)"),
      (dict(tensors_edit=lambda t: t.update({"score.weight": np.zeros((1, 31), np.float32)})),
       r"tensor 'score\.weight' has shape \(1, 31\), expected \(num_labels, 32\)"),
      (dict(tensors_edit=lambda t: t.update({"score.bias": np.zeros((1,), np.float32)})),
       r"unexpected tensors .*score\.bias"),
      (dict(config_edit=lambda c: c.update(id2label={"0": "a", "1": "b"})),
       r"config\.json: id2label has 2 labels but score\.weight has 1 rows"),
      (dict(config_edit=lambda c: c.update({ATTRIBUTE_WEIGHTS_KEY: [1.0, 2.0]})),
       r"jaxrlhf_attribute_weights=\[1\.0, 2\.0\]; expected a list of 1 numbers"),
  ]
  for k, (edit, pattern) in enumerate(cases):
    folder = _edit_folder(src, tmp_path / f"case{k}", **edit)
    with pytest.raises(ValueError, match=pattern):
      reward_model_from_pretrained(folder)
  lm_folder = tmp_path / "lm"
  save_pretrained(random_model(config), lm_folder)
  with pytest.raises(ValueError, match=r"lm/config\.json: architectures=\['Qwen2ForCausalLM'\] names no"):
    reward_model_from_pretrained(lm_folder)
  assert from_pretrained(lm_folder)[1].family == "qwen2"  # a policy folder is still a policy
