"""configs/papers/vas.py: the chain is the comparison Han et al. 2024 (VAS, arXiv:2405.06639) needs (value models of
the frozen base on gold and on two components; VAS, best-of-n and the DPO / GRPO evaluations on the same prompts and
response budget; composition of the two component values), the sweep grid is 5 seeds (1 for smoke), and the smoke
sweep runs end to end into a sane table."""

import json
import os

import pytest
from paper_tables import smoke_table_means

from configs.papers import vas as paper
from experiments import run as run_lib
from experiments.analysis import verdicts
from experiments import sweep as sweep_lib

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "papers", "vas.py")


@pytest.mark.parametrize("variant", ["default", "smoke"])
def test_chain_is_the_comparison(variant):
  by_name = {name: cfg for name, _, cfg in run_lib.plan(paper.get_config(variant))}
  methods = ("dpo", "grpo") if variant == "default" else ("sft",)
  trained = list(methods) if variant == "default" else []
  assert list(by_name) == ["sft", "value_gold", "value_quality", "value_length", *trained,
                           *[f"eval_{m}" for m in methods], "vas", "compose"]
  values = [by_name[f"value_{r}"] for r in ("gold", *paper.COMPOSED)]
  assert [v.reward for v in values] == ["gold", *paper.COMPOSED]
  for v in values:  # value models of the FROZEN base, identical but for the reward
    assert v.policy == "stage:sft" and v.init_from_policy and v.gamma == 1.0 and v.lam == 0.95 and v.epochs == 2
    assert v.num_steps == values[0].num_steps and v.prompts_per_step == values[0].prompts_per_step
  if variant == "default":
    assert by_name["dpo"].loss.algorithm == "dpo" and by_name["dpo"].model.init_from == "stage:sft"
    assert by_name["grpo"].loss.algorithm == "grpo" and by_name["grpo"].model.init_from == "stage:sft"
    assert [r.kind for r in by_name["grpo"].rewards] == ["gold"]
  vas, compose = by_name["vas"], by_name["compose"]
  assert [(v.value_model, v.reward) for v in vas.values] == [("stage:value_gold", "gold")]
  assert vas.baselines == tuple(f"eval_{m}" for m in methods) and vas.betas[0] == 0.0 and min(vas.bon_ns) == 1
  assert compose.betas == () and compose.bon_ns == ()  # the composition grid only
  assert [v.reward for v in compose.values] == list(paper.COMPOSED)
  assert compose.compose_weights[0] == 0.0 and compose.compose_weights[-1] == 1.0
  # Like with like: the same prompts (the world's first test prompts), response budget and base for every method.
  for name in vas.baselines:
    ev = by_name[name]
    assert ev.base == "stage:sft" and ev.num_prompts == vas.num_prompts
    assert ev.max_new_tokens == vas.max_new_tokens and ev.temperature == 1.0
  assert compose.num_prompts == vas.num_prompts and compose.top_k == vas.top_k and vas.policy == "stage:sft"
  assert not vas.restrict  # the official processor: beta = 0 is the base policy (KL 0), as best-of-1


def test_sweep_grid_and_bad_variant():
  assert [r["seed"] for r in sweep_lib.collect(SPEC)] == list(paper.SEEDS) and len(paper.SEEDS) >= 5
  assert [r["seed"] for r in sweep_lib.collect(SPEC + ":smoke")] == [0]
  with pytest.raises(ValueError, match="variant"):
    paper.get_config("nope")


def test_verdicts_are_the_stated_paired_rules_on_tabled_metrics():
  # Rules 2 (VAS - DPO / GRPO at matched KL > 0) and 3 (quality up, length reward down from w = 0 to w = 1); rule 1
  # (equal cost) is interpolated by experiments/analysis/vas.py.
  rules = verdicts.rules_of(SPEC)
  assert [(c.value, c.baseline, c.direction) for c in rules] == [
      ("vas/matched/eval_dpo/vas_gold", "vas/matched/eval_dpo/gold", 1),
      ("vas/matched/eval_grpo/vas_gold", "vas/matched/eval_grpo/gold", 1),
      ("compose/compose/w=1/reward/quality", "compose/compose/w=0/reward/quality", 1),
      ("compose/compose/w=1/reward/length", "compose/compose/w=0/reward/length", -1)]
  metrics = paper.get_config().tables.metrics
  assert all(c.sweep == "vas" and c.value in metrics and c.baseline in metrics for c in rules)


@pytest.mark.slow
def test_smoke_sweep_end_to_end(paper_smoke):
  workdir = str(paper_smoke("vas"))
  config = paper.get_config("smoke")
  means = smoke_table_means(workdir, config)
  assert means["vas/vas/beta=0/kl"] == pytest.approx(0.0, abs=1e-4)  # beta = 0: the base itself
  assert means["vas/vas/beta=4/kl"] > 0.0
  assert means["vas/bon/n=1/kl"] == 0.0 and means["vas/bon/n=4/kl"] == pytest.approx(1.386294 - 0.75, abs=1e-5)
  # Cost: VAS pays (k + 1) value forwards per token on top of the base's; best-of-n pays n samples.
  assert means["vas/vas/beta=0/forwards"] > means["vas/bon/n=1/forwards"]
  assert means["vas/bon/n=4/forwards"] == pytest.approx(4 * means["vas/bon/n=1/forwards"])
  # Lengths count the tokens before the end token (the world's L* does), the cost counts the end token's forward too:
  # generated - length is the share of responses that ended, in [0, 1] (0 here: the 2-step smoke base never ends in
  # 12 tokens; tests/stages/test_self_rewarding_stage.py pins the count on responses that do end).
  with open(os.path.join(workdir, "seed=0", "results.json")) as f:
    metrics = json.load(f)["metrics"]
  for setting in ("vas/beta=0", "vas/beta=4", "bon/n=1"):
    ended = metrics[f"vas/{setting}/generated"] - metrics[f"vas/{setting}/length"]
    assert -1e-9 <= ended <= 1.0 + 1e-9 and metrics[f"vas/{setting}/length"] <= 12, (setting, ended)
