# docs/performance.md "LM-head log-probs in the training stages", the CPU check (run from the repo root, nothing
# else running). 1) the LM head alone at SmolLM2-135M's head (D 576, V 49152, fp32), 04:07 UTC:
PYTHONPATH=. python docs/bench/2026-12-06_logps_path_cpu/lmhead_cpu.py 1024 256
PYTHONPATH=. python docs/bench/2026-12-06_logps_path_cpu/lmhead_cpu.py 2048 256
# -> {"N": 1024, "chunk": 256, "full": 1413.8, "chunked": 1658.3, "fused_recompute": 1596.2, "fused_save": 1190.3}
# -> {"N": 2048, "chunk": 256, "full": 2829.3, "chunked": 3184.3, "fused_recompute": 3091.1, "fused_save": 2454.8}
# 2) the whole DPO step, full vs fused (chunk size 0: softmax gradient stored), interleaved, 04:11-04:25 UTC:
python -m experiments.roofline
for r in 1 2; do
  for p in full fused; do
    python -m experiments.bench --only dpo --models tiny,smollm2 --rounds 1 --steps 5 --logps_path $p --out ${p}_$r.json
  done
done
python -m experiments.roofline
