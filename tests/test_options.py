"""Tests of option drawing: distractor pools, seeded draws and option counts."""

import pytest

from mmsy_tasks.dialogue import TONE_TEMPLATES
from mmsy_tasks.normalize import normalize_answer
from mmsy_tasks.options import (
    AnswerPool,
    TooFewAnswersError,
    draw_options,
    resolve_option_counts,
)
from mmsy_tasks.records import TONES

COLOR_ANSWERS = ["red", "Red.", "the red", "blue", "green", "yellow", "white", "blue", "yes", "no"]
COUNT_ANSWERS = ["2", "two", "3", "three", "4", "five", "6", "none"]


def test_pool_merges_spellings_after_normalisation():
    pool = AnswerPool.from_answers("color", COLOR_ANSWERS)

    assert pool.answers == ("blue", "green", "red", "white", "yellow")


def test_pool_merges_number_words_with_digits():
    pool = AnswerPool.from_answers("counting", COUNT_ANSWERS)

    # A tie between spellings goes to the digits; a lone spelling is kept.
    assert pool.answers == ("none", "2", "3", "4", "five", "6")
    assert [normalize_answer(answer) for answer in pool.answers] == ["0", "2", "3", "4", "5", "6"]


def test_pool_prefers_most_frequent_spelling():
    pool = AnswerPool.from_answers("object_recognition", ["Dog", "Dog", "dog", "a cat"])

    assert pool.answers == ("a cat", "Dog")


def test_pool_leaves_out_yes_and_no():
    pool = AnswerPool.from_answers("object_presence", ["yes", "No", "no."])

    assert pool.answers == ()


def test_pool_order_ignores_source_order():
    forward = AnswerPool.from_answers("color", COLOR_ANSWERS)
    backward = AnswerPool.from_answers("color", list(reversed(COLOR_ANSWERS)))

    assert forward.answers == backward.answers


def test_pool_spelling_of_answer():
    pool = AnswerPool.from_answers("color", COLOR_ANSWERS)

    assert pool.spelling_of("RED!") == "red"
    assert pool.spelling_of(" purple ") == "purple"


def test_draw_invariants_over_many_items():
    pool = AnswerPool.from_answers("color", COLOR_ANSWERS)
    for index in range(300):
        answer = COLOR_ANSWERS[index % 7]
        draw = draw_options(f"item-{index}", answer, pool, option_count=4, seed=3)
        normalized = [normalize_answer(option) for option in draw.options]

        assert len(draw.options) == 4
        assert len(set(normalized)) == 4
        assert normalized.count(normalize_answer(answer)) == 1
        assert normalized[draw.answer_idx] == normalize_answer(answer)
        assert draw.wrong_idx != draw.answer_idx
        assert 0 <= draw.wrong_idx < 4
        assert all(option in pool.answers for option in draw.options)
        assert set(draw.tone_templates) == set(TONES)
        for tone, template_index in draw.tone_templates.items():
            assert 0 <= template_index < len(TONE_TEMPLATES[tone])


def test_draw_yes_no_gets_two_options():
    pool = AnswerPool.from_answers("object_presence", ["yes", "no"])
    orders = set()
    for index in range(50):
        answer = "Yes" if index % 2 else "no"
        draw = draw_options(f"presence-{index}", answer, pool, option_count=4, seed=0)

        assert sorted(draw.options) == ["no", "yes"]
        assert draw.options[draw.answer_idx] == normalize_answer(answer)
        assert draw.wrong_idx == 1 - draw.answer_idx
        orders.add(draw.options)

    assert orders == {("yes", "no"), ("no", "yes")}


def test_draw_same_seed_and_id_repeats():
    pool = AnswerPool.from_answers("color", COLOR_ANSWERS)

    first = draw_options("item-7", "green", pool, 4, seed=11)
    second = draw_options("item-7", "green", pool, 4, seed=11)

    assert first == second


def test_draw_varies_with_seed_and_id():
    pool = AnswerPool.from_answers("color", COLOR_ANSWERS)

    by_seed = {_key(draw_options("item-7", "green", pool, 4, seed=seed)) for seed in range(20)}
    by_id = {_key(draw_options(f"item-{index}", "green", pool, 4, seed=0)) for index in range(20)}

    assert len(by_seed) > 10
    assert len(by_id) > 10


def _key(draw):
    return draw.options, draw.answer_idx, draw.wrong_idx, tuple(sorted(draw.tone_templates.items()))


def test_draw_spreads_answer_positions_and_tones():
    pool = AnswerPool.from_answers("color", COLOR_ANSWERS)
    draws = [draw_options(f"item-{index}", "red", pool, 4, seed=0) for index in range(400)]

    positions = {draw.answer_idx for draw in draws}
    strong_templates = {draw.tone_templates["strong"] for draw in draws}

    assert positions == {0, 1, 2, 3}
    assert strong_templates == set(range(len(TONE_TEMPLATES["strong"])))


def test_draw_uses_pool_spelling_of_answer():
    pool = AnswerPool.from_answers("color", COLOR_ANSWERS)

    draw = draw_options("item-1", "The Red", pool, 3, seed=0)

    assert draw.options[draw.answer_idx] == "red"


def test_draw_three_options_from_three_answers():
    pool = AnswerPool.from_answers("object_recognition", ["circle", "rectangle", "triangle"])

    draw = draw_options("shape-1", "circle", pool, 3, seed=0)

    assert sorted(draw.options) == ["circle", "rectangle", "triangle"]


def test_too_few_answers_names_category_and_count():
    pool = AnswerPool.from_answers("object_recognition", ["circle", "rectangle", "triangle", "Circle"])

    with pytest.raises(TooFewAnswersError) as raised:
        draw_options("shape-1", "circle", pool, 4, seed=0)

    message = str(raised.value)
    assert "'object_recognition'" in message
    assert "3 distinct answers" in message
    assert "option count 4" in message
    assert "--option-count object_recognition=3" in message


def test_draw_rejects_empty_answer():
    pool = AnswerPool.from_answers("color", COLOR_ANSWERS)

    with pytest.raises(ValueError, match="item 'item-1' has an empty answer"):
        draw_options("item-1", " ? ", pool, 4, seed=0)


@pytest.mark.parametrize("count", [1, 9])
def test_draw_rejects_option_count_outside_letters(count):
    pool = AnswerPool.from_answers("color", COLOR_ANSWERS)

    with pytest.raises(ValueError, match=f"option count {count} for category 'color' is invalid"):
        draw_options("item-1", "red", pool, count, seed=0)


def test_resolve_option_counts_applies_overrides():
    counts = resolve_option_counts(["color", "counting"], {"counting": 3})

    assert counts == {"color": 4, "counting": 3}


def test_resolve_option_counts_rejects_unknown_category():
    with pytest.raises(ValueError, match="unknown categories colour"):
        resolve_option_counts(["color", "counting"], {"colour": 3})
