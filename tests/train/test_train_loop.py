"""The shared loop on the toy algorithm (tests/toy_config.py): sharding invariance, resume, NaN guard, outputs."""

import json
import os
import pathlib
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402
from jaxrlhf.train import checkpoint as checkpoint_lib  # noqa: E402
from jaxrlhf.train import loop as loop_lib  # noqa: E402
from jaxrlhf.train import metrics as metrics_lib  # noqa: E402
NonFiniteError = loop_lib.NonFiniteError

TOY = str(REPO_ROOT / "tests" / "toy_config.py")
TOY_KINDS = run_lib.load_kinds(f"{TOY}:KINDS")


def toy_stage(variant="smoke", **dotted):
  """(kind, validated ToyConfig) for the toy config with `a.b=value` overrides."""
  config = config_lib.load_config(f"{TOY}:{variant}")
  for key, value in dotted.items():
    *parents, leaf = key.split("__")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  [(_, kind, cfg)] = run_lib.plan(config, TOY_KINDS)
  return kind, cfg


def train_losses(workdir):
  return [(l["step"], l["train/loss"]) for l in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "train/loss" in l]


def test_one_and_eight_devices_give_equal_losses(tmp_path):
  kind, one = toy_stage(num_devices=1, loop__tensorboard=False, optimizer__grad_accum_steps=2)
  _, eight = toy_stage(mesh__data=2, mesh__fsdp=2, mesh__tensor=2, loop__tensorboard=False,
                       optimizer__grad_accum_steps=2)
  r1 = kind.run(one, str(tmp_path / "one"), {})
  r8 = kind.run(eight, str(tmp_path / "eight"), {})
  l1, l8 = train_losses(tmp_path / "one"), train_losses(tmp_path / "eight")
  assert [s for s, _ in l1] == [2, 4, 6, 8, 10, 12]
  np.testing.assert_allclose([v for _, v in l8], [v for _, v in l1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(r8["metrics"]["eval/loss"], r1["metrics"]["eval/loss"], rtol=1e-5, atol=1e-5)
  assert l1[-1][1] < 0.5 * l1[0][1]  # It learns.


def test_resume_continues_exactly(tmp_path):
  kind, full = toy_stage(loop__tensorboard=False)
  _, first = toy_stage(loop__num_steps=8, loop__tensorboard=False)
  ref = kind.run(full, str(tmp_path / "ref"), {})
  kind.run(first, str(tmp_path / "split"), {})
  # A stale line after the last checkpoint (as a killed run leaves) must be dropped on resume.
  with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 9, "train/loss": 123.0}) + "\n")
  resumed = kind.run(full, str(tmp_path / "split"), {})
  assert train_losses(tmp_path / "split") == train_losses(tmp_path / "ref")
  assert resumed["metrics"] == ref["metrics"]
  results = json.loads((tmp_path / "split" / "results.json").read_text())
  assert results["status"] == "done" and results["step"] == 12
  # Killed after the final checkpoint but before results.json: a re-run reports the logged metrics.
  os.remove(tmp_path / "split" / "results.json")
  again = kind.run(full, str(tmp_path / "split"), {})
  assert again["metrics"] == ref["metrics"]


def test_nan_guard_stops_and_keeps_last_finite_checkpoint(tmp_path):
  kind, cfg = toy_stage("nan", loop__tensorboard=False)  # The batch of update 5 is NaN.
  with pytest.raises(NonFiniteError) as e:
    kind.run(cfg, str(tmp_path), {})
  msg = str(e.value)
  assert "'loss' = nan at step 5" in msg and "last finite checkpoint is step 4" in msg
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.all_steps() == [4]
  ckpt.close()
  assert not (tmp_path / "results.json").exists()
  assert max(l["step"] for l in metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))) == 4


def test_iterator_without_state_is_rejected(tmp_path):
  with pytest.raises(ValueError, match=r"data_iter: generator lacks \['get_state', 'set_state'\]"):
    loop_lib.train(config=loop_lib.LoopConfig(), workdir=str(tmp_path), setup=None, step_fn=None,
                   data_iter=(x for x in []))


def test_outputs_eval_cadence_best_and_throughput(tmp_path):
  kind, cfg = toy_stage()
  out = kind.run(cfg, str(tmp_path), {})
  lines = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [l["step"] for l in lines if "eval/loss" in l] == [4, 8, 12]
  train = [l for l in lines if "train/loss" in l]
  assert all(l["train/tokens"] == 32.0 and l["perf/tokens_per_sec"] > 0 for l in train)
  assert all(l["perf/steps_per_sec"] > 0 for l in train)
  evals = {l["step"]: l["eval/loss"] for l in lines if "eval/loss" in l}
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["best_step"] == min(evals, key=evals.get)
  assert results["metrics"]["eval/loss"] == evals[12]
  assert out["checkpoint_dir"] == str(tmp_path / "checkpoints")
  assert os.listdir(tmp_path / "tensorboard")
