"""A generated instruction-following task with rule-checkable constraints, for the multi-aspect instruction-adherence
reward (`jaxrlhf.rewards.multi_aspect`, after Gulhane & Indurthi 2025, arXiv:2510.05283).

A row asks for a short text on a topic under 2-3 constraints, written out in the prompt AND stored as columns (the
reward reads the columns, never the prompt text). Constraint families (IFEval-style; their columns):

    length     min_words, max_words       "Use between {lo} and {hi} words."
    sentences  max_sentences              "Use at most {n} sentences."
    keywords   keywords (list)            "Include the words {a} and {b}."   (words tied to the topic)
    forbidden  forbidden_words (list)     "Do not use the words {a} or {b}."
    case       case ("lower")             "Write everything in lowercase letters."
    bullets    num_bullets                "Answer with exactly {n} bullet points that start with '- '."
    end        end_phrase                 "End your answer with the phrase '{p}'."
    json       json (true)                "Answer with a valid JSON object only."

Every row holds every constraint column (null when the row does not have that constraint), so the prompt file is one
table. Families are drawn from SHA-256 hashes of fixed strings (the same rows on every machine and Python version);
row i does not depend on n; "train" and "eval" use disjoint topics (a topic is held out when its hash with the seed
falls below `eval_share`). A row is

    {"prompt": [{"role": "user", "content": "Write a short text about <topic>. <constraints>"}], "id": "train-0",
     "families": ["keywords", "case"], "min_words": null, ..., "keywords": ["river", "bridge"], "case": "lower", ...}
"""

from __future__ import annotations

import os
from typing import Any

from jaxrlhf.data import generated
from jaxrlhf.data.generated import stable_hash
from jaxrlhf.rewards.multi_aspect import ASPECTS

SPLITS = ("train", "eval")
# Topic -> two words a text about it would plausibly use (keywords) and two it plausibly would too (forbidden).
TOPICS = {
    "a city park in autumn": (("leaves", "bench"), ("green", "summer")),
    "learning to ride a bicycle": (("balance", "pedal"), ("car", "fall")),
    "a rainy morning": (("umbrella", "coffee"), ("sun", "dry")),
    "the ocean at night": (("waves", "moon"), ("beach", "water")),
    "baking bread at home": (("flour", "oven"), ("cake", "sugar")),
    "a visit to a museum": (("painting", "history"), ("art", "ticket")),
    "a long train journey": (("window", "station"), ("plane", "seat")),
    "planting a vegetable garden": (("soil", "seeds"), ("flowers", "water")),
    "a winter holiday in the mountains": (("snow", "cabin"), ("ski", "cold")),
    "the first day at a new job": (("colleagues", "desk"), ("boss", "nervous")),
    "a busy market": (("stalls", "fruit"), ("money", "crowd")),
    "reading a good book": (("pages", "story"), ("author", "library")),
    "a thunderstorm": (("lightning", "thunder"), ("rain", "dark")),
    "cooking soup for friends": (("pot", "vegetables"), ("salt", "hot")),
    "a walk in the forest": (("trees", "path"), ("birds", "green")),
    "a football match": (("goal", "team"), ("ball", "win")),
    "moving to a new house": (("boxes", "neighbors"), ("home", "room")),
    "learning a new language": (("words", "practice"), ("grammar", "difficult")),
    "a night sky full of stars": (("stars", "telescope"), ("moon", "dark")),
    "a small cafe": (("coffee", "table"), ("cake", "music")),
    "a lake in summer": (("swim", "boat"), ("water", "sun")),
    "fixing an old radio": (("wires", "tools"), ("music", "broken")),
    "a birthday party": (("candles", "friends"), ("cake", "gift")),
    "a library at closing time": (("shelves", "quiet"), ("books", "read")),
    "a fishing trip": (("river", "patience"), ("fish", "boat")),
    "a school science fair": (("experiment", "students"), ("prize", "science")),
    "a lighthouse keeper": (("light", "storm"), ("sea", "ship")),
    "a farm in spring": (("lambs", "fields"), ("tractor", "farmer")),
    "a street musician": (("guitar", "crowd"), ("music", "coins")),
    "a snowy city street": (("snow", "lamps"), ("cold", "cars")),
    "the desert at noon": (("sand", "heat"), ("sun", "water")),
    "an old family photograph": (("memories", "faces"), ("camera", "old")),
    "a bridge over a river": (("river", "stone"), ("water", "boat")),
    "a hospital night shift": (("nurses", "patients"), ("doctor", "tired")),
    "a picnic by the sea": (("basket", "sand"), ("food", "sun")),
    "a chess game": (("board", "move"), ("king", "win")),
    "a garden after rain": (("puddles", "flowers"), ("wet", "green")),
    "a bakery at dawn": (("bread", "ovens"), ("sugar", "morning")),
    "a quiet village": (("houses", "church"), ("small", "people")),
    "a mountain hike": (("trail", "summit"), ("rocks", "tired")),
}
FAMILIES = ("length", "sentences", "keywords", "forbidden", "case", "bullets", "end", "json")
# Pairs that cannot both be met: JSON against constraints on the text's form, bullets against a sentence cap, and
# lowercase against the end phrases (they start with a capital).
_EXCLUSIVE = {"json": {"case", "bullets", "end", "sentences"}, "bullets": {"sentences"}, "case": {"end"}}
END_PHRASES = ("Is there anything else I can help with?", "That is all.", "Thank you for reading.")


def _families(seed: int, split: str, i: int) -> list[str]:
  """2 or 3 compatible constraint families for row i, in FAMILIES order."""
  k = 2 + stable_hash("count", seed, split, i) % 2
  chosen: list[str] = []
  for family in sorted(FAMILIES, key=lambda f: stable_hash("family", seed, split, i, f)):
    if len(chosen) == k:
      break
    if any(family in _EXCLUSIVE.get(c, ()) or c in _EXCLUSIVE.get(family, ()) for c in chosen):
      continue
    chosen.append(family)
  return sorted(chosen, key=FAMILIES.index)


def constraint_row(topic: str, families: list[str], h: int) -> tuple[str, dict[str, Any]]:
  """(instruction sentences, {column: value}) of the constraint families on `topic`; `h` picks the numbers."""
  keywords, forbidden = TOPICS[topic]
  columns: dict[str, Any] = {a: None for a in ASPECTS}
  text = []
  for family in families:
    if family == "length":
      lo = 10 + 5 * (h % 5)
      hi = lo + 10 + 5 * (h // 5 % 3)
      columns["min_words"], columns["max_words"] = lo, hi
      text.append(f"Use between {lo} and {hi} words.")
    elif family == "sentences":
      n = 1 + h // 7 % 3
      columns["max_sentences"] = n
      text.append(f"Use at most {n} sentence{'s' if n > 1 else ''}.")
    elif family == "keywords":
      columns["keywords"] = list(keywords)
      text.append(f"Include the words {keywords[0]} and {keywords[1]}.")
    elif family == "forbidden":
      columns["forbidden_words"] = list(forbidden)
      text.append(f"Do not use the words {forbidden[0]} or {forbidden[1]}.")
    elif family == "case":
      columns["case"] = "lower"
      text.append("Write everything in lowercase letters.")
    elif family == "bullets":
      n = 2 + h // 11 % 3
      columns["num_bullets"] = n
      text.append(f"Answer with exactly {n} bullet points that start with '- '.")
    elif family == "end":
      phrase = END_PHRASES[h // 13 % len(END_PHRASES)]
      columns["end_phrase"] = phrase
      text.append(f"End your answer with the phrase '{phrase}'.")
    elif family == "json":
      columns["json"] = True
      text.append("Answer with a valid JSON object only.")
  return " ".join(text), columns


def instruction_rows(seed: int, n: int, split: str = "train", eval_share: float = 0.25) -> list[dict[str, Any]]:
  """`n` rows of the "prompts" file format (module docstring) for `split` ("train" or "eval")."""
  generated.check_split_request(split, SPLITS, n, eval_share)
  topics = [t for t in TOPICS if (stable_hash("split", seed, t) < eval_share * 2.0**64) == (split == "eval")]
  if not topics:
    raise ValueError(f"split {split!r}: no topics in it for seed {seed} and eval_share {eval_share} (raise "
                     "eval_share for an empty 'eval' split, lower it for an empty 'train' split)")
  rows = []
  for i in range(n):
    topic = topics[stable_hash("topic", seed, split, i) % len(topics)]
    families = _families(seed, split, i)
    instruction, columns = constraint_row(topic, families, stable_hash("numbers", seed, split, i))
    content = f"Write a short text about {topic}. {instruction}"
    rows.append({"prompt": [{"role": "user", "content": content}], "id": f"{split}-{i}", "families": families,
                 **columns})
  return rows


def write_instruction_files(folder: str | os.PathLike, seed: int, num_train: int, num_eval: int) -> tuple[str, str]:
  """Writes `folder`/instruct_train.jsonl and instruct_eval.jsonl (disjoint topics); returns their paths."""
  paths = generated.write_split_files(folder, "instruct_{split}.jsonl",
                                      lambda split, n: instruction_rows(seed, n, split),
                                      (("train", num_train), ("eval", num_eval)))
  return paths[0], paths[1]
