"""The online stages (rl with GRPO / RLOO, evaluate_policy, best_of_n) end to end on prompt files and a real-format
Hugging Face folder (a tiny random chat model with its own tokenizer and chat template; `tiny_chat_model`):
reward functions see each rollout row's own prompt and columns, runs are mesh-invariant and resumable, the saved
policy folder is self-contained, evaluation of a policy against itself is neutral, best-of-n curves agree with a
recomputation from the saved pools, and a failing reward function is named with its row."""

import dataclasses
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_chat_model  # noqa: E402  pylint: disable=g-import-not-at-top

from jaxrlhf.config import from_config  # noqa: E402
from jaxrlhf.models import load_tokenizer  # noqa: E402
from jaxrlhf.rewards import RewardFunctionError  # noqa: E402
from jaxrlhf.stages import best_of_n as best_of_n_stage  # noqa: E402
from jaxrlhf.stages import evaluate_policy, rl  # noqa: E402

pytestmark = pytest.mark.slow  # Each stage run compiles a rollout or sampler (10-40 s on 2 cores).


def checked_length(prompts, completions, answer, a, b, **kwargs):
  """Completion length / 10, after checking that every row's columns belong to its own prompt (the rollout's
  prompt_index, repeated per generation, must point at the right table rows)."""
  del kwargs
  for prompt, ans, x, y in zip(prompts, answer, a, b):
    if f"What is {x} + {y}?" not in str(prompt) or int(ans) != x + y:
      raise AssertionError(f"row misaligned: prompt {prompt!r} with columns answer={ans} a={x} b={y}")
  return [len(c) / 10.0 for c in completions]


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


def _rl_config(assets, algorithm="grpo", steps=2, num_devices=1, rewards=None):
  rewards = rewards or ({"kind": "exact_match", "name": "correct", "options": {"column": "answer"}},
                        {"kind": "python", "function": f"{__name__}:checked_length", "name": "length",
                         "weight": 0.5})
  return from_config({
      "seed": 1, "model": {"init_from": assets[0]}, "prompts": _prompts(assets), "num_prompts": 0,
      "prompts_per_step": 2, "max_prompt_length": 48, "eval_prompts": 4, "num_devices": num_devices,
      "rewards": rewards, "loss": {"algorithm": algorithm, "num_generations": 4, "beta": 0.05},
      "sampling": {"max_new_tokens": 6}, "optimizer": {"learning_rate": 1e-3},
      "loop": {"num_steps": steps, "log_every": 1, "checkpoint_every": 1, "eval_every": steps, "progress": False,
               "tensorboard": False, "async_checkpoints": False}}, rl.RLConfig)


def _train_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {d["step"]: d for d in map(json.loads, f) if "train/loss" in d}


@pytest.fixture(scope="module")
def grpo_run(assets, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("grpo"))
  return rl.run(_rl_config(assets), workdir, {}), workdir


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_rl_trains_on_prompt_files(assets, grpo_run, tmp_path, algorithm):
  if algorithm == "grpo":
    out, workdir = grpo_run
  else:
    workdir = str(tmp_path / "rloo")
    out = rl.run(_rl_config(assets, "rloo"), workdir, {})
  files = out["prompts"]["files"]
  assert (files["kept"], files["skipped"], files["num_train"], files["num_eval"]) == (32, 0, 24, 8)
  lines = _train_lines(workdir)
  assert sorted(lines) == [1, 2]
  for line in lines.values():
    # 2 prompts x 4 generations per step; exact match of a random model's bytes is ~never right, the length
    # reward is (characters / 10) of <= 6 byte tokens, and the total is their weighted sum.
    assert 0.0 <= line["train/reward/correct"] <= 1.0
    assert 0.0 < line["train/reward/length"] <= 0.6
    assert line["train/reward/total"] == pytest.approx(line["train/reward/correct"] + 0.5 * line["train/reward/length"],
                                                       rel=1e-5, abs=1e-6)
    assert np.isfinite(line["train/loss"]) and line["train/grad_norm"] > 0
  assert 0.0 <= out["metrics"]["eval/reward/correct"] <= 1.0
  # The saved policy is a self-contained HF folder: its tokenizer renders prompts like the original's.
  saved, original = load_tokenizer(out["model_dir"]), load_tokenizer(assets[0])
  chat = [{"role": "user", "content": "What is 2 + 2?"}]
  assert saved.encode(saved.apply_chat_template(chat, True)) == original.encode(
      original.apply_chat_template(chat, True))


def test_rl_is_mesh_invariant(assets, grpo_run, tmp_path):
  """The same seed on 8 devices (data-parallel rollouts and update) gives the 1-device run's metrics."""
  _, single = grpo_run
  workdir = str(tmp_path / "eight")
  rl.run(_rl_config(assets, num_devices=8), workdir, {})
  a, b = _train_lines(single), _train_lines(workdir)
  for step in (1, 2):
    for key in ("train/reward/correct", "train/reward/length", "train/completion_length", "train/kl",
                "train/loss"):
      assert a[step][key] == pytest.approx(b[step][key], rel=1e-4, abs=1e-5), (step, key)


def test_rl_resume_draws_identical_rollouts(assets, grpo_run, tmp_path):
  _, full = grpo_run
  resumed = str(tmp_path / "resumed")
  rl.run(_rl_config(assets, steps=1), resumed, {})
  rl.run(_rl_config(assets, steps=2), resumed, {})  # resumes at step 1: train state + prompt iterator
  a, b = _train_lines(full), _train_lines(resumed)
  for key in ("train/reward/correct", "train/reward/length", "train/completion_length", "train/kl", "train/loss"):
    assert a[2][key] == pytest.approx(b[2][key], rel=1e-5, abs=1e-6), key


def _evaluation(assets, temperature, **changes):
  model = assets[0]
  return from_config({"policy": model, "base": model, "prompts": _prompts(assets), "num_prompts": 8,
                      "batch_size": 4, "max_prompt_length": 48, "max_new_tokens": 6, "temperature": temperature,
                      "rewards": ({"kind": "python", "function": f"{__name__}:checked_length", "name": "length"},),
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
  metrics = evaluate_policy.run(_evaluation(assets, 1.0, policy=out["model_dir"]), str(tmp_path), {})["metrics"]
  assert metrics["kl"] > 1e-3  # lr 1e-3 for two steps moves a tiny model measurably
  assert metrics["kl_lower"] <= metrics["kl"] <= metrics["kl_upper"]


def test_best_of_n_on_prompt_files_matches_recomputation(assets, tmp_path):
  cfg = from_config({
      "policy": assets[0], "prompts": _prompts(assets), "num_prompts": 4, "pool_size": 8, "batch_size": 2,
      "max_prompt_length": 48, "max_new_tokens": 6, "plots": False,
      "rewards": ({"kind": "python", "function": f"{__name__}:checked_length", "name": "length"},)},
      best_of_n_stage.BestOfNConfig)
  out = best_of_n_stage.run(cfg, str(tmp_path), {})
  with open(out["results"]) as f:
    results = json.load(f)
  assert set(results["curves"]) == {"length"}
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
  assert "gold_std" not in out["metrics"]


def test_a_failing_reward_function_is_named_with_its_row(assets, tmp_path):
  cfg = _rl_config(assets, steps=1, rewards=({"kind": "python", "function": f"{__name__}:fails_on_seven"},))
  cfg = dataclasses.replace(cfg, prompts_per_step=8)
  with pytest.raises(RewardFunctionError) as e:
    rl.run(cfg, str(tmp_path), {})
  message = str(e.value)
  assert "python (test_online_prompt_files:fails_on_seven)" in message and "ZeroDivisionError" in message
  assert "What is" in message and "more rows fail" in message
