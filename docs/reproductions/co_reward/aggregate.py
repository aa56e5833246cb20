"""The Co-Reward sweep's per-seed table (the Co-Reward section of docs/reproductions.md) from its run folders.

    python docs/reproductions/co_reward/aggregate.py runs/papers/co_reward docs/reproductions/co_reward/results.json

Per seed: the SFT policy's held-out accuracy (stage "start"), and per arm (truth / self / co) the held-out accuracy
at every evaluation, the last logged training-batch unanimity / accuracy / KL, the first logged step with unanimity
>= 0.5, and the rule's collapse flag (final accuracy < start - 0.05 with final unanimity >= 0.5); then the paired
difference d = A_co - A_self with its 95% t-interval. Writes the JSON, prints the markdown table.
"""

import glob
import json
import math
import os
import sys

import numpy as np
from scipy import stats

ARMS = ("truth", "self", "co")


def seed_row(folder: str) -> dict:
  res = json.load(open(f"{folder}/results.json"))
  row = {"provenance": res.get("provenance"),
         "start_accuracy": res["stages"]["start"]["metrics"]["reward/accuracy/policy"]}
  for arm in ARMS:
    lines = [json.loads(line) for line in open(f"{folder}/rl_{arm}/metrics.jsonl")]
    evals = {x["step"]: x["eval/reward/accuracy"] for x in lines if "eval/reward/accuracy" in x}
    train = [x for x in lines if "train/reward/unanimity" in x]
    first = next((x["step"] for x in train if x["train/reward/unanimity"] >= 0.5), None)
    final, last = evals[max(evals)], train[-1]
    row[arm] = {"eval_accuracy": evals, "final_accuracy": final,
                "final_train_unanimity": last["train/reward/unanimity"],
                "final_train_accuracy": last["train/reward/accuracy"], "final_kl": last["train/kl"],
                "first_step_unanimity_ge_0.5": first,
                "collapsed": bool(final < row["start_accuracy"] - 0.05 and last["train/reward/unanimity"] >= 0.5)}
  return row


def main(root: str, out_path: str) -> None:
  seeds = {int(d.split("=")[-1]): seed_row(d) for d in sorted(glob.glob(f"{root}/seed=*"))
           if os.path.exists(f"{d}/results.json")}
  d = np.array([seeds[s]["co"]["final_accuracy"] - seeds[s]["self"]["final_accuracy"] for s in sorted(seeds)])
  summary = {"per_seed": d.tolist(), "mean": float(d.mean())}
  if len(d) > 1:
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    summary["ci95"] = [float(d.mean() - half), float(d.mean() + half)]
  with open(out_path, "w") as f:
    json.dump({"seeds": seeds, "d_co_minus_self": summary}, f, indent=1)
  print("| seed | start acc. | arm | acc. @50 | @100 | @150 | @200 | train unanimity @200 | train acc. @200 | "
        "KL @200 | first step unanimity >= 0.5 | collapsed |")
  print("|---" * 12 + "|")
  for s in sorted(seeds):
    for arm in ARMS:
      a = seeds[s][arm]
      accs = " | ".join(f"{a['eval_accuracy'].get(k, float('nan')):.3f}" for k in (50, 100, 150, 200))
      print(f"| {s} | {seeds[s]['start_accuracy']:.3f} | {arm} | {accs} | {a['final_train_unanimity']:.2f} | "
            f"{a['final_train_accuracy']:.3f} | {a['final_kl']:.2f} | {a['first_step_unanimity_ge_0.5']} | "
            f"{'yes' if a['collapsed'] else 'no'} |")
  print(json.dumps(summary))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
