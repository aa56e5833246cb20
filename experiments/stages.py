"""Registers the real stage kinds for `experiments.run`: "sft", "reward", "preference", "evaluate_policy".

Each kind is a frozen config dataclass (converted and validated before any stage runs) and a
`run(config, workdir, inputs) -> outputs` function; outputs hold the stage's checkpoint dir, the saved model
(`model_dir`: a HF folder; `rm_dir`: a saved reward model) and the final metrics, which later stages consume
through `init_from: "stage:<name>"` / `reward_model: "stage:<name>"`.
"""

import experiments
from jaxrlhf.train import evaluate, preference, reward, sft

experiments.register_stage("sft", sft.SFTConfig, sft.run_sft)
experiments.register_stage("reward", reward.RewardConfig, reward.run_reward)
experiments.register_stage("preference", preference.PreferenceConfig, preference.run_preference)
experiments.register_stage("evaluate_policy", evaluate.EvaluatePolicyConfig, evaluate.run_evaluate_policy)

# Online RL (GRPO / RLOO) and the best-of-N experiment (issue 6).
from jaxrlhf.evaluation import best_of_n_stage  # noqa: E402
from jaxrlhf.train import rl  # noqa: E402

experiments.register_stage("rl", rl.RLConfig, rl.run_rl)
experiments.register_stage("best_of_n", best_of_n_stage.BestOfNConfig, best_of_n_stage.run_best_of_n)
from jaxrlhf.evaluation import strength as _strength; experiments.register_stage("preference_strength", _strength.PreferenceStrengthConfig, _strength.run_preference_strength)  # noqa: E402,E501
from jaxrlhf.evaluation import token_credit as _token_credit; experiments.register_stage("token_credit", _token_credit.TokenCreditConfig, _token_credit.run_token_credit)  # noqa: E402,E501
from jaxrlhf.evaluation import density_ratio as _density_ratio; experiments.register_stage("density_ratio", _density_ratio.DensityRatioConfig, _density_ratio.run_density_ratio)  # noqa: E402,E501
from jaxrlhf.evaluation import unlearning as _unlearning; experiments.register_stage("logp_shift", _unlearning.LogpShiftConfig, _unlearning.run_logp_shift)  # noqa: E402,E501
