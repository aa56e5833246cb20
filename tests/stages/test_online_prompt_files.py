"""The online stages (rl with GRPO / RLOO, evaluate_policy, best_of_n) end to end on prompt files and a real-format
Hugging Face folder (a tiny random chat model with its own tokenizer and chat template; `tiny_chat_model`):
reward functions see each rollout row's own prompt and columns, runs are mesh-invariant and resumable, the saved
policy folder is self-contained, evaluation of a policy against itself is neutral, best-of-n curves agree with a
recomputation from the saved pools, and a failing reward function is named with its row."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_chat_model  # noqa: E402  pylint: disable=g-import-not-at-top

from jaxrlhf.config import from_config  # noqa: E402
from jaxrlhf.models import load_tokenizer  # noqa: E402
from jaxrlhf.rewards import RewardFunctionError  # noqa: E402
from jaxrlhf.stages import best_of_n as best_of_n_stage  # noqa: E402
from jaxrlhf.stages import evaluate_policy, rl  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # Each stage run compiles a rollout or sampler (10-40 s on 2 cores).
EVAL_ROWS = 4  # rl's eval: one sample of each of eval_prompts = 4 held-out prompts, once (eval_every = steps)


def fails_on_seven(prompts, completions, answer):
  """Raises for the rows whose answer is 7."""
  return [1.0 / (int(x) - 7) for x in answer]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("chat")
  model = tiny_chat_model.write_model(root / "model")
  train, held_out = tiny_chat_model.write_prompt_files(root / "prompts")
  return model, train, held_out


def _prompts(assets):
  _, train, held_out = assets
  return {"source": "files", "paths": (train,), "eval_paths": (held_out,)}


def _rl_config(assets, algorithm="grpo", steps=3, num_devices=1, rewards=tiny_chat_model.REWARDS):
  return from_config(tiny_chat_model.rl_stage(*assets, algorithm=algorithm, steps=steps, num_devices=num_devices,
                                              rewards=rewards), rl.RLConfig)


def _train_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {d["step"]: d for d in map(json.loads, f) if "train/loss" in d}


# The text rewards the grpo_run traced as host callbacks (jax.pure_callback) into its programs.
GRPO_RUN_CALLBACKS = []


@pytest.fixture(scope="module")
def grpo_run(assets, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("grpo"))
  with pytest.MonkeyPatch.context() as patch:
    original = jax.pure_callback
    patch.setattr(jax, "pure_callback", lambda *a, **k: GRPO_RUN_CALLBACKS.append(a[0]) or original(*a, **k))
    out = rl.run(_rl_config(assets), workdir, {})
  return out, workdir


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_rl_trains_on_prompt_files(assets, grpo_run, tmp_path, algorithm):
  if algorithm == "grpo":
    out, workdir = grpo_run
    # The text rewards were scored on the host before each step and the eval (`rl.host_scored_rollouts`): no program
    # of the run calls back to the host, so XLA's persistent cache keeps them all.
    assert not GRPO_RUN_CALLBACKS
  else:
    workdir = str(tmp_path / "rloo")
    out = rl.run(_rl_config(assets, "rloo", steps=2), workdir, {})
  files = out["prompts"]["files"]
  assert (files["kept"], files["skipped"], files["num_train"], files["num_eval"]) == (32, 0, 24, 8)
  lines = _train_lines(workdir)
  assert sorted(lines) == ([1, 2, 3] if algorithm == "grpo" else [1, 2])
  for line in lines.values():
    # 2 prompts x 4 generations per step; exact match of a random model's bytes is ~never right, the length
    # reward is (characters / 10) of <= 6 byte tokens, and the total is their weighted sum.
    assert 0.0 <= line["train/reward/correct"] <= 1.0
    assert 0.0 < line["train/reward/length"] <= 0.6
    assert line["train/reward/total"] == pytest.approx(line["train/reward/correct"] + 0.5 * line["train/reward/length"],
                                                       rel=1e-5, abs=1e-6)
    assert np.isfinite(line["train/loss"]) and line["train/grad_norm"] > 0
  assert 0.0 <= out["metrics"]["eval/reward/correct"] <= 1.0
  if algorithm == "grpo":
    # exact_match counts its rows once per scored completion: 3 steps x 2 prompts x 4 generations in training,
    # and the eval's completions of the 8 held-out prompts; a random model's bytes rarely hold a number.
    counts = out["reward_outcomes"]
    assert counts["train"]["correct"]["rows"] == 24 and counts["eval"]["correct"]["rows"] == EVAL_ROWS
    assert 0 <= counts["train"]["correct"]["no_answer"] <= 24
    assert set(counts["train"]) == {"correct"}  # the python length reward counts nothing
    # The held-out split's own report is kept beside the train split's: 4 of the 8 held-out prompts, none cut.
    assert out["prompts"]["held_out"]["source"] == "files" and out["prompts"]["held_out"]["truncated"] == 0
    assert out["prompts"]["held_out"]["num_prompts"] == 4
  # The saved policy is a self-contained HF folder: its tokenizer renders prompts like the original's.
  saved, original = load_tokenizer(out["model_dir"]), load_tokenizer(assets[0])
  chat = [{"role": "user", "content": "What is 2 + 2?"}]
  assert saved.encode(saved.apply_chat_template(chat, True)) == original.encode(
      original.apply_chat_template(chat, True))


def test_rl_is_mesh_invariant(assets, grpo_run, tmp_path):
  """The same seed on 8 devices (data-parallel rollouts and update) gives the 1-device run's metrics."""
  _, single = grpo_run
  workdir = str(tmp_path / "eight")
  rl.run(_rl_config(assets, steps=2, num_devices=8), workdir, {})
  a, b = _train_lines(single), _train_lines(workdir)
  for step in (1, 2):
    for key in ("train/reward/correct", "train/reward/length", "train/completion_length", "train/kl",
                "train/loss"):
      assert a[step][key] == pytest.approx(b[step][key], rel=1e-4, abs=1e-5), (step, key)


def _latest_checkpoint(workdir: pathlib.Path) -> int:
  folder = workdir / "checkpoints"
  return max((int(p.name) for p in folder.iterdir() if p.name.isdigit()), default=-1) if folder.exists() else -1


def test_rl_killed_with_sigkill_resumes_exactly(assets, grpo_run, tmp_path):
  """experiments.run killed by SIGKILL after its first checkpoint, then rerun: the rerun resumes (train state,
  rollout key, prompt iterator) and logs the uninterrupted run's metrics for the remaining steps."""
  _, full = grpo_run
  model, train, held_out = assets
  workdir = tmp_path / "killed"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.path.dirname(__file__)]))
  command = [sys.executable, "-m", "experiments.run", f"--config={os.path.dirname(__file__)}/rl_files_config.py",
             f"--workdir={workdir}", f"--config.model.init_from={model}", f"--config.prompts.paths=('{train}',)",
             f"--config.prompts.eval_paths=('{held_out}',)"]
  log = tmp_path / "killed.log"
  with open(log, "w") as stream:
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  try:
    while _latest_checkpoint(workdir) < 1:
      if proc.poll() is not None:
        raise AssertionError(f"the run ended before it could be killed: {log.read_text()[-2000:]}")
      assert time.time() < deadline, "no checkpoint within the deadline"
      time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  killed_at = _latest_checkpoint(workdir)
  assert killed_at < 3, "the run finished before the kill"
  rerun = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  a, b = _train_lines(full), _train_lines(str(workdir))
  assert sorted(b) == [1, 2, 3]
  for step in range(killed_at + 1, 4):
    for key in ("train/reward/correct", "train/reward/length", "train/completion_length", "train/kl",
                "train/loss"):
      assert a[step][key] == pytest.approx(b[step][key], rel=1e-5, abs=1e-6), (step, key)


def _evaluation(assets, temperature, **changes):
  model = assets[0]
  return from_config({"policy": model, "base": model, "prompts": _prompts(assets), "num_prompts": 8,
                      "batch_size": 4, "max_prompt_length": 48, "max_new_tokens": 6, "temperature": temperature,
                      "rewards": ({"kind": "python", "function": "tiny_chat_model:checked_length", "name": "length"},),
                      **changes}, evaluate_policy.EvaluatePolicyConfig)


def test_evaluating_a_policy_against_itself_is_neutral(assets, tmp_path):
  # Near-greedy: policy and base draw the same completions, so the gain is 0 and every comparison a tie.
  greedy = evaluate_policy.run(_evaluation(assets, 1e-3), str(tmp_path / "greedy"), {})["metrics"]
  assert greedy["reward/length/prompts"] == 8
  assert greedy["reward/length/gain"] == 0.0 and greedy["reward/length/win_rate"] == 0.5
  assert greedy["reward/length/policy"] == greedy["reward/length/base"] > 0
  # At temperature 1 the samples are the policy's own distribution, so KL(policy || itself) is ~0 (only the
  # decode-vs-forward numerics differ), per response.
  sampled = evaluate_policy.run(_evaluation(assets, 1.0), str(tmp_path / "sampled"), {})["metrics"]
  assert abs(sampled["kl"]) < 1e-3
  assert "gold/policy" not in sampled


def test_evaluating_a_trained_policy_reports_its_kl(assets, grpo_run, tmp_path):
  out, _ = grpo_run
  rewards = ({"kind": "python", "function": "tiny_chat_model:checked_length", "name": "length"},
             {"kind": "exact_match", "name": "correct", "options": {"column": "answer", "extract": "whole"}})
  metrics = evaluate_policy.run(_evaluation(assets, 1.0, policy=out["model_dir"], rewards=rewards), str(tmp_path),
                                {})["metrics"]
  assert metrics["kl"] > 1e-3  # lr 1e-3 for three steps moves a tiny model measurably
  assert metrics["kl_lower"] <= metrics["kl"] <= metrics["kl_upper"]
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  counts = results["reward_outcomes"]
  assert results["prompts"]["num_prompts"] == 8 and results["prompts"]["files"]["kept"] == 32
  # The policy's and the base's sample of each of the 8 prompts, each scored once.
  assert counts == {"eval (policy and base samples)": {"correct": {"rows": 16, "no_answer": 0}}}


def test_best_of_n_on_prompt_files_matches_recomputation(assets, tmp_path):
  cfg = from_config({
      "policy": assets[0], "prompts": _prompts(assets), "num_prompts": 4, "pool_size": 8, "batch_size": 2,
      "max_prompt_length": 48, "max_new_tokens": 6, "plots": False,
      "rewards": ({"kind": "python", "function": "tiny_chat_model:checked_length", "name": "length"},
                  {"kind": "exact_match", "name": "correct", "options": {"column": "answer", "extract": "whole"}})},
      best_of_n_stage.BestOfNConfig)
  out = best_of_n_stage.run(cfg, str(tmp_path), {})
  with open(out["results"]) as f:
    results = json.load(f)
  assert set(results["curves"]) == {"length", "correct"}
  # Every pooled sample is scored once (4 prompts x 8); extract "whole" always finds an answer span.
  assert results["reward_outcomes"] == {"pools": {"correct": {"rows": 32, "no_answer": 0}}}
  curve = results["curves"]["length"]
  # Recompute the selector's reward from the saved pools: decode every sample and measure it.
  tok = load_tokenizer(assets[0])
  pool = np.load(out["pool"])
  tokens, mask = pool["tokens"], pool["mask"]
  assert tokens.shape[:2] == (4, 8)
  reward = np.array([[len(tok.decode(t[m > 0])) / 10.0 for t, m in zip(row_t, row_m)]
                     for row_t, row_m in zip(tokens, mask)])
  assert curve["proxy"][0] == pytest.approx(reward.mean(), rel=1e-6)  # n = 1: the pool mean
  assert curve["proxy"][-1] == pytest.approx(reward.max(axis=1).mean(), rel=1e-6)  # n = N: the best of the pool
  assert np.all(np.diff(curve["proxy"]) >= -1e-9)
  assert out["metrics"]["length/proxy@N"] == pytest.approx(reward.max(axis=1).mean(), rel=1e-6)
  saved = np.load(os.path.join(str(tmp_path), "scores.npz"))
  np.testing.assert_allclose(saved["length"], reward, rtol=1e-6)
  constant = np.mean([len(set(row)) == 1 for row in np.round(reward, 6)])
  assert out["metrics"]["length/constant_pools"] == constant
  assert "gold_std" not in out["metrics"]


def test_a_failing_reward_function_is_named_with_its_row(assets, tmp_path):
  cfg = _rl_config(assets, steps=1, rewards=({"kind": "python", "function": f"{__name__}:fails_on_seven"},))
  cfg = dataclasses.replace(cfg, prompts_per_step=8)
  with pytest.raises(RewardFunctionError) as e:
    rl.run(cfg, str(tmp_path), {})
  message = str(e.value)
  assert "python (test_online_prompt_files:fails_on_seven)" in message and "ZeroDivisionError" in message
  assert "What is" in message and "more rows fail" in message
