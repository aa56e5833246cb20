"""Small files in the released layouts of M-RewardBench and RAG-RewardBench, for the reward_eval tests and the
fixtures of configs/reward_benchmarks.py (`python tests/stages/benchmark_files.py` rewrites those).

M-RewardBench (CohereLabsCommunity/multilingual-reward-bench): one parquet file per language,
`<lang>/test-00000-of-00001.parquet`, columns id (int64), language, prompt, chosen, rejected, chosen_model,
rejected_model, source (the RewardBench subset). RAG-RewardBench (jinzhuoran/RAG-RewardBench): JSONL files
`Dataset/<scenario>.jsonl` (reason, citation, abstain, conflict, helpful, harmless), rows with prompt (instructions,
the retrieved references and the question), question, chosen, chosen_model, rejected, reject_model, subset.
"""

import json
import pathlib

import numpy as np

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "reward_benchmarks"
# Words per language for the committed fixtures (the texts only need to be that language's, not sensible).
LANGUAGE_WORDS = {
    "deu_Latn": "der Hund die Katze läuft schläft schnell langsam auf dem Tisch groß klein rot blau".split(),
    "jpn_Jpan": "猫 犬 が は 走る 寝る 速い 遅い 机 の 上 大きい 小さい 赤い 青い".split(),
}
ENGLISH = "the cat dog sat ran on a mat log big small red blue fast slow".split()
M_SUBSETS = ("alpacaeval-easy", "mt-bench-hard", "refusals-dangerous", "math-prm", "hep-python")
RAG_SUBSETS = ("hotpotqa", "musique", "asqa")
RAG_FILES = ("reason", "citation", "abstain", "conflict")


def _text(rng: np.random.Generator, words, lo: int, hi: int, first: str | None = None) -> str:
  picked = list(rng.choice(words, int(rng.integers(lo, hi))))
  return " ".join(([first] if first else []) + picked)


def m_rewardbench_rows(language: str, words, per_subset: int = 2, subsets=M_SUBSETS, seed: int = 0) -> list[dict]:
  """`per_subset` pairs of each RewardBench subset in `language`; chosen starts with words[0], rejected with
  words[1]."""
  rng = np.random.default_rng(seed)
  rows = []
  for s in subsets:
    for _ in range(per_subset):
      rows.append({"id": len(rows), "language": language, "prompt": _text(rng, words, 2, 6),
                   "chosen": _text(rng, words, 1, 4, words[0]), "rejected": _text(rng, words, 1, 4, words[1]),
                   "chosen_model": "model-a", "rejected_model": "model-b", "source": s})
  return rows


def rag_rewardbench_rows(n: int, words=ENGLISH, subsets=RAG_SUBSETS, seed: int = 0) -> list[dict]:
  """n pairs whose prompt holds two numbered references and the question, as a RALM's input."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    question = _text(rng, words, 2, 4)
    references = "\n".join(f"[{j + 1}] {_text(rng, words, 3, 6)}" for j in range(2))
    rows.append({"prompt": f"Answer the question using the references.\nReferences:\n{references}\n"
                           f"Question: {question}",
                 "question": question, "chosen": _text(rng, words, 1, 4, "big"), "chosen_model": "model-a",
                 "rejected": _text(rng, words, 1, 4, "small"), "reject_model": "model-b",
                 "subset": subsets[i % len(subsets)]})
  return rows


def write_parquet(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  pq.write_table(pa.Table.from_pylist(rows), str(path))
  return path


def write_jsonl(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
  return path


def fixture_rows() -> dict[str, list[dict]]:
  """The committed fixtures' rows by path relative to FIXTURES."""
  out = {f"m_rewardbench/{lang}/test-00000-of-00001.parquet": m_rewardbench_rows(lang, words, seed=i)
         for i, (lang, words) in enumerate(LANGUAGE_WORDS.items())}
  for i, name in enumerate(RAG_FILES):
    out[f"rag_rewardbench/Dataset/{name}.jsonl"] = rag_rewardbench_rows(4, seed=10 + i)
  return out


def write_fixtures(root: pathlib.Path = FIXTURES) -> None:
  for relative, rows in fixture_rows().items():
    (write_parquet if relative.endswith(".parquet") else write_jsonl)(root / relative, rows)


if __name__ == "__main__":
  write_fixtures()
