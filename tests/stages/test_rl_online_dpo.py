"""Online DPO in the rl stage (loss.algorithm "online_dpo"; Guo et al. 2024, arXiv 2402.04792): pair labels + loss
equal TRL 1.16 OnlineDPOTrainer.training_step's (its code lines are checked in the installed package, the
computation redone in torch), chosen / rejected selection with ties, TR-DPO's reference update (soft by hand, hard
as an exact copy) at the scheduled steps of the real step function, exact resume with a moved reference, config
errors naming their key, and configs/online_dpo.py:smoke end to end."""

import inspect
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trl
from flax import nnx
from safetensors.numpy import load_file
from trl.experimental.online_dpo import online_dpo_trainer

from jaxrlhf import config as config_lib
from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data import padding
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.models import CausalLM, ModelConfig
from jaxrlhf.stages import reward_sources as rewards_lib
from jaxrlhf.stages import rl
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train import optim

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------------------------------------ TRL parity
def test_trl_source_has_the_formulas_we_mirror():
  """The lines of TRL 1.16's OnlineDPOTrainer.training_step that `_trl_loss` below redoes (so a TRL change fails)."""
  assert trl.__version__.startswith("1.16")
  src = inspect.getsource(online_dpo_trainer.OnlineDPOTrainer.training_step)
  for line in ("rewards[~contain_eos_token] -= self.args.missing_eos_penalty", "mask = first_half >= second_half",
               "chosen_indices = batch_range + (~mask * batch_size)", "logits = pi_logratios - ref_logratios",
               "losses = -F.logsigmoid(self.beta * logits)", "losses = (logits - 1 / (2 * self.beta)) ** 2",
               "loss = losses.mean()", "chosen_rewards = self.beta * (chosen_logprobs_sum - chosen_ref_logprobs_sum)"):
    assert line in src, line


def _trl_loss(logprobs, ref_logprobs, completion_mask, rewards, contain_eos, beta, loss_type, penalty):
  """TRL 1.16 OnlineDPOTrainer.training_step from the per-token log-probs on: rows [first samples | second
  samples] (TRL's layout), torch."""
  rewards = rewards.clone()
  if penalty is not None:
    rewards[~contain_eos] -= penalty
  batch_size = rewards.shape[0] // 2
  first_half, second_half = rewards.split(batch_size)
  mask = first_half >= second_half
  batch_range = torch.arange(batch_size)
  chosen_indices = batch_range + (~mask * batch_size)
  rejected_indices = batch_range + (mask * batch_size)
  cr_indices = torch.cat((chosen_indices, rejected_indices), dim=0)
  cr_padding_mask = ~completion_mask.bool()[cr_indices]
  cr_logprobs_sum = (logprobs[cr_indices] * ~cr_padding_mask).sum(1)
  cr_ref_logprobs_sum = (ref_logprobs[cr_indices] * ~cr_padding_mask).sum(1)
  chosen_sum, rejected_sum = torch.split(cr_logprobs_sum, batch_size)
  chosen_ref_sum, rejected_ref_sum = torch.split(cr_ref_logprobs_sum, batch_size)
  logits = (chosen_sum - rejected_sum) - (chosen_ref_sum - rejected_ref_sum)
  losses = -F.logsigmoid(beta * logits) if loss_type == "sigmoid" else (logits - 1 / (2 * beta)) ** 2
  margin = beta * (chosen_sum - chosen_ref_sum) - beta * (rejected_sum - rejected_ref_sum)
  return losses.mean(), (margin > 0).float().mean(), chosen_indices


@pytest.mark.parametrize("loss_type,penalty", [("sigmoid", None), ("ipo", None), ("sigmoid", 0.7), ("ipo", 1.5)])
def test_loss_equals_trl_online_dpo(loss_type, penalty):
  rng = np.random.default_rng(0 if penalty is None else 1)
  p, n, beta = 6, 5, 0.1 if loss_type == "sigmoid" else 0.5
  r = 2 * p
  logps = rng.normal(-2.0, 0.7, (r, n)).astype(np.float32)
  ref = (logps + rng.normal(0, 0.3, (r, n))).astype(np.float32)
  lengths = rng.integers(1, n + 1, r)
  mask = (np.arange(n)[None] < lengths[:, None]).astype(np.int32)
  rewards = rng.normal(0, 1, r).astype(np.float32)
  rewards[[2, 2 + p]] = 0.25  # prompt 2's samples tie: TRL chooses the first sample, so does ties="first"
  has_eos = rng.random(r) < 0.5
  # Ours: prompt-major rows (2i, 2i + 1) = TRL's rows (i, i + P); token 0 carries the row index.
  ours = np.stack([np.arange(p), np.arange(p) + p], 1).reshape(-1)
  tokens = np.tile(ours[:, None], (1, n)).astype(np.int32)
  batch = {"prompt_ids": jnp.zeros((r, 2), jnp.int32), "prompt_mask": jnp.ones((r, 2), jnp.int32),
           "tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask[ours]), "rewards": jnp.asarray(rewards[ours])}
  loss = rl.RLLossConfig(algorithm="online_dpo", num_generations=2, beta=beta, dpo_loss_type=loss_type,
                         ties="first", missing_eos_penalty=penalty or 0.0)
  pairs, pair_metrics = rl.online_dpo_pairs(loss, batch, jnp.asarray((ref * mask)[ours]), jnp.asarray(has_eos[ours]))
  trl_rows_chosen = np.asarray(pairs["chosen_tokens"][:, 0])

  def ours_loss(token_logps_RxN):
    seq = jnp.sum(token_logps_RxN * mask, axis=1)  # TRL's row order
    total, weight, metrics = rl.online_dpo_loss_terms(loss, seq[pairs["chosen_tokens"][:, 0]],
                                                      seq[pairs["rejected_tokens"][:, 0]], pairs)
    return total / weight, metrics

  value, metrics = ours_loss(jnp.asarray(logps))
  t_logps = torch.tensor(logps, requires_grad=True)
  t_loss, t_acc, t_chosen = _trl_loss(t_logps, torch.tensor(ref), torch.tensor(mask), torch.tensor(rewards),
                                      torch.tensor(has_eos), beta, loss_type, penalty)
  t_loss.backward()
  np.testing.assert_array_equal(trl_rows_chosen, t_chosen.numpy())
  assert float(value) == pytest.approx(float(t_loss), rel=1e-5, abs=1e-6)
  np.testing.assert_allclose(jax.grad(lambda x: ours_loss(x)[0])(jnp.asarray(logps)), t_logps.grad.numpy(),
                             rtol=1e-4, atol=1e-6)
  assert metrics_lib.compute(metrics)["rewards/accuracy"] == pytest.approx(float(t_acc))
  penalized = rewards - (penalty or 0.0) * ~has_eos
  assert float(pair_metrics["pairs/ties"]) == pytest.approx(np.mean(penalized[:p] == penalized[p:]))


def test_select_pairs_with_ties():
  scores = jnp.asarray([1.0, 2.0, 3.0, 3.0, 5.0, -1.0, 0.0, 0.0])
  chosen, rejected, weight = rl.select_pairs(scores, "mask")
  np.testing.assert_array_equal(chosen, [1, 2, 4, 6])
  np.testing.assert_array_equal(rejected, [0, 3, 5, 7])
  np.testing.assert_array_equal(weight, [1, 0, 1, 0])
  _, _, weight = rl.select_pairs(scores, "first")
  np.testing.assert_array_equal(weight, [1, 1, 1, 1])
  with pytest.raises(ValueError, match="pairs"):
    rl.select_pairs(scores[:3])
  # The missing-EOS penalty can break a tie and flip a pair (TRL subtracts it before choosing).
  penalized = rl.missing_eos_scores(scores, jnp.asarray([1, 1, 0, 1, 1, 1, 1, 1], bool), 0.5)
  np.testing.assert_array_equal(rl.select_pairs(penalized, "mask")[0], [1, 3, 4, 6])


def test_masked_ties_do_not_train():
  """A tied pair (ties="mask") adds nothing to the loss or its gradient; the mean is over the other pairs."""
  loss = rl.RLLossConfig(algorithm="online_dpo", num_generations=2, beta=0.2)
  rng = np.random.default_rng(3)
  pc, pr, rc, rr = (jnp.asarray(rng.normal(-3, 1, 3).astype(np.float32)) for _ in range(4))
  batch = {"ref_chosen_logps": rc, "ref_rejected_logps": rr, "pair_weight": jnp.asarray([1.0, 0.0, 1.0])}
  f = lambda c: rl.online_dpo_loss_terms(loss, c, pr, batch)  # noqa: E731
  total, weight, _ = f(pc)
  expected = -jax.nn.log_sigmoid(0.2 * ((pc - rc) - (pr - rr)))
  assert float(weight) == 2.0
  assert float(total / weight) == pytest.approx(float((expected[0] + expected[2]) / 2), rel=1e-6)
  assert float(jax.grad(lambda c: f(c)[0])(pc)[1]) == 0.0


# ------------------------------------------------------------------------------------------------ reference schedule
@pytest.fixture(scope="module")
def world():
  return World(WorldConfig(num_prompts=256, max_response_len=12))


def test_loss_fn_scores_chosen_and_rejected_of_each_pair(world):
  """The stage's loss_fn (one forward over [chosen | rejected] rows) equals the sigmoid DPO loss of log-probs
  from separate forwards of the chosen and of the rejected responses (temperature 1, TRL's raw logits)."""
  from jaxrlhf.train import scoring  # pylint: disable=g-import-not-at-top
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, **TINY)
  policy, ref = CausalLM(config, rngs=nnx.Rngs(0)), CausalLM(config, rngs=nnx.Rngs(1))
  rng = np.random.default_rng(0)
  ids, mask = padding.encode_prompts(world.tokenizer, world.prompts(3, "train"), 6)
  tok = lambda: jnp.asarray(rng.integers(3, 20, (3, 5)), jnp.int32)  # noqa: E731
  chosen, rejected = tok(), tok()
  cmask, rmask = jnp.asarray([[1, 1, 1, 0, 0]] * 3), jnp.asarray([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
  seq = nnx.jit(lambda m, t, k: jnp.sum(scoring.response_logps(m, jnp.asarray(ids), jnp.asarray(mask), t, k)[0], 1))
  pairs = {"prompt_ids": jnp.asarray(ids), "prompt_mask": jnp.asarray(mask), "chosen_tokens": chosen,
           "chosen_mask": cmask, "rejected_tokens": rejected, "rejected_mask": rmask,
           "ref_chosen_logps": seq(ref, chosen, cmask), "ref_rejected_logps": seq(ref, rejected, rmask),
           "pair_weight": jnp.ones(3)}
  loss = rl.RLLossConfig(algorithm="online_dpo", num_generations=2, beta=0.5)
  total, weight, _ = nnx.jit(lambda m, b: rl.online_dpo_loss_fn(loss)(m, b, None))(rl.RLModel(policy, ref, {}), pairs)
  logits = (seq(policy, chosen, cmask) - pairs["ref_chosen_logps"]) - (seq(policy, rejected, rmask)
                                                                      - pairs["ref_rejected_logps"])
  assert float(total / weight) == pytest.approx(float(jnp.mean(-jax.nn.log_sigmoid(0.5 * logits))), rel=1e-5)


def _cfg(**loss):
  return from_config({
      "seed": 3, "model": {"config": TINY}, "prompts_per_step": 2, "max_prompt_length": 6, "eval_prompts": 0,
      "rewards": ({"kind": "gold"},), "sampling": {"max_new_tokens": 6}, "optimizer": {"learning_rate": 3e-2},
      "loss": {"algorithm": "online_dpo", "num_generations": 2, "beta": 0.1, **loss}}, rl.RLConfig)


def _pure(tree):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(tree))


def test_reference_schedule_in_the_step(world):
  """ref_update_every=2: after step 1 the reference is still the initial policy, after step 2 it is exactly the
  policy, after step 3 it is still step 2's policy (not step 3's); ref/total_updates counts 0, 1, 1. Then the soft
  update alpha * policy + (1 - alpha) * ref by hand, alpha = 1 an exact copy, apply=False a no-op."""
  cfg = _cfg(ref_update_every=2)
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, **TINY)
  optimizer = optim.make_optimizer(cfg.optimizer)
  setup = rl.rl_setup(cfg, config, None, {}, optimizer, None)
  state = setup.init()
  sources = [rewards_lib.RewardSource("gold", 1.0, rewards_lib.gold_score(world))]
  step = jax.jit(rl.make_online_dpo_step(setup.graphdef, cfg, optimizer, sources, eos_ids=(world.tokenizer.eos_id,),
                                         pad_id=world.tokenizer.pad_id, world=world))
  ids, mask = padding.encode_prompts(world.tokenizer, world.prompts(2, "train"), 6)
  prompts = {"prompt_ids": jnp.asarray(ids), "prompt_mask": jnp.asarray(mask), "prompt_index": jnp.arange(2)}
  initial = _pure(state.params)["policy"]
  policies, refs, totals = [], [], []
  for _ in range(3):
    state, metrics = step(state, prompts)
    policies.append(_pure(state.params)["policy"])
    refs.append(_pure(state.extra)["reference"])
    totals.append(float(metrics["ref/total_updates"]))
    assert np.isfinite(float(metrics["loss"].total))
  assert totals == [0.0, 1.0, 1.0]
  jax.tree.map(np.testing.assert_array_equal, refs[0], initial)
  jax.tree.map(np.testing.assert_array_equal, refs[1], policies[1])
  jax.tree.map(np.testing.assert_array_equal, refs[2], policies[1])
  assert not np.array_equal(jax.tree.leaves(policies[2])[0], jax.tree.leaves(policies[1])[0])
  # TR-DPO's soft update by hand on this state (policy = step 3's, reference = step 2's policy).
  soft = _pure(rl.update_reference(state, 0.3).extra)["reference"]
  jax.tree.map(lambda s, p, r: np.testing.assert_allclose(s, 0.3 * p + 0.7 * r, rtol=1e-6, atol=1e-7),
               soft, policies[2], refs[2])
  jax.tree.map(np.testing.assert_array_equal, _pure(rl.update_reference(state, 1.0).extra)["reference"], policies[2])
  kept = _pure(rl.update_reference(state, 0.3, jnp.asarray(False)).extra)["reference"]
  jax.tree.map(np.testing.assert_array_equal, kept, refs[2])


# ------------------------------------------------------------------------------------------------ resume
def _stage_config(steps):
  return from_config({
      "seed": 3, "model": {"config": TINY}, "prompts": {"world": {"num_prompts": 256, "max_response_len": 12}},
      "num_prompts": 16, "prompts_per_step": 2, "max_prompt_length": 6, "eval_prompts": 0, "num_devices": 1,
      "rewards": ({"kind": "gold"},),
      "loss": {"algorithm": "online_dpo", "num_generations": 2, "beta": 0.1, "ref_update_every": 1,
               "ref_update_alpha": 0.5, "missing_eos_penalty": 0.5},
      "sampling": {"max_new_tokens": 6}, "optimizer": {"learning_rate": 3e-2},
      "loop": {"num_steps": steps, "log_every": 1, "checkpoint_every": 1, "progress": False, "tensorboard": False,
               "async_checkpoints": False}}, rl.RLConfig)


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {d["step"]: d for d in map(json.loads, f) if "train/loss" in d}


def test_resume_keeps_the_moved_reference(tmp_path):
  """A soft reference update every step: a run stopped after step 1 and resumed logs the uninterrupted run's step 2
  exactly (its loss reads the moved reference, which only the checkpoint holds) and saves the same policy."""
  full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
  rl.run(_stage_config(2), full, {})
  rl.run(_stage_config(1), resumed, {})
  rl.run(_stage_config(2), resumed, {})
  a, b = _lines(full), _lines(resumed)
  assert a[2]["train/ref/total_updates"] == 2.0 and a[2]["train/ref/updates"] == 1.0
  for key in ("train/loss", "train/rewards/chosen", "train/rewards/margin", "train/kl", "train/scores/margin",
              "train/gold"):
    assert a[2][key] == b[2][key], key
  saved = [load_file(os.path.join(w, "model", "model.safetensors")) for w in (full, resumed)]
  assert sorted(saved[0]) == sorted(saved[1])
  for k in saved[0]:
    np.testing.assert_array_equal(saved[0][k], saved[1][k])


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("overrides,key", [
    ({"loss": {"algorithm": "online_dpo", "beta": 0.1}}, "loss.num_generations"),
    ({"loss": {"algorithm": "online_dpo", "num_generations": 2, "kl_mode": "reward"}}, "loss.kl_mode"),
    ({"loss": {"algorithm": "online_dpo", "num_generations": 2, "variant": "dapo"}}, "loss.variant"),
    ({"loss": {"algorithm": "online_dpo", "num_generations": 2, "epsilon": 0.3}}, "loss.epsilon"),
    ({"loss": {"algorithm": "online_dpo", "num_generations": 2, "ref_update_alpha": 0.0}}, "loss.ref_update_alpha"),
    ({"loss": {"algorithm": "online_dpo", "num_generations": 2, "ties": "random"}}, "loss.ties"),
    ({"loss": {"algorithm": "online_dpo", "num_generations": 2, "dpo_loss_type": "aot"}}, "loss.dpo_loss_type"),
    ({"loss": {"algorithm": "online_dpo", "num_generations": 2, "missing_eos_penalty": -1.0}},
     "loss.missing_eos_penalty"),
    ({"loss": {"algorithm": "online_dpo", "num_generations": 2}, "prompts_per_step": 3,
      "optimizer": {"grad_accum_steps": 2}}, "optimizer.grad_accum_steps"),
    ({"loss": {"ref_update_every": 4}}, "loss.ref_update_every"),
    ({"loss": {"algorithm": "ppo", "kl_mode": "reward", "dpo_loss_type": "ipo"}}, "loss.dpo_loss_type"),
])
def test_config_errors_name_the_key(overrides, key):
  with pytest.raises(ConfigError, match=rf"config\.{key}\b"):
    from_config({"prompts_per_step": 2, **overrides}, rl.RLConfig)


def test_config_verdict_rule_parses_and_names_table_metrics():
  from experiments.analysis import verdicts  # pylint: disable=g-import-not-at-top
  path = os.path.join(REPO_ROOT, "configs", "online_dpo.py")
  (rule,) = verdicts.rules_of(path)
  assert (rule.sweep, rule.value, rule.baseline, rule.direction) == ("online_dpo", "evaluate/gold/gain",
                                                                    "evaluate_dpo/gold/gain", 1)
  assert {rule.value, rule.baseline} <= set(config_lib.load_config(path).tables.metrics)


# ------------------------------------------------------------------------------------------------ end to end
def test_smoke_config_runs_end_to_end(tmp_path):
  from experiments import run as run_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(REPO_ROOT, "configs", "online_dpo.py") + ":smoke")
  assert config.online_dpo.loss.algorithm == "online_dpo"
  outputs = run_lib.run(config, str(tmp_path))
  m = outputs["online_dpo"]["metrics"]
  for key in ("train/loss", "train/rewards/accuracy", "train/rewards/margin", "train/scores/margin", "train/kl",
              "train/pairs/ties", "train/ref/total_updates"):
    assert np.isfinite(m[key]), key
  assert m["train/scores/margin"] >= 0.0  # chosen = the higher-scored sample
  assert np.isfinite(outputs["evaluate"]["metrics"]["gold/gain"])
