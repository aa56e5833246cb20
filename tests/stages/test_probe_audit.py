"""Audit of the probe stage's rules that the main tests leave open: level labels split at the FIT set's median,
pairs the RM ties on are left out of its gold accuracy and AUROCs, the margin baseline is |r_c - r_r|, the means
run over all five components, the member of an ensemble that is probed, and when correlations are reported."""

import json

import numpy as np
import pytest
from flax import nnx

from configs import _sections as S
from jaxrlhf.config import from_config
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble
from jaxrlhf.stages import artifacts, inputs, probe


def _split(rng, n, shift=0.0):
  """Representations = the five components themselves; the RM's rewards are set by the test."""
  comp_c, comp_r = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))
  comp_c[:, 0] += shift
  comp_r[:, 0] += shift
  return dict(chosen=comp_c.copy(), rejected=comp_r.copy(), comp_chosen=comp_c, comp_rejected=comp_r)


def _auroc_by_hand(score, positive):
  pos, neg = score[positive], score[~positive]
  greater = (pos[:, None] > neg[None, :]).mean()
  return greater + 0.5 * (pos[:, None] == neg[None, :]).mean()


def test_probe_metrics_rules_by_hand():
  rng = np.random.default_rng(0)
  fit, test = _split(rng, 300), _split(rng, 300, shift=4.0)
  for split in (fit, test):
    split["r_chosen"] = split["comp_chosen"].sum(1)
    split["r_rejected"] = split["comp_rejected"].sum(1)
  # The RM: gold plus noise, with a quarter of the test pairs tied (r_c == r_r: no preference to grade).
  test["r_chosen"] = test["r_chosen"] + rng.normal(size=300) * 2.0
  test["r_rejected"][:75] = test["r_chosen"][:75]
  m, per_pair = probe.probe_metrics(fit, test, l2=1e-3, num_bins=2)
  # "Above the median" is the FIT set's median: every test value of component 0 (shifted by +4) is above it, and
  # a good probe says so: near-perfect accuracy (splitting at the test set's own median would make it ~1/2).
  assert m["level/quality"] > 0.95
  assert m["level_mean"] == pytest.approx(np.mean([m[f"level/{c}"] for c in probe.COMPONENTS]))
  assert m["pair_mean"] == pytest.approx(np.mean([m[f"pair/{c}"] for c in probe.COMPONENTS]))
  gold_c, gold_r = test["comp_chosen"].sum(1), test["comp_rejected"].sum(1)
  keep = np.arange(300) >= 75  # gold never ties here; the RM's ties are left out
  np.testing.assert_array_equal(per_pair["keep"], keep)
  correct = (test["r_chosen"] > test["r_rejected"]) == (gold_c > gold_r)
  assert m["rm_gold_acc"] == pytest.approx(correct[keep].mean())
  assert 0 < correct[keep].mean() < 1
  margin = np.abs(test["r_chosen"] - test["r_rejected"])  # the RM's confidence in either direction
  assert m["margin_auroc"] == pytest.approx(_auroc_by_hand(margin[keep], correct[keep]))
  assert m["conf_auroc"] == pytest.approx(_auroc_by_hand(per_pair["confidence"][keep], correct[keep]))


@pytest.fixture(scope="module")
def two_member_rm(tmp_path_factory):
  root = tmp_path_factory.mktemp("probe_audit")
  config = ModelConfig(vocab_size=inputs.make_world({}).tokenizer.vocab_size, **S.SMOKE_MODEL)
  ens = RewardEnsemble(config, HeadConfig(), 2, rngs=nnx.Rngs(0))
  return root, artifacts.save_reward_model(str(root / "rm"), config, HeadConfig(), 2, nnx.state(ens))


def _cfg(targets):
  return from_config(dict(targets=targets, num_fit=16, num_test=16, max_length=40, batch_size=16),
                     probe.ProbeConfig)


def test_target_member_is_the_probed_one(two_member_rm, monkeypatch):
  root, rm_dir = two_member_rm
  ensemble = artifacts.load_reward_model(rm_dir)
  probed = []
  representations = probe.representations

  def spy(rm, plan):
    probed.append(rm)
    return representations(rm, plan)

  monkeypatch.setattr(probe, "representations", spy)
  bon = root / "bon"
  bon.mkdir(exist_ok=True)
  (bon / "results.json").write_text(json.dumps({"metrics": {"rm_mean/gold@N": 0.5}}))
  # Two targets with best-of-N: too few points for a correlation (reported from three on).
  out = probe.run(_cfg((dict(name="m0", reward_model=rm_dir, member=0, best_of_n=str(bon)),
                        dict(name="m1", reward_model=rm_dir, member=1, best_of_n=str(bon)))), str(root / "run"), {})
  assert not any(k.startswith("corr/") for k in out["metrics"])
  for i, k in ((0, 0), (2, 1)):  # each target is probed on its fit and test splits
    want = nnx.to_pure_dict(nnx.state(ensemble.member(k)))
    got = nnx.to_pure_dict(nnx.state(probed[i]))
    np.testing.assert_array_equal(np.asarray(got["head"]["kernel"]), np.asarray(want["head"]["kernel"]))
  assert not np.array_equal(np.asarray(nnx.to_pure_dict(nnx.state(probed[0]))["head"]["kernel"]),
                            np.asarray(nnx.to_pure_dict(nnx.state(probed[2]))["head"]["kernel"]))
  with pytest.raises(ValueError, match=r"targets\[m2\]\.member: 2 but the reward model has 2"):
    probe.run(_cfg((dict(name="m2", reward_model=rm_dir, member=2),)), str(root / "bad"), {})


def test_pairwise_probes_leave_out_pairs_tied_on_the_component(monkeypatch):
  rng = np.random.default_rng(1)
  fit, test = _split(rng, 60), _split(rng, 60)
  fit["comp_rejected"][:10, 2] = fit["comp_chosen"][:10, 2]  # 10 fit pairs tie on coherence
  for split in (fit, test):
    split["r_chosen"], split["r_rejected"] = split["comp_chosen"].sum(1), split["comp_rejected"].sum(1)
  sizes = []
  fit_pairwise = probe.probing.fit_pairwise_probe

  def spy(diff, labels, l2):
    sizes.append(len(diff))
    return fit_pairwise(diff, labels, l2)

  monkeypatch.setattr(probe.probing, "fit_pairwise_probe", spy)
  probe.probe_metrics(fit, test, l2=1e-3, num_bins=2)
  assert sizes == [60, 60, 50, 60, 60]  # one probe per component, in COMPONENTS order


def test_auroc_means_run_over_the_targets_that_have_one(two_member_rm, monkeypatch):
  root, rm_dir = two_member_rm
  canned = iter([float("nan"), 0.7])

  def metrics(fit, test, l2, num_bins):
    value = next(canned)
    return ({"level_mean": 0.5, "pair_mean": 0.5, "rm_gold_acc": 0.5, "conf_auroc": value, "margin_auroc": value},
            {"confidence": np.zeros(2)})

  monkeypatch.setattr(probe, "probe_metrics", metrics)
  out = probe.run(_cfg((dict(name="a", reward_model=rm_dir), dict(name="b", reward_model=rm_dir, member=1))),
                  str(root / "auroc"), {})
  m = out["metrics"]
  assert m["conf_auroc_mean"] == pytest.approx(0.7) and m["conf_auroc_targets"] == 1
  assert m["margin_auroc_mean"] == pytest.approx(0.7) and m["margin_auroc_targets"] == 1
