"""The reward_eval stage: RewardBench's rules against hand-computed values (ties wrong, per-subset accuracy, section
scores, best-of-k with split ties), ensembles' member and aggregate accuracies, the bootstrap intervals, and the
stage end to end: its scores equal each sequence scored alone, dropped pairs are counted, and an ensemble whose
members share the backbone runs as one backbone with the same rewards."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.models import from_pretrained, load_tokenizer
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble, RewardModel
from jaxrlhf.stages import artifacts, inputs
from jaxrlhf.stages import reward_eval
from jaxrlhf.stages import reward_heads
from jaxrlhf.train import scoring
from tiny_reward_files import CONFIG, WORDS, model_folder, preference_rows, sequence_reward, write_jsonl


# ------------------------------------------------------------------------------------------------ hand-computed rules
CHOSEN = np.array([[1, 0, 2], [0, 0, 0], [3, 1, 1], [0, 5, 0], [2, 2, 2], [1, 1, 1]], np.float64)
REJECTED = np.array([[0, 1, 1], [0, 1, 0], [1, 2, 0], [1, 0, 1], [2, 2, 2], [0, 0, 3]], np.float64)
SUBSETS = ["alpacaeval-easy", "alpacaeval-easy", "mt-bench-easy", "mt-bench-easy", "anthropic_helpful", None]


def test_pair_metrics_match_hand_computation():
  metrics, credit = reward_eval.pair_metrics(CHOSEN, REJECTED, SUBSETS, aggregation="mean", num_resamples=200)
  # Member k is right where chosen[:, k] > rejected[:, k] strictly (rows 1 and 4 tie for member 0: wrong).
  assert metrics["member_0/accuracy"] == pytest.approx(3 / 6)
  assert metrics["member_1/accuracy"] == pytest.approx(2 / 6)
  assert metrics["member_2/accuracy"] == pytest.approx(2 / 6)
  # Member means: chosen (1, 0, 5/3, 5/3, 2, 1) vs rejected (2/3, 1/3, 1, 2/3, 2, 1): rows 4 and 5 tie.
  np.testing.assert_array_equal(credit, [1, 0, 1, 1, 0, 0])
  assert metrics["accuracy"] == pytest.approx(0.5) and metrics["n"] == 6
  assert metrics["subset/alpacaeval-easy/accuracy"] == 0.5 and metrics["subset/alpacaeval-easy/n"] == 2
  assert metrics["subset/mt-bench-easy/accuracy"] == 1.0
  assert metrics["subset/anthropic_helpful/accuracy"] == 0.0
  assert metrics["subset/(none)/accuracy"] == 0.0 and metrics["subset/(none)/n"] == 1
  # RewardBench: Chat = example-count-weighted (alpacaeval-easy 100, mt-bench-easy 28); Prior Sets = the mean of
  # the prior sets present; Score = (2 * Chat + 1 * Prior Sets) / 3 over the sections present.
  assert metrics["section/Chat"] == pytest.approx((0.5 * 100 + 1.0 * 28) / 128)
  assert metrics["section/Prior Sets"] == 0.0
  assert metrics["section/Score"] == pytest.approx(2 * (78 / 128) / 3)
  assert not any(k.startswith("section/Safety") or k.startswith("section/Chat Hard") for k in metrics)
  # Worst-case aggregation: mins (0, 0, 1, 0, 2, 1) vs (0, 0, 0, 0, 2, 0).
  metrics_min, _ = reward_eval.pair_metrics(CHOSEN, REJECTED, SUBSETS, aggregation="min", num_resamples=200)
  assert metrics_min["accuracy"] == pytest.approx(2 / 6)


def test_tied_rewards_score_zero():
  same = np.array([[1.0], [2.0], [-3.0]])
  metrics, credit = reward_eval.pair_metrics(same, same.copy(), [None] * 3, num_resamples=100)
  assert metrics["accuracy"] == metrics["accuracy_lower"] == metrics["accuracy_upper"] == 0.0
  assert not credit.any()
  assert "subset/(none)/accuracy" not in metrics  # no subsets given: no per-subset rows


def test_best_of_k_matches_hand_computation():
  scores = [np.array([[3, 0], [1, 1], [2, 2], [0, 3]], float),   # member 0 strictly top; member 1 last
            np.array([[2, 5], [2, 1], [1, 1], [0, 1]], float),   # member 0 ties with one other: 1/2
            np.array([[1, 0], [4, 0], [0, 9], [0, 0]], float),   # correct = 2: member 0 wrong, member 1 right
            np.array([[1, 1], [1, 1], [1, 1], [1, 1]], float),   # four-way tie: 1/4
            np.array([[0, 1], [2, 0], [1, 5]], float)]           # k = 3, correct = 1
  best = np.array([0, 0, 2, 3, 1])
  metrics, credit = reward_eval.kway_metrics(scores, best, ["Focus", "Focus", "Math", None, "Math"],
                                             num_resamples=100)
  # Member means per completion: r0 (1.5, 1, 2, 1.5) -> 0; r1 (3.5, 1.5, 1, .5) -> 1; r2 (.5, 2, 4.5, 0) -> 1;
  # r3 all 1 -> 1/4; r4 (.5, 1, 3) -> 0.
  np.testing.assert_allclose(credit, [0, 1, 1, 0.25, 0])
  assert metrics["best_of_4"] == pytest.approx(2.25 / 4) and metrics["best_of_4/n"] == 4
  assert metrics["member_0/best_of_4"] == pytest.approx((1 + 0.5 + 0 + 0.25) / 4)
  assert metrics["member_1/best_of_4"] == pytest.approx((0 + 1 + 1 + 0.25) / 4)
  assert metrics["best_of_3"] == 0.0 and metrics["member_0/best_of_3"] == 1.0
  assert metrics["subset/Focus/best_of_4"] == 0.5 and metrics["subset/Math/best_of_4"] == 1.0
  assert metrics["subset/Math/best_of_3"] == 0.0 and metrics["subset/(none)/best_of_4"] == 0.25


def test_bootstrap_interval_contains_the_mean_and_is_reproducible():
  rng = np.random.default_rng(0)
  chosen, rejected = rng.normal(size=(300, 2)) + 0.3, rng.normal(size=(300, 2))
  a, _ = reward_eval.pair_metrics(chosen, rejected, [None] * 300, seed=4)
  b, _ = reward_eval.pair_metrics(chosen, rejected, [None] * 300, seed=4)
  c, _ = reward_eval.pair_metrics(chosen, rejected, [None] * 300, seed=5)
  assert a == b
  for key in ("accuracy", "member_0/accuracy", "member_1/accuracy"):
    assert a[f"{key}_lower"] < a[key] < a[f"{key}_upper"]
    # A 95% interval of a mean of 300 coin-like outcomes spans about +-1.96 * sqrt(p (1 - p) / 300).
    assert a[f"{key}_upper"] - a[f"{key}_lower"] == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 300), rel=0.25)
  assert (a["accuracy_lower"], a["accuracy_upper"]) != (c["accuracy_lower"], c["accuracy_upper"])

# ------------------------------------------------------------------------------------------------ the stage
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("reward_eval")
  folder = model_folder(root / "model", seed=2)
  lm, config = from_pretrained(str(folder))
  backbone = {k: v for k, v in nnx.to_pure_dict(nnx.state(lm, nnx.Param)).items() if k != "lm_head"}

  def heads(k, seed):
    return nnx.to_pure_dict(nnx.state(reward_heads.stacked_heads(CONFIG.embed_dim, HeadConfig(), k, seed)))

  zero = jax.tree.map(np.zeros_like, heads(1, 0))
  distinct = RewardEnsemble(config, HeadConfig(), 2, rngs=nnx.Rngs(3))  # two random backbones
  out = {
      "root": root, "tokenizer": folder,
      "tied": reward_heads.save_heads(str(root / "tied"), config, HeadConfig(), backbone, zero),
      "shared": reward_heads.save_heads(str(root / "shared"), config, HeadConfig(), backbone, heads(3, 1)),
      "distinct": artifacts.save_reward_model(str(root / "distinct"), config, HeadConfig(), 2, nnx.state(distinct)),
      "prefs": write_jsonl(root / "prefs.jsonl", preference_rows(12, seed=3)),
  }
  rng = np.random.default_rng(4)
  kway = []
  for i in range(6):
    completions = [" ".join(rng.choice(WORDS, 3)) for _ in range(4)]
    row = {"prompt": " ".join(rng.choice(WORDS, 3)), "completions": completions, "subset": ["Focus", "Math"][i % 2]}
    row.update({"best_index": i % 4} if i % 3 else {"scores": [1.0, 3.0, 2.0, 0.0]})
    kway.append(row)
  kway.append({"prompt": " ".join(["the"] * 40), "completions": ["a", "b", "cat", "dog"], "best_index": 0})
  out["kway"] = write_jsonl(root / "kway.jsonl", kway)
  return out


def _cfg(assets, model, **overrides):
  data = dict(source="files", paths=(str(assets["prefs"]),), tokenizer=str(assets["tokenizer"]), batch_size=4,
              max_length=24, eval_fraction=0.25, num_eval=0)
  data.update(overrides.pop("data", {}))
  return from_config(dict(reward_model=assets[model], data=data, num_resamples=200, **overrides),
                     reward_eval.RewardEvalConfig)


def _lines(out):
  with open(out["scores"]) as f:
    return [json.loads(line) for line in f]


def _credit(scores, best):
  top = max(scores)
  return 1.0 / scores.count(top) if scores[best] == top else 0.0


def test_ties_are_wrong_end_to_end(assets, tmp_path):
  out = reward_eval.run(_cfg(assets, "tied", split="all"), str(tmp_path), {})
  assert out["metrics"]["n"] == 12
  assert out["metrics"]["accuracy"] == out["metrics"]["accuracy_upper"] == 0.0
  lines = _lines(out)
  assert all(line["chosen"] == line["rejected"] and not line["correct"] for line in lines)


@pytest.mark.parametrize("model", ["shared", "distinct"])
def test_scores_equal_each_sequence_scored_alone(assets, model, tmp_path):
  out = reward_eval.run(_cfg(assets, model, split="all", aggregation="min", kway_paths=(str(assets["kway"]),)),
                        str(tmp_path), {})
  rm = artifacts.load_reward_model(assets[model])
  tok = load_tokenizer(str(assets["tokenizer"]))
  rows = [json.loads(line) for line in open(assets["prefs"])]
  pairs = [line for line in _lines(out) if line["kind"] == "pair"]
  assert len(pairs) == 12
  credits, by_subset = [], {}
  for row, line in zip(rows, pairs):
    for side in ("chosen", "rejected"):
      np.testing.assert_allclose(line[side], sequence_reward(rm, tok, row["prompt"], row[side], 24), atol=1e-5)
    credit = float(min(line["chosen"]) > min(line["rejected"]))
    assert line["correct"] == bool(credit) and line["subset"] == row["subset"]
    credits.append(credit)
    by_subset.setdefault(row["subset"], []).append(credit)
  m = out["metrics"]
  assert m["accuracy"] == pytest.approx(np.mean(credits))
  for name, values in by_subset.items():
    assert m[f"subset/{name}/accuracy"] == pytest.approx(np.mean(values))
  for k in range(rm.num_members):
    assert m[f"member_{k}/accuracy"] == pytest.approx(np.mean([l["chosen"][k] > l["rejected"][k] for l in pairs]))
  # k-way: each completion scored alone; the long-prompt record is dropped and counted.
  kway_rows = [json.loads(line) for line in open(assets["kway"])]
  kway = [line for line in _lines(out) if line["kind"] == "kway"]
  assert m["kway/dropped_too_long"] == 1 and kway[-1]["dropped"] and out["data_report"]["kway"]["dropped_too_long"] == 1
  credits = []
  for row, line in zip(kway_rows[:-1], kway[:-1]):
    assert line["correct_index"] == row.get("best_index", 1)  # scores [1, 3, 2, 0] -> completion 1
    for completion, got in zip(row["completions"], line["scores"]):
      np.testing.assert_allclose(got, sequence_reward(rm, tok, row["prompt"], completion, 24), atol=1e-5)
    aggregate = [min(s) for s in line["scores"]]
    credits.append(_credit(aggregate, line["correct_index"]))
    assert line["credit"] == pytest.approx(credits[-1])
  assert m["best_of_4"] == pytest.approx(np.mean(credits)) and m["best_of_4/n"] == 6
  assert m["best_of_4_lower"] <= m["best_of_4"] <= m["best_of_4_upper"]


def test_held_out_split_and_dropped_pairs_are_counted(assets, tmp_path):
  rows = preference_rows(8, seed=5, subsets=())
  rows[6]["prompt"] = " ".join(["dog"] * 30)  # longer than max_length: cannot be scored
  prefs = write_jsonl(tmp_path / "long.jsonl", rows)
  out = reward_eval.run(_cfg(assets, "shared", data=dict(paths=(str(prefs),), max_length=16, eval_fraction=0.5)),
                        str(tmp_path / "run"), {})
  m = out["metrics"]
  assert m["pairs/dropped_too_long"] == 1 and m["n"] == 3  # held out: the last 4 pairs, one dropped
  assert out["data_report"]["pairs"]["dropped_too_long"] == 1
  lines = _lines(out)
  assert [line.get("dropped", False) for line in lines] == [False, False, True, False]
  assert not any(k.startswith("subset/") for k in m)  # no subset column: no per-subset rows
  with open(out["results"]) as f:
    assert json.load(f)["metrics"]["pairs/dropped_too_long"] == 1


def test_shared_backbone_ensemble_runs_as_one_backbone(assets):
  shared = artifacts.load_reward_model(assets["shared"])
  distinct = artifacts.load_reward_model(assets["distinct"])
  collapsed = artifacts.shared_backbone_model(shared)
  assert isinstance(collapsed, RewardModel) and collapsed.head.config.num_outputs == 3
  assert artifacts.shared_backbone_model(distinct) is distinct
  tok = load_tokenizer(str(assets["tokenizer"]))
  data = from_config(dict(source="files", paths=(str(assets["prefs"]),), max_length=24, batch_size=4),
                     inputs.DataSpec)
  records = inputs.read_files(data)[0]
  for shared_prompt in (True, False):
    batch = inputs.scoring_batches(records, tok, data, shared_prompt=shared_prompt).batches[0]
    want, got = scoring.pair_rewards(shared, batch), scoring.pair_rewards(collapsed, batch)
    for w, g in zip(want, got):
      assert w.shape == g.shape == (4, 3)
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


def test_config_errors_name_the_key(assets, tmp_path):
  # File data takes the reward model's own tokenizer; a folder saved without one needs data.tokenizer.
  cfg = from_config(dict(reward_model=assets["shared"], data=dict(source="files", paths=(str(assets["prefs"]),))),
                    reward_eval.RewardEvalConfig)
  with pytest.raises(ConfigError, match=r"config\.data\.tokenizer: required: the reward model .*shared' holds no "
                     r"tokenizer\.json"):
    reward_eval.run(cfg, str(tmp_path / "eval"), {})
  with pytest.raises(ConfigError, match=r"config\.data\.tokenizer: required for file data"):  # FLR has no reward model
    from_config(dict(scorer="follow_up_likelihood", follow_up=dict(model=assets["shared"]),
                     data=dict(source="files", paths=(str(assets["prefs"]),))), reward_eval.RewardEvalConfig)
  with pytest.raises(ConfigError, match=r"config\.kway_paths: required when config\.split='none'"):
    from_config(dict(reward_model=assets["shared"], split="none"), reward_eval.RewardEvalConfig)
  with pytest.raises(ConfigError, match=r"config\.reward_model: required"):
    from_config(dict(), reward_eval.RewardEvalConfig)
  with pytest.raises(ConfigError, match=r"config\.data\.transform"):
    from_config(dict(reward_model=assets["shared"], data=dict(transform="reward_augmented")),
                reward_eval.RewardEvalConfig)


def test_world_held_out_pairs(tmp_path):
  world = inputs.make_world({})
  config = CONFIG.replace(vocab_size=world.tokenizer.vocab_size)
  rm_dir = artifacts.save_reward_model(str(tmp_path / "rm"), config, HeadConfig(), 1,
                                       nnx.state(RewardEnsemble(config, HeadConfig(), 1, rngs=nnx.Rngs(0))))
  cfg = from_config(dict(reward_model=rm_dir, data=dict(num_train=4, num_eval=8, batch_size=4), num_resamples=100),
                    reward_eval.RewardEvalConfig)
  out = reward_eval.run(cfg, str(tmp_path / "eval"), {})
  m = out["metrics"]
  assert m["n"] + m["pairs/dropped_too_long"] == 8
  lines = _lines(out)
  assert m["accuracy"] == pytest.approx(np.mean([line["correct"] for line in lines if not line.get("dropped")]))
  assert all(":validation:" in line["source"] for line in lines)  # the world's held-out split
