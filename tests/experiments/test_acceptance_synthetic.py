"""Acceptance in the synthetic world, from configs through experiments.run. Each claim is one a broken stage or a
world without its designed flaw would violate (none holds by construction):

  1. best-of-N on a proxy reward model is informative but overoptimized: its selection raises gold well above the
     pool mean, yet from n = 1 to the largest n the proxy rises more than gold (in pool-std units) and the selected
     responses are much longer than gold's own selections (the world's length hack);
  2. GRPO on the proxy raises the proxy, with less gold than GRPO on gold itself gets from the same SFT policy
     and budget, while gaining MORE proxy and longer responses: the proxy is exploited;
  3. GRPO on gold raises gold over the SFT policy (95% interval above 0) at a small KL: the RL step works.
(The gold-selected best-of-N curve is monotone in n by construction of the unbiased estimator: checked as an
estimator property, not as a claim.)

configs/best_of_n.py:acceptance (sft -> reward -> best_of_n) and configs/grpo.py:acceptance (sft -> reward ->
grpo -> evaluate) share identical sft and reward sections, so both run in ONE workdir and the second chain
reuses the finished stages (experiments.run skips a stage with DONE.json). About 3 CPU minutes on 2 cores.
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
  assert m["gold/gold_monotone"] == 1.0  # the estimator's property
  # 1. Informative (gold@N well above the pool mean; measured 2.11 vs 0.84), overoptimized (proxy gain exceeds gold
  # gain by > 0.25 pool std; measured 0.55) and length-hacked (selected length 14.9 vs 8.4 for gold's selection).
  assert m["rm_mean/gold@N"] > m["rm_mean/gold@1"] + 0.5
  assert m["rm_mean/gap_std"] > 0.25
  assert m["rm_mean/length@N"] > m["gold/length@N"] + 3.0
  with open(tmp_path / "best_of_n" / "results.json") as f:
    curves = json.load(f)["curves"]
  assert curves["rm_mean"]["n"][-1] >= 64
  assert (tmp_path / "best_of_n" / "best_of_n_rm_mean.png").stat().st_size > 0

  start = time.time()
  outputs = run_lib.run(grpo, str(tmp_path))
  grpo_s = time.time() - start
  proxy, gold = outputs["evaluate"]["metrics"], outputs["evaluate_gold"]["metrics"]
  rl_gold = outputs["grpo_gold"]["metrics"]
  print(f"[acceptance] grpo chains (reusing sft, reward) {grpo_s:.0f}s; on the proxy: {proxy}; on gold: {gold}")
  # Like for like: both evaluations sample the same SFT base on the same 512 test prompts with the same key.
  assert proxy["gold/base"] == gold["gold/base"] and proxy["reward/rm/base"] == gold["reward/rm/base"]
  # 2. On the proxy: proxy up (measured +0.91 [0.77, 1.05]); gold gain below gold-trained GRPO's (0.10 vs 0.30)
  # while the proxy gain is above it (0.91 vs 0.62) and responses are longer (14.3 vs 10.4 tokens).
  assert proxy["reward/rm/gain_lower"] > 0.0
  assert proxy["gold/gain"] < gold["gold/gain"] - 0.1
  assert proxy["reward/rm/gain"] > gold["reward/rm/gain"] + 0.1
  assert proxy["length/policy"] > gold["length/policy"] + 2.0
  # 3. On gold: gold up with its interval above 0 (measured +0.30 [0.18, 0.41]), KL < 1 nat (0.48).
  assert gold["gold/gain_lower"] > 0.0 and gold["gold/win_rate"] > 0.5
  assert 0.0 <= gold["kl"] < 1.0 and rl_gold["train/kl"] < 1.0
