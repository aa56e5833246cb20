"""experiments/bench_gpu.py on a CPU: the --smoke run of every case, as the GPU machine runs it (a script, with the
input pipeline's grain absent: the accelerator image has jax, flax and optax, and the run carries only the
ml_collections wheel), its budget guard and child-process handling, and hand-counted FLOPs / bytes.

Not a timed test: the numbers that matter come from a GPU. The references are hand counts from the model shapes,
the first H200 session's published result (docs/performance.md) and the library's unfused log-softmax path.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from flax import nnx

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import bench_gpu  # noqa: E402
from experiments import gpu_bench_cases as cases  # noqa: E402
from jaxrlhf.models.config import ModelConfig  # noqa: E402
from jaxrlhf.models.decoder import CausalLM  # noqa: E402

SCRIPT = REPO_ROOT / "experiments" / "bench_gpu.py"


def _run_script(tmp_path, *flags, timeout=900):
  """Runs the script as the GPU machine does, with grain unimportable (the GPU image lacks it; the script must not
  need the input pipeline or the trainer); returns (returncode, stdout, the JSON written to --out)."""
  block = tmp_path / "block"
  for name in ("grain",):
    (block / name).mkdir(parents=True)
    (block / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU image')\n")
  out = tmp_path / "bench_gpu.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(block), str(REPO_ROOT)]))
  env.pop("XLA_FLAGS", None)  # the tests' 8 host devices are not the script's setting
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path.home() / ".cache" / "jaxrlhf-xla"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  proc = subprocess.run([sys.executable, str(SCRIPT), *flags, "--out", str(out)], capture_output=True, text=True,
                        cwd=REPO_ROOT, env=env, timeout=timeout, check=False)
  saved = json.loads(out.read_text()) if out.exists() else None
  return proc.returncode, proc.stdout + proc.stderr, saved


@pytest.mark.slow
def test_smoke_runs_every_case_as_a_script_without_the_train_package(tmp_path):
  rc, log, saved = _run_script(tmp_path, "--smoke", "--commit", "abc123")
  assert rc == 0, log[-3000:]
  rows = {r["entry"]: r for r in saved["rows"]}
  assert list(rows) == bench_gpu.DEFAULT_ONLY.split(","), log[-3000:]
  bad = {e: r.get("error") for e, r in rows.items() if r["status"] != "ok"}
  assert not bad, bad
  assert saved["header"]["commit"] == "abc123" and saved["header"]["versions"]["jax"]
  assert saved["device"]["backend"] == "cpu"
  # Loss equality of the fast paths: the fused gather (the stages' GPU default, so the plain `dpo` case) has the
  # chunked one's forward, and both equal the unfused (B, T, V) log-softmax at the initial parameters; its bf16
  # gradients differ from the fp32 ones by rounding.
  fused, chunked, check = rows["dpo"], rows["dpo:logps=chunked"], rows["dpo_check"]
  assert (fused["logps"], chunked["logps"]) == ("fused", "chunked")
  assert chunked["loss0"] == fused["loss0"] and chunked["vs_base"]["aux0_rel"] == 0.0
  assert fused["vs_unfused"]["loss0_rel"] < 1e-6 and chunked["vs_unfused"]["loss0_rel"] < 1e-6
  assert check["chunked_vs_full"]["loss_rel"] < 1e-6 and check["chunked_vs_full"]["grad_head_rel"] < 1e-6
  assert 0.0 < check["fused_vs_full"]["grad_hidden_rel"] < 2e-2 and check["fused_vs_full"]["logps_rel"] < 1e-6
  for entry, batch in (("gen:b=1", 1), ("gen:b=64", 64), ("gen:b=256", 256)):
    assert rows[entry]["batch"] == batch and rows[entry]["all_rows_full_length"]
    assert rows[entry]["weight_bytes"] > 0 and rows[entry]["kv_bytes_static"] > rows[entry]["kv_bytes_filled"]
    assert rows[entry]["cache_bucket"] == 128  # the library's CPU rule (the script runs on a CPU here)
  assert rows["gen:b=256:bucket=128"]["cache_bucket"] == 128 and rows["grpo"]["cache_bucket"] == 128
  ens = rows["ens"]
  assert ens["members"] == 5 and set(ens["loops"]) == {"vmap", "scan"}
  assert ens["ratio"] == ens["loops"][ens["fastest_loop"]]["ratio"] > 0
  for loop in ("vmap", "scan"):  # member 0 of either loop starts from the single member's loss
    assert ens["loops"][loop]["member0_loss0"] == pytest.approx(ens["single_loss0"], rel=1e-6)
  grpo = rows["grpo"]
  assert grpo["all_rows_full_length"] and grpo["timed_iterations"] == 1 and grpo["logps"] == "fused"
  assert all(grpo["seconds"][p] > 0 for p in ("rollout", "score", "reward", "update"))
  for entry in ("dpo8b", "rm8b"):
    assert rows[entry]["config"]["param_dtype"] == "bfloat16" and rows[entry]["config"]["remat"] == "full"
    assert rows[entry]["mu_dtype"] == "bf16"
  assert "| rm | " in log and "| gen:b=256 | 256 |" in log and "**ratio" in log


def _fake_child(monkeypatch):
  """Child processes that report rm / ens / gen, crash on dpo and hang on grpo."""
  def child_args(args, texts, deadline):
    del args, deadline
    code = (f"import json, sys, time\nprint('@@DEVICE ' + json.dumps({{'backend': 'fake'}}), flush=True)\n"
            f"for t in {texts!r}:\n"
            "  print('@@START ' + t, flush=True)\n"
            "  if t == 'dpo':\n    print('boom', flush=True)\n    sys.exit(3)\n"
            "  if t == 'grpo':\n    time.sleep(60)\n"
            "  print('@@ROW ' + json.dumps({'entry': t, 'kind': t, 'status': 'ok'}), flush=True)\n")
    return [sys.executable, "-c", code]
  monkeypatch.setattr(bench_gpu, "_child_args", child_args)


def test_a_crashed_child_is_replaced_and_a_child_past_the_budget_is_stopped(monkeypatch):
  _fake_child(monkeypatch)
  rows, device = [], {}
  bench_gpu.run_group(None, ["rm", "dpo", "ens"], float("inf"), rows.append, device)
  assert [(r["entry"], r["status"]) for r in rows] == [("rm", "ok"), ("dpo", "failed"), ("ens", "ok")]
  assert "exited with 3" in rows[1]["error"] and "boom" in rows[1]["error"] and device == {"backend": "fake"}
  rows = []
  bench_gpu.run_group(None, ["grpo", "gen"], time.time() + cases.CHILD_START_S + 2, rows.append, device)
  assert [(r["entry"], r["status"]) for r in rows] == [("grpo", "killed"), ("gen", "skipped")]


def test_budget_guard_skips_before_building_anything(capsys):
  rows = bench_gpu.main(["--only", "rm,dpo8b", "--isolate", "none", "--budget_s", "1"])
  assert [(r["entry"], r["status"]) for r in rows] == [("rm", "skipped"), ("dpo8b", "skipped")]
  assert "skipped: rm: budget" in capsys.readouterr().out


def test_entries_and_groups():
  assert cases.parse_entry("gen:b=256:bucket=0").levers == {"b": 256, "bucket": 0}  # 0: read the whole cache
  assert cases.parse_entry("gen:b=1:tpi=8:profile").levers == {"b": 1, "tpi": 8, "profile": True}
  entry = cases.parse_entry("dpo:logps=fused:b=16:unroll")
  assert (entry.kind, entry.levers) == ("dpo", {"logps": "fused", "b": 16, "unroll": True})
  # The layer loop: unroll / scan force ModelConfig.scan_layers, neither leaves the library's backend rule (None).
  settings = cases.Settings(smoke=True)
  assert [cases.model_config(cases.parse_entry(e), settings).scan_layers for e in ("rm", "rm:unroll", "rm:scan")] == [
      None, False, True]
  for bad, match in (("ppo", "unknown case"), ("rm:logps=fused", "unknown lever 'logps'"),
                     ("dpo:logps=fast", "expected one of"), ("gen:b=0", "positive integer"),
                     ("gen:bucket=-1", "integer >= 0"),
                     ("gen:unroll=1", "is a flag"), ("rm:remat", "needs a value"), ("gen:tpi=0", "positive"),
                     ("gen:profile=1", "is a flag"), ("rm:profile", "unknown lever"),
                     ("rm:unroll:scan", "contradict")):
    with pytest.raises(ValueError, match="--only") as info:
      cases.parse_entry(bad)
    assert match in str(info.value)
  with pytest.raises(ValueError, match="--only"):
    bench_gpu.main(["--only", "rm,gen:b=x"])
  assert bench_gpu.expand_only("rm,extras")[1:] == bench_gpu.EXTRAS.split(",")
  default = bench_gpu.expand_only("default")
  assert bench_gpu.plan_groups(default, "8b") == [default[:-2], ["dpo8b"], ["rm8b"]]
  assert bench_gpu.plan_groups(["rm", "gen:b=1:xf=cmdbuf", "gen:b=64", "ens"], "8b") == [
      ["rm"], ["gen:b=1:xf=cmdbuf"], ["gen:b=64", "ens"]]
  assert bench_gpu.plan_groups(["rm", "dpo"], "all") == [["rm"], ["dpo"]]


def test_flops_and_bytes_hand_counts():
  c = ModelConfig(**cases.LLAMA_1B, dtype="bfloat16", param_dtype="bfloat16")
  # Per layer: q, k, v, o = 2048 x 64 x (32 + 8 + 8 + 32); SwiGLU = 3 x 2048 x 8192; 16 layers.
  layer = 2048 * 64 * 80 + 3 * 2048 * 8192
  assert cases.matmul_params(c, False) == 16 * layer == 973_078_528
  assert cases.matmul_params(c, True) == 16 * layer + 2048 * 128256
  per_token = 6 * 16 * layer + 6 * 2048 * 32 * 64 * 16
  assert cases.train_flops_per_token(c, 2048, False) == per_token
  assert cases.forward_flops_per_token(c, 2048, False) == per_token / 3
  # docs/performance.md, first H200 session: the RM step at 71,519 tokens/s was 446.4 TFLOP/s (45.1% of 989).
  assert per_token * 71_519 / 1e12 == pytest.approx(446.4, abs=0.05)
  params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: CausalLM(c, rngs=nnx.Rngs(0))), nnx.Param))
  total = 128256 * 2048 + 16 * (layer + 2 * 2048) + 2048  # tied embedding, 2 norms per layer, final norm
  assert cases.tree_size(params) == total == 1_235_814_400
  got = cases.decode_bytes(c, params, batch=4, prompt=512, new=512, bucket=0)
  kv_slot = 2 * 16 * 4 * 8 * 64 * 2  # keys and values, 16 layers, 4 rows, 8 KV heads of 64, bf16
  assert got == dict(weight_bytes=2 * total, kv_bytes_static=kv_slot * 1023, kv_bytes_filled=kv_slot * 768)
  # Phases of 128 slots: steps 1-128 read a cache of 640 slots, 129-256 768, 257-384 896, 385-511 all 1023.
  slots = (128 * (640 + 768 + 896) + 127 * 1023) / 511
  assert cases.mean_cache_slots(512, 512, 128) == pytest.approx(slots) and round(slots, 2) == 831.38
  assert cases.decode_bytes(c, params, 4, 512, 512, bucket=128)["kv_bytes_static"] == int(kv_slot * slots)
  untied = ModelConfig(**dict(cases.SMOKE_UNTIED, dtype="bfloat16", param_dtype="float32"))
  params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: CausalLM(untied, rngs=nnx.Rngs(0))), nnx.Param))
  # An untied embedding is only looked up (B rows), so its bytes are not read per step; the LM head is.
  assert cases.decode_bytes(untied, params, 1, 8, 8, 0)["weight_bytes"] == 4 * (cases.tree_size(params) - 512 * 64)


def test_grpo_flops_count_response_positions_and_one_prefill_per_prompt():
  c = ModelConfig(**cases.LLAMA_1B, dtype="bfloat16", param_dtype="bfloat16")
  layer = 2048 * 64 * 80 + 3 * 2048 * 8192
  body, head, pair = 2 * 16 * layer, 2 * 2048 * 128256, 4 * 32 * 64 * 16  # forward per token, LM head, per key
  # The grpo case's log-prob passes: 256 + 512 tokens, the LM head at the 512 response positions only.
  score = 768 * body + pair * 768 * 768 / 2 + 512 * head
  assert cases.row_flops(c, 768, 512) == pytest.approx(score, rel=1e-12)
  assert cases.row_flops(c, 768, 512, train=True) == pytest.approx(3 * score, rel=1e-12)
  assert cases.row_flops(c, 768, 0) == pytest.approx(768 * body + pair * 768 * 768 / 2, rel=1e-12)
  # Counting the LM head at all 768 positions (the count before) overstated the score / update MFU by 7.5%.
  assert cases.forward_flops_per_token(c, 768, True) * 768 / score == pytest.approx(1.0746, abs=1e-4)
  # Rollout: 64 prompts prefilled once (the LM head at the last position), 512 rows x 511 fed-back tokens, each
  # attending to the 256 + t filled slots (mean 256 + 256).
  rollout = 64 * (256 * body + pair * 256 * 256 / 2 + head) + 512 * 511 * (body + head + pair * (256 + 256))
  assert cases.rollout_flops(c, 64, 8, 256, 512) == pytest.approx(rollout, rel=1e-12)


def test_shared_prompt_rows_count_the_keys_their_mask_allows():
  c = ModelConfig(**cases.LLAMA_1B, dtype="bfloat16", param_dtype="bfloat16")
  body = 2 * 16 * (2048 * 64 * 80 + 3 * 2048 * 8192)  # forward per token without the LM head
  # [prompt 1024 | chosen 1024 | rejected 1024]: prompt tokens see 1024^2 / 2 keys in all, each response
  # 1024 x 1024 (the prompt) + 1024^2 / 2 (itself), not the chosen response that precedes the rejected one.
  keys = 1024 * 1024 / 2 + 2 * (1024 * 1024 + 1024 * 1024 / 2)
  assert keys == 3.5 * 1024 ** 2
  assert cases.shared_row_flops(c, 1024, 1024, with_unembed=False, train=True) == pytest.approx(
      3 * (3072 * body + 4 * 32 * 64 * 16 * keys), rel=1e-12)
  # A causal count over the whole 3072-token row (the count before) has 4.5 x 1024^2 keys: +2.1% for the RM step.
  causal = cases.train_flops_per_token(c, 3072, False) * 3072
  assert causal / cases.shared_row_flops(c, 1024, 1024, False, train=True) == pytest.approx(1.0213, abs=1e-4)


def test_gen_needs_a_decode_step_to_time():
  # new=1: the prefill emits the only token, so (total - prefill) / (new - 1) would time noise (it gave -1.5 ms).
  row = cases.run_entry(cases.parse_entry("gen:new=1"), cases.Settings(smoke=True))
  assert row["status"] == "failed" and "gen: new=1; expected >= 2" in row["error"]


def test_mfu_and_hbm_denominators_follow_the_gpu(monkeypatch):
  # NVIDIA datasheets: dense bf16 (not the 2:4-sparse figure) and HBM bandwidth; jax's device_kind strings.
  assert cases.datasheet_peaks("NVIDIA H100 80GB HBM3") == (989.0, 3.35)  # SXM
  assert cases.datasheet_peaks("NVIDIA H200") == (989.0, 4.8)
  assert cases.datasheet_peaks("NVIDIA H100 PCIe") == (756.0, 2.0)
  assert cases.datasheet_peaks("NVIDIA H100 NVL") == (835.0, 3.9)
  assert cases.datasheet_peaks("NVIDIA GH200 480GB") is None  # not an H200
  args = bench_gpu.parse_args([])
  assert args.peak_tflops is None and args.hbm_tbps is None
  assert "None" not in bench_gpu._child_args(args, ["rm"], float("inf"))  # pylint: disable=protected-access

  class Device:
    device_kind = "NVIDIA H100 80GB HBM3"

    def memory_stats(self):
      return {}

  monkeypatch.setattr(cases.jax, "devices", lambda: [Device()])
  monkeypatch.setattr(cases.jax, "default_backend", lambda: "gpu")
  s = cases.resolve_peaks(bench_gpu.settings_of(args))
  assert (s.peak_tflops, s.hbm_bytes_per_s) == (989.0, 3.35e12)  # not the H200's 4.8 TB/s
  assert cases.device_info(bench_gpu.settings_of(args))["peaks_from"] == "datasheet"
  flags = bench_gpu.settings_of(bench_gpu.parse_args(["--peak_tflops", "500", "--hbm_tbps", "2"]))
  assert cases.resolve_peaks(flags) == flags
  Device.device_kind = "NVIDIA GH200 480GB"
  with pytest.raises(ValueError, match="--peak_tflops / --hbm_tbps: no datasheet figures for device 'NVIDIA GH200"):
    cases.resolve_peaks(bench_gpu.settings_of(args))
  monkeypatch.setattr(cases.jax, "default_backend", lambda: "cpu")
  s = cases.resolve_peaks(bench_gpu.settings_of(args))  # smoke runs on a CPU: placeholders
  assert (s.peak_tflops, s.hbm_bytes_per_s) == (989.0, 4.8e12)


def test_comparisons_against_the_base_row_and_the_unfused_check():
  def train(entry, kind, step_s, loss0, aux0):
    return dict(entry=entry, status="ok", case="train", kind=kind, pairs=8, seq=2048, step_s=step_s, loss0=loss0,
                aux0=aux0)

  rows = [train("dpo", "dpo", 0.6, 0.70, [3.0, 4.0]), train("dpo:logps=fused", "dpo", 0.5, 0.70, [3.0, 4.0]),
          train("dpo:b=8:unroll", "dpo", 0.4, 0.71, [3.0, 4.5]),
          dict(entry="dpo_check", status="ok", case="dpo_check", pairs=8, seq=2048, loss_full=0.7),
          train("rm:unroll", "rm", 0.5, 0.3, [1.0])]
  bench_gpu.add_comparisons(rows)
  assert rows[1]["vs_base"] == dict(base="dpo", speedup=1.2, loss0_rel=0.0, aux0_rel=0.0)
  assert rows[2]["vs_base"]["speedup"] == 1.5 and rows[2]["vs_base"]["aux0_rel"] == pytest.approx(0.1)
  assert rows[2]["vs_unfused"]["loss0_rel"] == pytest.approx(0.01 / 0.7)
  assert "vs_base" not in rows[0] and "vs_base" not in rows[4]  # no lever-free rm row to compare with


def test_grpo_old_log_probs_from_the_rollout_train_like_the_detached_ones():
  """The GRPO case's default takes the update's own log-probs, detached, as the old policy's (as the "rl" stage does
  with one update per rollout); `old=rollout` scores them in the score part instead. Both are the same update: the
  loss after it (iteration 1, where the KL to the reference is no longer 0) agrees."""
  s = cases.Settings(smoke=True)
  detached = cases.run_grpo(cases.parse_entry("grpo"), s)
  rollout = cases.run_grpo(cases.parse_entry("grpo:old=rollout"), s)
  assert (detached["old_logps"], rollout["old_logps"]) == ("detached", "rollout")
  assert detached["losses"][1] != 0.0
  assert rollout["losses"][1] == pytest.approx(detached["losses"][1], rel=1e-4, abs=1e-7)


def test_gen_profile_reports_the_ops_of_one_decode_step(tmp_path):
  """The `profile` lever traces a prefill-only and a full generation (experiments/trace_summary.py). Two lengths of
  the same decode loop: the full traces differ by a whole number of ops per extra step, which is the per-step count
  both rows report (up to the two programs' few ops outside the loop, spread over the steps); the traces are kept
  under --trace_dir, and a trace that cannot be written is an error in the row, not a failed case."""
  s = cases.Settings(smoke=True, trace_dir=str(tmp_path / "traces"))
  rows = {new: cases.run_gen(cases.parse_entry(f"gen:b=2:new={new}:profile"), s) for new in (6, 10)}
  short, long = rows[6]["profile"], rows[10]["profile"]
  per_step, rest = divmod(long["full_ops"] - short["full_ops"], 4)
  assert rest == 0 and per_step > 10, (short, long)
  for p, steps in ((short, 5), (long, 9)):
    assert p["steps"] == steps and abs(p["ops_per_step"] - per_step) * steps <= 3, p
    # Times are differences of two traces (noisy on a loaded CPU); the op counts above are exact.
    assert isinstance(p["busy_us_per_step"], float) and p["top_ops"] and p["top_ops"][0]["count"] >= 1
    assert p["planes"] == ["/host:CPU"]  # on a GPU: "/device:GPU:0" (CUPTI's kernel events)
  assert sorted(path.name for path in (tmp_path / "traces" / "gen_b-2_new-6_profile").iterdir()) == ["full", "prefill"]
  assert isinstance(rows[6]["decode_step_ms"], float) and "profile" not in cases.run_gen(cases.parse_entry("gen:b=2:new=3"), s)
  # Blocks of 4 decode steps per loop iteration (generate(tokens_per_iteration=4)): the same decode, step for step.
  blocks = cases.run_gen(cases.parse_entry("gen:b=2:new=10:tpi=4:profile"), cases.Settings(smoke=True))
  assert blocks["tokens_per_iteration"] == 4 and blocks["all_rows_full_length"]
  assert abs(blocks["profile"]["ops_per_step"] - per_step) * 9 <= 12, blocks["profile"]
  # A temporary directory by default, removed; an unusable trace directory is reported in the row.
  assert cases.run_gen(cases.parse_entry("gen:b=2:new=3:profile"), cases.Settings(smoke=True))["profile"][
      "trace_dir"] is None
  bad = cases.run_gen(cases.parse_entry("gen:b=2:new=6:profile"), s)["profile"]
  assert set(bad) == {"error"} and "new or empty" in bad["error"]
  # The printed tables: one line per traced case, a failed trace named.
  header = dict(host="h", cpus=2, gpus=[], versions={}, python="3", commit="c", date_utc="now")
  rows10 = dict(rows[10], entry="gen:b=2:new=10:profile", status="ok")
  failed = dict(rows[10], entry="gen:b=2:new=6:profile", status="ok", profile=bad)
  text = bench_gpu.tables(header, {}, [rows10, failed])
  line = next(x for x in text.splitlines() if x.startswith("| gen:b=2:new=10:profile | /host:CPU |"))
  assert f"| {long['ops_per_step']} |" in line and long["top_ops"][0]["name"][:40] in line
  assert "| gen:b=2:new=6:profile | trace failed: ValueError" in text


def test_xla_flag_cases_run_alone_with_their_flags(monkeypatch):
  """xf= presets and profile cases each get a child process of their own whose XLA_FLAGS carry the preset and, for a
  profile, command buffers kept on while tracing (the traced program is the timed one)."""
  assert bench_gpu.plan_groups(["gen:b=1", "gen:b=1:profile", "gen:b=64", "gen:b=1:tpi=8:xf=cmdbuf_unroll:profile"],
                               "8b") == [["gen:b=1"], ["gen:b=1:profile"], ["gen:b=64"],
                                         ["gen:b=1:tpi=8:xf=cmdbuf_unroll:profile"]]

  def child_args(args, texts, deadline):
    del args, deadline
    code = ("import json, os\nprint('@@DEVICE {}', flush=True)\n"
            f"print('@@ROW ' + json.dumps({{'entry': {texts[0]!r}, 'status': 'ok', "
            "'flags': os.environ.get('XLA_FLAGS', '')}), flush=True)\n")
    return [sys.executable, "-c", code]

  monkeypatch.setattr(bench_gpu, "_child_args", child_args)
  monkeypatch.setenv("XLA_FLAGS", "--xla_mine=1")
  flags = {}
  for text in ("gen:b=1", "gen:b=1:profile", "gen:b=1:tpi=8:xf=cmdbuf_unroll:profile"):
    bench_gpu.run_group(None, [text], float("inf"), lambda row: flags.update({row["entry"]: row["flags"]}), {})
  assert flags["gen:b=1"] == "--xla_mine=1"
  assert flags["gen:b=1:profile"] == "--xla_mine=1 " + cases.PROFILE_XLA_FLAGS
  assert flags["gen:b=1:tpi=8:xf=cmdbuf_unroll:profile"] == " ".join(
      ["--xla_mine=1", cases.XLA_PRESETS["cmdbuf_unroll"], cases.PROFILE_XLA_FLAGS])
  assert "--xla_gpu_command_buffer_unroll_loops=true" in cases.XLA_PRESETS["cmdbuf_unroll"]


def test_every_xla_flag_the_script_sets_is_one_xla_knows():
  """XLA aborts a process on an unknown XLA_FLAGS entry, which on the GPU machine would cost a whole case: every
  preset and the profile flag parse here (XLA's flag table is the same on every backend)."""
  for flags in [*cases.XLA_PRESETS.values(), cases.PROFILE_XLA_FLAGS]:
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.ones(2).block_until_ready()"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, (flags, proc.stderr[-500:])
  env = dict(os.environ, XLA_FLAGS="--xla_gpu_no_such_flag=1", JAX_PLATFORMS="cpu")  # the check can fail
  assert subprocess.run([sys.executable, "-c", "import jax; jax.numpy.ones(2)"], env=env, capture_output=True,
                        timeout=120, check=False).returncode != 0
