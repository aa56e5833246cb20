"""sql_semantic on Reasoning-SQL's pools (descriptive, no verdict): configs/papers/reasoning_sql.py:pools cut to its
first 16 held-out prompts (8 SmolLM2 samples of up to 128 tokens each, seed 0), with two more selectors: sql_semantic
alone and reasoning_sql + sql_semantic (weight 1). `<selector>/constant_pools` is the share of prompts whose 8 samples
all score the same (GRPO groups with zero advantage under that reward).

    python docs/reproductions/r3/sql_semantic_pools.py runs/sql_semantic_pools
"""

import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT))

from configs import _sections as S  # noqa: E402
from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402

NUM_PROMPTS = 16


def main(workdir: str) -> None:
  config = config_lib.load_config(f"{REPO_ROOT / 'configs' / 'papers' / 'reasoning_sql'}.py:pools")
  semantic = dict(kind="sql_semantic", name="sql_semantic", options=dict(model=S.smollm2_gguf()))
  reasoning = dict(config.pools.rewards[0])
  combined = dict(kind="weighted_sum", name="reasoning_sql_plus_semantic",
                  options=dict(terms=({"kind": "reasoning_sql", "options": dict(reasoning["options"])},
                                      {"kind": "sql_semantic", "options": semantic["options"]})))
  config.pools.rewards = tuple(dict(r) for r in config.pools.rewards) + (semantic, combined)
  config.pools.num_prompts = NUM_PROMPTS
  config.pools.plots = False
  config.tables = dict(metrics=tuple(f"pools/{r['name']}/constant_pools" for r in config.pools.rewards))
  metrics = run_lib.run(config, workdir)["pools"]["metrics"]
  for r in config.pools.rewards:
    print(f"{r['name']}: constant_pools {metrics[r['name'] + '/constant_pools']:.3f}, "
          f"proxy@1 {metrics[r['name'] + '/proxy@1']:.4f}, proxy@N {metrics[r['name'] + '/proxy@N']:.4f}")


if __name__ == "__main__":
  main(sys.argv[1])
