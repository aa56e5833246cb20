set -x
cd /work/main
python -m experiments.roofline 2>&1 | tail -1
for round in 1 2; do
for mode in rollout auto; do
  python -m experiments.bench --only grpo --models tiny,smollm2 --steps 3 --old_logps $mode --out /work/wt/bench/grpo_${mode}_${round}.json 2>&1 | grep -E "GRPO|grpo|error" | tail -4
done
done
uptime
