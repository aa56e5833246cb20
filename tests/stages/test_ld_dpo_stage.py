"""LD-DPO in the preference stage (`loss.ld_alpha`): the held-out log-probs are the hand-weighted sums of the policy's
token log-probs, the resident and precomputed references weight alike (equal losses), a reference cache computed
for another ld_alpha is recomputed, and the other algorithms refuse it."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import preference
from jaxrlhf.models import from_pretrained
from jaxrlhf.train import scoring


def _cfg(lr=1e-2, steps=3, reference="auto", **loss):
  section = dict(seed=0, num_devices=1,
                 model=dict(config=dict(embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                                        mlp_dim=64)),
                 data=dict(num_train=64, num_eval=16, batch_size=8, max_length=40, shared_prompt="off"),
                 loss=dict(loss), reference=reference, optimizer=dict(learning_rate=lr),
                 loop=dict(num_steps=steps, log_every=1, checkpoint_every=steps, progress=False, tensorboard=False,
                           async_checkpoints=False))
  return from_config(section, preference.PreferenceConfig, path="config")


def _losses(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line)["train/loss"] for line in f if "train/loss" in line]


def _hand_ld(token_logps, mask, alpha, keep_end=False):
  """LD-DPO's weighting row by row in plain Python (the public length counted on each pair's two rows; with
  keep_end the row's last response token at full weight)."""
  b = len(token_logps) // 2
  out = []
  for i, (row, m) in enumerate(zip(token_logps, mask)):
    public = min(mask[i % b].sum(), mask[i % b + b].sum())
    seen, total = 0, 0.0
    for value, on in zip(row, m):
      if on:
        seen += 1
        full = seen <= public or (keep_end and seen == m.sum())
        total += value if full else alpha * value
    out.append(total)
  return np.asarray(out)


@pytest.mark.parametrize("keep_end", [False, True])
def test_held_out_logps_are_the_ld_weighted_sums(tmp_path, keep_end):
  cfg = _cfg(lr=0.0, steps=1, ld_alpha=0.25, ld_keep_end=keep_end)
  out = preference.run(cfg, str(tmp_path), {})
  model, _ = from_pretrained(out["model_dir"])  # learning rate 0: the evaluated policy
  context = inputs_lib.stage_context(cfg, {})
  _, held_out, _ = inputs_lib.preference_records(cfg.data, context.world)
  held_out, _ = inputs_lib.budgeted_records(held_out, context.tokenizer, cfg.data, "preference", "eval")
  chosen = []
  for batch in inputs_lib.eval_batches(held_out, context.tokenizer, cfg.data, "preference"):
    token_logps, mask = scoring.pair_token_logps(model, {k: jnp.asarray(v) for k, v in batch.items()})
    b = len(batch["weight"])
    hand = _hand_ld(np.asarray(token_logps, np.float64), np.asarray(mask) > 0, 0.25, keep_end)
    chosen.extend(hand[:b][batch["weight"] > 0])
    plain = np.asarray(token_logps, np.float64).sum(1)[:b][batch["weight"] > 0]
  assert len(chosen) == 16
  assert out["metrics"]["eval/logps/chosen"] == pytest.approx(np.mean(chosen), rel=1e-5)
  assert not np.allclose(hand[:b][batch["weight"] > 0], plain)  # The weighting changed some sums.


def test_resident_and_precomputed_references_weight_alike(tmp_path):
  runs = {}
  for reference in ("resident", "precompute"):
    preference.run(_cfg(reference=reference, ld_alpha=0.5), str(tmp_path / reference), {})
    runs[reference] = _losses(tmp_path / reference)
  np.testing.assert_allclose(runs["resident"], runs["precompute"], rtol=2e-5)
  preference.run(_cfg(reference="precompute"), str(tmp_path / "plain"), {})
  assert not np.allclose(_losses(tmp_path / "plain"), runs["precompute"], rtol=1e-3)  # ld_alpha does something


def test_a_cache_for_another_ld_alpha_is_recomputed(tmp_path, capsys):
  preference.run(_cfg(steps=1), str(tmp_path / "a"), {})
  preference.run(_cfg(steps=1, ld_alpha=0.5), str(tmp_path / "b"), {})
  plain = preference.ReferenceCache.load(str(tmp_path / "a" / "reference_cache.npz"))
  weighted = preference.ReferenceCache.load(str(tmp_path / "b" / "reference_cache.npz"))
  assert (plain.meta, weighted.meta) == ({"ld_alpha": 1.0}, {"ld_alpha": 0.5})
  capsys.readouterr()
  # The finished workdir "a" rerun at ld_alpha 0.5 (one more step): its plain cache is replaced, not reused.
  preference.run(_cfg(steps=2, ld_alpha=0.5), str(tmp_path / "a"), {})
  printed = capsys.readouterr().out
  assert "holds reference log-probs for {'ld_alpha': 1.0}, this run needs {'ld_alpha': 0.5}: recomputing" in printed
  redone = preference.ReferenceCache.load(str(tmp_path / "a" / "reference_cache.npz"))
  assert redone.meta == {"ld_alpha": 0.5} and redone.table.keys() == weighted.table.keys()
  for key, (rc, rr, _) in weighted.table.items():
    assert redone.table[key][:2] == pytest.approx((rc, rr), rel=1e-6)
  assert any(plain.table[k][:2] != pytest.approx(v[:2], rel=1e-6) for k, v in weighted.table.items())
  # The end-token ablation changes the sums too: its cache is recorded and a plain LD cache is not reused for it.
  capsys.readouterr()
  preference.run(_cfg(steps=2, ld_alpha=0.5, ld_keep_end=True), str(tmp_path / "b"), {})
  assert "this run needs {'ld_alpha': 0.5, 'ld_keep_end': True}: recomputing" in capsys.readouterr().out
  kept_end = preference.ReferenceCache.load(str(tmp_path / "b" / "reference_cache.npz"))
  assert any(kept_end.table[k][:2] != pytest.approx(v[:2], rel=1e-6) for k, v in weighted.table.items())


def test_other_algorithms_refuse_ld_alpha():
  with pytest.raises(ConfigError, match=r"config\.loss\.ld_alpha: LD-DPO weights DPO's sequence log-probs; 0\.5 "
                     r"needs config\.loss\.algorithm 'dpo', got 'simpo'"):
    _cfg(algorithm="simpo", ld_alpha=0.5)
  with pytest.raises(ConfigError, match=r"config\.loss\.ld_alpha"):
    _cfg(ld_alpha=1.5)
  with pytest.raises(ConfigError, match=r"config\.loss\.ld_keep_end: modifies LD-DPO's weighting, which "
                     r"config\.loss\.ld_alpha = 1 turns off"):
    _cfg(ld_keep_end=True)
