"""Issue 6 acceptance in the synthetic world, from configs through experiments.run:

  1. best-of-N selected by the gold reward raises gold monotonically in n;
  2. best-of-N selected by a single proxy reward model shows the overoptimization gap: from n = 1 to the largest
     n the proxy rises more than gold, both in units of their pool standard deviations (the raw scales differ);
  3. GRPO raises gold reward over the base (SFT) policy at a small KL.

configs/best_of_n.py:acceptance (sft -> reward -> best_of_n) and configs/grpo.py:acceptance (sft -> reward ->
grpo -> evaluate) share identical sft and reward sections, so both run in ONE workdir and the second chain
reuses the finished stages (experiments.run skips a stage with DONE.json). About 2 CPU minutes on 2 cores.
"""

import json
import pathlib
import sys
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402


def _load(name):
  return config_lib.load_config(f"{REPO_ROOT / 'configs' / name}.py:acceptance")


@pytest.mark.slow
def test_best_of_n_and_grpo_acceptance(tmp_path):
  bon, grpo = _load("best_of_n"), _load("grpo")
  for section in ("sft", "reward"):  # The reuse below is only honest if the stages are the same.
    assert bon[section].to_dict() == grpo[section].to_dict(), section

  start = time.time()
  outputs = run_lib.run(bon, str(tmp_path))
  bon_s = time.time() - start
  m = outputs["best_of_n"]["metrics"]
  print(f"[acceptance] best_of_n chain {bon_s:.0f}s; RM eval accuracy "
        f"{outputs['reward']['metrics'].get('eval/accuracy')}; " + ", ".join(
            f"{k}={v:.3f}" for k, v in sorted(m.items())))
  # 1. Gold-selected best-of-n: monotone in n, and above the pool mean at the largest n.
  assert m["gold/gold_monotone"] == 1.0
  assert m["gold/gold@N"] > m["gold/gold@1"]
  # 2. Proxy-selected: gold improves less than the proxy (the overoptimization gap) and less than the oracle.
  assert m["rm_mean/gap_std"] > 0.0
  assert m["rm_mean/proxy_gain_std"] > m["rm_mean/gold_gain_std"]
  assert m["rm_mean/gold@N"] < m["gold/gold@N"]
  with open(tmp_path / "best_of_n" / "results.json") as f:
    curves = json.load(f)["curves"]
  assert curves["rm_mean"]["n"][-1] >= 64
  assert (tmp_path / "best_of_n" / "best_of_n_rm_mean.png").stat().st_size > 0

  start = time.time()
  outputs = run_lib.run(grpo, str(tmp_path))
  grpo_s = time.time() - start
  ev, rl = outputs["evaluate"]["metrics"], outputs["grpo"]["metrics"]
  print(f"[acceptance] grpo chain (reusing sft, reward) {grpo_s:.0f}s; evaluate: {ev}; grpo eval/kl "
        f"{rl.get('eval/kl')}, train/kl {rl.get('train/kl')}")
  # 3. GRPO beats the base policy on gold (512 test prompts, one sample each) at a small KL (< 1 nat).
  assert ev["gold/gain"] > 0.1
  assert ev["gold/win_rate"] > 0.5
  assert 0.0 <= rl["eval/kl"] < 1.0
  assert rl["train/kl"] < 1.0
