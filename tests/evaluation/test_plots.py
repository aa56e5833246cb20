"""PNG plots are written, non-empty and valid PNG files."""

import numpy as np
import pytest

from jaxrlhf.evaluation import plot_best_of_n, plot_reward_vs_kl
from jaxrlhf.sampling import best_of_n_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_reward_vs_kl_png(tmp_path):
  kl = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
  path = plot_reward_vs_kl(tmp_path / "sub" / "kl.png", kl, gold=[0.0, 0.3, 0.4, 0.3, 0.1],
                           proxy=[0.0, 0.4, 0.8, 1.2, 1.9], gold_err=np.full(5, 0.05), label="grpo", title="RL")
  data = path.read_bytes()
  assert path.exists() and len(data) > 1000 and data.startswith(PNG_MAGIC)
  with pytest.raises(ValueError, match="gold"):
    plot_reward_vs_kl(tmp_path / "bad.png", kl, gold=[0.0, 1.0])
  with pytest.raises(ValueError, match=".png"):
    plot_reward_vs_kl(tmp_path / "bad.jpg", kl, gold=kl)


def test_best_of_n_png(tmp_path):
  rng = np.random.default_rng(0)
  gold = rng.normal(size=(3, 64))
  curves = best_of_n_curves(gold + rng.normal(size=(3, 64)), gold, ns=[1, 2, 4, 8, 16, 32, 64])
  path = plot_best_of_n(tmp_path / "bon.png", curves, title="best-of-n")
  data = path.read_bytes()
  assert len(data) > 1000 and data.startswith(PNG_MAGIC)
  with pytest.raises(ValueError, match="missing"):
    plot_best_of_n(tmp_path / "x.png", {"n": [1]})
