"""Tests of jaxrlhf/data/transforms.py against hand-written goldens."""

import pytest

from jaxrlhf.data import records as records_lib
from jaxrlhf.data import transforms
from jaxrlhf.data.synthetic import WorldTokenizer

R = records_lib.PreferenceRecord


def _pair(**kw):
  base = dict(prompt="explain bala", chosen="good answer", rejected="bad answer", chosen_score=8.0,
              rejected_score=3.5, chosen_attributes=(1.0, 2.0), rejected_attributes=(0.0, -1.0), source="f:1")
  base.update(kw)
  return R(**base)


@pytest.mark.parametrize("score,text", [(7.0, "7"), (7, "7"), (10.0, "10"), (7.5, "7.5"), (0.25, "0.25"),
                                        (-2.0, "-2"), (3.1, "3.1")])
def test_format_score(score, text):
  assert transforms.format_score(score) == text


def test_format_score_rejects_non_finite():
  with pytest.raises(ValueError, match="score"):
    transforms.format_score(float("nan"))
  with pytest.raises(ValueError, match="template"):
    transforms.render_goal(7, "no placeholder")


def test_reward_augmented_swap_rule_golden():
  out = transforms.reward_augmented_pairs([_pair()])
  assert out == [
      R(prompt=[{"role": "system", "content": "score: 8"}, {"role": "user", "content": "explain bala"}],
        chosen="good answer", rejected="bad answer", chosen_score=8.0, rejected_score=3.5,
        chosen_attributes=(1.0, 2.0), rejected_attributes=(0.0, -1.0), source="f:1#goal=chosen"),
      R(prompt=[{"role": "system", "content": "score: 3.5"}, {"role": "user", "content": "explain bala"}],
        chosen="bad answer", rejected="good answer", chosen_score=3.5, rejected_score=8.0,
        chosen_attributes=(0.0, -1.0), rejected_attributes=(1.0, 2.0), source="f:1#goal=rejected"),
  ]


def test_reward_augmented_doubles_and_keeps_order():
  recs = [_pair(chosen=f"c{i}", rejected=f"r{i}", chosen_score=float(i + 2), rejected_score=1.0)
          for i in range(5)]
  out = transforms.reward_augmented_pairs(recs, template="Rate {score} out of 10.")
  assert len(out) == 10
  for i, r in enumerate(recs):
    keep, swap = out[2 * i], out[2 * i + 1]
    assert (keep.chosen, keep.rejected) == (r.chosen, r.rejected)
    assert (swap.chosen, swap.rejected) == (r.rejected, r.chosen)
    assert keep.prompt[0]["content"] == f"Rate {i + 2} out of 10."
    assert swap.prompt[0]["content"] == "Rate 1 out of 10."
    # The chosen response is the one whose score is the goal.
    assert keep.chosen_score == i + 2 and swap.chosen_score == 1.0


def test_reward_augmented_without_system_role_golden():
  rec = _pair(prompt=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}, {"role": "user", "content": "explain"}])
  out = transforms.reward_augmented_pairs([rec], supports_system_role=False)
  assert out[0].prompt == [{"role": "user", "content": "score: 8\n\nbe brief\n\nhi"},
                           {"role": "assistant", "content": "hello"}, {"role": "user", "content": "explain"}]
  with_system = transforms.reward_augmented_pairs([rec])[1].prompt
  assert with_system[0] == {"role": "system", "content": "score: 3.5\n\nbe brief"}
  assert with_system[1:] == rec.prompt[1:]


def test_reward_augmented_requires_scores():
  with pytest.raises(ValueError, match=r"records\[1\].*chosen_score"):
    transforms.reward_augmented_pairs([_pair(), _pair(chosen_score=None)])


def test_inference_prompt_and_world_tokenizer():
  tok = WorldTokenizer()
  msgs = transforms.inference_prompt("explain bala", top_score=10.0)
  assert msgs == [{"role": "system", "content": "score: 10"}, {"role": "user", "content": "explain bala"}]
  text = tok.apply_chat_template(msgs, add_generation_prompt=True)
  assert text == "<system> score: 10 <user> explain bala <assistant>"
  assert tok.unk_id not in tok.encode(text)
  assert transforms.inference_prompt("q", 9, supports_system_role=False) == [
      {"role": "user", "content": "score: 9\n\nq"}]


def test_curation_counts_and_choice():
  recs = [_pair(chosen=f"c{i}", rejected=f"r{i}", margin=float(i)) for i in range(10)]
  strengths = [0.5, -1.0, 2.0, 0.1, -0.3, 3.0, 1.0, 0.2, 0.1, 4.0]
  out, counts = transforms.curate_by_strength(recs, strengths, flip_fraction=0.2, drop_fraction=0.25)
  # Ascending strength: 1 (-1.0), 4 (-0.3) flipped; then 3 (0.1), 8 (0.1; tie -> later position) dropped.
  assert counts == transforms.CurationCounts(total_in=10, flipped=2, dropped=2, total_out=8)
  assert [r.chosen for r in out] == ["c0", "r1", "c2", "r4", "c5", "c6", "c7", "c9"]
  assert out[1].rejected == "c1" and out[1].margin == -1.0 and out[1].chosen_score == 3.5
  out, counts = transforms.curate_by_strength(recs, strengths)
  assert out == recs and counts.flipped == counts.dropped == 0


def test_curation_rejects_bad_input():
  recs = [_pair()] * 3
  with pytest.raises(ValueError, match="strengths"):
    transforms.curate_by_strength(recs, [1.0, 2.0])
  with pytest.raises(ValueError, match="flip_fraction"):
    transforms.curate_by_strength(recs, [1.0, 2.0, 3.0], flip_fraction=1.5)
  with pytest.raises(ValueError, match="<= 1"):
    transforms.curate_by_strength(recs, [1.0, 2.0, 3.0], flip_fraction=0.6, drop_fraction=0.6)
  with pytest.raises(ValueError, match="strengths must be finite"):
    transforms.curate_by_strength(recs, [1.0, float("inf"), 3.0])


def test_contrastive_variants():
  rec = _pair()
  better, worse = transforms.contrastive_variants([rec])[0]
  assert better.prompt == "<better> explain bala" and worse.prompt == "<worse> explain bala"
  assert (better.chosen, better.rejected) == (rec.chosen, rec.rejected)
  chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
  assert transforms.contrastive_prompt(chat, "Answer well.") == [
      {"role": "system", "content": "s"}, {"role": "user", "content": "Answer well. u"}]
  tok = WorldTokenizer()
  assert tok.encode(better.prompt)[0] == tok.better_id
  with pytest.raises(ValueError, match="prefix"):
    transforms.contrastive_prompt("x", " ")


def test_reward_augmented_ties_keep_two_contradictory_rows_or_drop_them():
  recs = [_pair(), _pair(chosen="x", rejected="y", chosen_score=5.0, rejected_score=5.0), _pair(chosen="z")]
  kept = transforms.reward_augmented_pairs(recs)
  assert len(kept) == 6 and transforms.count_score_ties(recs) == 1
  # The tied pair: the same goal twice with opposite orders.
  assert kept[2].prompt == kept[3].prompt and (kept[2].chosen, kept[3].chosen) == ("x", "y")
  dropped = transforms.reward_augmented_pairs(recs, ties="drop")
  assert dropped == kept[:2] + kept[4:]
  with pytest.raises(ValueError, match="ties"):
    transforms.reward_augmented_pairs(recs, ties="half")


def test_tied_rows_do_not_cancel_under_dpo():
  """The transforms docstring's claim: the two rows of a tied pair pull the policy's margin back to the
  reference's (their summed DPO loss has a non-zero gradient except at h = 0), they do not cancel."""
  import jax
  import jax.numpy as jnp
  from jaxrlhf.losses import dpo_loss

  def tied_loss(h):  # the pair's log-ratio margin h in one row, -h in its swapped twin (reference at 0)
    losses, _ = dpo_loss(jnp.array([h, 0.0]), jnp.array([0.0, h]), jnp.zeros(2), jnp.zeros(2), beta=0.5)
    return jnp.sum(losses)

  for h in (-2.0, 0.7, 3.0):
    g = float(jax.grad(tied_loss)(h))
    assert g != 0.0 and (g > 0) == (h > 0)  # descent moves h toward 0, i.e. toward the reference's margin
    assert float(tied_loss(h)) > float(tied_loss(0.0))
  assert float(jax.grad(tied_loss)(0.0)) == 0.0


def test_score_ordered_pairs_golden():
  recs = [_pair(), _pair(chosen="a", rejected="b", chosen_score=2.0, rejected_score=9.0),
          _pair(chosen="t", rejected="u", chosen_score=4.0, rejected_score=4.0)]
  out = transforms.score_ordered_pairs(recs)
  assert out == [recs[0], recs[1].swapped(), recs[2]]
  assert out[1].chosen == "b" and out[1].chosen_score == 9.0 and out[1].chosen_attributes == (0.0, -1.0)
  assert transforms.score_ordered_pairs(recs, ties="drop") == [recs[0], recs[1].swapped()]
  with pytest.raises(ValueError, match=r"records\[0\].*score ordering"):
    transforms.score_ordered_pairs([_pair(rejected_score=None)])


def test_every_swap_negates_the_margin():
  """A pair's margin is chosen's strength over rejected (e.g. a file's margin column, data.margin_from="file"): a
  transform that swaps the responses must flip its sign, or a margin loss pushes the new chosen response (the old
  rejected one) above the other by the old margin -- the wrong way."""
  rec = _pair(chosen_score=2.0, rejected_score=9.0, margin=3.0)
  ordered = transforms.score_ordered_pairs([rec])[0]
  assert (ordered.chosen, ordered.margin) == ("bad answer", -3.0)
  keep, swap = transforms.reward_augmented_pairs([rec])
  assert (keep.chosen, keep.margin) == ("good answer", 3.0) and (swap.chosen, swap.margin) == ("bad answer", -3.0)
  flipped, _ = transforms.curate_by_strength([rec], [0.0], flip_fraction=1.0)
  assert (flipped[0].chosen, flipped[0].margin) == ("bad answer", -3.0)
  # No margin stays no margin; an unswapped pair keeps its margin.
  assert transforms.score_ordered_pairs([_pair(chosen_score=2.0, rejected_score=9.0)])[0].margin is None
  assert transforms.score_ordered_pairs([_pair(margin=1.5)])[0].margin == 1.5


def test_a_prompt_the_transform_cannot_use_is_named_by_its_record():
  # Without a system role the goal goes before the first user turn; a prompt with none cannot take it.
  system_only = _pair(prompt=[{"role": "system", "content": "be brief"}], source="f.jsonl:9")
  with pytest.raises(ValueError, match=r"records\[1\] \(f\.jsonl:9\): prompt has no user message"):
    transforms.reward_augmented_pairs([_pair(), system_only], supports_system_role=False)
  with pytest.raises(ValueError, match=r"records\[1\] \(f\.jsonl:9\): prompt has no user message"):
    transforms.goal_format_records([_pair(), system_only], 1.0, seed=0, supports_system_role=False)
  with pytest.raises(ValueError, match=r"records\[0\] \(f\.jsonl:9\): prompt has no user message"):
    transforms.contrastive_variants([system_only])
  # A bad template or prefix is the argument's error, before any record.
  with pytest.raises(ValueError, match=r"^template must contain"):
    transforms.reward_augmented_pairs([system_only], template="no placeholder")
  with pytest.raises(ValueError, match=r"^prefix must be a non-empty string"):
    transforms.contrastive_variants([_pair()], worse_prefix="")
