"""TEST FIXTURE config (not an experiment): the rl stage on the tiny chat model's prompt files, for runs through
`python -m experiments.run` in a subprocess (the kill -9 test). The paths come as overrides:
    --config.model.init_from=DIR --config.prompts.paths='("train.jsonl",)' --config.prompts.eval_paths='("eval.jsonl",)'
with tests/stages on PYTHONPATH (the reward function is tiny_chat_model:checked_length)."""

import ml_collections

import tiny_chat_model


def get_config(arg=None):
  del arg
  stage = tiny_chat_model.rl_stage("", "", "")
  stage["kind"] = "rl"
  return ml_collections.ConfigDict(stage)
