"""Training iterators split every global batch by process; evaluation batches stay whole (builders wiring)."""

import jax
import numpy as np

from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.stages import inputs


def _data():
  return inputs.DataSpec(num_train=64, num_eval=16, batch_size=8, max_length=40, shuffle=False)


def _batches(records, tokenizer, data, n=2):
  it = inputs.train_iterator(records, tokenizer, data, "preference", seed=0)
  return it, [next(it) for _ in range(n)]


def test_train_iterator_yields_this_process_rows_and_eval_stays_whole(monkeypatch):
  world = World(WorldConfig(seed=0))
  records = world.preference_records(64, "train")
  data = _data()
  _, whole = _batches(records, world.tokenizer, data)
  parts = []
  for index in (0, 1):  # Pretend to be process `index` of 2.
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    it, batches = _batches(records, world.tokenizer, data)
    assert it.process_local
    assert all(b["chosen_input_ids"].shape[0] == 4 for b in batches)
    parts.append(batches)
    evals = inputs.eval_batches(records[:16], world.tokenizer, data, "preference")
    assert evals[0]["chosen_input_ids"].shape[0] == 8  # every process evaluates whole batches
    stacked = inputs.StackedIterator([it, it], world.tokenizer.pad_id)
    assert stacked.process_local
  monkeypatch.undo()
  for step, full in enumerate(whole):
    for key in ("chosen_input_ids", "rejected_input_ids"):
      joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
      np.testing.assert_array_equal(joined, full[key])  # the two halves are the global batch
