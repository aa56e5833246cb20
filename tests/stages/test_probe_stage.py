"""The probe stage: representations are exactly RewardModel.features at the reward read position and the RM's rewards
are its own, the metrics of a run on a saved random reward model (ranges, a planted-signal check, correlations with
best-of-N gold read from results.json), and config validation naming the key."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import _sections as S
from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble
from jaxrlhf.stages import artifacts, inputs, probe


def _world():
  return inputs.make_world({})


@pytest.fixture(scope="module")
def saved_rms(tmp_path_factory):
  """Three random K = 1 reward models (different seeds) on the world's vocabulary, saved as a reward stage does."""
  root = tmp_path_factory.mktemp("probe")
  config = ModelConfig(vocab_size=_world().tokenizer.vocab_size, **S.SMOKE_MODEL)
  dirs = []
  for seed in range(3):
    ens = RewardEnsemble(config, HeadConfig(), 1, rngs=nnx.Rngs(seed))
    dirs.append(artifacts.save_reward_model(str(root / f"rm{seed}"), config, HeadConfig(), 1, nnx.state(ens)))
  return root, dirs


def test_representations_are_the_reward_read_features(saved_rms):
  _, dirs = saved_rms
  rm = artifacts.load_reward_model(dirs[0]).member(0)
  world = _world()
  records = world.preference_records(20, "test")
  data = inputs.DataSpec(max_length=40, batch_size=8, shared_prompt="off")
  plan = inputs.scoring_batches(records, world.tokenizer, data, shared_prompt=False)
  reps = probe.representations(rm, plan)
  np.testing.assert_array_equal(reps["index"], np.sort(plan.index))
  apply = nnx.jit(lambda m, ids, mask: (m.features(ids, mask), m(ids, mask)))
  for side in ("chosen", "rejected"):
    h, r = [], []  # rm's own features / rewards, row by row, in the plan's batch order (= plan.index order)
    for batch in plan.batches:
      ids, mask = jnp.asarray(batch[f"{side}_input_ids"]), jnp.asarray(batch[f"{side}_attention_mask"])
      rows = np.asarray(batch["chosen_attention_mask"]).any(axis=1)
      h_b, r_b = apply(rm, ids, mask)
      h.append(np.asarray(h_b)[rows])
      r.append(np.asarray(r_b)[rows])
    order = np.argsort(plan.index)
    np.testing.assert_allclose(reps[side], np.concatenate(h)[order], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(reps[f"r_{side}"], np.concatenate(r)[order], rtol=1e-5, atol=1e-6)
  assert reps["chosen"].shape == (20, S.SMOKE_MODEL["embed_dim"])


def test_probe_metrics_recover_planted_components():
  # Representations that contain the components themselves (plus noise dims): the probes must be near perfect on
  # every continuous component, and an RM whose reward is r* - noise is correct more often where confidence is high.
  rng = np.random.default_rng(0)
  world = _world()

  def split(n, name):
    recs = world.preference_records(n, name)
    comp_c = np.asarray([r.chosen_attributes for r in recs])
    comp_r = np.asarray([r.rejected_attributes for r in recs])
    h_c = np.concatenate([comp_c, rng.normal(size=(n, 3))], axis=1)
    h_r = np.concatenate([comp_r, rng.normal(size=(n, 3))], axis=1)
    noise = rng.normal(size=n) * 1.5
    return dict(chosen=h_c, rejected=h_r, comp_chosen=comp_c, comp_rejected=comp_r,
                r_chosen=comp_c.sum(1) + noise, r_rejected=comp_r.sum(1))

  metrics, per_pair = probe.probe_metrics(split(600, "validation"), split(600, "test"), l2=1e-3, num_bins=4)
  for comp in ("quality", "relevance", "length"):
    assert metrics[f"level/{comp}"] > 0.95 and metrics[f"pair/{comp}"] > 0.95, (comp, metrics)
  assert 0.5 < metrics["rm_gold_acc"] < 0.95
  assert metrics["conf_auroc"] > 0.6 and metrics["margin_auroc"] > 0.6
  assert metrics["conf_acc_q0"] < metrics["conf_acc_q3"]
  assert per_pair["confidence"].shape == (600,)


def _cfg(targets, **kw):
  return from_config(dict(targets=targets, num_fit=32, num_test=32, max_length=40, batch_size=16, **kw),
                     probe.ProbeConfig)


def test_run_writes_metrics_and_correlations(saved_rms):
  root, dirs = saved_rms
  targets = []
  for i, d in enumerate(dirs):
    bon = root / f"bon{i}"
    bon.mkdir(exist_ok=True)
    (bon / "results.json").write_text(json.dumps({"status": "done", "metrics": {"rm_mean/gold@N": 0.1 * i}}))
    targets.append(dict(name=f"rm{i}", reward_model=d, best_of_n=str(bon)))
  out = probe.run(_cfg(tuple(targets)), str(root / "probe"), {})
  m = out["metrics"]
  for i in range(3):
    assert m[f"rm{i}/bon_gold"] == pytest.approx(0.1 * i)
    for comp in probe.COMPONENTS:
      assert 0.0 <= m[f"rm{i}/level/{comp}"] <= 1.0 and 0.0 <= m[f"rm{i}/pair/{comp}"] <= 1.0
  level = [m[f"rm{i}/level_mean"] for i in range(3)]
  expected = np.corrcoef(level, [0.0, 0.1, 0.2])[0, 1]
  np.testing.assert_allclose(m["corr/pearson_level_bon"], expected, atol=1e-9)  # NaN == NaN (equal_nan)
  aurocs = np.asarray([m[f"rm{i}/conf_auroc"] for i in range(3)])
  defined = aurocs[np.isfinite(aurocs)]
  assert m["conf_auroc_targets"] == defined.size >= 1 and m["conf_auroc_mean"] == pytest.approx(defined.mean())
  results = json.loads((root / "probe" / "results.json").read_text())
  assert results["status"] == "done" and results["data"]["test"]["scored"] == 32
  with np.load(root / "probe" / "probe.npz") as f:
    assert f["rm0/confidence"].shape == (32,)


def test_bad_config_names_the_key(saved_rms):
  _, dirs = saved_rms
  with pytest.raises(ConfigError, match="targets"):
    _cfg(())
  with pytest.raises(ConfigError, match=r"targets\[0\]\.name"):
    _cfg((dict(name="a/b", reward_model=dirs[0]),))
  with pytest.raises(ConfigError, match="distinct"):
    _cfg((dict(name="a", reward_model=dirs[0]), dict(name="a", reward_model=dirs[1])))
