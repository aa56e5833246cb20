"""Cross-selection table of the "instruct" variant (SmolLM2 best-of-8 on the held-out instruction prompts): for each
selector, the mean adherence, all-constraints-met rate and length penalty of the sample it picks (ties share the
credit equally), beside the pool mean (= best-of-1):
    python docs/reproductions/monolithic/instruct_table.py runs/papers/monolithic_instruct/bon/scores.npz
"""

import sys

import numpy as np

METRICS = ("adherence", "all_met", "length")
SELECTORS = ("adherence", "length", "adherence_plus_length")


def picked(selector_PxN: np.ndarray, metric_PxN: np.ndarray) -> float:
  """Mean over prompts of the metric of the selector's argmax (uniform over ties)."""
  best_PxN = selector_PxN == selector_PxN.max(axis=1, keepdims=True)
  return float(np.mean(np.sum(best_PxN * metric_PxN, axis=1) / np.sum(best_PxN, axis=1)))


def main(path: str) -> None:
  scores = np.load(path)
  print("| selected by | " + " | ".join(METRICS) + " |")
  print("|---" * (len(METRICS) + 1) + "|")
  print("| none (best-of-1) | " + " | ".join(f"{scores[m].mean():.3f}" for m in METRICS) + " |")
  for s in SELECTORS:
    print(f"| {s} | " + " | ".join(f"{picked(scores[s], scores[m]):.3f}" for m in METRICS) + " |")
  print(f"prompts {scores['adherence'].shape[0]}, pool {scores['adherence'].shape[1]}")


if __name__ == "__main__":
  main(sys.argv[1])
