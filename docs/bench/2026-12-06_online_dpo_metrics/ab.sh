# The A/B behind docs/performance.md "Online DPO: metrics from the update" (run from the repo root, nothing else
# running): rollout (the rollout's policy forward) vs auto (the default), interleaved, two rounds, roofline before
# and after. steps3_* is the first run (03:24-03:31 UTC, --steps 3), steps6_* the second (03:35-03:42, --steps 6).
python -m experiments.roofline
for r in 1 2; do
  for o in rollout auto; do
    python -m experiments.bench --only online_dpo --models tiny,smollm2 --steps 6 --old_logps $o --out steps6_${o}_$r.json
  done
done
python -m experiments.roofline
