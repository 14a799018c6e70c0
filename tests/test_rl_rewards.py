"""GRPO reward functions on hand-made completions: gates, penalties (caps and floors), format, CID levels."""

from __future__ import annotations

import pytest

from recbole_navigen.rl.rewards import (
    JudgeScores,
    cid_reward,
    combine,
    format_reward,
    json_objects,
    penalty_factor,
    structural_penalty,
    structural_violations,
    think_gate,
    think_ok,
)

INS = '{"target_tid":["guitar strings","bronze"],"target_ins":"A close-up of bronze strings on a worn fretboard."}'
THINK = "<think>\nI see a guitarist restringing often.\n</think>\n\n"


def test_think_gate_needs_a_closed_block_with_content():
    assert think_ok(THINK + INS) and think_gate(THINK + INS) == 1.0
    assert not think_ok("<think> short </think>" + INS)  # 5 characters of reasoning: too few
    assert not think_ok("</think> I reasoned backwards <think>")
    assert not think_ok(INS) and think_gate(INS) == pytest.approx(0.2)
    assert think_gate(INS, floor=0.5) == 0.5


def test_clean_replies_have_no_violation():
    assert structural_violations(THINK + INS, "cid2ins") == {}
    assert structural_violations('{"target_cid":"<|cid_begin|><a_1><b_2><c_3><|cid_end|>"}', "cid2cid") == {}
    assert json_objects('x {"a": "}{"} y {"b": {"c": 1}}') == [(2, 13), (16, 31)]


@pytest.mark.parametrize(("text", "expected"), [
    ("<think>\nreasoning without an end\n" + INS, {"unbalanced_think"}),
    (THINK + THINK + INS, {"several_think_blocks"}),
    ("Sure! " + THINK + INS, {"think_not_at_start", "text_before_json"}),
    (THINK + "Here it is: " + INS, {"text_before_json"}),
    (THINK + INS + " Hope this helps", {"text_after_json"}),
    (THINK + INS + INS, {"several_json_objects", "repeated_target_keys"}),
])
def test_each_violation_is_named(text, expected):
    assert set(structural_violations(text, "cid2ins")) == expected


def test_penalty_is_capped_and_the_factor_floored():
    repeated = '{"target_cid":"a","target_cid":"b","target_cid":"c","target_cid":"d","target_cid":"e"}'
    assert structural_violations(repeated, "cid2cid")["repeated_target_keys"] == pytest.approx(0.3)  # 4 extra, capped
    worst = "Hi <think>a</think><think> b" + INS + " bye " + INS
    assert structural_penalty(worst, "cid2ins") == 1.0  # 1.5 of shares, capped at 1
    assert penalty_factor(1.0) == pytest.approx(0.3) and penalty_factor(0.0) == 1.0
    assert penalty_factor(0.45) == pytest.approx(0.3 + 0.7 * 0.55)


def test_format_reward_checks_keys_and_types():
    is_cid = lambda text: text == "<|cid_begin|><a_1><b_2><c_3><|cid_end|>"  # noqa: E731
    assert format_reward('{"target_cid":"<|cid_begin|><a_1><b_2><c_3><|cid_end|>"}', "cid2cid", is_cid) == 1.0
    assert format_reward('{"target_cid":"<a_1>"}', "cid2cid", is_cid) == 0.0
    assert format_reward(THINK + INS, "cid2ins") == 1.0
    assert format_reward(THINK + '{"target_tid":[],"target_ins":"x"}', "cid2ins") == 0.0
    assert format_reward(THINK + '{"target_tid":["a"],"target_ins":""}', "cid2ins") == 0.0
    assert format_reward(THINK + '{"target_tid":["a"],"target_ins":"x","more":1}', "cid2ins") == 0.0
    assert format_reward(THINK + INS + " trailing", "cid2ins") == 0.0


def test_cid_reward_levels_prefix_and_bonus():
    true = (3, 7, 9)
    assert cid_reward(true, true, True) == 1.0
    assert cid_reward((3, 7, 1), true, True) == pytest.approx(0.8)
    assert cid_reward((3, 1, 9), true, True) == pytest.approx(0.5)  # prefix: c does not count after a wrong b
    assert cid_reward((3, 1, 9), true, True, prefix_conditioned=False) == pytest.approx(0.7)  # the release's
    assert cid_reward((1, 7, 9), true, True, prefix_conditioned=False) == pytest.approx(0.5)
    assert cid_reward((1, 1, 1), true, True) == pytest.approx(0.15)  # a real item, nothing right: the bonus
    assert cid_reward((1, 1, 1), true, False) == 0.0 and cid_reward(None, true, True) == 0.0
    # a de-duplication level belongs to the finest weight: the exact item or nothing for c
    assert cid_reward((3, 7, 9, 1), (3, 7, 9, 0), True) == pytest.approx(0.8)
    assert cid_reward((3, 7, 9, 0), (3, 7, 9, 0), True) == 1.0


def test_combined_rewards_follow_the_formulas():
    scores = JudgeScores(0.8, 0.6, 1.0, 0.6, ins_vs_true=0.85, ins_vs_pred=0.6, pred_vs_true=0.3)
    assert scores.quality == pytest.approx(0.75)
    assert scores.semantic() == pytest.approx(0.25 * (0.75 + 0.85 + 0.6 + 0.3))
    clean = combine("cid2ins", scores.semantic(), THINK + INS, fmt=1.0)
    assert clean.reward == pytest.approx(0.9 * scores.semantic() + 0.1)
    no_think = combine("cid2ins", scores.semantic(), INS, fmt=1.0)
    assert no_think.gate == pytest.approx(0.2) and no_think.reward == pytest.approx(0.9 * scores.semantic() * 0.2 + 0.1)
    trailing = combine("cid2ins", scores.semantic(), THINK + INS + " bye", fmt=0.0)
    assert trailing.penalty == pytest.approx(0.45)
    assert trailing.reward == pytest.approx(0.9 * scores.semantic() * (0.3 + 0.7 * 0.55))
    cid = combine("cid2cid", 0.8, '{"target_cid":"x"}', fmt=1.0, think_required=False)
    assert cid.gate == 1.0 and cid.reward == pytest.approx(0.9 * 0.8 + 0.1)
