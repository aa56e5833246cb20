"""DataSpec.curate: preference-strength curation of the training pairs in inputs.prepared_pairs, checked
against strengths recomputed pair by pair from the in-memory ensemble, and its config validation."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError
from jaxrlhf.data.records import PreferenceRecord
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble
from jaxrlhf.stages import artifacts, inputs

WORLD = dict(seed=1, num_prompts=256, flip_rate=0.25)


@pytest.fixture(scope="module")
def saved_ensemble(tmp_path_factory):
  world = World(WorldConfig(**WORLD))
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, embed_dim=16, num_layers=1, num_heads=2,
                       num_kv_heads=2, head_dim=8, mlp_dim=32, max_position_embeddings=64)
  head = HeadConfig(kind="linear")
  ens = RewardEnsemble(config, head, 2, rngs=nnx.Rngs(7))
  rm_dir = artifacts.save_reward_model(str(tmp_path_factory.mktemp("rm") / "rm"), config, head, 2, nnx.state(ens))
  return world, ens, rm_dir


def _strengths_one_by_one(ens, records, tok, data):
  """Mean member margin per record, each response scored alone (batch of one, no padding)."""
  out = []
  for r in records:
    batch = inputs.eval_batches([r], tok, dataclasses.replace(data, batch_size=1), "preference")[0]
    diff = (np.asarray(ens(batch["chosen_input_ids"], batch["chosen_attention_mask"]))
            - np.asarray(ens(batch["rejected_input_ids"], batch["rejected_attention_mask"])))
    out.append(float(diff[0].mean()))
  return np.asarray(out)


@pytest.mark.parametrize("mode", ["flip", "drop"])
def test_prepared_pairs_curates_the_lowest_strength_pairs(saved_ensemble, mode):
  world, ens, rm_dir = saved_ensemble
  data = inputs.DataSpec(world=WORLD, num_train=20, num_eval=4, batch_size=8, max_length=48, curate=mode,
                           curate_fraction=0.25, reward_model="stage:ens",
                           margin_from="reward_model" if mode == "flip" else "none")
  context = inputs.StageContext(world, None, None, None, world.tokenizer)
  train, held_out, report = inputs.prepared_pairs(data, context, {"ens": {"rm_dir": rm_dir}})
  plain = world.preference_records(20, "train")
  strengths = _strengths_one_by_one(ens, plain, world.tokenizer, data)
  lowest = set(np.argsort(strengths, kind="stable")[:5].tolist())  # floor(0.25 * 20) = 5
  assert report["curation"]["total_in"] == 20 and report["curation"]["mode"] == mode
  assert report["curation"]["threshold"] == pytest.approx(np.sort(strengths)[4], abs=1e-5)
  assert len(held_out) == 4 and [r.chosen for r in held_out] == [
      r.chosen for r in world.preference_records(4, "validation")]  # held-out pairs are never curated
  if mode == "flip":
    assert (report["curation"]["flipped"], report["curation"]["total_out"]) == (5, 20)
    for i, (r, p) in enumerate(zip(train, plain)):
      swapped = i in lowest
      assert (r.chosen, r.rejected) == ((p.rejected, p.chosen) if swapped else (p.chosen, p.rejected))
      # The margin is the ensemble strength, negated with the labels.
      assert r.margin == pytest.approx(-strengths[i] if swapped else strengths[i], abs=1e-5)
  else:
    assert (report["curation"]["dropped"], report["curation"]["total_out"]) == (5, 15)
    assert [r.source for r in train] == [p.source for i, p in enumerate(plain) if i not in lowest]


def test_curate_pairs_none_and_counts():
  records = [PreferenceRecord(prompt=f"p{i}", chosen="a", rejected="b") for i in range(10)]
  same, summary = inputs.curate_pairs(records, np.arange(10.0), inputs.DataSpec())
  assert same == records and summary == {}
  out, summary = inputs.curate_pairs(records, np.arange(10.0)[::-1],
                                       inputs.DataSpec(curate="drop", curate_fraction=0.3, reward_model="x"))
  assert [r.prompt for r in out] == [f"p{i}" for i in range(7)]  # the three lowest are the last three
  assert summary["dropped"] == 3 and summary["threshold"] == 2.0


def test_curate_needs_a_reward_model():
  with pytest.raises(ConfigError, match=r"config\.data\.reward_model: required when config\.data\.curate='flip'"):
    inputs.DataSpec(curate="flip").validate("config.data")
  inputs.DataSpec(curate="flip", reward_model="stage:ensemble").validate("config.data")


def test_quantize_attributes_hand_golden():
  # One attribute with values 1..8 over 4 pairs (chosen odd, rejected even), 4 levels: numpy's linear
  # quantiles at 1/4, 2/4, 3/4 are 2.75, 4.5, 6.25 -> levels 1,2 -> 0; 3,4 -> 1; 5,6 -> 2; 7,8 -> 3.
  records = [PreferenceRecord(prompt="p", chosen="a", rejected="b", chosen_attributes=(2.0 * i + 1, -1.0),
                              rejected_attributes=(2.0 * i + 2, -1.0)) for i in range(4)]
  records.append(PreferenceRecord(prompt="p", chosen="a", rejected="b"))  # no attributes: passes through
  out, report = inputs.quantize_attributes(records, 4)
  assert [r.chosen_attributes[0] for r in out[:4]] == [0.0, 1.0, 2.0, 3.0]
  assert [r.rejected_attributes[0] for r in out[:4]] == [0.0, 1.0, 2.0, 3.0]
  assert all(r.chosen_attributes[1] == 3.0 for r in out[:4])  # a constant attribute: every edge <= it
  assert out[4] == records[4]
  np.testing.assert_allclose(report["edges"][0], [2.75, 4.5, 6.25])
  with pytest.raises(ConfigError, match="attribute_levels"):
    inputs.DataSpec(attribute_levels=1).validate("config.data")
