"""The tables of the ToolRL section from the saved pools of a `configs/papers/toolrl.py:pools` sweep:

    python docs/reproductions/toolrl/analyze_pools.py runs/papers/toolrl_pools

For every seed=<k>/pools/ run: docs/reproductions/bmasdemo/analyze_pools.py's `toolrl` tables (each reward's share of
constant groups, the section's rule constant(exact) - constant(toolrl) with its percentile-bootstrap 95% interval over
requests, 10,000 resamples, seed 0, and the best-of-8 cross-table), each reward's mean score (n = 1) and best-of-8
value (the run's proxy@1 / proxy@N), and what the samples contain (decoded as the stage decoded them). Pooled over the
seeds (every seed samples the same 40 requests): the rule's per-request difference averaged over the seeds, with the
same bootstrap over requests (a request's seeds resampled together). Prints markdown and writes analysis.json beside
this file.
"""

import json
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE.parent / "bmasdemo"))

from analyze_pools import toolrl, write_pooled  # noqa: E402

REWARDS = ("exact", "coarse", "correct", "format", "toolrl")


def sample_contents(run: pathlib.Path, tokenizer) -> dict:
  """Counts over the pooled samples: the format's tags, a JSON "name" key, and samples cut at the token cap."""
  from jaxrlhf.data import prompts as prompts_lib  # pylint: disable=g-import-not-at-top
  with np.load(run / "pool.npz") as f:
    tokens, mask, lengths = f["tokens"], f["mask"], f["lengths"]
  p, n, t = tokens.shape
  texts = prompts_lib.decode_completions(tokenizer, tokens.reshape(p * n, t), mask.reshape(p * n, t))
  return {"samples": p * n, "with_think": sum("<think>" in x for x in texts),
          "with_tool_call": sum("<tool_call>" in x for x in texts), "with_name_key": sum('"name"' in x for x in texts),
          "at_token_cap": int((lengths >= t).sum())}


def main(sweep: pathlib.Path) -> None:
  sys.path.insert(0, str(ROOT))
  from jaxrlhf.models import load_tokenizer  # pylint: disable=g-import-not-at-top
  from configs import _sections  # pylint: disable=g-import-not-at-top
  tokenizer = load_tokenizer(_sections.smollm2_gguf())
  result = {}
  runs = [run for run in sorted(sweep.glob("seed=*/pools")) if (run / "scores.npz").exists()]
  for run in runs:
    seed = run.parent.name
    print(f"## {seed}")
    a = result[seed] = toolrl(run)
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    a["proxy"] = {r: {"proxy@1": metrics[f"{r}/proxy@1"], "proxy@N": metrics[f"{r}/proxy@N"]} for r in REWARDS}
    a["contents"] = sample_contents(run, tokenizer)
    print(f"mean score / best of 8: {a['proxy']}\nsamples: {a['contents']}")
  write_pooled(result, runs, HERE / "analysis.json", "exact", "toolrl")


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]))
