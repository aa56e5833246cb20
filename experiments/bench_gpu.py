"""GPU benchmark (issue 19's accelerator numbers in one run): train-step MFU, rollout throughput, the GRPO time
split, the K = 5 reward-model ensemble, and an 8B-class model on one GPU.

    PYTHONPATH=. python experiments/bench_gpu.py --budget_s 450 --commit <sha>     # the default case list
    PYTHONPATH=. python experiments/bench_gpu.py --only rm,dpo,dpo:logps=chunked,gen:b=1
    PYTHONPATH=. python experiments/bench_gpu.py --only extras                     # more levers (see EXTRAS)
    PYTHONPATH=. python experiments/bench_gpu.py --smoke                           # every case, tiny, CPU, ~2 min

Run it as a script, not with -m: the `experiments` package's __init__ imports ml_collections, which the GPU
image lacks; as a script (and in its child processes) only jaxrlhf.models / losses / sampling are imported.

`--only` takes entries `kind[:lever...]` (experiments/gpu_bench_cases.py: LEVERS lists each kind's levers):
  rm, dpo             1.24B (Llama-3.2-1B shape) RM / DPO step, 8 pairs x 2 x 2048 tokens, bf16 compute, fp32
                      parameters and AdamW, cuDNN attention, the library's layer default (scan_layers=None:
                      unrolled on GPUs), no remat. Levers: b= (pairs), seq=, remat=none|full|dots|dots_no_batch,
                      unroll / scan (force the layer loop), attn=xla|cudnn, pdtype=fp32|bf16,
                      mu=fp32|bf16 (AdamW first moment), logps=fused|chunked|fused_recompute|full (DPO; fused
                      is the stages' GPU default, `scoring.resolve_logps_path`), chunk=.
  dpo_check           loss, log-probs and LM-head gradients at init by the unfused (B, T, V) path vs chunked vs
                      fused, and the LM-head forward + backward time of each.
  gen                 `sampling.generate`, 1.24B with bf16 weights, prompt 512 + 512 new tokens, greedy, no early
                      stop: prefill and decode apart, tokens/s, HBM bandwidth. Levers: b=, prompt=, new=,
                      pdtype=, unroll, scan, sample, bucket= (`generate(cache_bucket=)`: each decode phase
                      reads that many more cache slots; the default is the library's GPU rule, 0: every step
                      reads the whole cache), tpi= (`generate(tokens_per_iteration=)`: decode steps per
                      loop iteration; each exit test costs a GPU a copy to the host), profile (trace a
                      prefill-only and a full generation; per decode step: kernels, the GPU's busy and idle time,
                      gaps, the costliest kernels: experiments/trace_summary.py; runs in a process of its own
                      with command buffers kept on while tracing; --trace_dir keeps the traces).
  ens                 K = 5 reward models (285M each) as one stacked step vs one member's step, for both member
                      loops (vmap: one batched program; scan: the members in turn). Levers: k=, b=, seq=,
                      loop=both|vmap|scan.
  grpo                64 prompts x 8 samples x (256 + 512) on 1.24B: rollout / old + reference log-probs /
                      reward model / update, each timed. Levers: prompts=, gens=, prompt=, new=, micro=,
                      logps= (the update's gather; fused, the rl stage's GPU default), rollout=fp32|bf16
                      (weights used for sampling), old=detached|rollout, steps=, bucket=, tpi= (as gen).
  rm8b, dpo8b         Llama-3.1-8B shape (8.03B), full finetuning: bf16 parameters, AdamW moments in bf16
                      (mu=fp32 for an fp32 first moment), full remat, 4 pairs x 2 x 2048; each in its own process.
  rm_shared, dpo_shared   shared-prompt scoring ([prompt | chosen | rejected] rows), as in docs/performance.md.
  any case:           xf=cmdbuf|cmdbuf_unroll|nocmdbuf|notriton adds XLA_FLAGS (gpu_bench_cases.XLA_PRESETS)
                      and runs the case in a fresh process of its own (cmdbuf_unroll: CUDA graphs over while
                      loops, a loop of known trip count such as tpi='s block unrolled into the graph).

Memory: `peak_gib` is jax's peak_bytes_in_use of the case's process so far (the 8B cases and xf= cases have a
process each, so theirs is their own; the other cases share one, where it only grows); `program_gib` is the
compiled step's own footprint (arguments + outputs + temporaries - donated buffers).

Each `--only` entry prints one JSON row as soon as it finishes (`@@ROW {...}`; also appended to
$OUT/bench_gpu.json or --out), so a timeout loses only the cases not yet finished. Cases run in child processes
(the 8B ones each in a fresh one, the rest sharing one; a crash restarts a child for the remaining cases), the
parent never touches the GPU, and --budget_s skips a case when less than 0.6 x its estimated time is left and
stops the child at the budget. The header records the machine, versions, device and git commit.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import queue
import subprocess
import sys
import threading
import time

# The parent never starts a jax backend: a GPU client in the parent would hold the memory the cases need.
# Issue 19's numbers in its priority order (1: train MFU, 3: rollouts, 5: ensemble, 4: GRPO, 2: 8B). Estimated H200
# wall seconds, compile included (gpu_bench_cases.estimate_s; guesses until a first run records compile_s):
#   child processes 3 x 10 | rm 45, dpo 50, dpo:logps=chunked 50, dpo_check 35 | gen:b=1 30, gen:b=64 33, gen:b=256 43,
#   gen:b=256:bucket=128 45 (decode phases reading 128 more cache slots each, the CPU default) | ens 90 (both
#   member loops) | grpo 150 | dpo8b 90, rm8b 80  -> about 775 s in all; with --budget_s 440 expect 1, 3, 5 and
#   whatever of 4 and 2 fits (the guard skips a case when less than 0.6 x its estimate is left).
DEFAULT_ONLY = "rm,dpo,dpo:logps=chunked,dpo_check,gen:b=1,gen:b=64,gen:b=256,gen:b=256:bucket=128,ens,grpo,dpo8b,rm8b"
# Further levers, in the order worth trying: decode with CUDA graphs over the while loops and with scanned layers
# (the pre-default layout), scanned layers and bf16 parameters for the train steps, the fused gather without the
# saved softmax gradient, batch 16 with saved matmuls, a bf16 copy of the weights for GRPO rollouts, the GRPO update
# with the chunked gather (the rl stage's default before 2026-12-06), the 8B DPO step
# with the chunked gather and with an fp32 first moment, the ensemble with XLA attention, cuBLAS-only GEMMs.
EXTRAS = ("gen:b=1:xf=cmdbuf,gen:b=1:scan,rm:scan,dpo:scan,rm:pdtype=bf16,"
          "dpo:pdtype=bf16,dpo:logps=fused_recompute,rm:b=16:remat=dots,dpo:b=16:remat=dots,"
          "grpo:rollout=bf16,grpo:logps=chunked,dpo8b:logps=chunked,dpo8b:mu=fp32,ens:attn=xla,rm:xf=notriton")
ALIASES = {"default": DEFAULT_ONLY, "extras": EXTRAS, "all": DEFAULT_ONLY + "," + EXTRAS}
MARK_DEVICE, MARK_START, MARK_ROW = "@@DEVICE ", "@@START ", "@@ROW "


def _cases():
  """The cases module, without importing the `experiments` package when this file runs as a script."""
  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  if __package__:
    from experiments import gpu_bench_cases
  else:
    import gpu_bench_cases  # the script's directory is on sys.path
  return gpu_bench_cases


def expand_only(only: str) -> list[str]:
  texts = []
  for part in only.split(","):
    part = part.strip()
    if part:
      texts.extend(ALIASES[part].split(",") if part in ALIASES else [part])
  if not texts:
    raise ValueError("--only: no cases given")
  return texts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="default", help="comma-separated entries or aliases (default, extras, all)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per train case")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the compile step")
  parser.add_argument("--batch", type=int, default=8, help="preference pairs per step of the 1.24B train cases")
  parser.add_argument("--seq", type=int, default=2048)
  parser.add_argument("--attention", default="cudnn", help="ModelConfig.attention (xla off NVIDIA GPUs)")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="dense bf16 peak for MFU (default: the GPU's datasheet figure, gpu_bench_cases.GPU_PEAKS: "
                      "989 for an H100 SXM or H200)")
  parser.add_argument("--hbm_tbps", type=float, default=None,
                      help="HBM bandwidth for utilization (default: the GPU's datasheet figure: H100 SXM 3.35, "
                      "H200 4.8 TB/s)")
  parser.add_argument("--budget_s", type=float, default=0.0, help="wall-time budget of the whole run (0: none)")
  parser.add_argument("--isolate", choices=("8b", "all", "none"), default="8b",
                      help="8b: the 8B cases each in a fresh process, the rest share one; all: every case alone; "
                      "none: everything in this process")
  parser.add_argument("--smoke", action="store_true", help="tiny shapes: every case on a CPU in seconds")
  parser.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD here)")
  parser.add_argument("--out", default=None, help="JSON output (default $OUT/bench_gpu.json when $OUT is set)")
  parser.add_argument("--trace_dir", default="", help="keep the jax.profiler traces of `profile` cases here, one "
                      "folder per case and call (default: a temporary directory, removed)")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.smoke:
    args.seq = 64 if args.seq == 2048 else args.seq
    args.batch = 2 if args.batch == 8 else args.batch
    args.steps = min(args.steps, 2)
  return args


def settings_of(args: argparse.Namespace):
  return _cases().Settings(smoke=args.smoke, steps=args.steps, warmup=args.warmup, batch=args.batch, seq=args.seq,
                           attention=args.attention, peak_tflops=args.peak_tflops,
                           hbm_bytes_per_s=None if args.hbm_tbps is None else args.hbm_tbps * 1e12,
                           deadline=args.deadline or float("inf"),
                           trace_dir=args.trace_dir)


# ------------------------------------------------------------------------------------------------ child side
def run_child(args: argparse.Namespace) -> None:
  """Runs the entries in this process, one @@ROW line each; skips those that would overrun the deadline."""
  cases = _cases()
  s = settings_of(args)
  print(MARK_DEVICE + json.dumps(cases.device_info(s)), flush=True)  # with the MFU / HBM denominators used
  for text in expand_only(args.only):
    entry = cases.parse_entry(text)
    print(MARK_START + entry.text, flush=True)
    left = s.deadline - time.time()
    if left < 0.6 * cases.estimate_s(entry, s):
      row = dict(entry=entry.text, kind=entry.kind, status="skipped",
                 error=f"budget: {left:.0f} s left, estimate {cases.estimate_s(entry, s):.0f} s")
    else:
      row = cases.run_entry(entry, s)
    print(MARK_ROW + json.dumps(row), flush=True)


# ------------------------------------------------------------------------------------------------ parent side
def _version(name: str) -> str:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def _command(cmd: list[str]) -> str:
  try:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""


def machine_header(args: argparse.Namespace, argv: list[str]) -> dict:
  gpus = _command(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
  commit = args.commit or _command(["git", "rev-parse", "HEAD"]) or "unknown (pass --commit)"
  dirty = bool(_command(["git", "status", "--porcelain", "--untracked-files=no"])) if not args.commit else None
  return dict(
      date_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
      host=platform.node(), cpus=os.cpu_count(), python=platform.python_version(), gpus=gpus or "none seen",
      versions={n: _version(n) for n in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax")},
      commit=commit, dirty=dirty, command="python experiments/bench_gpu.py " + " ".join(argv),
      settings=dict(steps=args.steps, warmup=args.warmup, batch=args.batch, seq=args.seq, attention=args.attention,
                    peak_tflops=args.peak_tflops, hbm_tbps=args.hbm_tbps, budget_s=args.budget_s, smoke=args.smoke,
                    isolate=args.isolate))


def plan_groups(texts: list[str], isolate: str) -> list[list[str]]:
  """Consecutive entries sharing one child process; 8B entries, entries with XLA flags of their own (xf=, profile) or
  every entry (isolate "all") alone."""
  cases = _cases()

  def alone(text):
    entry = cases.parse_entry(text)
    return isolate == "all" or entry.kind in cases.ISOLATED_KINDS or "xf" in entry.levers or "profile" in entry.levers

  groups: list[list[str]] = []
  for text in texts:
    if alone(text) or not groups or alone(groups[-1][0]):
      groups.append([text])
    else:
      groups[-1].append(text)
  return groups


def _child_args(args: argparse.Namespace, texts: list[str], deadline: float) -> list[str]:
  out = [sys.executable, os.path.abspath(__file__), "--child", "--only", ",".join(texts),
         "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch), "--seq", str(args.seq),
         "--attention", args.attention, "--deadline", str(deadline if deadline < float("inf") else 0.0)]
  out += ["--peak_tflops", str(args.peak_tflops)] if args.peak_tflops is not None else []
  out += ["--hbm_tbps", str(args.hbm_tbps)] if args.hbm_tbps is not None else []
  out += ["--trace_dir", os.path.abspath(args.trace_dir)] if args.trace_dir else []
  return out + (["--smoke"] if args.smoke else [])


def run_group(args: argparse.Namespace, texts: list[str], deadline: float, on_row, device: dict) -> None:
  """Runs `texts` in child processes until all have a row; a crashed child's case gets a failed row and a new
  child takes the rest; at the deadline the child is stopped and its unfinished cases get 'killed' rows."""
  pending = list(texts)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONUNBUFFERED="1",
             PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
  # jax's default pool is 0.75 of the GPU (104 GiB of an H200's 139): the 1.24B DPO step alone peaked at 100.6 GiB.
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.93")
  levers = _cases().parse_entry(texts[0]).levers if len(texts) == 1 else {}  # plan_groups runs these alone
  flags = [_cases().XLA_PRESETS[levers["xf"]]] if "xf" in levers else []
  flags += [_cases().PROFILE_XLA_FLAGS] if levers.get("profile") else []
  if flags:
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), *flags]).strip()
  while pending:
    if time.time() > deadline - _cases().CHILD_START_S:
      for text in pending:
        on_row(dict(entry=text, kind=text.split(":")[0], status="skipped", error="budget: no time to start a child"))
      return
    proc = subprocess.Popen(_child_args(args, pending, deadline), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    current, tail, killed = None, [], False
    while True:
      try:
        line = lines.get(timeout=max(0.1, min(5.0, deadline - time.time())))
      except queue.Empty:
        if time.time() > deadline and not killed:
          proc.kill()  # the child we started, by its handle
          killed = True
        continue
      if line is None:
        break
      line = line.rstrip("\n")
      if line.startswith(MARK_ROW):
        row = json.loads(line[len(MARK_ROW):])
        on_row(row)
        if row["entry"] in pending:
          pending.remove(row["entry"])
        current = None
      elif line.startswith(MARK_START):
        current, tail = line[len(MARK_START):], []
        print(f"[bench_gpu] {current} ...", flush=True)
      elif line.startswith(MARK_DEVICE):
        device.update(json.loads(line[len(MARK_DEVICE):]))
        print(f"[bench_gpu] device: {device}", flush=True)
      else:
        tail = (tail + [line])[-30:]
        print(line, flush=True)
    rc = proc.wait()
    if not pending:
      return
    failed = current or pending[0]
    status = "killed" if killed else "failed"
    why = "budget: stopped at the deadline" if killed else f"child exited with {rc}: " + " | ".join(tail[-8:])
    on_row(dict(entry=failed, kind=failed.split(":")[0], status=status, error=why[-1500:]))
    pending.remove(failed)
    if killed:
      for text in pending:
        on_row(dict(entry=text, kind=text.split(":")[0], status="skipped", error="budget"))
      return


def run_in_process(args: argparse.Namespace, texts: list[str], on_row, device: dict) -> None:
  cases = _cases()
  s = settings_of(args)
  device.update(cases.device_info(s))
  for text in texts:
    entry = cases.parse_entry(text)
    left = s.deadline - time.time()
    if "xf" in entry.levers:
      on_row(dict(entry=text, kind=entry.kind, status="skipped", error="xf= needs its own process (--isolate 8b)"))
    elif left < 0.6 * cases.estimate_s(entry, s):
      on_row(dict(entry=text, kind=entry.kind, status="skipped", error=f"budget: {left:.0f} s left"))
    else:
      print(f"[bench_gpu] {text} ...", flush=True)
      on_row(cases.run_entry(entry, s))


# ------------------------------------------------------------------------------------------------ comparisons
def _rel(a: list[float], b: list[float]) -> float | None:
  if not a or not b or len(a) != len(b):
    return None
  num = sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5
  den = sum(y * y for y in b) ** 0.5
  return round(num / den, 9) if den else None


def add_comparisons(rows: list[dict]) -> None:
  """Train rows: speedup and loss / aux differences vs the lever-free row of the same kind, pairs and seq; DPO
  rows: loss and log-prob differences vs dpo_check's unfused (full log-softmax) values at the same shape."""
  ok = [r for r in rows if r.get("status") == "ok"]
  for r in ok:
    if r.get("case") != "train":
      continue
    key = (r["kind"], r["pairs"], r["seq"])
    base = next((b for b in ok if b.get("case") == "train" and (b["kind"], b["pairs"], b["seq"]) == key
                 and set(b["entry"].split(":")[1:]) <= {f"b={r['pairs']}", f"seq={r['seq']}"}), None)
    if base is not None and base is not r:
      r["vs_base"] = dict(base=base["entry"], speedup=round(base["step_s"] / r["step_s"], 3),
                          loss0_rel=round(abs(r["loss0"] - base["loss0"]) / max(abs(base["loss0"]), 1e-30), 9),
                          aux0_rel=_rel(r["aux0"], base["aux0"]))
    check = next((c for c in ok if c.get("case") == "dpo_check" and (c["pairs"], c["seq"]) == (r["pairs"], r["seq"])
                  and "loss_full" in c), None)
    if r["kind"] == "dpo" and check is not None:
      r["vs_unfused"] = dict(loss_full=check["loss_full"],
                             loss0_rel=round(abs(r["loss0"] - check["loss_full"]) / max(abs(check["loss_full"]),
                                                                                        1e-30), 9))


# ------------------------------------------------------------------------------------------------ tables
def _pct(x: float | None) -> str:
  return "" if x is None else f"{100 * x:.1f}%"


def tables(header: dict, device: dict, rows: list[dict]) -> str:
  out = [f"machine: {header['host']}, {header['cpus']} CPUs; GPUs: {header['gpus']}; device: "
         f"{device.get('device_kind', '?')} ({device.get('backend', '?')}, limit {device.get('memory_limit_gib')} GiB); "
         f"MFU against {device.get('peak_tflops')} TFLOP/s, HBM utilization against {device.get('hbm_tbps')} TB/s "
         f"({device.get('peaks_from')})",
         f"versions: {header['versions']}; python {header['python']}; commit {header['commit']}"
         + (" (dirty)" if header.get("dirty") else "") + f"; {header['date_utc']} UTC"]
  ok = [r for r in rows if r.get("status") == "ok"]
  train = [r for r in ok if r.get("case") == "train"]
  if train:
    out += ["", "| case | params | pairs x seq | step s | tokens/s | TFLOP/s | MFU | peak GiB | program GiB | "
            "compile s | loss0 | speedup | loss vs unfused |", "|" + "---|" * 13]
    for r in train:
      vs, vu = r.get("vs_base", {}), r.get("vs_unfused", {})
      out.append(f"| {r['entry']} | {r['model']} | {r['pairs']} x {r['seq']} | {r['step_s']} | {r['tokens_per_s']:,} | "
                 f"{r['tflops']} | **{_pct(r['mfu'])}** | {r['peak_gib']} | {r['program_gib']} | {r['compile_s']} | "
                 f"{r['loss0']:.6g} | {vs.get('speedup', '')} | {vu.get('loss0_rel', '')} |")
  for r in (r for r in ok if r.get("case") == "dpo_check"):
    out += ["", f"dpo_check ({r['pairs']} pairs x {r['seq']}, chunk {r['chunk']}): losses "
            + ", ".join(f"{m} {r[f'loss_{m}']:.7g}" for m in ("full", "chunked", "fused", "fused_recompute")
                        if f"loss_{m}" in r)
            + f"; LM-head fwd+bwd ms {r['lmhead_fwd_bwd_ms']}"]
    for k, v in r.items():
      if k.endswith(f"_vs_{r['reference']}"):
        out.append(f"  {k}: {v}")
  gen = [r for r in ok if r.get("case") == "gen"]
  if gen:
    out += ["", "| generate | batch | prompt + new | cache bucket | prefill s | prefill tok/s | prefill MFU | "
            "decode ms/step | decode tok/s | total tok/s | GB/s (cache read) | HBM util | HBM util (filled) |",
            "|" + "---|" * 13]
    for r in gen:
      out.append(f"| {r['entry']} | {r['batch']} | {r['prompt']} + {r['new']} | {r.get('cache_bucket', 0)} | "
                 f"{r['prefill_s']} | "
                 f"{r['prefill_tokens_per_s']:,} | {_pct(r['prefill_mfu'])} | {r['decode_step_ms']} | "
                 f"{r['decode_tokens_per_s']:,} | {r['total_tokens_per_s']:,} | {r['hbm_gb_per_s']} | "
                 f"**{_pct(r['hbm_util'])}** | {_pct(r['hbm_util_filled'])} |")
  profiled = [r for r in gen if r.get("profile")]
  if profiled:
    out += ["", "| decode step traced | planes | ops / step | busy us / step | span us / step | idle | gaps / step | "
            "long gaps / step | long-gap us / step | costliest ops (count, total us) |", "|" + "---|" * 10]
    for r in profiled:
      p = r["profile"]
      if "error" in p:
        out.append(f"| {r['entry']} | trace failed: {p['error'][:200]} |" + " |" * 8)
        continue
      top = "; ".join(f"{o['name'][:40]} ({o['count']}, {o['total_us']})" for o in p["top_ops"][:4])
      out.append(f"| {r['entry']} | {', '.join(p['planes'])} | {p['ops_per_step']} | {p['busy_us_per_step']} | "
                 f"{p['span_us_per_step']} | {_pct(p['idle_fraction'])} | {p['gaps_per_step']} | "
                 f"{p['long_gaps_per_step']} | {p['long_gap_us_per_step']} | {top} |")
  for r in (r for r in ok if r.get("case") == "ens"):
    loops = "; ".join(f"{name}: ensemble {x['ensemble_s']} s, ratio {x['ratio']}, MFU {_pct(x['ensemble_mfu'])}, "
                      f"program {x['program_gib']} GiB, member-0 loss at init {x['member0_loss0']}"
                      for name, x in r["loops"].items())
    out += ["", f"ensemble ({r['entry']}): K={r['members']} x {r['params_per_member'] / 1e6:.0f}M, {r['pairs']} "
            f"pairs x {r['seq']} per member: single {r['single_s']} s (MFU {_pct(r['single_mfu'])}, program "
            f"{r['single_program_gib']} GiB, loss at init {r['single_loss0']}); {loops}; **ratio {r['ratio']}** "
            f"({r['fastest_loop']}; target <= 1.1)"]
  for r in (r for r in ok if r.get("case") == "grpo"):
    sec, share, mfu = r["seconds"], r["share"], r["mfu"]
    out += ["", f"GRPO ({r['entry']}): {r['prompts']} prompts x {r['generations']} = {r['rows']} rows x "
            f"({r['prompt']} + {r['new']}), micro {r['micro']}, update logps {r['logps']}, cache bucket "
            f"{r.get('cache_bucket', 0)}, rollout weights "
            f"{r['rollout_param_dtype']}: step {r['step_s']} s (first iteration incl. compile "
            f"{r['first_iteration_s']})",
            "| part | s | share | MFU |", "|---|---|---|---|"]
    for p in ("rollout", "score", "reward", "update"):
      extra = (f"{r['rollout_tokens_per_s']:,} tok/s, " if p == "rollout" else "") + _pct(mfu.get(p))
      out.append(f"| {p} | {sec[p]} | {_pct(share[p])} | {extra} |")
  bad = [r for r in rows if r.get("status") != "ok"]
  if bad:
    out += [""] + [f"{r['status']}: {r['entry']}: {r.get('error', '')[:300]}" for r in bad]
  return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  texts = expand_only(args.only)
  for text in texts:
    _cases().parse_entry(text)  # every entry validated before any compute
  if args.child:
    run_child(args)
    return []
  start = time.time()
  deadline = start + args.budget_s if args.budget_s > 0 else float("inf")
  args.deadline = deadline if deadline < float("inf") else 0.0
  header = machine_header(args, argv)
  print("[bench_gpu] header " + json.dumps(header), flush=True)
  out = args.out or (os.path.join(os.environ["OUT"], "bench_gpu.json") if os.environ.get("OUT") else None)
  rows: list[dict] = []
  device: dict = {}

  def on_row(row: dict) -> None:
    rows.append(row)
    print(MARK_ROW + json.dumps(row), flush=True)
    if out:
      with open(out, "w") as f:
        json.dump(dict(header=header, device=device, rows=rows), f, indent=1)

  if args.isolate == "none":
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.93")  # read when the backend starts, below
    run_in_process(args, texts, on_row, device)
  else:
    for group in plan_groups(texts, args.isolate):
      run_group(args, group, deadline, on_row, device)
  add_comparisons(rows)
  if out:
    with open(out, "w") as f:
      json.dump(dict(header=header, device=device, rows=rows, wall_s=round(time.time() - start, 1)), f, indent=1)
  print("\n" + tables(header, device, rows), flush=True)
  print(f"\n[bench_gpu] wall {time.time() - start:.0f} s", flush=True)
  return rows


if __name__ == "__main__":
  main()
