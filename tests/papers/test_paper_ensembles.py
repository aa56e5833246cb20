"""configs/papers/ensembles.py: every variant validates, the sweep grid is 5 seeds (1 for smoke), and the smoke
sweep runs end to end into a table whose columns exist and are sane, plus the headline figure and curve table."""

import json
import os

import numpy as np
import pytest
from paper_tables import smoke_table_means

from configs.papers import ensembles
from experiments.analysis import ensembles as analysis
from experiments.analysis import verdicts
from experiments import run as run_lib
from experiments import sweep as sweep_lib
from jaxrlhf.stages import best_of_n as best_of_n_stage

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "papers", "ensembles.py")


@pytest.mark.parametrize("variant", ensembles.VARIANTS)
def test_every_variant_validates(variant):
  stages = run_lib.plan(ensembles.get_config(variant))
  names = [name for name, _, _ in stages]
  assert names[0] == "sft"
  if variant.startswith("grpo_bias"):
    by_name = {name: cfg for name, _, cfg in stages}
    grpo = [n for n in names if n.startswith("grpo_")]
    assert len(grpo) == len(ensembles.GRPO_BIAS_REWARDS) * len(ensembles.GRPO_BIAS_BETAS)
    assert by_name["rm_pretrain"].data.world["labeler_bias"] == ensembles.LABELER_BIAS
    for name in grpo + ["sft_eval"]:  # every policy logs the biased word's share
      assert [(r.kind, r.weight, r.options) for r in by_name[name].rewards][-1] == ("word_share", 0.0, {"word": "the"})
  if variant.startswith("grpo"):
    by_name = {name: cfg for name, _, cfg in stages}
    # The SFT policy's evaluation: one update at learning rate 0, evaluated like every GRPO policy.
    assert by_name["sft_eval"].optimizer.learning_rate == 0.0 and by_name["sft_eval"].loop.num_steps == 1
    assert by_name["sft_eval"].eval_prompts == by_name[names[-1]].eval_prompts
  if variant.startswith("grpo") and "bias" not in variant:
    assert len([n for n in names if n.startswith("grpo_")]) == len(ensembles.GRPO_REWARDS) * len(ensembles.BETAS)
    # Coste et al.'s PPO UWO: lambda 0.1 with the unbiased variance; the other lambda-using rewards keep LAM = 1.
    (coste,) = by_name[ensembles.rl_stage_name("meanvar_coste", ensembles.BETAS[0])].rewards
    (raw,) = by_name[ensembles.rl_stage_name("meanvar", ensembles.BETAS[0])].rewards
    assert (coste.aggregation, coste.lam) == ("mean_minus_var_unbiased", 0.1)
    assert (raw.aggregation, raw.lam) == ("mean_minus_var", 1.0)
  if not variant.startswith("grpo"):
    by_name = {name: cfg for name, _, cfg in stages}
    assert by_name["rm_pretrain"].num_members == by_name["rm_finetune"].num_members == 5
    assert by_name["rm_finetune"].shared_backbone and not by_name["rm_pretrain"].shared_backbone
    assert by_name["bon_finetune"].pool_from == "stage:bon_pretrain"
    # Coste et al.'s best-of-n UWO weight (0.5, population variance) beside LAM = 1.
    assert by_name["bon_pretrain"].extra_aggregations == ("mean_minus_var:0.5",) and by_name["bon_pretrain"].lam == 1.0
    if variant == "default":
      assert by_name["bon_pretrain"].pool_size >= 256
      assert by_name["rm_pretrain"].data.world["flip_rate"] == ensembles.FLIP_RATE


def test_sweep_grid_and_bad_variant():
  assert [r["seed"] for r in sweep_lib.collect(SPEC)] == [0, 1, 2, 3, 4]
  assert [r["seed"] for r in sweep_lib.collect(SPEC + ":smoke")] == [0]
  with pytest.raises(ValueError, match="variant"):
    ensembles.get_config("nope")


@pytest.mark.slow
def test_smoke_sweep_end_to_end(paper_smoke, tmp_path):
  workdir = str(paper_smoke("ensembles"))  # the smoke sweep, shared with the notebook test
  config = ensembles.get_config("smoke")
  means = smoke_table_means(workdir, config)
  for e in ensembles.ENSEMBLES:
    assert means[f"bon_{e}/rm_single/gold_drop"] >= 0.0  # the peak is never below gold@N
    assert 0.0 <= means[f"rm_{e}/eval/gold_agreement"] <= 1.0
  # Selected lengths lie in [1, max_new_tokens]; the oracle's peak is the best gold any selector reaches.
  length = means["bon_pretrain/rm_mean/length@N"]
  assert 1.0 <= length <= config.bon_pretrain.max_new_tokens
  peak = means["bon_pretrain/gold/gold_peak"]
  assert all(means[f"bon_pretrain/{s}/gold@N"] <= peak + 1e-9
             for s in ("rm_single", "rm_mean", "rm_min", "rm_mean_minus_std"))
  out = analysis.headline_plot(workdir, str(tmp_path / "docs" / "plots" / "headline_bon.png"))
  assert os.path.getsize(out) > 10_000
  table = analysis.summary_table(workdir)
  rows = [line for line in table.splitlines()[2:]]
  assert len(rows) == 1 + 2 * (len(ensembles.SELECTORS) - 1)  # oracle + 6 selectors per ensemble
  numbers = [float(c.split(" ± ")[0]) for r in rows for c in r.strip("|").split("|")[3:]]
  assert np.all(np.isfinite(numbers))
  # The post-hoc diagnostic rescoring the saved pools: one row per ensemble, raw and standardized columns.
  diag = analysis.standardized_table(workdir).splitlines()
  assert len(diag) == 2 + len(ensembles.ENSEMBLES)
  assert "standardized min" in diag[0] and "raw mean_minus_std" in diag[0]
  values = [float(c.split(" ± ")[0]) for r in diag[2:] for c in r.strip("|").split("|")[2:]]
  assert np.all(np.isfinite(values)) and values[1] >= 1.0  # the scale ratio max/min is >= 1
  # Its per-seed table: one row per (ensemble, run), and the paired differences to the bon stage's single RM.
  seeds = analysis.standardized_seeds_table(workdir).splitlines()
  assert sum(line.startswith(("| pretrain | seed=", "| finetune | seed=")) for line in seeds) == 2
  assert sum("standardized min - single RM" in line for line in seeds) == len(ensembles.ENSEMBLES)


def test_grpo_plot_from_fake_results(tmp_path):
  for seed in (0, 1):
    metrics = {f"{ensembles.rl_stage_name(rm, b)}/eval/{m}": float(seed + i)
               for rm in ("single", "min") for i, b in enumerate(ensembles.BETAS)
               for m in ("gold", "kl", "length")}
    (tmp_path / f"seed={seed}").mkdir()
    (tmp_path / f"seed={seed}" / "results.json").write_text(json.dumps({"status": "done", "metrics": metrics}))
  out = analysis.grpo_plot(str(tmp_path), str(tmp_path / "plots" / "grpo.png"))
  assert os.path.getsize(out) > 10_000
  assert ensembles.rl_stage_name("min", 0.05) == "grpo_min_b0p05"
  with pytest.raises(FileNotFoundError, match="sweep_dir"):
    analysis.grpo_plot(str(tmp_path / "plots"), str(tmp_path / "x.png"))


def test_verdicts_parse_and_name_metrics_their_sweeps_write():
  """Every rule of VERDICTS parses, names a sweep of this paper, and compares metrics that the sweep's stages write:
  best-of-N "<selector>/<curve metric>" of a selector the stage scores (share_* only where the stage tracks the
  word), or an rl stage's "eval/gold" / "eval/reward/<source name>"."""
  claims = verdicts.rules_of(SPEC)
  variant_of = {"ensembles": "default", "ensembles_bias": "bias", "ensembles_grpo": "grpo",
                "ensembles_grpo_bias": "grpo_bias"}
  assert {c.sweep for c in claims} == set(variant_of)
  stages = {sweep: {name: cfg for name, _, cfg in run_lib.plan(ensembles.get_config(v))}
            for sweep, v in variant_of.items()}
  for c in claims:
    for metric in (c.value, c.baseline):
      if isinstance(metric, float):
        continue
      stage, rest = metric.split("/", 1)
      cfg = stages[c.sweep][stage]  # a stage of that sweep's variant (KeyError otherwise)
      if stage.startswith("bon_"):
        selector, name = rest.split("/")
        extra = [best_of_n_stage.parse_extra_aggregation(a)[2] for a in cfg.extra_aggregations]
        assert selector in ("gold", "rm_single", *(f"rm_{a}" for a in cfg.aggregations), *extra), metric
        shares = [f"share_{w}@{n}" for w in cfg.track_words for n in ("1", "N")] if selector != "rm_single" else []
        assert name in ("gold@N", "gold_drop", "length@N", *shares), metric
      else:
        assert rest in ("eval/gold", *(f"eval/reward/{r.name}" for r in cfg.rewards)), metric
  by_claim = {c.claim: c for c in claims}
  # The pre-stated rules, as the section states them (a few spot checks of direction and baseline).
  wco = by_claim["min (WCO) beats a single RM (pretrain)"]
  assert (wco.value, wco.baseline, wco.direction) == (
      "bon_pretrain/rm_min/gold@N", "bon_pretrain/rm_single/gold@N", 1)
  assert by_claim["single RM: beta 0.01 ends below the SFT policy"].direction == -1
  hacks = [c for c in claims if c.sweep == "ensembles_grpo_bias"]
  assert len(hacks) == len(ensembles.GRPO_BIAS_REWARDS) * len(ensembles.GRPO_BIAS_BETAS)
  assert all(c.baseline == "sft_eval/eval/reward/share_the" and c.direction == 1 for c in hacks)
  assert all("post hoc" in c.note for c in claims if "standardized" in c.claim)
