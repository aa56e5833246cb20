"""Aggregates runs/papers/co_reward/seed=*/ into docs/reproductions/coreward/results.json + a markdown table."""
import glob, json, math, os, re, sys
import numpy as np
from scipy import stats
root = sys.argv[1]
out = {"seeds": {}}
for d in sorted(glob.glob(f"{root}/seed=*")):
  seed = int(d.split("=")[-1])
  if not os.path.exists(f"{d}/results.json"):
    continue
  res = json.load(open(f"{d}/results.json"))
  row = {"commit": res.get("provenance", {}).get("commit"), "dirty": res.get("provenance", {}).get("dirty"),
         "start_accuracy": res["stages"]["start"]["metrics"]["reward/accuracy/policy"]}
  for arm in ("truth", "self", "co"):
    lines = [json.loads(l) for l in open(f"{d}/rl_{arm}/metrics.jsonl")]
    ev = {l["step"]: l["eval/reward/accuracy"] for l in lines if "eval/reward/accuracy" in l}
    tr = [(l["step"], l["train/reward/unanimity"], l["train/reward/accuracy"], l["train/kl"]) for l in lines
          if "train/reward/unanimity" in l]
    first = next((s for s, u, _, _ in tr if u >= 0.5), None)
    row[arm] = {"eval_accuracy": ev, "final_accuracy": ev[max(ev)], "final_train_unanimity": tr[-1][1],
                "final_train_accuracy": tr[-1][2], "final_kl": tr[-1][3], "first_step_unanimity_ge_0.5": first,
                "collapsed": bool(ev[max(ev)] < row["start_accuracy"] - 0.05 and tr[-1][1] >= 0.5)}
  out["seeds"][seed] = row
seeds = sorted(out["seeds"])
d = np.array([out["seeds"][s]["co"]["final_accuracy"] - out["seeds"][s]["self"]["final_accuracy"] for s in seeds])
if len(d) > 1:
  half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
  out["d_co_minus_self"] = {"per_seed": d.tolist(), "mean": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)]}
else:
  out["d_co_minus_self"] = {"per_seed": d.tolist(), "mean": float(d.mean())}
json.dump(out, open(sys.argv[2], "w"), indent=1)
print("| seed | start acc. | arm | acc. @50 | @100 | @150 | @200 | train unanimity @200 | train acc. @200 | KL @200 | first step unanimity >= 0.5 | collapsed |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for s in seeds:
  r = out["seeds"][s]
  for arm in ("truth", "self", "co"):
    a = r[arm]; ev = a["eval_accuracy"]
    print(f"| {s} | {r['start_accuracy']:.3f} | {arm} | " + " | ".join(f"{ev.get(k, float('nan')):.3f}" for k in (50, 100, 150, 200))
          + f" | {a['final_train_unanimity']:.2f} | {a['final_train_accuracy']:.3f} | {a['final_kl']:.2f} | {a['first_step_unanimity_ge_0.5']} | {'yes' if a['collapsed'] else 'no'} |")
print(json.dumps(out["d_co_minus_self"]))
