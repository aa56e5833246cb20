"""Reward functions on text, in TRL's reward_funcs convention, for the online stages' prompt files.

A reward function maps R rows to R values: fn(prompts: list[str], completions: list[str], **columns) -> list of
float or None (None / NaN = "not scorable"); `columns` are the prompt file's extra columns, one value per row.
Modules: calling (calling a user or built-in function, checking its output, errors naming the function and row,
load_function), answers (exact match of a final answer with number normalization), shaping (regular-expression
format reward, length penalty), bleu (sacrebleu's sentence BLEU and BLEUBERI's variant), sql (Reasoning-SQL's
execution / syntax / schema-linking / n-gram / format rewards on sqlite3), toolrl (ToolRL's format and
tool-call correctness reward), voting (label-free majority-vote rewards: self-consistency and
Co-Reward's cross-question agreement, which see the whole batch), bmas (Mixed-R1's bidirectional max-average
similarity of input embeddings against a reference column), multi_aspect and hybrid (Beyond Monolithic Rewards:
instruction-adherence aspects from constraint columns, the generalized length penalty, and the confidence mix of a
reward model with rules), semantic (encoder-based rewards: plain relevance, R^3's regularized relevance, the
semantic similarity of generated and gold SQL), encoder (the mean-pooled hidden states of a local causal LM that
semantic uses), combine (weighted sums), kinds (the table kind -> factory for configs: make_reward), outcomes
(the per-case row counts a function reports beside its values, e.g. SQL queries stopped by the time limit).
Pure Python / numpy (bmas reads only a model file's embedding table), except `encoder`, which runs a model in JAX
and is imported only when an encoder-based reward is built.
"""

from jaxrlhf.rewards.answers import answer_matches, exact_match, extract_answer, parse_number
from jaxrlhf.rewards.bmas import bmas_reward, embedding_table  # Not bmas(): `rewards.bmas` stays the module.
from jaxrlhf.rewards.bleu import bleu_reward, bleuberi_bleu, bleuberi_reward, sentence_bleu, tokenize_13a
from jaxrlhf.rewards.calling import (RewardFunctionError, call_reward_function, call_style, check_rewards,
                                     completion_text, describe, load_function)
from jaxrlhf.rewards.combine import weighted_sum
from jaxrlhf.rewards.hybrid import confidence_mix
from jaxrlhf.rewards.kinds import REWARDS, make_reward
from jaxrlhf.rewards.multi_aspect import generalized_length_penalty, instruction_adherence
from jaxrlhf.rewards.outcomes import CombinedOutcomes, Outcomes, outcomes_of
from jaxrlhf.rewards.semantic import r3_relevance, relevance, sql_semantic
from jaxrlhf.rewards.shaping import length_penalty, regex_format
from jaxrlhf.rewards.sql import (reasoning_sql, sql_execution, sql_format, sql_ngram, sql_schema_linking,
                                 sql_syntax)
from jaxrlhf.rewards.toolrl import toolrl_reward
from jaxrlhf.rewards.voting import co_reward, self_consistency, vote_unanimity
