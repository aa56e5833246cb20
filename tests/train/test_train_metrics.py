"""Weighted metric accumulation and the metrics writers."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train.metrics import Avg, Sum


def test_window_weighted_mean_equals_pooled_mean():
  rng = np.random.default_rng(0)
  chunks = [rng.normal(size=n) for n in (3, 7, 1, 5)]  # Unequal weights: a naive mean of means is wrong.
  window = metrics_lib.Window()
  for c in chunks:
    window.add({"loss": Avg(jnp.asarray(c.sum()), jnp.asarray(float(len(c)))), "tokens": Sum(jnp.asarray(len(c))),
                "gnorm": jnp.asarray(c.max())})
  out = window.result()
  pooled = np.concatenate(chunks)
  np.testing.assert_allclose(out["loss"], pooled.mean(), rtol=1e-6)
  assert np.mean([c.mean() for c in chunks]) != np.float64(out["loss"])
  assert out["tokens"] == len(pooled)
  np.testing.assert_allclose(out["gnorm"], np.mean([c.max() for c in chunks]), rtol=1e-6)
  assert window.steps == 4
  window.reset()
  assert window.result() == {}


def test_stack_reduce_under_jit_and_first_non_finite():
  stacked = {"a": Avg(jnp.array([1.0, 2.0]), jnp.array([1.0, 3.0])), "b": jnp.array([2.0, 4.0]),
             "c": Sum(jnp.array([5.0, 6.0]))}
  out = metrics_lib.compute(jax.jit(metrics_lib.stack_reduce)(stacked))
  assert out == {"a": 0.75, "b": 3.0, "c": 11.0}
  assert metrics_lib.first_non_finite({"x": 1.0, "y": float("inf"), "z": float("nan")}) == "y"
  assert metrics_lib.first_non_finite({"grad_norm": float("nan"), "loss": float("nan")}) == "loss"
  assert metrics_lib.first_non_finite(out) is None


def test_writer_jsonl_truncate_and_tensorboard(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path))
  for step in (2, 4, 6):
    writer.write(step, {"train/loss": step / 10})
  writer.truncate_after(4)
  writer.write(6, {"train/loss": 0.7})
  writer.close()
  lines = metrics_lib.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert lines == [{"step": 2, "train/loss": 0.2}, {"step": 4, "train/loss": 0.4}, {"step": 6, "train/loss": 0.7}]
  events = glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
  assert events and os.path.getsize(events[0]) > 0
  # The event file holds the scalar tag (TFRecord framing around a serialized Summary proto).
  assert b"train/loss" in open(events[0], "rb").read()
  json.dumps(lines)


def test_an_empty_mean_has_no_value_in_windows_and_the_guard():
  """Avg(0, 0): nothing contributed (e.g. a per-subset mean over a batch without that subset). It is NaN in a plain
  `compute`, left out with drop_empty (the loop's guard and windows), and adds nothing to a window's pooled mean."""
  empty = {"sub": Avg(jnp.asarray(0.0), jnp.asarray(0.0)), "loss": Avg(jnp.asarray(3.0), jnp.asarray(2.0))}
  assert np.isnan(metrics_lib.compute(empty)["sub"])
  assert metrics_lib.compute(empty, drop_empty=True) == {"loss": 1.5}
  window = metrics_lib.Window()
  window.add(empty)
  assert window.result() == {"loss": 1.5}  # Was {"loss": 1.5, "sub": nan}.
  window.add({"sub": Avg(jnp.asarray(6.0), jnp.asarray(3.0)), "loss": Avg(jnp.asarray(1.0), jnp.asarray(2.0))})
  assert window.result() == {"sub": 2.0, "loss": 1.0}


def test_truncate_after_drops_a_torn_last_line_and_names_a_bad_one(tmp_path, capsys):
  """A kill (or a full disk) in the middle of an append leaves a torn last line; the resume used to fail in
  json.loads. It is dropped with a warning; an unreadable line before the last one is an error naming file:line."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 2, "train/loss": 0.2}\n{"step": 4, "train/loss": 0.4}\n{"step": 6, "train/lo')
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
  writer.truncate_after(6)
  assert "metrics.jsonl:3: dropping a torn last line" in capsys.readouterr().out
  assert metrics_lib.read_jsonl(str(path)) == [{"step": 2, "train/loss": 0.2}, {"step": 4, "train/loss": 0.4}]
  writer.write(6, {"train/loss": 0.6})
  assert [l["step"] for l in metrics_lib.read_jsonl(str(path))] == [2, 4, 6]
  path.write_text('{"step": 2}\n{"step": 4, "train/lo\n{"step": 6}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: expected a JSON object with a \"step\" key"):
    writer.truncate_after(6)
  assert path.read_text() == '{"step": 2}\n{"step": 4, "train/lo\n{"step": 6}\n'  # Left as it was.


def _tensorboard_scalars(logdir):
  """(tag, step, value) of every scalar in the event files under `logdir`, read from the TFRecord framing (uint64
  length, uint32 crc, an Event proto, uint32 crc)."""
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    raw = open(path, "rb").read()
    i = 0
    while i < len(raw):
      (n,) = struct.unpack("<Q", raw[i:i + 8])
      event = event_pb2.Event.FromString(raw[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        out.append((v.tag, event.step, v.simple_value))
  return out


def test_tensorboard_scalars_carry_their_step(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path))
  writer.write(2, {"train/loss": 0.5})
  writer.write(4, {"train/loss": 0.25, "eval/acc": 0.75})
  writer.close()
  assert sorted(_tensorboard_scalars(str(tmp_path / "tensorboard"))) == [
      ("eval/acc", 4, 0.75), ("train/loss", 2, 0.5), ("train/loss", 4, 0.25)]
