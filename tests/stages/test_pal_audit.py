"""Audit of the pal stage: seen users are scored on their HELD-OUT pairs only (the counts match the records),
and user_balanced hands the loss each user's training-pair count (the authors' logistic_w)."""

import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import from_config
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import pal

USERS = (("a", (2.0, 0.0, 0.0, 0.0, 1.0)), ("b", (0.0, 3.0, 0.0, 0.0, -1.5)), ("c", (0.0, 0.0, 3.0, 2.0, 0.0)))


def _cfg(**overrides):
  section = dict(data=dict(world=dict(annotators=USERS), num_train=96, num_eval=48, batch_size=16),
                 unseen_users=("c",), shots=(1, 2), num_steps=5, fewshot_steps=2, pref_dim=4,
                 optimizer=dict(learning_rate=1e-2))
  section.update(overrides)
  return from_config(section, pal.PALConfig, path="config.pal")


def test_seen_users_are_scored_on_their_held_out_pairs(tmp_path):
  cfg = _cfg()
  train, held_out, _ = inputs_lib.preference_records(cfg.data, inputs_lib.make_world(cfg.data.world))
  out = pal.run(cfg, str(tmp_path), {})
  m = out["metrics"]
  assert m["seen/num_eval_pairs"] == sum(r.annotator != "c" for r in held_out)
  assert m["unseen/num_eval_pairs"] == sum(r.annotator == "c" for r in held_out)
  assert m["data/num_train_pairs"] == sum(r.annotator != "c" for r in train)


@pytest.mark.parametrize("balanced", [True, False])
def test_user_balanced_weights_pairs_by_their_users_count(monkeypatch, balanced):
  cfg = _cfg(user_balanced=balanced)
  user_N = np.asarray([0, 0, 0, 1, 2, 2, 0, 1] * 2, np.int32)
  rng = np.random.default_rng(0)
  chosen, rejected = rng.normal(size=(16, 5)).astype(np.float32), rng.normal(size=(16, 5)).astype(np.float32)
  seen = []
  loss = pal.pal_losses.pal_loss

  def spy(r_c, r_r, users, counts):
    seen.append(None if counts is None else np.asarray(counts))
    return loss(r_c, r_r, users, counts)

  monkeypatch.setattr(pal.pal_losses, "pal_loss", spy)
  model = pal.BTBaseline(5, 4, "linear", 0, rngs=nnx.Rngs(0))
  pal.train_pairs(model, cfg, chosen, rejected, user_N, 4)
  assert seen
  if balanced:
    np.testing.assert_array_equal(seen[0], [8, 4, 4, 0])  # pairs per user (user 3 has none)
  else:
    assert seen[0] is None
