"""configs/papers/context_aware.py: the chain is the comparison Pitis et al. 2024 (arXiv:2407.14916) need (a general
reward model, one finetuned with the criterion shown, a same-data control with it hidden; each scored on the same
held-out criterion pairs with and without the criterion, against oracle and sampled labels), the sweep grid is 5
seeds (1 for smoke), and the smoke sweep runs end to end into a table whose evaluations saw the same pairs."""

import json
import os

import pytest
from paper_tables import smoke_table_means

from configs.papers import context_aware as paper
from experiments import run as run_lib
from experiments import sweep as sweep_lib
from experiments.analysis import verdicts

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "papers", "context_aware.py")


def test_default_chain_is_the_comparison():
  by_name = {name: cfg for name, _, cfg in run_lib.plan(paper.get_config())}
  rms = [f"rm_{m}" for m in paper.MODELS]
  assert list(by_name)[:3] == rms
  general, context, hidden = (by_name[n].data for n in rms)
  assert (general.criteria, general.num_criteria_train) == ("none", 0)  # never sees a criterion
  assert (context.criteria, hidden.criteria) == ("shown", "hidden")
  assert context.num_criteria_train == hidden.num_criteria_train > 0
  assert dict(context.world)["criteria"] == paper.CRITERIA
  for name in rms[1:]:  # same world, general pairs, model, optimizer and steps: only the criterion data differs
    assert by_name[name].data.world == by_name["rm_general"].data.world
    assert by_name[name].data.num_train == general.num_train
    assert by_name[name].model == by_name["rm_general"].model and by_name[name].head == by_name["rm_general"].head
    assert by_name[name].optimizer == by_name["rm_general"].optimizer
    assert by_name[name].loop == by_name["rm_general"].loop
  evals = {n: c for n, c in by_name.items() if n.startswith("eval_")}
  assert len(evals) == len(paper.MODELS) * len(paper.RENDERINGS) * len(paper.LABELS)
  for model in paper.MODELS:
    for rendering in paper.RENDERINGS:
      for labels in paper.LABELS:
        cfg = evals[paper.eval_name(model, rendering, labels)]
        assert cfg.reward_model == f"stage:rm_{model}" and cfg.split == "held_out"
        assert (cfg.data.criteria, cfg.data.criteria_labels) == (rendering, labels)
        assert cfg.data.world == general.world and cfg.data.num_eval == 1024
        assert cfg.data.shared_prompt == general.shared_prompt == "on"  # one layout for every score


def test_sweep_grid_and_bad_variant():
  assert [r["seed"] for r in sweep_lib.collect(SPEC)] == [0, 1, 2, 3, 4]
  assert [r["seed"] for r in sweep_lib.collect(SPEC + ":smoke")] == [0]
  assert [name for name, _, _ in run_lib.plan(paper.get_config("smoke"))] == [
      "rm_general", "rm_context", "eval_general_shown_oracle", "eval_general_hidden_oracle",
      "eval_context_shown_oracle", "eval_context_hidden_oracle"]
  with pytest.raises(ValueError, match="variant"):
    paper.get_config("nope")


@pytest.mark.slow
def test_smoke_sweep_end_to_end(paper_smoke):
  workdir = str(paper_smoke("context_aware"))
  config = paper.get_config("smoke")
  means = smoke_table_means(workdir, config)
  for metric in config.tables.metrics:
    assert 0.0 <= means[metric] <= 1.0, (metric, means[metric])
  run_dir = os.path.join(workdir, sorted(d for d in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, d)))[0])
  pairs = {}
  for name in ("eval_general_shown_oracle", "eval_general_hidden_oracle", "eval_context_shown_oracle",
               "eval_context_hidden_oracle"):
    with open(os.path.join(run_dir, name, "scores.jsonl")) as f:
      lines = [json.loads(line) for line in f]
    pairs[name] = [(line["source"], line["subset"]) for line in lines]
    assert not any(line.get("dropped") for line in lines)
  assert len({tuple(v) for v in pairs.values()}) == 1 and len(pairs["eval_general_shown_oracle"]) == 32


def test_verdicts_state_the_paired_rules_on_table_metrics():
  """d1, d2, the general model's reversal agreement below 0.5 and d3 of rules.md, on metrics of the sweep's table."""
  rules = verdicts.rules_of(SPEC)
  metrics = paper.get_config().tables.metrics
  pairs = [(r.value.split("/")[0], r.baseline if isinstance(r.baseline, float) else r.baseline.split("/")[0],
            r.direction) for r in rules]
  assert pairs == [("eval_context_shown_oracle", "eval_context_hidden_oracle", 1),
                   ("eval_context_shown_oracle", "eval_general_shown_oracle", 1),
                   ("eval_general_shown_oracle", 0.5, -1),
                   ("eval_context_shown_oracle", "eval_hidden_hidden_oracle", 1)]
  for rule in rules:
    assert rule.sweep == "context_aware" and rule.value in metrics, rule
    assert isinstance(rule.baseline, float) or rule.baseline in metrics, rule
