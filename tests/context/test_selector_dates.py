"""A prompt that names a date: the messages written that day gain relevance, and the day's answer is sent."""

from __future__ import annotations

from datetime import date

import numpy
import pytest

from oblix_jupyter.context import selector
from oblix_jupyter.context.relevance import DATE_BOOST, LexicalIndex, dated, named_days


def approx(text: str) -> int:
    return len(text.split()) + 1


def days(*pairs: tuple[date, date]) -> list[tuple[int, int]]:
    return [(first.toordinal(), last.toordinal()) for first, last in pairs]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("What did we decide on 25 May, 2022?", days((date(2022, 5, 25), date(2022, 5, 25)))),
        ("What did Tim finish on 8th December, 2023?", days((date(2023, 12, 8), date(2023, 12, 8)))),
        ("Which photo was shared on December 1,2023?", days((date(2023, 12, 1), date(2023, 12, 1)))),
        ("the run of 2024-02-29, please", days((date(2024, 2, 29), date(2024, 2, 29)))),
        ("Where did she travel in July 2022?", days((date(2022, 7, 1), date(2022, 7, 31)))),
        ("the deal of Dec. 2023", days((date(2023, 12, 1), date(2023, 12, 31)))),
        ("What did John organise in 2024?", days((date(2024, 1, 1), date(2024, 12, 31)))),
        ("between 3 March 2025 and April 2025", days((date(2025, 3, 3), date(2025, 3, 3)), (date(2025, 4, 1), date(2025, 4, 30)))),
        ("What did we do in May?", []),  # no year: "may" is mostly a verb, and the year a guess
        ("Was it on 31 February 2023?", []),  # no such day; nor is it read as the month or the year
        ("Use 1500 rows and a seed of 42", []),
    ],
)
def test_named_days_reads_a_day_a_month_or_a_year_once(prompt, expected):
    assert named_days(prompt) == expected


def _index() -> LexicalIndex:
    return LexicalIndex(
        [
            {"id": "a", "role": "user", "content": "Long enough first sentence of the first day. And a second sentence of that day, just as long.", "timestamp": "2025-03-02T23:30:00.000Z"},
            {"id": "b", "role": "assistant", "content": "The day after.", "timestamp": "2025-03-03T10:00:00.000Z"},
            {"id": "c", "role": "user", "content": "Two days later.", "timestamp": "2025-03-05T10:00:00.000Z"},
            {"id": "d", "role": "assistant", "content": "No readable time.", "timestamp": "soon"},
            {"id": "e", "role": "user", "content": "Much later.", "timestamp": "2025-06-01T10:00:00.000Z"},
        ]
    )


def test_dated_raises_every_passage_of_the_named_days_messages_and_keeps_the_best_at_one():
    index = _index()
    values = numpy.array([0.0, 0.2, 1.0, 0.0, 0.0, 0.5])
    result = dated(values, index, named_days("on 4 March 2025"))  # a day either side: the 3rd and the 5th
    top = 1.0 + DATE_BOOST
    assert result == pytest.approx(numpy.array([0.0, 0.2, 1.0 + DATE_BOOST, DATE_BOOST, 0.0, 0.5]) / top)
    assert list(index.days()) == [date(2025, 3, 2).toordinal(), date(2025, 3, 3).toordinal(), date(2025, 3, 5).toordinal(), -1, date(2025, 6, 1).toordinal()]


def test_a_date_that_picks_nothing_out_changes_nothing():
    index = _index()
    values = numpy.array([0.0, 0.2, 1.0, 0.0, 0.0, 0.5])
    assert dated(values, index, named_days("in March 2025")) == pytest.approx(values)  # three of five messages
    assert dated(values, index, named_days("on 1 January 2020")) == pytest.approx(values)  # none
    assert dated(values, index, []) is values


def _session() -> dict:
    """Ten days of talk; the learning rate was discussed on 3 March and, in more of the prompt's words, on 8 March."""
    filler = "We talked about the weather, groceries, traffic on the bridge and the neighbours' new fence again."
    messages = []
    for number in range(60):
        stamp = f"2025-03-{1 + number // 6:02d}T{8 + number % 6:02d}:00:00.000Z"
        messages.append({"id": f"m{number}", "role": "user" if number % 2 == 0 else "assistant", "content": f"{filler} ({number})", "timestamp": stamp})
    messages[14]["content"] = "The learning rate we tried was 0.003, and the loss settled after an hour."  # 3 March
    messages[43]["content"] = "The learning rate we tried for the big model was 0.1: the learning rate we tried diverged."  # 8 March
    return {"id": "s", "messages": messages}


def _meaning_preferring(session: dict, first: str, second: str) -> tuple[dict, list[float]]:
    """Vectors by which message ``first`` is the nearest to the prompt, ``second`` the next, the rest far."""
    table = {m["id"]: [0.0, (n % 7) / 7, 1.0] for n, m in enumerate(session["messages"])}
    table[first], table[second] = [1.0, 0.0, 0.0], [0.6, 0.8, 0.0]
    return table, [1.0, 0.0, 0.0]


@pytest.mark.parametrize("meaning", [False, True])
def test_the_message_of_the_named_day_is_sent_before_a_better_worded_one_of_another_day(meaning):
    session = _session()
    vectors = _meaning_preferring(session, "m43", "m14") if meaning else None  # meaning, too, prefers the other day's

    def sent(prompt: str) -> set:
        plan = selector.select_context(session, prompt, 180, approx, vectors=vectors, pin_first_exchange=False)
        return {item.message_id for item in plan.items}  # 180 tokens: the prompt, the last two exchanges and one of the two

    on_the_day = sent("Which learning rate did we try on 3 March 2025?")
    assert "m14" in on_the_day and "m43" not in on_the_day
    undated = sent("Which learning rate did we try?")
    assert "m43" in undated and "m14" not in undated  # without the date, the other day's wins: the date decided
