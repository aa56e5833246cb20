"""The training stages' LM-head log-prob path (`scoring.resolve_logps_path`, `logps_path` of the sft, preference and
self_rewarding stages and the rl stage's `loss`): the backend rule, the config checks, and that the fused path gives
the full path's values and gradients (fp32) through a CausalLM, soft-capped or not, packed or not, on rollout rows,
and the same DPO / T-REG / KTO update (the rl stage's steps: tests/stages/test_rl_ppo.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.models import CausalLM
from jaxrlhf.stages import preference, rl, self_rewarding, sft
from jaxrlhf.train import scoring
from jaxpr_walk import all_eqns
from tiny_causal_lms import GEMMA2, LLAMA, scoring_rows


@pytest.mark.parametrize("path,chunk,backend,want", [
    ("auto", 0, "gpu", (0, True)),         # measured on an H200: the fused backward is the faster one there;
    ("auto", 256, "gpu", (256, True)),     # a chunk size keeps memory bounded (recomputed softmax gradient)
    ("auto", 0, "cpu", (0, False)),        # the CPU keeps what it ran before the option existed
    ("auto", 256, "cpu", (256, False)),
    ("auto", 0, "tpu", (0, False)),        # not measured on a TPU: no change there
    ("chunked", 0, "cpu", (1024, False)),
    ("chunked", 64, "gpu", (64, False)),
    ("fused", 0, "cpu", (0, True)),
    ("fused", 64, "tpu", (64, True)),
    ("full", 0, "gpu", (0, False)),
])
def test_backend_rule(path, chunk, backend, want):
  assert scoring.resolve_logps_path(path, chunk, backend) == want


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="logps_chunk_size must be 0"):
    scoring.resolve_logps_path("full", 8, "cpu")
  with pytest.raises(ValueError, match="logps_path must be one of"):
    scoring.resolve_logps_path("fast", 0, "cpu")
  with pytest.raises(ValueError, match="logps_chunk_size must be an int >= 0"):
    scoring.resolve_logps_path("chunked", -1, "cpu")
  for stage_cls in (sft.SFTConfig, preference.PreferenceConfig):
    with pytest.raises(ConfigError, match=r"config\.logps_chunk_size: 8 with config\.logps_path='full'"):
      from_config({"logps_path": "full", "logps_chunk_size": 8}, stage_cls, path="config")
    with pytest.raises(ConfigError, match=r"config\.logps_path"):
      from_config({"logps_path": "fast"}, stage_cls, path="config")
  with pytest.raises(ConfigError, match=r"config\.loss\.logps_chunk_size: 8 with config\.loss\.logps_path='full'"):
    from_config({"rewards": ({"kind": "gold"},), "loss": {"logps_path": "full", "logps_chunk_size": 8}},
                rl.RLConfig, path="config")
  section = {"model": {"init_from": "stage:a"}, "reference": "stage:b", "logps_path": "full", "logps_chunk_size": 8}
  with pytest.raises(ConfigError, match=r"config\.logps_chunk_size: 8 with config\.logps_path='full'"):
    from_config(section, self_rewarding.SelfRewardingConfig, path="config")


def _rows(seed=0, b=3, t=11):
  """(ids, attention, loss mask, per-token weights) of `scoring_rows`, row 0 padded from position 8."""
  return scoring_rows(seed, b, t, pad_from=8, with_weights=True)


def _values_and_param_grads(model, fn):
  graphdef, params = nnx.split(model)

  def objective(p):
    logps, mask = fn(nnx.merge(graphdef, p))
    return jnp.sum(logps * fn.weights), (logps, mask)

  with jax.default_matmul_precision("highest"):
    (_, (logps, mask)), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
  return logps, mask, grads


def _assert_trees_close(got, want, rtol=2e-4, atol=2e-6):
  flat_got, flat_want = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(flat_got) == len(flat_want) > 0
  for a, b in zip(flat_got, flat_want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


@pytest.mark.parametrize("config", [GEMMA2, LLAMA], ids=["gemma2_softcap", "llama"])
@pytest.mark.parametrize("chunk_size", [0, 5])
def test_fused_token_logps_equal_the_full_logits_path(config, chunk_size):
  """Values, mask and every parameter's gradient (embedding = tied head included) equal autodiff of the whole
  (B, T, V) fp32 log-softmax; the soft-capped Gemma 2 head goes through the cap's derivative."""
  model = CausalLM(config, rngs=nnx.Rngs(0))
  ids, att, lm, weights = _rows()

  def run(fused, chunk):
    fn = lambda m: scoring.token_logps(m, ids, att, lm, chunk, fused=fused)  # noqa: E731
    fn.weights = weights
    return _values_and_param_grads(model, fn)

  got, got_mask, got_grads = run(True, chunk_size)
  want, want_mask, want_grads = run(False, 0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got_mask, want_mask)
  _assert_trees_close(got_grads, want_grads)


def test_fused_token_logps_of_packed_rows_equal_the_chunked_path():
  """SFT's packed rows (segment ids, per-example positions) on the fused path: the chunked path's values and
  gradients (packed rows always go through the hidden states)."""
  model = CausalLM(LLAMA, rngs=nnx.Rngs(1))
  ids, _, _, weights = _rows(1, b=2, t=10)
  segments = jnp.asarray([[1] * 4 + [2] * 6, [1] * 7 + [0] * 3])
  positions = jnp.asarray([list(range(4)) + list(range(6)), list(range(7)) + [0] * 3])
  att = (segments > 0).astype(jnp.int32)
  lm = jnp.asarray([[0, 1, 1, 1, 1, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]])

  def run(fused):
    fn = lambda m: scoring.token_logps(m, ids, att, lm, 3, positions_BxT=positions,  # noqa: E731
                                       segment_ids_BxT=segments, fused=fused)
    fn.weights = weights
    return _values_and_param_grads(model, fn)

  got, got_mask, got_grads = run(True)
  want, want_mask, want_grads = run(False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got_mask, want_mask)
  # No target crosses the segment boundary of row 0: token 4 opens segment 2, position 3 does not predict it.
  assert float(got_mask[0, 3]) == 0.0 and float(jnp.sum(got_mask)) == 12.0
  _assert_trees_close(got_grads, want_grads)


@pytest.mark.parametrize("config", [GEMMA2, LLAMA], ids=["gemma2_softcap", "llama"])
@pytest.mark.parametrize("with_hidden", [False, True])
def test_fused_response_logps_equal_the_full_logits_path(config, with_hidden):
  """The rl stage's rollout rows ([left-padded prompt | right-padded response]) at temperature 0.7 on the fused path:
  the full path's log-probs, entropy and parameter gradients (and the same hidden states for a value head)."""
  model = CausalLM(config, rngs=nnx.Rngs(4))
  rng = np.random.default_rng(4)
  prompt_ids = jnp.asarray(rng.integers(3, 37, (3, 5)), jnp.int32)
  prompt_mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
  tokens = jnp.asarray(rng.integers(3, 37, (3, 6)), jnp.int32)
  response_mask = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
  weights = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
  graphdef, params = nnx.split(model)

  def run(chunk, fused):
    def objective(p):
      m = nnx.merge(graphdef, p)
      args = (m, prompt_ids, prompt_mask, tokens, response_mask, 0.7, chunk, fused)
      if with_hidden:
        logps, entropy, hidden = scoring.response_logps_and_hidden(*args)
      else:
        (logps, entropy), hidden = scoring.response_logps(*args), jnp.zeros(())
      return jnp.sum(logps * weights), (logps, entropy, hidden)

    with jax.default_matmul_precision("highest"):
      return jax.jit(jax.value_and_grad(objective, has_aux=True))(params)

  (_, (logps, entropy, hidden)), grads = run(4, True)
  (_, (want_logps, want_entropy, want_hidden)), want_grads = run(0, False)
  np.testing.assert_allclose(logps, want_logps, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(entropy, want_entropy, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(hidden, want_hidden, rtol=1e-6, atol=1e-6)
  assert float(jnp.max(jnp.abs(jnp.where(response_mask > 0, 0.0, logps)))) == 0.0
  _assert_trees_close(grads, want_grads)


def _vocab_arrays(jaxpr, v):
  """(size, is a dot_general) of every output in a jaxpr (nested bodies included) with a vocabulary axis."""
  for eqn in all_eqns(jaxpr):
    for var in eqn.outvars:
      shape = getattr(var.aval, "shape", ())
      if v in shape:
        yield int(np.prod(shape)), eqn.primitive.name == "dot_general"


def test_a_chunk_size_keeps_the_fused_path_memory_bounded():
  """Fused with a chunk size recomputes each chunk's logits in the backward pass (nothing larger than a chunk of
  logits or the (D, V) head); with chunk size 0 it stores the softmax gradient instead (one LM-head matmul fewer).
  Read from the gradient's jaxpr."""
  model = CausalLM(LLAMA, rngs=nnx.Rngs(0))
  ids, att, lm, _ = _rows()
  graphdef, params = nnx.split(model)
  b, t = ids.shape

  def vocab_arrays(chunk):
    grad = jax.grad(lambda p: jnp.sum(scoring.token_logps(nnx.merge(graphdef, p), ids, att, lm, chunk,
                                                          fused=True)[0]))
    return list(_vocab_arrays(jax.make_jaxpr(grad)(params).jaxpr, LLAMA.vocab_size))

  bounded, stored = vocab_arrays(4), vocab_arrays(0)
  assert max(size for size, _ in bounded) <= max(4, LLAMA.embed_dim) * LLAMA.vocab_size < b * t * LLAMA.vocab_size
  # LM-head matmuls with a vocabulary axis in their output: forward, (recomputed forward,) d head; d hidden is (C, D).
  assert sum(dot for _, dot in bounded) == 3 and sum(dot for _, dot in stored) == 2


def _pair_batch(seed=0, b=4, t=10, vocab=37):
  rng = np.random.default_rng(seed)
  batch = {}
  for side in ("chosen", "rejected"):
    ids = rng.integers(3, vocab, size=(b, t)).astype(np.int32)
    length = rng.integers(6, t + 1, size=b)
    att = (np.arange(t)[None] < length[:, None]).astype(np.int32)
    batch[f"{side}_input_ids"] = ids * att
    batch[f"{side}_attention_mask"] = att
    batch[f"{side}_loss_mask"] = att * (np.arange(t)[None] >= 3)
  batch["weight"] = np.ones(b, np.float32)
  batch["margin"] = np.full(b, np.nan, np.float32)
  return jax.tree.map(jnp.asarray, batch)


@pytest.mark.parametrize("loss", [
    dict(algorithm="dpo", beta=0.2),
    dict(algorithm="treg", beta=0.2, treg_token_rewards="reference"),
    dict(algorithm="kto", beta=0.2, kto_reference_point="mismatched"),
], ids=["dpo", "treg", "kto_mismatched"])
def test_preference_step_on_the_fused_path_equals_the_full_path(loss):
  """The preference stage's loss (resident reference; T-REG's token rewards, KTO's mismatched reference point)
  on the fused path: the same loss, metrics and parameter gradients as on the full path, in fp32."""
  policy = CausalLM(LLAMA, rngs=nnx.Rngs(2))
  reference = CausalLM(LLAMA, rngs=nnx.Rngs(3))
  both = preference.PolicyWithReference(policy, reference)
  cfg = preference.PreferenceLossConfig(**loss)
  ids = (5, 6) if cfg.algorithm == "treg" else ()
  batch = _pair_batch()
  graphdef, params, frozen = nnx.split(both, nnx.Param, ...)  # as the train state: the reference is frozen

  def run(chunk, fused):
    loss_fn = preference.preference_loss_fn(cfg, resident=True, chunk_size=chunk, fused=fused, better_ids=ids,
                                            worse_ids=ids[::-1])

    def objective(p):
      total, weight, metrics = loss_fn(nnx.merge(graphdef, p, frozen), batch, None)
      return total / weight, metrics

    with jax.default_matmul_precision("highest"):
      return jax.jit(jax.value_and_grad(objective, has_aux=True))(params)

  (got, got_metrics), got_grads = run(4, True)
  (want, want_metrics), want_grads = run(0, False)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  assert sorted(got_metrics) == sorted(want_metrics)
  for key in want_metrics:  # each metric's (sum, weight) leaves
    for a, b in zip(jax.tree.leaves(got_metrics[key]), jax.tree.leaves(want_metrics[key])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=key)
  _assert_trees_close(got_grads, want_grads)


def test_sft_stage_runs_the_fused_path_it_reports(tmp_path, capsys, monkeypatch):
  """End to end: `logps_path="fused"` reaches the sft stage's step (the fused function is traced, and the log says
  so), and the losses equal those of the full path run with the same seed."""
  from jaxrlhf.losses import logps as logps_lib

  traced = []
  original = logps_lib.fused_sequence_logps
  monkeypatch.setattr(logps_lib, "fused_sequence_logps", lambda *a, **k: traced.append(1) or original(*a, **k))
  losses, fused_traces = {}, {}
  for path in ("fused", "full"):
    traced.clear()
    section = dict(seed=0, logps_path=path,
                   model=dict(config=dict(embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                                          mlp_dim=64)),
                   data=dict(num_train=64, num_eval=16, batch_size=8, max_length=40),
                   optimizer=dict(learning_rate=1e-2),
                   loop=dict(num_steps=3, log_every=1, checkpoint_every=3, progress=False, tensorboard=False,
                             async_checkpoints=False))
    out = sft.run(from_config(section, sft.SFTConfig, path="config"), str(tmp_path / path), {})
    losses[path] = (out["metrics"]["train/loss"], out["metrics"]["eval/loss"])
    fused_traces[path] = len(traced)
  assert fused_traces["fused"] >= 2 and fused_traces["full"] == 0, fused_traces  # the train and the eval step
  log = capsys.readouterr().out
  assert ("[logps] LM-head log-probs: fused, softmax gradient stored, chunks of 1024 tokens (logps_path='fused'"
          in log)
  assert "[logps] LM-head log-probs: full (logps_path='full'" in log
  np.testing.assert_allclose(losses["fused"], losses["full"], rtol=1e-4)


def test_lora_dpo_on_the_fused_path_equals_the_full_path():
  """A LoRA policy (frozen base and LM head, the reference = adapters off): the fused path's DPO loss and adapter
  gradients equal the full path's. The adapters start from a random B so the policy differs from its reference."""
  from jaxrlhf.models import lora as lora_lib  # pylint: disable=g-import-not-at-top
  from jaxrlhf.stages import common  # pylint: disable=g-import-not-at-top

  model = common.frozen_base(CausalLM(LLAMA, rngs=nnx.Rngs(5), lora=lora_lib.LoraConfig(rank=2, alpha=4.0,
                                                                                     targets=("q", "v", "down"))))
  graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(0), x.shape, x.dtype), params)
  cfg = preference.PreferenceLossConfig(algorithm="dpo", beta=0.3)
  batch = _pair_batch(seed=1)

  def run(chunk, fused):
    loss_fn = preference.preference_loss_fn(cfg, resident=True, lora=True, chunk_size=chunk, fused=fused)

    def objective(p):
      total, weight, _ = loss_fn(nnx.merge(graphdef, p, frozen), batch, None)
      return total / weight

    with jax.default_matmul_precision("highest"):
      return jax.jit(jax.value_and_grad(objective))(params)

  got, got_grads = run(3, True)
  want, want_grads = run(0, False)
  assert abs(float(want) - np.log(2.0)) > 1e-4  # the adapters moved the policy off its reference
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  _assert_trees_close(got_grads, want_grads)
