"""configs/papers/ld_wpo.py: DPO, LD-DPO and WPO from one SFT with configs/dpo.py's settings, differing only in
the loss switch, each evaluated against the SFT; the seed sweep and the stated rules."""

import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from experiments import sweep as sweep_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402

SPEC = str(REPO_ROOT / "configs" / "papers" / "ld_wpo.py")


def test_chain_structure_and_sweep():
  plan = {name: cfg for name, _, cfg in run_lib.plan(config_lib.load_config(SPEC))}
  assert list(plan) == ["sft", "dpo", "dpo_ld", "dpo_wpo", "eval_dpo", "eval_dpo_ld", "eval_dpo_wpo"]
  reference = {name: cfg for name, _, cfg in run_lib.plan(config_lib.load_config(
      str(REPO_ROOT / "configs" / "dpo.py")))}
  base = plan["dpo"]
  # The DPO arm is configs/dpo.py's preference stage (same data, optimizer, loop, beta).
  assert (base.data, base.optimizer, base.loop, base.loss) == (
      reference["preference"].data, reference["preference"].optimizer, reference["preference"].loop,
      reference["preference"].loss)
  assert plan["sft"].loop == reference["sft"].loop and plan["sft"].data == reference["sft"].data
  assert (plan["dpo_ld"].loss.ld_alpha, plan["dpo_ld"].loss.use_weighting) == (0.5, False)
  assert (plan["dpo_wpo"].loss.ld_alpha, plan["dpo_wpo"].loss.use_weighting) == (1.0, True)
  for name in ("dpo_ld", "dpo_wpo"):  # only the switch differs
    assert (plan[name].data, plan[name].optimizer, plan[name].loop, plan[name].model) == (
        base.data, base.optimizer, base.loop, base.model)
    assert (plan[f"eval_{name}"].policy, plan[f"eval_{name}"].base) == (f"stage:{name}", "stage:sft")
  assert sweep_lib.collect(SPEC) == [{"seed": s} for s in range(5)]
  assert sweep_lib.collect(SPEC + ":smoke") == [{"seed": 0}]
  assert sweep_lib.collect(SPEC + ":alphas") == [{"seed": s} for s in range(5)]
  alphas = {name: cfg for name, _, cfg in run_lib.plan(config_lib.load_config(SPEC + ":alphas"))}
  assert [alphas[n].loss.ld_alpha for n in ("dpo", "dpo_ld0", "dpo_ld25", "dpo_ld75")] == [1.0, 0.0, 0.25, 0.75]
  assert all(alphas[n].optimizer == base.optimizer and alphas[n].data == base.data for n in ("dpo_ld0", "dpo_ld75"))
  # The end-token test: the LD arm of the main sweep and the same arm with end tokens at full weight.
  assert sweep_lib.collect(SPEC + ":end") == [{"seed": s} for s in range(5)]
  end = {name: cfg for name, _, cfg in run_lib.plan(config_lib.load_config(SPEC + ":end"))}
  assert list(end) == ["sft", "dpo", "dpo_ld", "dpo_ld_end", "eval_dpo", "eval_dpo_ld", "eval_dpo_ld_end"]
  assert end["dpo_ld"] == plan["dpo_ld"] and end["dpo"] == base
  assert (end["dpo_ld_end"].loss.ld_alpha, end["dpo_ld_end"].loss.ld_keep_end) == (0.5, True)
  assert end["dpo_ld_end"].loss == end["dpo_ld"].loss.__class__(**{**vars(end["dpo_ld"].loss), "ld_keep_end": True})


def test_verdicts_state_the_section_rules():
  from experiments.analysis import verdicts  # pylint: disable=g-import-not-at-top
  rules = verdicts.rules_of(SPEC)
  assert [(r.value, r.baseline, r.direction) for r in rules] == [
      ("eval_dpo_ld/length/policy", "eval_dpo/length/policy", -1),
      ("eval_dpo_ld/gold/gain", "eval_dpo/gold/gain", 1),
      ("eval_dpo_wpo/gold/gain", "eval_dpo/gold/gain", 1),
      ("eval_dpo_ld_end/length/policy", "eval_dpo_ld/length/policy", -1)]
  assert [r.sweep for r in rules] == ["ld_wpo"] * 3 + ["ld_wpo_end"]
