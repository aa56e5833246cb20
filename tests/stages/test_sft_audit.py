"""The sft stage's held-out loss is the token mean of the NLL over ALL held-out target tokens (a sum over batches
divided by the token count, not a mean of per-batch values), recomputed with a numpy log-softmax of the saved
model's logits over the held-out batches (the last one partly filler)."""

import pytest

from jaxrlhf.models import from_pretrained
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import sft
from test_sft_stage import _numpy_nll, _world_cfg


def test_eval_loss_is_the_token_mean_over_all_held_out_tokens(tmp_path):
  cfg = _world_cfg(data=dict(num_train=32, num_eval=40, batch_size=16, max_length=40),
                   optimizer=dict(learning_rate=0.0),
                   loop=dict(num_steps=1, log_every=1, checkpoint_every=1, progress=False,
                             tensorboard=False, async_checkpoints=False))
  out = sft.run(cfg, str(tmp_path / "sft"), {})
  context = inputs_lib.stage_context(cfg, {})
  _, eval_records, _ = inputs_lib.sft_records(cfg.data, context.world, context.tokenizer, cfg.seed)
  eval_records, _ = inputs_lib.budgeted_records(eval_records, context.tokenizer, cfg.data, "sft", "eval")
  batches = inputs_lib.eval_batches(eval_records, context.tokenizer, cfg.data, "sft")
  assert len(batches) == 3
  model, _ = from_pretrained(out["model_dir"])  # learning rate 0: the evaluated weights
  total, count = 0.0, 0
  for batch in batches:
    t, c = _numpy_nll(model(batch["input_ids"], batch["attention_mask"]), batch)
    total, count = total + t, count + c
  assert out["metrics"]["eval/loss"] == pytest.approx(total / count, rel=1e-4)
