"""Jitted KV-cache generation, best-of-N sampling (with unbiased best-of-n curves from one pool) and value augmented
sampling (VAS)."""

from jaxrlhf.sampling.best_of_n import (
    BestOfN,
    best_of_n,
    best_of_n_curves,
    best_of_n_kl,
    best_of_n_kl_estimate,
    best_of_n_weights,
    default_ns,
    gold_scorer,
    reduce_scores,
    reward_model_scorer,
    select_best,
    unbiased_best_of_n,
)
from jaxrlhf.sampling.generate import Generation, content_lengths, generate
from jaxrlhf.sampling.vas import VASGeneration, top_k_candidates, vas_cost, vas_generate, vas_logits

__all__ = [
    "BestOfN", "Generation", "best_of_n", "best_of_n_curves", "best_of_n_kl", "best_of_n_kl_estimate",
    "best_of_n_weights", "content_lengths", "default_ns", "generate", "gold_scorer", "reduce_scores",
    "reward_model_scorer", "select_best", "unbiased_best_of_n", "VASGeneration", "top_k_candidates", "vas_cost",
    "vas_generate", "vas_logits",
]
