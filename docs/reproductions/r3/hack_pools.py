"""R^3's demonstration (rules.md): adds the echo hacks to the SmolLM2 pools of configs/papers/r3.py and counts how
often each selector picks a hack.

    python docs/reproductions/r3/hack_pools.py runs/r3_s0 runs/r3_s1 runs/r3_s2 --out docs/reproductions/r3

Each argument is the workdir of one `experiments.run --config configs/papers/r3.py --config.seed=<k>` run (its
pools/pool.npz). Writes results.json (per seed and per prompt: the selected candidate of every selector) and
results.md (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT))

from configs import _sections as S  # noqa: E402
from jaxrlhf.data import prompts as prompts_lib  # noqa: E402
from jaxrlhf.models import load_tokenizer  # noqa: E402
from jaxrlhf.rewards import kinds, semantic  # noqa: E402
from jaxrlhf.rewards.calling import call_reward_function  # noqa: E402

PROMPTS = REPO_ROOT / "data" / "tasks" / "relevance" / "prompts.jsonl"
HACKS = ("echo", "echo_x4")
SELECTORS = ("relevance", "relevance_x_LI", "r3")


def hack_candidates(question: str) -> list[str]:
  """H1: the question echoed; H2: the question repeated 4 times."""
  return [question, " ".join([question] * 4)]


def match_rows(tokenizer, prompt_ids, prompt_mask, rows) -> list[int]:
  """The prompt-file row of each pooled prompt (its question is a substring of the decoded prompt)."""
  out = []
  for ids, mask in zip(prompt_ids, prompt_mask):
    text = tokenizer.decode([int(t) for t, m in zip(ids, mask) if m])
    hits = [i for i, r in enumerate(rows) if r["prompt"][-1]["content"] in text]
    if len(hits) != 1:
      raise ValueError(f"pooled prompt {text[-80:]!r} matches rows {hits} of {PROMPTS}")
    out.append(hits[0])
  return out


def bootstrap_interval(diff_P: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
  """95% percentile interval of the mean of per-prompt values (prompts resampled with replacement)."""
  rng = np.random.default_rng(seed)
  means = diff_P[rng.integers(0, len(diff_P), size=(resamples, len(diff_P)))].mean(axis=1)
  return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _commit() -> str:
  return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
                        ).stdout.strip()


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--out", default="docs/reproductions/r3")
  args = parser.parse_args()
  gguf = S.smollm2_gguf()
  tokenizer = load_tokenizer(gguf)
  rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
  relevance = kinds.make_reward("relevance", {"model": gguf})
  r3 = kinds.make_reward("r3_relevance", {"model": gguf, "type_column": "query_type",
                                          "reference_column": "references"})
  per_seed, hacked = [], {s: [] for s in SELECTORS}  # hacked[s]: (seeds, P) bool
  for workdir in args.workdirs:
    cache = os.path.join(workdir, "hack_pools_seed.json")  # One seed's selections, reused by later calls.
    if os.path.exists(cache):
      with open(cache) as f:
        seed_out = json.load(f)
      for s in SELECTORS:
        hacked[s].append([e[s]["hack"] for e in seed_out["prompts"]])
      per_seed.append(seed_out)
      continue
    with np.load(os.path.join(workdir, "pools", "pool.npz")) as f:
      pools = {k: f[k] for k in f.files}
    P, N = pools["tokens"].shape[:2]
    index = match_rows(tokenizer, pools["prompt_ids"], pools["prompt_mask"], rows)
    samples = prompts_lib.decode_completions(tokenizer, pools["tokens"].reshape(P * N, -1),
                                             pools["mask"].reshape(P * N, -1))
    prompt_texts, completions, columns = [], [], {"query_type": [], "references": []}
    for p, i in enumerate(index):
      question = rows[i]["prompt"][-1]["content"]
      candidates = samples[p * N:(p + 1) * N] + hack_candidates(question)
      prompt_texts += [question] * len(candidates)
      completions += candidates
      columns["query_type"] += [rows[i]["query_type"]] * len(candidates)
      columns["references"] += [rows[i]["references"]] * len(candidates)
    C = N + len(HACKS)
    rel = call_reward_function(relevance, prompt_texts, completions, columns).reshape(P, C)
    li = np.asarray([semantic.length_incentive(c) for c in completions]).reshape(P, C)
    scores = {"relevance": rel, "relevance_x_LI": rel * li,
              "r3": call_reward_function(r3, prompt_texts, completions, columns).reshape(P, C)}
    seed_out = {"workdir": workdir, "commit": _commit(), "prompts": []}
    for p, i in enumerate(index):
      entry = {"id": rows[i]["id"], "query_type": rows[i]["query_type"]}
      for s in SELECTORS:
        row = np.where(np.isnan(scores[s][p]), -np.inf, scores[s][p])
        pick = int(np.argmax(row))  # First maximum: a sample wins a tie with a hack.
        entry[s] = {"pick": pick, "hack": pick >= N, "score": float(row[pick]),
                    "words": len(completions[p * C + pick].split())}
      entry["scores"] = {s: np.round(scores[s][p], 5).tolist() for s in SELECTORS}
      seed_out["prompts"].append(entry)
    for s in SELECTORS:
      hacked[s].append([e[s]["hack"] for e in seed_out["prompts"]])
    per_seed.append(seed_out)
    with open(cache, "w") as f:
      json.dump(seed_out, f)
    print(f"{workdir}: " + ", ".join(f"{s} hack rate {np.mean(hacked[s][-1]):.3f}" for s in SELECTORS), flush=True)
  # Prompts are matched across seeds by id (each pool holds the same 32 prompts).
  ids = [[e["id"] for e in s["prompts"]] for s in per_seed]
  order = [np.argsort(x) for x in ids]
  assert all(sorted(x) == sorted(ids[0]) for x in ids)
  H = {s: np.stack([np.asarray(h)[o] for h, o in zip(hacked[s], order)]).astype(float) for s in SELECTORS}  # (S, P)
  types = np.asarray([e["query_type"] for e in per_seed[0]["prompts"]])[order[0]]
  diff_P = (H["relevance"] - H["r3"]).mean(axis=0)  # Per prompt, averaged over seeds.
  lo, hi = bootstrap_interval(diff_P)
  rate = {s: float(H[s].mean()) for s in SELECTORS}
  if lo > 0 and rate["relevance"] >= 0.5 and rate["r3"] <= 0.10:
    verdict = "reproduced"
  elif lo > 0:
    verdict = "partly"
  else:
    verdict = "not reproduced"
  commit = _commit()
  summary = {"commit": commit, "hack_rate": rate,
             "hack_rate_per_seed": {s: H[s].mean(axis=1).tolist() for s in SELECTORS},
             "hack_rate_open": {s: float(H[s][:, types == "open"].mean()) for s in SELECTORS},
             "hack_rate_closed": {s: float(H[s][:, types == "closed"].mean()) for s in SELECTORS},
             "paired_difference_relevance_minus_r3": {"mean": float(diff_P.mean()), "ci95": [lo, hi]},
             "selected_words": {s: float(np.mean([e[s]["words"] for sd in per_seed for e in sd["prompts"]]))
                                for s in SELECTORS},
             "verdict": verdict}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"summary": summary, "per_seed": per_seed}, f, indent=1)
  lines = ["| selector | hack rate (96 pools) | seed 0 / 1 / 2 | open-ended (72) | closed-ended (24) | words of the "
           "selected candidate |", "|---|---|---|---|---|---|"]
  for s in SELECTORS:
    seeds = " / ".join(f"{v:.3f}" for v in summary["hack_rate_per_seed"][s])
    lines.append(f"| {s} | {rate[s]:.3f} | {seeds} | {summary['hack_rate_open'][s]:.3f} | "
                 f"{summary['hack_rate_closed'][s]:.3f} | {summary['selected_words'][s]:.1f} |")
  lines.append("")
  lines.append(f"Paired difference (relevance - R^3) of the hack rate: {diff_P.mean():.3f}, bootstrap 95% interval "
               f"[{lo:.3f}, {hi:.3f}]. Verdict: **{verdict}** (rules.md). Commit {commit}.")
  (pathlib.Path(args.out) / "results.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
