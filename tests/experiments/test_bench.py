"""experiments.bench plumbing at smoke size (not a timed test): both sides train the same model on the same data.

The independent references are TRL 1.16 (RewardTrainer / DPOTrainer, PyTorch) and transformers' generate(): with
the same weights, token ids and optimizer settings, every step's loss and every greedy token must agree, which is
what makes the benchmark's throughput ratio a like-for-like comparison.
"""

import json
import pathlib
import sys

import numpy as np
import pytest
from conftest import require_module

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

require_module("trl")

from experiments import bench as bench_cli  # noqa: E402
from experiments import bench_lib  # noqa: E402

SMOKE = bench_lib.SHAPES["smoke"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return bench_lib.write_model("smoke", tmp_path_factory.mktemp("bench") / "smoke")


@pytest.mark.parametrize("algo", ["rm", "dpo"])
def test_jaxrlhf_and_trl_train_identically(folder, algo):
  jax_row = bench_lib.run_case("smoke", algo, "jaxrlhf", folder, SMOKE, steps=2, warmup=1, shared_prompt=False)
  trl_row = bench_lib.run_case("smoke", algo, "trl", folder, SMOKE, steps=2, warmup=1)
  shared_row = bench_lib.run_case("smoke", algo, "jaxrlhf", folder, SMOKE, steps=2, warmup=1, shared_prompt=True)
  assert len(jax_row["losses"]) == len(trl_row["losses"]) == len(shared_row["losses"]) == 3
  # Same weights, data order, AdamW and clipping: the whole trajectory matches, not only the first loss; with the
  # prompt read once ([prompt | chosen | rejected] rows) too.
  np.testing.assert_allclose(jax_row["losses"], trl_row["losses"], atol=1e-5)
  np.testing.assert_allclose(shared_row["losses"], trl_row["losses"], atol=1e-5)
  assert shared_row["shared_prompt"] and "shared_prompt" not in jax_row
  if algo == "dpo":
    assert jax_row["losses"][0] == pytest.approx(np.log(2.0), abs=1e-6)  # policy == reference at step 0
  for row in (jax_row, trl_row):
    assert row["tokens_per_s"] == pytest.approx(2 * SMOKE.batch * SMOKE.seq / row["step_s"])
    assert row["pairs_per_s"] == pytest.approx(SMOKE.batch / row["step_s"])
  # The shared rows' GFLOP/s count the FLOPs they run (fewer than the two rows'); tokens/s the pairs' two-row tokens.
  assert shared_row["tokens_per_s"] == pytest.approx(2 * SMOKE.batch * SMOKE.seq / shared_row["step_s"])
  hf_config = bench_lib.read_hf_config(folder)
  assert shared_row["flops_per_step"] == bench_lib.model_flops_per_step(hf_config, algo, SMOKE, shared_prompt=True)
  assert shared_row["flops_per_step"] < jax_row["flops_per_step"] == bench_lib.model_flops_per_step(
      hf_config, algo, SMOKE)
  assert jax_row["params"] >= trl_row["params"]  # ours adds the reward head's bias for "rm"
  assert jax_row["xla_step_mib"] > 0


@pytest.mark.parametrize("algo,lm_head", [("rm", False), ("dpo", True)])
def test_default_layout_is_the_stages_auto_rule(folder, algo, lm_head):
  # Hand count for SMOKE_CONFIG (D 32, one layer, 2 heads of 16, 1 KV head, gated MLP 64): q, o 32x32; k, v 32x16;
  # gate, up, down 32x64; two norm scales of 32 -> 9,280 weights, 2 FLOPs each per token; the LM head 2 x 32 x 128
  # for DPO; attention 4 L N H T^2 = 128 T^2. Pairs: prompt 8, responses 8: shared rows of 24 vs two rows of 16.
  per_token = 2 * 9280 + (2 * 32 * 128 if lm_head else 0)
  cost = lambda t: per_token * t + 128 * t * t  # noqa: E731
  used, ratio = bench_lib.library_shared_prompt(bench_lib.read_hf_config(folder), algo, SMOKE)
  assert ratio == pytest.approx(cost(24) / (2 * cost(16)), rel=1e-12)
  assert used == (ratio <= 0.9)
  # The command line's default is that rule, as the stages' data.shared_prompt default is.
  assert bench_cli.parser().parse_args([]).shared_prompt == "auto"


def test_generate_matches_transformers(folder):
  jax_row = bench_lib.run_case("smoke", "generate", "jaxrlhf", folder, SMOKE, steps=1)
  hf_row = bench_lib.run_case("smoke", "generate", "trl", folder, SMOKE, steps=1)
  assert np.asarray(jax_row["tokens"]).shape == (SMOKE.gen_batch, SMOKE.gen_new)
  assert jax_row["tokens"] == hf_row["tokens"]


def test_hf_tokenizer_round_trips_ids():
  tok = bench_lib.hf_tokenizer(64)
  pairs = bench_lib.make_pairs(64, SMOKE, num_batches=1)
  text = bench_lib._text(pairs["chosen"][0])  # pylint: disable=protected-access
  assert tok(text, add_special_tokens=False)["input_ids"] == pairs["chosen"][0].tolist()
  assert tok.pad_token_id == bench_lib.PAD_ID and tok.eos_token_id == bench_lib.EOS_ID


def test_flops_hand_count():
  # SMOKE_CONFIG: D=32, 1 layer, 2 query / 1 KV heads of 16, gated MLP 64, V=128.
  attn = 32 * 16 * (2 * 2 + 2 * 1)
  mlp = 32 * 64 * 3
  per_token_rm = 6 * (attn + mlp) + 6 * SMOKE.seq * 2 * 16 * 1
  per_token_dpo = per_token_rm + 6 * 32 * 128
  from jaxrlhf.models import ModelConfig  # pylint: disable=g-import-not-at-top
  hf_config = ModelConfig(**bench_lib.SMOKE_CONFIG).to_hf()
  tokens = 2 * SMOKE.batch * SMOKE.seq
  assert bench_lib.model_flops_per_step(hf_config, "rm", SMOKE) == per_token_rm * tokens
  assert bench_lib.model_flops_per_step(hf_config, "dpo", SMOKE) == per_token_dpo * tokens
  # A resident reference adds its forward pass (a third of training) to the step's work.
  assert bench_lib.model_flops_per_step(hf_config, "dpo_resident", SMOKE) == pytest.approx(
      4 / 3 * per_token_dpo * tokens, rel=1e-12)
  # LoRA (r=8 on q, k, v, o, gate, up, down): the frozen base needs no weight gradients, so its matmuls count 4x
  # their parameters (forward + input gradient), the attention 3x, the adapters 6x: r x (in + out) each.
  adapters = 8 * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 3 * (32 + 64))
  attention = 6 * SMOKE.seq * 2 * 16 * 1  # per token, trained (3 x causal forward)
  assert bench_lib.model_flops_per_step(hf_config, "rm_lora", SMOKE) == pytest.approx(
      tokens * (4 * (attn + mlp) + attention + 6 * adapters), rel=1e-12)
  assert bench_lib.model_flops_per_step(hf_config, "rm_ens_lora", SMOKE) == pytest.approx(
      bench_lib.ENSEMBLE_K * tokens * (4 * (attn + mlp) + attention + 6 * adapters), rel=1e-12)
  # dpo_lora: the LM head is frozen too (4x), and the reference (adapters off) runs one forward.
  assert bench_lib.model_flops_per_step(hf_config, "dpo_lora", SMOKE) == pytest.approx(
      tokens * (4 * (attn + mlp + 32 * 128) + attention + 6 * adapters + per_token_dpo / 3), rel=1e-12)
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models.decoder import CausalLM  # pylint: disable=g-import-not-at-top
  lora_model = nnx.eval_shape(lambda: CausalLM(ModelConfig(**bench_lib.SMOKE_CONFIG), rngs=nnx.Rngs(0),
                                               lora=bench_lib.LORA))
  assert sum(x.size for x in jax_leaves(nnx.state(lora_model, nnx.PathContains("lora")))) == adapters
  # Shared-prompt rows (P = 8, R = 8): 2 rows of 24 tokens; keys per row: the prompt 8^2 / 2, each response
  # 8 x 8 + 8^2 / 2; forward 2 x params per token + 4 x heads x head_dim per (query, key); x3 trained.
  rows_tokens, rows_keys = 2 * 24, 2 * (32 + 2 * (64 + 32))
  assert bench_lib.model_flops_per_step(hf_config, "rm", SMOKE, shared_prompt=True) == pytest.approx(
      3 * (2 * (attn + mlp) * rows_tokens + 4 * 2 * 16 * rows_keys), rel=1e-12)
  assert bench_lib.model_flops_per_step(hf_config, "dpo", SMOKE, shared_prompt=True) == pytest.approx(
      3 * (2 * (attn + mlp + 32 * 128) * rows_tokens + 4 * 2 * 16 * rows_keys), rel=1e-12)
  # GRPO (2 prompts x G = 4 rows of P = 4 + N = 4 tokens). Rollout: each prompt's prefill once (4 tokens, causal,
  # the LM head at its last position), then 8 rows x 3 fed-back tokens through every weight and the LM head, each
  # attending to P + t filled slots (t = 1..3: mean 6). Log-prob passes: the LM head at the N = 4 response positions.
  p, n, rows = SMOKE.gen_prompt, SMOKE.rl_new, SMOKE.rl_prompts * bench_lib.GRPO_GENERATIONS
  length = p + n
  body, head, pair = 2 * (attn + mlp), 2 * 32 * 128, 4 * 2 * 16  # forward per token; per (query, key)
  prefill = p * body + pair * p * p / 2 + head
  decode = (n - 1) * (body + head + pair * (p + n / 2))
  rollout = SMOKE.rl_prompts * prefill + rows * decode
  forward = length * body + pair * length * length / 2 + n * head  # reference / old-policy log-probs
  reward = length * body + pair * length * length / 2
  auto = bench_lib.grpo_flops_per_step(hf_config, SMOKE)
  assert auto == pytest.approx(rollout + rows * (3 * forward + forward + reward), rel=1e-12)
  assert auto == 7_933_952  # the same sum, written out: 823,296 + 4,423,680 + 1,474,560 + 1,212,416
  rollout_old = bench_lib.grpo_flops_per_step(hf_config, SMOKE, old_logps="rollout")
  assert rollout_old - auto == pytest.approx(rows * forward, rel=1e-9)
  assert bench_lib.grpo_flops_per_step(hf_config, SMOKE, num_iterations=2) == pytest.approx(
      rollout + rows * (2 * 3 * forward + 2 * forward + reward), rel=1e-12)


def test_flops_against_xla_cost_analysis():
  """XLA's own count of the compiled gradient programs (CPU, fp32, unrolled layers: a scanned body is counted once)
  is the independent reference: full training is 6N + attention; with the base frozen (here only the norm scales
  train, so every layer still needs its input gradient) the matmuls cost 4N: forward and backward to their inputs,
  no weight gradients, the rule of the LoRA cases' count. XLA computes the full T x T scores (the causal mask is
  applied after them), MaxText's count the causal half, so that half is added."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models import ModelConfig  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models.decoder import CausalLM  # pylint: disable=g-import-not-at-top
  c = ModelConfig(family="llama", vocab_size=512, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=16, mlp_dim=128, max_position_embeddings=64, dtype="float32", param_dtype="float32",
                  attention="xla", scan_layers=False)
  shape = bench_lib.Shape(batch=2, seq=32, prompt=16, gen_batch=1, gen_prompt=1, gen_new=2)
  ids = jnp.asarray(np.random.default_rng(0).integers(2, 512, (2 * shape.batch, shape.seq)), jnp.int32)

  def xla_flops(trainable):
    graphdef, params, rest = nnx.split(CausalLM(c, rngs=nnx.Rngs(0)), trainable, ...)

    def loss(p):  # the RM step's backbone: every hidden state feeds the loss, no LM head
      return jnp.sum(nnx.merge(graphdef, p, rest).hidden_states(ids) ** 2)

    cost = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]

  full = xla_flops(nnx.Param)
  frozen = xla_flops(nnx.Any(*(nnx.PathContains(n) for n in ("attn_norm_scale", "mlp_norm_scale",
                                                               "final_norm_scale"))))
  tokens = 2 * shape.batch * shape.seq
  masked_half = 3 * 4 * 4 * 16 * 2 * tokens * shape.seq / 2  # 3 x 4 H hd L per (query, key) x rows x T^2 / 2
  want_full = bench_lib.model_flops_per_step(c.to_hf(), "rm", shape) + masked_half
  # The LoRA adapters' share of the count: r = 8 x (in + out) on q, k, v, o, gate, up, down, 2 layers, 6x a token.
  adapters = 6 * 2 * 8 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 128)) * tokens
  want_frozen = bench_lib.model_flops_per_step(c.to_hf(), "rm_lora", shape) - adapters + masked_half
  assert full == pytest.approx(want_full, rel=0.05)  # the rest: softmax, norms, activations (elementwise)
  assert frozen == pytest.approx(want_frozen, rel=0.06)
  # The weight gradients alone (the elementwise rest cancels): 2N per token, 19.06 vs 18.87 MFLOP here.
  assert full - frozen == pytest.approx(want_full - want_frozen, rel=0.03)


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(tree)


def test_online_dpo_case_runs_the_stage_step_with_and_without_the_rollout_forward(folder):
  """The online DPO case times `rl.make_online_dpo_step` (2 samples per prompt): old_logps "auto" and "rollout" give
  the same losses (the rollout forward only fed metrics); the FLOPs count drops by that forward."""
  rows = {old: bench_lib.run_case("smoke", "online_dpo", "jaxrlhf", folder, SMOKE, steps=1, warmup=1,
                                  old_logps=old) for old in ("auto", "rollout")}
  auto, rollout = rows["auto"], rows["rollout"]
  assert auto["generations"] == 2 and auto["batch"] == SMOKE.rl_prompts * 2
  np.testing.assert_allclose(auto["losses"], rollout["losses"], rtol=1e-5)
  assert all(np.isfinite(auto["losses"]))
  length = SMOKE.gen_prompt + SMOKE.rl_new
  # The old policy's forward (SMOKE_CONFIG): 9,216 matmul weights, 2 FLOPs each per token, causal attention
  # 4 x 2 heads x 16 x L^2 / 2, the LM head 2 x 32 x 128 at the N response positions only.
  forward = length * 2 * 9216 + 4 * 2 * 16 * length * length / 2 + SMOKE.rl_new * 2 * 32 * 128
  assert rollout["flops_per_step"] - auto["flops_per_step"] == pytest.approx(SMOKE.rl_prompts * 2 * forward,
                                                                             rel=1e-9)


def test_fastest_round_and_ratio():
  rows = [dict(model="tiny", algo="rm", side="jaxrlhf", step_s=2.0, tokens_per_s=10.0),
          dict(model="tiny", algo="rm", side="trl", step_s=5.0, tokens_per_s=4.0),
          dict(model="tiny", algo="rm", side="jaxrlhf", step_s=1.0, tokens_per_s=20.0),
          dict(model="tiny", algo="rm", side="trl", error="exit 1: boom")]
  best = bench_cli.fastest_rounds(rows)
  assert [(r["side"], r["step_s"], r["round_step_s"]) for r in best] == [("jaxrlhf", 1.0, [2.0, 1.0]),
                                                                         ("trl", 5.0, [5.0])]
  assert bench_cli.ratio(best, "tiny", "rm") == pytest.approx(5.0)
  assert bench_cli.ratio(best, "tiny", "dpo") is None


def test_cli_smoke_writes_json(tmp_path, capsys):
  out = tmp_path / "bench.json"
  rows = bench_cli.main(["--smoke", "--only", "rm", "--workdir", str(tmp_path), "--out", str(out)])
  assert {(r["algo"], r["side"]) for r in rows} == {("rm", "jaxrlhf"), ("rm", "trl")}
  saved = json.loads(out.read_text())
  assert "load" in saved["machine"] and len(saved["rows"]) == 2
  assert "| smoke | reward model (BT) (jaxrlhf: shared prompt) |" in capsys.readouterr().out  # the auto layout


def test_bad_flags_name_the_flag():
  with pytest.raises(ValueError, match="--only"):
    bench_cli.main(["--smoke", "--only", "ppo"])
  with pytest.raises(ValueError, match="--models"):
    bench_cli.main(["--models", "gpt5"])


def test_dpo_lora_case_trains_only_adapters_on_one_base_copy(folder):
  full = bench_lib.run_case("smoke", "dpo_resident", "jaxrlhf", folder, SMOKE, steps=2, warmup=1)
  lora = bench_lib.run_case("smoke", "dpo_lora", "jaxrlhf", folder, SMOKE, steps=2, warmup=1)
  c = bench_lib.SMOKE_CONFIG
  L, D, N, K, H, F = (c[k] for k in ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"))
  r = bench_lib.LORA["rank"]
  # Hand count of r (in + out) per target: q (D, N*H), k and v (D, K*H), o (N*H, D), gate and up (D, F), down (F, D).
  adapters = L * r * ((D + N * H) * 2 + (D + K * H) * 2 + (D + F) * 3)
  assert lora["params"] == adapters
  base_mib = full["params_mib"]
  assert full["frozen_mib"] == pytest.approx(base_mib)  # full finetuning holds a resident reference copy
  assert lora["frozen_mib"] == pytest.approx(base_mib)  # LoRA holds the base once, frozen; no reference copy
  assert lora["params_mib"] == pytest.approx(adapters * 4 / 2**20)
  assert lora["opt_state_mib"] < 2.01 * lora["params_mib"] < full["opt_state_mib"]
  # B = 0 at step 0: the LoRA policy equals its reference, as the full policy does (loss log 2 on both).
  assert lora["losses"][0] == pytest.approx(full["losses"][0], abs=1e-6) == pytest.approx(np.log(2), abs=1e-6)
  assert lora["losses"][-1] != lora["losses"][0]


def test_dpo_case_takes_the_stages_logps_path(folder):
  """--logps_path reaches the DPO step (the row records the path the stage rule resolved); the fused path trains like
  the full one (same losses to float rounding)."""
  rows = {path: bench_lib.run_case("smoke", "dpo", "jaxrlhf", folder, SMOKE, steps=2, warmup=1, shared_prompt=False,
                                   logps_path=path) for path in ("auto", "fused")}
  assert rows["auto"]["logps_path"] == "full" and rows["fused"]["logps_path"] == "fused"  # auto on the CPU: full
  np.testing.assert_allclose(rows["fused"]["losses"], rows["auto"]["losses"], rtol=1e-5, atol=1e-6)
