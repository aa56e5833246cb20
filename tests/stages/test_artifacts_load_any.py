"""artifacts.load_reward_model_any: jaxrlhf reward model folders (as load_reward_model) and Hugging Face
sequence-classification folders (an ensemble of one, scoring as transformers and as the directly imported model);
clear errors for anything else."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from random_models import random_model

from jaxrlhf.models import HeadConfig, ModelConfig, RewardEnsemble, reward_model_from_pretrained, save_pretrained
from jaxrlhf.stages import artifacts

VOCAB, PAD = 61, 0
CONFIG = ModelConfig(family="qwen2", vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=48, qkv_bias=True, tie_word_embeddings=True, pad_token_id=PAD)


def _batch():
  """(ids, mask) (3, 9): right-padded, left-padded and unpadded rows; real ids are never PAD."""
  rng = np.random.default_rng(0)
  mask = np.ones((3, 9), np.int64)
  mask[0, 5:] = 0
  mask[1, :4] = 0
  ids = np.where(mask > 0, rng.integers(1, VOCAB, (3, 9)), PAD)
  return ids, mask


@nnx.jit
def _rewards(rm, ids, mask):
  return rm(ids, mask)


def _hf_folder(path):
  """A random transformers Qwen2ForSequenceClassification saved with save_pretrained."""
  torch.manual_seed(0)
  config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=PAD)
  model = transformers.Qwen2ForSequenceClassification(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_((1.0 if name.endswith("norm.weight") else 0.0) + 0.2 * torch.randn_like(p))
  model.save_pretrained(path)
  return model


def test_jaxrlhf_folder_loads_as_load_reward_model(tmp_path):
  head = HeadConfig("linear")
  ensemble = RewardEnsemble(CONFIG, head, 2, rngs=nnx.Rngs(3))
  artifacts.save_reward_model(str(tmp_path), CONFIG, head, 2, nnx.state(ensemble))
  ids, mask = _batch()
  want = np.asarray(_rewards(artifacts.load_reward_model(str(tmp_path)), ids, mask))
  got = artifacts.load_reward_model_any(str(tmp_path))
  assert isinstance(got, RewardEnsemble) and got.num_members == 2
  np.testing.assert_array_equal(np.asarray(_rewards(got, ids, mask)), want)
  np.testing.assert_array_equal(want, np.asarray(_rewards(ensemble, ids, mask)))


def test_hf_folder_loads_as_an_ensemble_of_one(tmp_path):
  hf_model = _hf_folder(tmp_path)
  ensemble = artifacts.load_reward_model_any(str(tmp_path))
  assert isinstance(ensemble, RewardEnsemble) and ensemble.num_members == 1
  leaves = jax.tree.leaves(nnx.to_pure_dict(nnx.state(ensemble)))
  assert all(x.shape[0] == 1 for x in leaves)  # stacked on a leading member axis
  ids, mask = _batch()
  got = np.asarray(_rewards(ensemble, ids, mask))
  assert got.shape == (3, 1)
  direct = np.asarray(_rewards(reward_model_from_pretrained(tmp_path), ids, mask))
  np.testing.assert_allclose(got[:, 0], direct, atol=1e-6)
  with torch.no_grad():
    ref = hf_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits[:, 0].numpy()
  assert np.ptp(ref) > 0.1
  np.testing.assert_allclose(got[:, 0], ref, atol=1e-4)
  assert artifacts.load_reward_model_any(str(tmp_path), dtype=jnp.bfloat16).members.head.kernel[...].dtype == \
      jnp.bfloat16


def test_errors_name_the_folder_and_what_was_expected(tmp_path):
  expected = r"expected a jaxrlhf reward model \(spec\.json \+ params\.msgpack.*\*ForSequenceClassification"
  with pytest.raises(ValueError, match=rf"{tmp_path}/missing: does not exist; {expected}"):
    artifacts.load_reward_model_any(str(tmp_path / "missing"))
  (tmp_path / "file.txt").write_text("x")
  with pytest.raises(ValueError, match=rf"file\.txt: is not a folder; {expected}"):
    artifacts.load_reward_model_any(str(tmp_path / "file.txt"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=rf"empty: is empty; {expected}"):
    artifacts.load_reward_model_any(str(tmp_path / "empty"))
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "weights.bin").write_text("x")
  with pytest.raises(ValueError, match=rf"other: holds \['weights\.bin'\]; {expected}"):
    artifacts.load_reward_model_any(str(tmp_path / "other"))
  (tmp_path / "half").mkdir()
  (tmp_path / "half" / "spec.json").write_text("{}")
  with pytest.raises(ValueError, match=rf"half: has spec\.json but no params\.msgpack; {expected}"):
    artifacts.load_reward_model_any(str(tmp_path / "half"))
  save_pretrained(random_model(CONFIG), tmp_path / "policy")
  with pytest.raises(ValueError, match=r"policy/config\.json: architectures=\['Qwen2ForCausalLM'\] names no "
                                       r"sequence-classification model"):
    artifacts.load_reward_model_any(str(tmp_path / "policy"))


# ------------------------------------------------------------------------------------------------ audit additions
SMALL = ModelConfig(vocab_size=VOCAB, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32)


def _with_one_backbone(ens):
  """`ens` with every member's backbone set to member 0's (heads untouched): a frozen-backbone ensemble."""
  state = nnx.state(ens)
  pure = nnx.to_pure_dict(state)
  pure["members"]["backbone"] = jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), pure["members"]["backbone"])
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(ens, state)
  return ens


def test_shared_backbone_mlp_heads_run_as_one_backbone_with_the_same_rewards():
  ens = _with_one_backbone(RewardEnsemble(SMALL, HeadConfig(kind="mlp", hidden_dim=4), 3, rngs=nnx.Rngs(1)))
  one = artifacts.shared_backbone_model(ens)
  assert not isinstance(one, RewardEnsemble)
  assert one.head.config.kind == "multihead" and one.head.config.member_kind == "mlp"
  ids, mask = _batch()
  want = np.asarray(_rewards(ens, ids, mask))
  assert want.shape == (3, 3) and np.ptp(want, axis=1).max() > 1e-4  # the heads differ
  np.testing.assert_allclose(np.asarray(_rewards(one, ids, mask)), want, rtol=1e-5, atol=1e-6)


def test_shared_backbone_attribute_heads_stay_an_ensemble():
  # Vector heads (attributes) have no multihead form: the ensemble is returned as is.
  head = HeadConfig(kind="attributes", num_outputs=2, attribute_weights=(0.25, 0.75))
  ens = _with_one_backbone(RewardEnsemble(SMALL, head, 2, rngs=nnx.Rngs(1)))
  assert artifacts.shared_backbone_model(ens) is ens


def test_saved_attribute_head_reads_back_its_config(tmp_path):
  head = HeadConfig(kind="attributes", num_outputs=2, attribute_weights=(0.25, 0.75))
  ens = RewardEnsemble(SMALL, head, 2, rngs=nnx.Rngs(1))
  rm_dir = artifacts.save_reward_model(str(tmp_path / "rm"), SMALL, head, 2, nnx.state(ens))
  config, got, k = artifacts.reward_model_spec(rm_dir)
  assert (config, got, k) == (SMALL, head, 2)
  ids, mask = _batch()
  np.testing.assert_allclose(np.asarray(_rewards(artifacts.load_reward_model(rm_dir), ids, mask)),
                             np.asarray(_rewards(ens, ids, mask)), rtol=1e-6, atol=1e-6)


def test_records_digest_reads_every_text_and_only_the_texts():
  import dataclasses
  from jaxrlhf.data.records import PreferenceRecord
  records = [PreferenceRecord(prompt="p", chosen="a", rejected="b"), PreferenceRecord(prompt="q", chosen="c",
                                                                                      rejected="d")]
  digest = artifacts.records_digest(records)
  for field in ("prompt", "chosen", "rejected"):
    changed = [records[0], dataclasses.replace(records[1], **{field: "x"})]
    assert artifacts.records_digest(changed) != digest, field
  assert artifacts.records_digest([dataclasses.replace(records[0], margin=2.0), records[1]]) == digest
