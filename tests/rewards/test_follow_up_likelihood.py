"""FLR, follow-up likelihood as reward (Zhang et al. 2024, arXiv 2409.13948): the jitted scorer
(`train.scoring.follow_up_logps` / `flr_scores`) against transformers on unpadded dialogues, hand-checkable cases,
the follow-up rendering, the "follow_up_likelihood" reward source's config errors and a best-of-n run with it."""

import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "stages"))
import tiny_chat_model  # noqa: E402  pylint: disable=g-import-not-at-top

from jaxrlhf.config import ConfigError, from_config  # noqa: E402
from jaxrlhf.models import from_pretrained, load_tokenizer  # noqa: E402
from jaxrlhf.rewards import follow_up as follow_up_lib  # noqa: E402
from jaxrlhf.stages import best_of_n as best_of_n_stage  # noqa: E402
from jaxrlhf.stages import evaluate_policy, reward_eval, reward_sources, rl  # noqa: E402
from jaxrlhf.train import scoring  # noqa: E402

VOCAB, END = 97, 2


def tiny_llama(folder):
  """A random 2-layer Llama (GQA, untied) saved by transformers, and ours loaded from the same folder."""
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                    tie_word_embeddings=False)
  config._attn_implementation = "eager"
  hf = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
  hf.save_pretrained(folder)
  ours, _ = from_pretrained(folder)
  return hf, ours


def batch():
  """4 rows (left-padded prompts, right-padded responses; rows 0 and 2 end with END, row 1 is truncated, row 3
  is empty) and 4 follow-ups (three with a 2-token turn marker, untargeted, then 1 to 4 utterance tokens; the
  last one targeted from its first token, which the context's last token predicts)."""
  rng = np.random.default_rng(0)
  p, n, l = 6, 5, 7
  prompt_len, response_len = [6, 3, 1, 4], [5, 3, 2, 0]
  prompt_ids, prompt_mask = np.zeros((4, p), np.int32), np.zeros((4, p), np.int32)
  response_ids, response_mask = np.full((4, n), 96, np.int32), np.zeros((4, n), np.int32)
  for r in range(4):
    prompt_ids[r, p - prompt_len[r]:] = rng.integers(3, VOCAB, prompt_len[r])
    prompt_mask[r, p - prompt_len[r]:] = 1
    response_ids[r, :response_len[r]] = rng.integers(3, VOCAB, response_len[r])
    response_mask[r, :response_len[r]] = 1
  response_ids[0, 4] = response_ids[2, 1] = END
  follow = [[5, 6, 40], [5, 6, 41, 42, 43, 44], [5, 6, 45, 46], [50, 51]]
  follow_ids, follow_mask, follow_target = (np.zeros((4, l), np.int32), np.zeros((4, l), np.int32),
                                            np.zeros((4, l), np.float32))
  for f, row in enumerate(follow):
    follow_ids[f, :len(row)], follow_mask[f, :len(row)] = row, 1
    follow_target[f, (2 if f < 3 else 0):len(row)] = 1.0
  follow_ids[follow_mask == 0] = 95  # Pad ids are never read.
  return prompt_ids, prompt_mask, response_ids, response_mask, follow_ids, follow_mask, follow_target


def reference_logps(hf, prompt_ids, prompt_mask, response_ids, response_mask, follow_ids, follow_mask, follow_target):
  """(R, F) float64: one unpadded transformers forward per (row, follow-up), a trailing END of the response
  dropped, the mean log-prob of the targeted follow-up tokens."""
  out = np.zeros((prompt_ids.shape[0], follow_ids.shape[0]))
  for r in range(prompt_ids.shape[0]):
    response = list(response_ids[r][response_mask[r] > 0])
    if response and response[-1] == END:
      response = response[:-1]
    context = list(prompt_ids[r][prompt_mask[r] > 0]) + response
    for f in range(follow_ids.shape[0]):
      real = follow_mask[f] > 0
      seq = context + list(follow_ids[f][real])
      targets = [len(context) + i for i, t in enumerate(follow_target[f][real]) if t > 0]
      with torch.no_grad():
        logits = hf(input_ids=torch.tensor([seq])).logits[0].double()
      logp = torch.log_softmax(logits, -1).numpy()
      out[r, f] = np.mean([logp[t - 1, seq[t]] for t in targets])
  return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  return tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def test_follow_up_logps_match_transformers_on_unpadded_dialogues(models):
  hf, ours = models
  arrays = batch()
  ref = reference_logps(hf, *arrays)
  got = jax.jit(lambda *a: scoring.follow_up_logps(ours, *a, end_ids=(END,), chunk_size=8))(*map(jnp.asarray, arrays))
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5, rtol=0)
  positive = np.array([True, False, True, False])
  flr = np.asarray(scoring.flr_scores(got, positive))
  np.testing.assert_allclose(flr, (ref[:, 0] + ref[:, 2]) / 2 - (ref[:, 1] + ref[:, 3]) / 2, atol=1e-5, rtol=0)


def test_a_follow_up_the_model_makes_likelier_raises_the_score(models):
  """Hand-checkable: follow-ups repeating the context's own last token vs another one. With the same follow-up as
  positive and negative the score is 0; swapping positive and negative flips its sign."""
  _, ours = models
  prompt_ids, prompt_mask, response_ids, response_mask, *_ = batch()
  logps_R = scoring.follow_up_logps(ours, prompt_ids, prompt_mask, response_ids, response_mask,
                                    np.array([[7, 8]] * 2, np.int32), np.ones((2, 2), np.int32),
                                    np.array([[0, 1]] * 2, np.float32))
  np.testing.assert_allclose(np.asarray(scoring.flr_scores(logps_R, np.array([True, False]))), 0.0, atol=1e-6)
  # Which of two follow-up tokens the model prefers after each row, then FLR with it positive is > 0.
  ids = np.array([[7, 8], [7, 9]], np.int32)
  lp = np.asarray(scoring.follow_up_logps(ours, prompt_ids, prompt_mask, response_ids, response_mask, ids,
                                          np.ones((2, 2), np.int32), np.array([[0, 1]] * 2, np.float32)))
  flr = np.asarray(scoring.flr_scores(lp, np.array([True, False])))
  np.testing.assert_allclose(flr, lp[:, 0] - lp[:, 1], atol=1e-6)
  np.testing.assert_allclose(np.asarray(scoring.flr_scores(lp, np.array([False, True]))), -flr, atol=1e-6)
  assert np.all(np.abs(flr) > 1e-4)


def test_responses_padding_and_end_token_do_not_change_the_score(models):
  """Moving the response's padding (wider N), and an explicit end token vs a truncated response, score alike."""
  _, ours = models
  arrays = batch()
  prompt_ids, prompt_mask, response_ids, response_mask, *follow = arrays
  base = np.asarray(scoring.follow_up_logps(ours, *arrays, end_ids=(END,)))
  wide_ids = np.concatenate([response_ids, np.full((4, 3), 96, np.int32)], axis=1)
  wide_mask = np.concatenate([response_mask, np.zeros((4, 3), np.int32)], axis=1)
  wide = np.asarray(scoring.follow_up_logps(ours, prompt_ids, prompt_mask, wide_ids, wide_mask, *follow,
                                            end_ids=(END,)))
  np.testing.assert_allclose(wide, base, atol=1e-5)
  truncated_mask = response_mask.copy()
  truncated_mask[0, 4] = 0  # Row 0 without its END token.
  truncated = np.asarray(scoring.follow_up_logps(ours, prompt_ids, prompt_mask, response_ids, truncated_mask, *follow,
                                                 end_ids=(END,)))
  np.testing.assert_allclose(truncated[0], base[0], atol=1e-5)
  # Without end_ids, row 0's END stays in the context and its scores change.
  kept = np.asarray(scoring.follow_up_logps(ours, *arrays))
  assert np.abs(kept[0] - base[0]).max() > 1e-3
  np.testing.assert_allclose(kept[1], base[1], atol=1e-5)


# ------------------------------------------------------------------------------------------------ rendering
def test_follow_ups_render_as_the_next_user_turn_of_the_chat_template():
  """The scored dialogue [prompt | response | follow-up row] is the chat template's own rendering of (user,
  assistant, user) up to the follow-up's closing marker, and only the utterance's tokens are targets."""
  tok = tiny_chat_model.byte_tokenizer()
  assert follow_up_lib.turn_marker(tok) == "<|im_end|>\n<|im_start|>user\n"
  follow = follow_up_lib.encode_follow_ups(tok, ["Thanks!"], ["What?", "No."])
  assert follow.ids_FxL.shape == (3, len(tok.encode("<|im_end|>\n<|im_start|>user\nThanks!")))
  np.testing.assert_array_equal(follow.positive_F, [True, False, False])
  for f, text in enumerate(follow.texts):
    real = follow.mask_FxL[f] > 0
    assert tok.decode(follow.ids_FxL[f][follow.target_FxL[f] > 0]) == text
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True))
    response = tok.encode("Hello.<|im_end|>")
    dialogue = tok.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                        {"role": "user", "content": text}])
    # The response's own end token is replaced by the marker's (`follow_up_logps` drops it).
    assert prompt + response[:-1] + list(follow.ids_FxL[f][real]) == tok.encode(dialogue)[:-2]  # "<|im_end|>\n"
  with pytest.raises(ValueError, match="at least one positive"):
    follow_up_lib.encode_follow_ups(tok, [], ["No."])
  assert len(follow_up_lib.POSITIVE_FOLLOW_UPS) == len(follow_up_lib.NEGATIVE_FOLLOW_UPS) == 20


# ------------------------------------------------------------------------------------------------ the reward source
def _spec(**options):
  return from_config({"kind": "follow_up_likelihood", "name": "flr", "options": options},
                     reward_sources.RewardSourceSpec, path="config.rewards[0]")


@pytest.mark.parametrize("options, key", [
    ({"modle": "x"}, "config.rewards[0].options.modle"),
    ({"positive": []}, "config.rewards[0].options.positive"),
    ({"negative": "That makes no sense!"}, "config.rewards[0].options.negative"),
    ({"positive": ["fine", ""]}, "config.rewards[0].options.positive"),
    ({"model": 3}, "config.rewards[0].options.model"),
    ({"chunk_size": 0}, "config.rewards[0].options.chunk_size"),
])
def test_config_errors_name_the_key(options, key):
  with pytest.raises(ConfigError, match=re.escape(key)):
    _spec(**options)


def test_defaults_and_model_checks(models, tmp_path):
  spec = _spec()
  options = spec.follow_up_options()
  assert options["model"] == "" and options["positive"] == follow_up_lib.POSITIVE_FOLLOW_UPS
  with pytest.raises(ConfigError, match=re.escape("rewards[0].options.model: required")):
    reward_sources.follow_up_models([spec], {}, "", None)
  with pytest.raises(ConfigError, match=re.escape("standardize")):
    from_config({"kind": "follow_up_likelihood", "standardize": True}, reward_sources.RewardSourceSpec)
  # The tiny Llama's 97 ids cannot score the byte tokenizer's 258.
  llama = str(tmp_path / "llama")
  tiny_llama(llama)
  with pytest.raises(ConfigError, match=re.escape("rewards[0].options.model") + ".*fewer than"):
    reward_sources.follow_up_models([_spec(model=llama)], {}, "", tiny_chat_model.byte_tokenizer())


def test_the_source_drops_the_responses_end_of_turn_token(tmp_path):
  """build_sources' FLR scores a response that ended with the tokenizer's <|im_end|> as the same response cut off
  before it (the follow-up's marker closes the turn either way), and differently when the end token is another id."""
  tok = tiny_chat_model.byte_tokenizer()
  model, _ = from_pretrained(tiny_chat_model.write_model(tmp_path / "model"))
  spec = _spec(positive=["Great!"], negative=["Wrong."], chunk_size=64)
  (source,) = reward_sources.build_sources([spec], tokenizer=tok, table=reward_sources.PromptTable(["q"]))
  prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}],
                                              add_generation_prompt=True))
  response = tok.encode("4") + [tok.eos_id]
  rollout = {"prompt_ids": np.array([prompt] * 3, np.int32), "prompt_mask": np.ones((3, len(prompt)), np.int32),
             "tokens": np.array([response, response, tok.encode("4!")], np.int32),
             "mask": np.array([[1, 1], [1, 0], [1, 1]], np.int32), "prompt_index": np.zeros(3, np.int32)}
  scores = np.asarray(reward_sources.jit_scores([source], {"flr_0": model})(rollout)["flr"])
  assert scores[0] == pytest.approx(scores[1], abs=1e-6) and abs(scores[2] - scores[0]) > 1e-4


def _unpadded_flr(model, prompt_ids, prompt_mask, tokens, mask, follow, end_id):
  """FLR of one sample: one unpadded forward per follow-up (no jit, no padding, no gather)."""
  response = list(tokens[mask > 0])
  if response and response[-1] == end_id:
    response = response[:-1]
  context = list(prompt_ids[prompt_mask > 0]) + response
  values = []
  for f in range(follow.ids_FxL.shape[0]):
    real = follow.mask_FxL[f] > 0
    seq = context + list(follow.ids_FxL[f][real])
    logp = np.asarray(jax.nn.log_softmax(model(jnp.asarray([seq], jnp.int32))[0].astype(jnp.float32)), np.float64)
    targets = [len(context) + i for i, t in enumerate(follow.target_FxL[f][real]) if t > 0]
    values.append(np.mean([logp[t - 1, seq[t]] for t in targets]))
  values = np.asarray(values)
  return values[follow.positive_F].mean() - values[~follow.positive_F].mean()


@pytest.mark.slow
def test_best_of_n_selects_by_flr_on_the_tiny_chat_model(tmp_path):
  """best_of_n with a "follow_up_likelihood" source (default model: the policy): the saved per-sample scores equal
  an unpadded per-sample recomputation, and the curve's n = N point is the best of each pool."""
  model_dir = tiny_chat_model.write_model(tmp_path / "model")
  train, held_out = tiny_chat_model.write_prompt_files(tmp_path / "prompts")
  positive, negative = ["Thanks, that is right.", "Great!"], ["That is wrong."]
  cfg = from_config({
      "policy": model_dir, "prompts": {"source": "files", "paths": (train,), "eval_paths": (held_out,)},
      "num_prompts": 2, "pool_size": 4, "batch_size": 2, "max_prompt_length": 48, "max_new_tokens": 6,
      "plots": False, "rewards": ({"kind": "follow_up_likelihood", "name": "flr",
                                   "options": {"positive": positive, "negative": negative, "chunk_size": 64}},)},
      best_of_n_stage.BestOfNConfig)
  out = best_of_n_stage.run(cfg, str(tmp_path / "bon"), {})
  pool = np.load(out["pool"])
  saved = np.load(tmp_path / "bon" / "scores.npz")["flr"]
  tok = load_tokenizer(model_dir)
  model, _ = from_pretrained(model_dir)
  follow = follow_up_lib.encode_follow_ups(tok, positive, negative)
  expected = np.array([[_unpadded_flr(model, pool["prompt_ids"][p], pool["prompt_mask"][p], pool["tokens"][p, s],
                                      pool["mask"][p, s], follow, tok.eos_id) for s in range(4)] for p in range(2)])
  np.testing.assert_allclose(saved, expected, atol=1e-5, rtol=0)
  with open(out["results"]) as f:
    curve = json.load(f)["curves"]["flr"]
  assert curve["proxy"][-1] == pytest.approx(expected.max(axis=1).mean(), abs=1e-5)


@pytest.mark.slow
def test_rl_trains_with_flr_as_its_reward(tmp_path):
  """One GRPO step on the tiny chat model with FLR (the policy's starting model, frozen) as the reward, beside a
  text reward: the reward is logged, finite, and its held-out evaluation too."""
  model_dir = tiny_chat_model.write_model(tmp_path / "model")
  train, held_out = tiny_chat_model.write_prompt_files(tmp_path / "prompts")
  rewards = ({"kind": "follow_up_likelihood", "name": "flr",
              "options": {"positive": ["Great!"], "negative": ["Wrong."], "chunk_size": 64}},
             tiny_chat_model.REWARDS[1])
  cfg = from_config(tiny_chat_model.rl_stage(model_dir, train, held_out, steps=1, rewards=rewards), rl.RLConfig)
  rl.run(cfg, str(tmp_path / "rl"), {})
  with open(tmp_path / "rl" / "metrics.jsonl") as f:
    lines = [json.loads(x) for x in f]
  train_line = next(d for d in lines if "train/reward/flr" in d)
  assert np.isfinite(train_line["train/reward/flr"]) and train_line["train/reward/flr"] != 0.0
  assert any(np.isfinite(d.get("eval/reward/flr", np.nan)) for d in lines)


@pytest.mark.slow
def test_evaluate_policy_reports_flr(tmp_path):
  """evaluate_policy with an FLR source (default model: the base): a near-greedy policy against itself draws the
  same completions, so FLR's gain is 0, and its value is the unpadded recomputation's scale (finite, nonzero)."""
  model_dir = tiny_chat_model.write_model(tmp_path / "model")
  train, held_out = tiny_chat_model.write_prompt_files(tmp_path / "prompts")
  cfg = from_config({"policy": model_dir, "base": model_dir, "num_prompts": 4, "batch_size": 4,
                     "prompts": {"source": "files", "paths": (train,), "eval_paths": (held_out,)},
                     "max_prompt_length": 48, "max_new_tokens": 6, "temperature": 1e-3,
                     "rewards": ({"kind": "follow_up_likelihood", "name": "flr",
                                  "options": {"positive": ["Great!"], "negative": ["Wrong."], "chunk_size": 64}},)},
                    evaluate_policy.EvaluatePolicyConfig)
  metrics = evaluate_policy.run(cfg, str(tmp_path / "eval"), {})["metrics"]
  assert metrics["reward/flr/prompts"] == 4 and metrics["reward/flr/gain"] == 0.0
  assert np.isfinite(metrics["reward/flr/policy"]) and metrics["reward/flr/policy"] != 0.0


# ------------------------------------------------------------------------------------------------ pairwise evaluation
@pytest.mark.slow
def test_reward_eval_scores_pairs_by_flr(tmp_path):
  """reward_eval with scorer="follow_up_likelihood" on a preference file: each response's score is the unpadded
  recomputation of FLR after [prompt | response], and accuracy is the fraction of pairs with chosen > rejected."""
  model_dir = tiny_chat_model.write_model(tmp_path / "model")
  rows = [{"prompt": f"What is {a} + {b}?", "chosen": str(a + b), "rejected": f"maybe {a * b + 1} or so"}
          for a, b in ((1, 2), (3, 4), (2, 7), (5, 5), (6, 1))]
  prefs = tmp_path / "prefs.jsonl"
  prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
  positive, negative = ["Right, thanks."], ["No, that is wrong.", "What?"]
  cfg = from_config(dict(scorer="follow_up_likelihood", split="all", num_resamples=200,
                         follow_up={"positive": positive, "negative": negative, "chunk_size": 64},
                         data=dict(source="files", paths=(str(prefs),), tokenizer=model_dir, batch_size=2,
                                   max_length=64)), reward_eval.RewardEvalConfig)
  out = reward_eval.run(cfg, str(tmp_path / "eval"), {})
  with open(out["scores"]) as f:
    lines = [json.loads(x) for x in f]
  tok = load_tokenizer(model_dir)
  model, _ = from_pretrained(model_dir)
  follow = follow_up_lib.encode_follow_ups(tok, positive, negative)
  correct = []
  for line, row in zip(lines, rows):
    prompt = np.asarray(tok.encode(row["prompt"]))
    for key in ("chosen", "rejected"):
      response = np.asarray(tok.encode(row[key]) + [tok.eos_id])
      expected = _unpadded_flr(model, prompt, np.ones_like(prompt), response, np.ones_like(response), follow,
                               tok.eos_id)
      assert line[key][0] == pytest.approx(expected, abs=1e-5), (line["index"], key)
    correct.append(line["chosen"][0] > line["rejected"][0])
  assert out["metrics"]["n"] == 5
  assert out["metrics"]["accuracy"] == pytest.approx(np.mean(correct))
  assert out["metrics"]["accuracy_lower"] <= out["metrics"]["accuracy"] <= out["metrics"]["accuracy_upper"]


def test_reward_eval_flr_config_errors():
  with pytest.raises(ConfigError, match=re.escape("config.follow_up.negative")):
    from_config(dict(scorer="follow_up_likelihood", follow_up={"negative": []}, data=dict(tokenizer="x")),
                reward_eval.RewardEvalConfig)
  with pytest.raises(ConfigError, match=re.escape("config.follow_up.model: required")):
    from_config(dict(scorer="follow_up_likelihood"), reward_eval.RewardEvalConfig)
  with pytest.raises(ConfigError, match=re.escape("config.follow_up: only used with")):
    from_config(dict(reward_model="stage:rm", follow_up={"model": "x"}), reward_eval.RewardEvalConfig)
