"""The synthetic world's word-level tokenizer (implements the tokenizer protocol of docs/design.md).

Text is a sequence of space-separated words; each known word is one token, unknown words map to `<unk>`.
The vocabulary is a fixed function of the world's sizes (never of the seed), laid out as

  specials   <pad> <bos> <eos> <unk>
  chat       <system> <user> <assistant>          (role markers of the chat template)
  control    <better> <worse>                     (contrastive contexts for T-REG)
  score      score: 0 1 2 ... 10                  (so a goal such as "score: 7" renders into a prompt)
  instruct   explain describe list compare summarize define discuss praise
  function   the a of and to in is it that with for as
  topics     num_topics x words_per_topic pseudo-words; topic k's words share their first letter
  extra      optional `extra_words` (e.g. the world's criterion names), appended last so that every other id is
             the same with or without them

Chat template (supports a system role):
  [<system> system text] <user> user text [<assistant> assistant text <eos>] ... [<assistant>]
"""

from typing import Sequence

import numpy as np

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHAT_TOKENS = ("<system>", "<user>", "<assistant>")
CONTROL_TOKENS = ("<better>", "<worse>")
SCORE_TOKENS = ("score:",) + tuple(str(i) for i in range(11))
INSTRUCTION_WORDS = ("explain", "describe", "list", "compare", "summarize", "define", "discuss", "praise")
FUNCTION_WORDS = ("the", "a", "of", "and", "to", "in", "is", "it", "that", "with", "for", "as")

# Topic k's words start with _CONSONANTS[k]; the rest of the word enumerates vowel/consonant patterns.
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_MIDDLES = "lnrst"
MAX_TOPICS = len(_CONSONANTS)
MAX_WORDS_PER_TOPIC = len(_VOWELS) * len(_MIDDLES)

ROLE_TOKENS = {"system": "<system>", "user": "<user>", "assistant": "<assistant>"}


def topic_words(num_topics: int, words_per_topic: int) -> list[list[str]]:
  """The pseudo-words of each topic: a fixed function of the sizes, e.g. topic 0 = ["bala", "bele", ...]."""
  if not 1 <= num_topics <= MAX_TOPICS:
    raise ValueError(f"num_topics must be in [1, {MAX_TOPICS}], got {num_topics}")
  if not 1 <= words_per_topic <= MAX_WORDS_PER_TOPIC:
    raise ValueError(f"words_per_topic must be in [1, {MAX_WORDS_PER_TOPIC}], got {words_per_topic}")
  words = []
  for k in range(num_topics):
    c = _CONSONANTS[k]
    words.append([c + _VOWELS[j % 5] + _MIDDLES[j // 5] + _VOWELS[(j + k) % 5] for j in range(words_per_topic)])
  return words


class WorldTokenizer:
  """Word-level tokenizer over the synthetic world's fixed vocabulary.

  Attributes:
    vocab: tuple of token strings, index = id.
    vocab_size, bos_id, eos_id, pad_id, unk_id: as in the tokenizer protocol.
    supports_system_role: True (the template renders `<system>` turns).
    topic_words: list of each topic's words (strings).
    extra_ids: int32 (E,) ids of `extra_words` (the last E ids; empty by default).
    ids: dict token -> id.
  """

  supports_system_role = True

  def __init__(self, num_topics: int = 8, words_per_topic: int = 8, extra_words: Sequence[str] = ()):
    self.topic_words = topic_words(num_topics, words_per_topic)
    vocab = (SPECIAL_TOKENS + CHAT_TOKENS + CONTROL_TOKENS + SCORE_TOKENS + INSTRUCTION_WORDS
             + FUNCTION_WORDS + tuple(w for ws in self.topic_words for w in ws))
    extra_words = tuple(extra_words)
    if any(not isinstance(w, str) or not w or w != w.strip() or len(w.split()) != 1 for w in extra_words) or len(
        set(extra_words) | set(vocab)) != len(vocab) + len(extra_words):
      raise ValueError(f"extra_words: expected distinct single words not already in the vocabulary, got "
                       f"{extra_words!r}")
    vocab += extra_words
    self.vocab = vocab
    self.ids = {w: i for i, w in enumerate(vocab)}
    self.vocab_size = len(vocab)
    self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.ids[t] for t in SPECIAL_TOKENS)
    self.special_ids = frozenset(self.ids[t] for t in SPECIAL_TOKENS + CHAT_TOKENS + CONTROL_TOKENS)
    self.better_id, self.worse_id = (self.ids[t] for t in CONTROL_TOKENS)
    self.instruction_ids = np.array([self.ids[w] for w in INSTRUCTION_WORDS], np.int32)
    self.function_ids = np.array([self.ids[w] for w in FUNCTION_WORDS], np.int32)
    self.topic_ids = np.array([[self.ids[w] for w in ws] for ws in self.topic_words], np.int32)  # (K, W)
    self.extra_ids = np.array([self.ids[w] for w in extra_words], np.int32)

  @property
  def num_topics(self) -> int:
    return len(self.topic_words)

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of the space-separated words of `text` (unknown words -> unk); optionally bos-prefixed."""
    if not isinstance(text, str):
      raise ValueError(f"text must be a str, got {type(text).__name__}")
    ids = [self.ids.get(w, self.unk_id) for w in text.split()]
    return [self.bos_id] + ids if add_special_tokens else ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """The words of `ids` joined by single spaces; pad/bos/eos/unk and chat/control markers dropped if asked."""
    words = []
    for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"ids: token id {i} outside [0, {self.vocab_size})")
      if skip_special_tokens and i in self.special_ids:
        continue
      words.append(self.vocab[i])
    return " ".join(words)

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                          tools: list[dict] | None = None) -> str:
    """Renders chat messages as `<role> content` turns; assistant turns end with `<eos>`.

    With add_generation_prompt, appends `<assistant>` so that generation continues the assistant turn.

    Raises:
      ValueError: bad messages, or tools / tool_calls (the world's format has no way to write them, and dropping
        them would change what the model sees).
    """
    if not isinstance(messages, (list, tuple)) or not messages:
      raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    if tools or any(isinstance(m, dict) and m.get("tool_calls") for m in messages):
      raise ValueError("the synthetic world's chat format cannot render tools or tool_calls; use a model whose chat "
                       "template does")
    parts = []
    for i, m in enumerate(messages):
      role = m.get("role") if isinstance(m, dict) else None
      if role not in ROLE_TOKENS:
        raise ValueError(f"messages[{i}]: role must be one of {tuple(ROLE_TOKENS)}, got {role!r}")
      if not isinstance(m.get("content"), str):
        raise ValueError(f"messages[{i}]: content must be a str")
      parts.append(ROLE_TOKENS[role])
      if m["content"].strip():
        parts.append(m["content"].strip())
      if role == "assistant":
        parts.append("<eos>")
    if add_generation_prompt:
      parts.append("<assistant>")
    return " ".join(parts)
