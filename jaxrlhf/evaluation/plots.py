"""PNG plots of reward over-optimization: gold and proxy reward against KL, and against n for best-of-N.

matplotlib runs on the non-interactive Agg backend (no display needed); each function writes one file and
returns its path.
"""

from __future__ import annotations

import os
import pathlib
from typing import Mapping, Sequence

import numpy as np


def _pyplot():
  import matplotlib  # lazy: plotting is optional at import time of the package
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt
  return plt


def _series(name: str, x, length: int | None = None) -> np.ndarray:
  x = np.asarray(x, np.float64).reshape(-1)
  if length is not None and x.size != length:
    raise ValueError(f"{name} has {x.size} points, expected {length}")
  return x


def _save(fig, path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  if path.suffix.lower() != ".png":
    raise ValueError(f"path must end in .png, got {str(path)!r}")
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  return path


def plot_reward_vs_kl(path: str | os.PathLike, kl, gold, proxy=None, *, gold_err=None, proxy_err=None,
                      label: str | None = None, title: str | None = None) -> pathlib.Path:
  """Gold (and proxy) reward against KL(policy || reference) in nats, e.g. along an RL run or a sweep.

  Args:
    path: output .png file.
    kl, gold, proxy: (M,) points (proxy optional).
    gold_err, proxy_err: optional (M,) half-widths or (2, M) [lower, upper] offsets drawn as error bars.
    label, title: legend prefix and figure title.
  """
  kl = _series("kl", kl)
  gold = _series("gold", gold, kl.size)
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  prefix = f"{label}: " if label else ""
  ax.errorbar(kl, gold, yerr=gold_err, marker="o", ms=3, capsize=2, label=f"{prefix}gold")
  if proxy is not None:
    ax.errorbar(kl, _series("proxy", proxy, kl.size), yerr=proxy_err, marker="s", ms=3, capsize=2, ls="--",
                label=f"{prefix}proxy")
  ax.set_xlabel("KL(policy || reference) [nats]")
  ax.set_ylabel("reward")
  ax.grid(alpha=0.3)
  ax.legend()
  if title:
    ax.set_title(title)
  try:
    return _save(fig, path)
  finally:
    plt.close(fig)


def plot_best_of_n(path: str | os.PathLike, curves: Mapping[str, Sequence[float]],
                   title: str | None = None) -> pathlib.Path:
  """Best-of-n curves (the dict of `jaxrlhf.sampling.best_of_n_curves`): reward against n (log2 axis) on the
  left, against KL on the right (analytic log n - (n-1)/n, and the pool estimate when present).

  `curves` needs "n", "kl" and "gold" or "proxy" (real prompts have no gold); "proxy", "gold_oracle", "length"
  (on a second axis) and "kl_estimate" are drawn when present.
  """
  missing = [k for k in ("n", "kl") if k not in curves] + ([] if "gold" in curves or "proxy" in curves
                                                           else ["gold or proxy"])
  if missing:
    raise ValueError(f"curves is missing keys {missing}; expected the output of best_of_n_curves")
  n = _series("n", curves["n"])
  plt = _pyplot()
  fig, (ax_n, ax_kl) = plt.subplots(1, 2, figsize=(10, 4))
  styles = {"gold": dict(marker="o"), "proxy": dict(marker="s", ls="--"), "gold_oracle": dict(ls=":", color="gray")}
  for key, style in styles.items():
    if key in curves:
      y = _series(key, curves[key], n.size)
      ax_n.plot(n, y, ms=3, label=key, **style)
      ax_kl.plot(_series("kl", curves["kl"], n.size), y, ms=3, label=key, **style)
  if "kl_estimate" in curves and "gold" in curves:
    ax_kl.plot(_series("kl_estimate", curves["kl_estimate"], n.size), _series("gold", curves["gold"]), ls="-.",
               label="gold vs KL (pool estimate)")
  ax_n.set_xscale("log", base=2)
  ax_n.set_xlabel("n (best-of-n)")
  ax_kl.set_xlabel("KL = log n - (n-1)/n [nats]")
  for ax in (ax_n, ax_kl):
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend()
  if title:
    fig.suptitle(title)
  try:
    return _save(fig, path)
  finally:
    plt.close(fig)
