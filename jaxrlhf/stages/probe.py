"""The "probe" stage: MRMBench-style probing of reward models' representations in the synthetic world (Wang et al.
2025, "Probing Preference Representations: A Multi-Dimensional Evaluation and Analysis Method for Reward Models",
arXiv:2511.12464; the probes and the confidence are `jaxrlhf.evaluation.probing`).

For each target reward model (a saved RM folder or "stage:<reward stage>"; member `member` of an ensemble):

  1. representations: the final-norm hidden state at the last token of prompt + response (where the reward head
     reads: `RewardModel.features`), for both responses of `num_fit` validation-split pairs (probe fit set) and
     `num_test` test-split pairs (probe test set), in one forward per pair through `train.scoring.pair_rewards` (a
     copy of the RM whose "attributes" head is the D x D identity, as the reward_heads stage's feature pass); the
     RM's rewards are its head applied to those features (exactly what the RM gives);
  2. per gold component k (the world's quality, relevance, coherence, repetition, length; their sum is r*):
       <name>/level/<k>   held-out accuracy of a logistic probe of "component above the fit set's median" from one
                          response's representation (MRMBench's two-level probing task);
       <name>/pair/<k>    held-out accuracy of a bias-free logistic probe of "the chosen response has the higher
                          component" from h(chosen) - h(rejected) (pairs tied on k are left out);
     and their means over the 5 components, <name>/level_mean and <name>/pair_mean;
  3. inference-time probing on the test pairs: the RM's preference (r_chosen > r_rejected) is correct when it agrees
     with gold (r* ties left out): <name>/rm_gold_acc. Confidence = the mean over components of the pairwise
     probes' probability that the RM-preferred response is higher; <name>/conf_auroc = AUROC of the confidence as a
     detector of a correct RM preference (> 1/2: low confidence flags errors), <name>/margin_auroc the same for
     the RM's own |r_chosen - r_rejected| (the baseline confidence), <name>/conf_acc_q<j> the RM's accuracy in
     confidence quantile j (q0 lowest, `num_bins` bins);
  4. downstream alignment: <name>/bon_gold = the `selector`'s gold@N in the target's best_of_n stage results
     (`best_of_n`, optional).

Across targets (with >= 3 of them with best_of_n): corr/{spearman,pearson}_{level,pair,rmacc}_bon, the rank /
linear correlation of level_mean, pair_mean and rm_gold_acc with bon_gold, and conf_auroc_mean / margin_auroc_mean
over the targets whose AUROC is defined (conf_auroc_targets / margin_auroc_targets of them). Per-pair confidences and correctness go to probe.npz.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.evaluation import probing
from jaxrlhf.evaluation import stats
from jaxrlhf.models.reward_model import RewardEnsemble, RewardModel
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.train import scoring

COMPONENTS = ("quality", "relevance", "coherence", "repetition", "length")  # World.gold_components' order.


@dataclasses.dataclass(frozen=True)
class ProbeTarget:
  """One probed reward model: name (a metric prefix), reward_model ("stage:<name>" or a saved RM folder), member
  (of an ensemble), best_of_n ("stage:<best_of_n stage>" or its results.json; "" : no downstream number)."""
  name: str = field("")
  reward_model: str = stage_ref("rm_dir")
  member: int = field(0, min=0)
  best_of_n: str = stage_ref("results")

  def validate(self, path: str) -> None:
    if not self.name or "/" in self.name:
      raise ConfigError(f"{path}.name: required, without '/' (a metric prefix), got {self.name!r}")
    if not self.reward_model:
      raise ConfigError(f"{path}.reward_model: required ('stage:<name>' or a saved reward model folder)")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """The "probe" stage: `targets` probed on `num_fit` validation and `num_test` test pairs of the world `world`
  (WorldConfig kwargs), tokenized with `max_length`, `batch_size` pairs per forward; probes L2-regularized with
  `l2` (on standardized features); `selector`: the best_of_n selector whose gold@N is the downstream number."""
  seed: int = field(0)
  world: dict = field(default_factory=dict)
  targets: tuple[ProbeTarget, ...] = field(())
  num_fit: int = field(1024, min=8)
  num_test: int = field(1024, min=8)
  max_length: int = field(64, min=2)
  batch_size: int = field(64, min=1)
  l2: float = field(1.0, min=1e-6)
  num_bins: int = field(4, min=1)
  selector: str = field("rm_mean")

  def validate(self, path: str) -> None:
    if not self.targets:
      raise ConfigError(f"{path}.targets: expected at least one reward model to probe")
    names = [t.name for t in self.targets]
    if len(set(names)) != len(names):
      raise ConfigError(f"{path}.targets: names must be distinct, got {names}")
    inputs_lib.check_world(self.world, path)


def identity_feature_model(rm: RewardModel) -> RewardModel:
  """A RewardModel with `rm`'s backbone whose "attributes" head is the D x D identity (`common.feature_model`)."""
  return common.feature_model(rm.config, nnx.to_pure_dict(nnx.state(rm.backbone)))


def representations(rm: RewardModel, plan: inputs_lib.ScoringBatches) -> dict[str, np.ndarray]:
  """{"chosen", "rejected": float64 (N, D) representations, "r_chosen", "r_rejected": (N,) the RM's rewards,
  "index": (N,) record indices ascending} of the pairs of `plan`."""
  features = identity_feature_model(rm)
  f_graphdef, f_state = nnx.split(features)
  h_graphdef, h_state = nnx.split(rm.head)

  @jax.jit
  def run(f_state, h_state, batch):
    f_c, f_r = scoring.pair_rewards(nnx.merge(f_graphdef, f_state), batch, attributes=True)
    head = nnx.merge(h_graphdef, h_state)
    return f_c, f_r, head(f_c), head(f_r)

  out = {k: [] for k in ("chosen", "rejected", "r_chosen", "r_rejected")}
  for batch in plan.batches:
    rows = scoring.nonempty_rows(batch)
    for key, value in zip(out, jax.device_get(run(f_state, h_state, batch))):
      out[key].append(np.asarray(value, np.float64)[rows])
  order = np.argsort(plan.index)
  result = {k: np.concatenate(v)[order] for k, v in out.items()}
  result["index"] = plan.index[order]
  return result


def probe_metrics(fit: dict[str, np.ndarray], test: dict[str, np.ndarray], l2: float, num_bins: int
                  ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """(metrics, per-pair arrays) of one reward model from its fit / test representations (`representations` plus
  "comp_chosen", "comp_rejected": (N, 5) gold components)."""
  metrics: dict[str, float] = {}
  pair_logits = []
  for k, comp in enumerate(COMPONENTS):
    fit_h = np.concatenate([fit["chosen"], fit["rejected"]])
    fit_v = np.concatenate([fit["comp_chosen"][:, k], fit["comp_rejected"][:, k]])
    test_h = np.concatenate([test["chosen"], test["rejected"]])
    test_v = np.concatenate([test["comp_chosen"][:, k], test["comp_rejected"][:, k]])
    level = probing.fit_level_probe(fit_h, probing.median_levels(fit_v, fit_v), l2)
    metrics[f"level/{comp}"] = probing.accuracy(level(test_h), probing.median_levels(fit_v, test_v))
    untied = fit["comp_chosen"][:, k] != fit["comp_rejected"][:, k]
    pair = probing.fit_pairwise_probe((fit["chosen"] - fit["rejected"])[untied],
                                      (fit["comp_chosen"][:, k] > fit["comp_rejected"][:, k])[untied], l2)
    logits = pair(test["chosen"] - test["rejected"])
    test_untied = test["comp_chosen"][:, k] != test["comp_rejected"][:, k]
    metrics[f"pair/{comp}"] = probing.accuracy(logits[test_untied],
                                               (test["comp_chosen"][:, k] > test["comp_rejected"][:, k])[test_untied])
    pair_logits.append(logits)
  metrics["level_mean"] = float(np.mean([metrics[f"level/{c}"] for c in COMPONENTS]))
  metrics["pair_mean"] = float(np.mean([metrics[f"pair/{c}"] for c in COMPONENTS]))
  gold_c, gold_r = test["comp_chosen"].sum(axis=1), test["comp_rejected"].sum(axis=1)
  keep = (gold_c != gold_r) & (test["r_chosen"] != test["r_rejected"])
  prefers_chosen = test["r_chosen"] > test["r_rejected"]
  correct = prefers_chosen == (gold_c > gold_r)
  confidence = probing.probe_confidence(np.stack(pair_logits, axis=1), prefers_chosen)
  margin = np.abs(test["r_chosen"] - test["r_rejected"])
  metrics["rm_gold_acc"] = float(np.mean(correct[keep]))
  metrics["conf_auroc"] = stats.auroc(confidence[keep], correct[keep])
  metrics["margin_auroc"] = stats.auroc(margin[keep], correct[keep])
  for j, acc in enumerate(probing.quantile_accuracy(confidence[keep], correct[keep], num_bins)):
    metrics[f"conf_acc_q{j}"] = float(acc)
  return metrics, {"confidence": confidence, "margin": margin, "correct": correct, "keep": keep}


def _bon_gold(path: str, selector: str) -> float:
  results = path if path.endswith(".json") else os.path.join(path, "results.json")
  with open(results) as f:
    metrics = json.load(f)["metrics"]
  key = f"{selector}/gold@N"
  if key not in metrics:
    raise ValueError(f"best_of_n: {results} has no {key!r} (selectors: "
                     f"{sorted(k[:-len('/gold@N')] for k in metrics if k.endswith('/gold@N'))})")
  return float(metrics[key])


def run(cfg: ProbeConfig, workdir: str, inputs: dict) -> dict:
  """Probes every target (see the module docstring); writes results.json and probe.npz; returns {"metrics"}."""
  world = inputs_lib.make_world(cfg.world)
  tok = world.tokenizer
  data = inputs_lib.DataSpec(world=dict(cfg.world), max_length=cfg.max_length, batch_size=cfg.batch_size,
                             shared_prompt="off")
  splits = {}
  for split, world_split, n in (("fit", "validation", cfg.num_fit), ("test", "test", cfg.num_test)):
    records = world.preference_records(n, world_split)
    plan = inputs_lib.scoring_batches(records, tok, data, shared_prompt=False)
    comps = {side: np.asarray([getattr(records[i], f"{side}_attributes") for i in range(len(records))], np.float64)
             for side in ("chosen", "rejected")}
    splits[split] = (plan, comps)
  metrics: dict[str, float] = {}
  arrays: dict[str, np.ndarray] = {}
  rows = []
  for target in cfg.targets:
    ensemble = artifacts.load_reward_model_any(artifacts.check_reward_tokenizer(
        common.resolve_path(target.reward_model, inputs, "rm_dir"), tok, f"targets[{target.name}].reward_model"))
    if target.member >= ensemble.num_members:
      raise ValueError(f"targets[{target.name}].member: {target.member} but the reward model has "
                       f"{ensemble.num_members} member(s)")
    rm = ensemble.member(target.member) if isinstance(ensemble, RewardEnsemble) else ensemble
    reps = {}
    for split, (plan, comps) in splits.items():
      r = representations(rm, plan)
      r["comp_chosen"], r["comp_rejected"] = comps["chosen"][r["index"]], comps["rejected"][r["index"]]
      reps[split] = r
    m, per_pair = probe_metrics(reps["fit"], reps["test"], cfg.l2, cfg.num_bins)
    if target.best_of_n:
      m["bon_gold"] = _bon_gold(common.resolve_path(target.best_of_n, inputs, "results"), cfg.selector)
    metrics.update({f"{target.name}/{k}": v for k, v in m.items()})
    arrays.update({f"{target.name}/{k}": v for k, v in per_pair.items()})
    rows.append(m)
    print(f"[probe] {target.name}: level_mean={m['level_mean']:.3f} pair_mean={m['pair_mean']:.3f} "
          f"rm_gold_acc={m['rm_gold_acc']:.3f} conf_auroc={m['conf_auroc']:.3f} "
          f"margin_auroc={m['margin_auroc']:.3f}" + (f" bon_gold={m['bon_gold']:.3f}" if "bon_gold" in m else ""),
          flush=True)
  for name in ("conf_auroc", "margin_auroc"):
    # A target whose kept pairs are all right or all wrong has no AUROC: the mean is over the others, and how many
    # it covers is reported beside it (`<name>_targets`), so that a skipped reward model is never silent.
    values = np.asarray([m[name] for m in rows], np.float64)
    defined = values[np.isfinite(values)]
    metrics[f"{name}_mean"] = float(defined.mean()) if defined.size else float("nan")
    metrics[f"{name}_targets"] = float(defined.size)
    if defined.size < values.size:
      print(f"[probe] {name}_mean: over {defined.size} of {values.size} targets ({values.size - defined.size} "
            f"without a defined AUROC: their kept pairs are all right or all wrong)", flush=True)
  with_bon = [m for m in rows if "bon_gold" in m]
  if len(with_bon) >= 3:  # Two points always correlate perfectly.
    bon = [m["bon_gold"] for m in with_bon]
    for key, label in (("level_mean", "level"), ("pair_mean", "pair"), ("rm_gold_acc", "rmacc")):
      metrics[f"corr/spearman_{label}_bon"] = stats.spearman([m[key] for m in with_bon], bon, min_size=3)
      metrics[f"corr/pearson_{label}_bon"] = stats.pearson([m[key] for m in with_bon], bon, min_size=3)
  os.makedirs(workdir, exist_ok=True)
  np.savez_compressed(os.path.join(workdir, "probe.npz"), **arrays)
  common.write_results(workdir, metrics, data={s: p.report for s, (p, _) in splits.items()})
  return {"metrics": metrics}
