"""Pure loss functions of arrays (no model calls) and the name -> function registry.

Modules: logps (sequence log-probs, chunked), reward (Bradley-Terry, margins, attributes, preference
strength), preference (DPO family), reference_free (SimPO, ORPO), kto, token_level (T-REG), aggregation
(ensemble reward aggregation), policy_gradient (GRPO/RLOO advantages, clipped surrogate, KL estimators,
process-reward refinement), policy_variants (Dr. GRPO, DAPO, GSPO, CISPO as named objectives; dynamic sampling,
overlong punishment), ppo (GAE, whitening, clipped value loss, PPO loss, KL controllers). Importing this package
registers every loss with `registry`.
"""

from jaxrlhf.losses import (  # noqa: F401  (imported for their registrations)
    aggregation,
    kto,
    logps,
    policy_gradient,
    policy_variants,
    ppo,
    preference,
    reference_free,
    reward,
    token_level,
)
from jaxrlhf.losses.registry import get, names, register  # noqa: F401
