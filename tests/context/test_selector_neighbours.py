"""Relevance spread to the messages near a relevant one: the answer a question's neighbour holds is sent."""

from __future__ import annotations

import numpy
import pytest

from oblix_jupyter.context import selector
from oblix_jupyter.context.relevance import NEIGHBOUR_SPREAD, NEIGHBOUR_WINDOW, LexicalIndex, spread


def approx(text: str) -> int:
    return len(text.split()) + 1


def test_spread_raises_the_neighbours_of_the_best_passage_and_keeps_the_best_at_one():
    index = LexicalIndex(
        [
            {"id": "a", "role": "user", "content": "One sentence here, long enough to stand alone. And another sentence there, just as long."},
            {"id": "b", "role": "assistant", "content": "The relevant one."},
            {"id": "c", "role": "user", "content": "Next door to it."},
            {"id": "d", "role": "assistant", "content": "Far from everything."},
        ]
    )
    assert index.spans == [(0, 2), (2, 3), (3, 4), (4, 5)]
    fused = [0.0, 0.2, 1.0, 0.0, 0.1]
    result = spread(fused, index)
    top = 1.0 + NEIGHBOUR_SPREAD * 0.2  # the best passage is raised by its neighbour "a"'s best, 0.2
    # "a", "c" and "d" are within the window of the best, "b": each gains its share of 1.0
    expected = numpy.array([NEIGHBOUR_SPREAD, 0.2 + NEIGHBOUR_SPREAD, top, NEIGHBOUR_SPREAD, 0.1 + NEIGHBOUR_SPREAD]) / top
    assert result == pytest.approx(expected)
    assert result.max() == pytest.approx(1.0)


def test_spread_reaches_the_window_and_no_further():
    count = NEIGHBOUR_WINDOW * 2 + 5
    index = LexicalIndex([{"id": str(n), "role": ("user", "assistant")[n % 2], "content": f"Message {n}."} for n in range(count)])
    fused = numpy.zeros(count)
    middle = NEIGHBOUR_WINDOW + 2
    fused[middle] = 1.0
    result = spread(fused, index)
    raised = [n for n in range(count) if result[n] > 0 and n != middle]
    assert raised == [n for n in range(middle - NEIGHBOUR_WINDOW, middle + NEIGHBOUR_WINDOW + 1) if n != middle]
    assert result[raised] == pytest.approx(NEIGHBOUR_SPREAD)  # each as much, however near


def test_spread_covers_only_the_passages_scored_when_the_index_grew_meanwhile():
    index = LexicalIndex([{"id": "a", "role": "user", "content": "First."}, {"id": "b", "role": "assistant", "content": "Second."}])
    index.firsts(2)  # made for two messages, then one more arrives
    index.add("c", "Third.", "user")
    assert spread(numpy.array([1.0, 0.0]), index) == pytest.approx([1.0 / 1.0, NEIGHBOUR_SPREAD])
    assert list(index.firsts(3)) == [0, 1, 2]


def _session(after: int = 1) -> dict:
    """A long conversation in which the answer shares no word with the question, but comes ``after`` messages after one that does."""
    filler = "We talked about the weather, groceries, traffic on the bridge and the neighbours' new fence again."
    messages = []
    for number in range(40):
        messages.append({"id": f"u{number}", "role": "user", "content": f"{filler} ({number})"})
        messages.append({"id": f"a{number}", "role": "assistant", "content": f"{filler} [{number}]"})
    # The matching message is an answer; the evidence is the next user message, which is not its partner (its question).
    messages[21]["content"] = "How was the lake trip with your cousin last weekend?"
    messages[21 + after]["content"] = "Wonderful: we caught a huge trout at dawn and grilled it right there on the shore."
    return {"id": "s", "messages": messages}


@pytest.mark.parametrize("meaning", [False, True])
def test_the_message_after_a_relevant_one_is_sent(meaning):
    session = _session()
    prompt = "What happened on the lake trip with the cousin?"
    vectors = None
    if meaning:  # meaning that finds the matching message, and ranks the answer last of all
        table = {m["id"]: [0.0, (n % 7) / 7, 1.0] for n, m in enumerate(session["messages"])}
        table["a10"], table["u11"] = [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]
        vectors = (table, [1.0, 0.0, 0.0])
    plan = selector.select_context(session, prompt, 600, approx, vectors=vectors, pin_first_exchange=False)
    sent = {item.message_id: item for item in plan.items if item.message_id}
    assert "a10" in sent and sent["a10"].reason == "relevant"
    assert "u11" in sent and sent["u11"].reason == "relevant"
    assert "trout" in sent["u11"].text


@pytest.mark.parametrize("meaning", [False, True])
def test_the_end_of_a_story_told_over_several_turns_is_sent(meaning):
    """Two exchanges on, the trout is still the lake trip's: nothing in its message names the trip."""
    session = _session(after=3)
    vectors = None
    if meaning:
        table = {m["id"]: [0.0, (n % 7) / 7, 1.0] for n, m in enumerate(session["messages"])}
        table["a10"], table["u12"] = [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]  # meaning ranks the end of the story last
        vectors = (table, [1.0, 0.0, 0.0])
    plan = selector.select_context(session, "What happened on the lake trip with the cousin?", 600, approx, vectors=vectors, pin_first_exchange=False)
    sent = {item.message_id: item for item in plan.items if item.message_id}
    assert "u12" in sent and "trout" in sent["u12"].text
