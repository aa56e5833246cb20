"""TR-DPO in the preference stage (`loss.ref_update_every`, `loss.ref_update_alpha`): with a hard update after every
step the policy equals its reference at every step, so each step's sigmoid loss is exactly log 2; every second
step, only the steps after an update are; the settings that cannot move a reference are refused. (The soft
update's formula is tested against hand values in tests/stages/test_rl_online_dpo.py.)"""

import json
import math

import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.stages import preference


def _cfg(steps=4, reference="auto", **loss):
  section = dict(seed=0, num_devices=1,
                 model=dict(config=dict(embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                                        mlp_dim=64)),
                 data=dict(num_train=64, num_eval=16, batch_size=8, max_length=40),
                 loss=loss, reference=reference, optimizer=dict(learning_rate=1e-2),
                 loop=dict(num_steps=steps, log_every=1, checkpoint_every=steps, progress=False, tensorboard=False,
                           async_checkpoints=False))
  return from_config(section, preference.PreferenceConfig, path="config")


def _logged(workdir, key):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line)[key] for line in f if key in line]


@pytest.mark.parametrize("every, at_log2", [(1, [True, True, True, True]), (2, [True, False, True, False])])
def test_a_hard_update_makes_the_next_step_start_from_zero_log_ratios(tmp_path, every, at_log2):
  cfg = _cfg(ref_update_every=every, ref_update_alpha=1.0)
  assert preference.resident_reference(cfg)  # "auto" keeps the reference resident so that it can move
  preference.run(cfg, str(tmp_path), {})
  losses = _logged(tmp_path, "train/loss")
  assert [abs(l - math.log(2)) < 1e-6 for l in losses] == at_log2, losses
  assert _logged(tmp_path, "train/ref/updates") == [float(s % every == 0) for s in range(1, 5)]


def test_without_updates_the_reference_stays_where_it_started(tmp_path):
  preference.run(_cfg(reference="resident"), str(tmp_path), {})
  losses = _logged(tmp_path, "train/loss")
  assert abs(losses[0] - math.log(2)) < 1e-6 and all(abs(l - math.log(2)) > 1e-4 for l in losses[1:])


def test_settings_that_cannot_move_a_reference_are_refused():
  with pytest.raises(ConfigError, match=r"config\.reference: 'precompute' fixes the reference log-probs"):
    _cfg(reference="precompute", ref_update_every=2)
  with pytest.raises(ConfigError, match=r"config\.loss\.ref_update_every: 'simpo' has no reference model"):
    _cfg(algorithm="simpo", ref_update_every=2)
  section = dict(model=dict(lora=dict(rank=2, alpha=4.0, targets=("q",))), loss=dict(ref_update_every=2))
  with pytest.raises(ConfigError, match=r"config\.loss\.ref_update_every: a LoRA policy's reference is its own base"):
    from_config(section, preference.PreferenceConfig, path="config")
