"""The prompt's words widened by meaning (``context.expansion``): hand-made vectors for the rules, the real model for the point."""

from __future__ import annotations

import threading

import numpy
import pytest
from test_relevance import Counting, approx
from waiting import running_in, wait_until

from oblix_jupyter.context.expansion import MIN_SIMILARITY, NEIGHBOURS, WEIGHT, WordTable, vocabulary
from oblix_jupyter.context.selector import conversation_messages, select_context
from oblix_jupyter.sessions import SessionManager


def test_the_vocabulary_is_the_words_bm25_counts_as_written_in_the_order_first_met():
    found = vocabulary(["The kids loved the POTTERY class!", "Pottery again; kids and clay, ok?"])
    assert list(found) == ["kids", "loved", "pottery", "class", "clay"]
    assert list(vocabulary(["More clay, and glaze."], into=found)) == ["kids", "loved", "pottery", "class", "clay", "glaze"]


def table(groups: dict[str, list[str]]) -> WordTable:
    """Words whose vectors are alike within a group and unlike across groups (a direction per group, a little noise each)."""
    rng = numpy.random.default_rng(7)
    directions = numpy.linalg.qr(rng.normal(size=(384, len(groups))))[0].T
    words, rows = [], []
    for direction, members in zip(directions, groups.values()):
        for word in members:
            row = direction + 0.15 * rng.normal(size=384) / numpy.sqrt(384)
            words.append(word)
            rows.append(row / numpy.linalg.norm(row))
    return WordTable.of(words, numpy.array(rows, dtype=numpy.float32))


GROUPS = {
    "children": ["children", "kids", "child", "toddlers", "sons", "daughters"],
    "pottery": ["pottery", "clay", "ceramics"],
    "names": ["caroline", "charlotte", "nicole"],
    "weather": ["rain", "sunny"],
}


def test_each_word_of_the_prompt_brings_its_nearest_words_stems_weighted_by_closeness():
    words = table(GROUPS)
    wider = words.widen("What did the kids make with clay?", {"kid": 1.0, "make": 1.0, "clai": 1.0})
    assert set(wider) <= {"children", "child", "toddler", "son", "daughter", "potteri", "ceram"}
    assert {"potteri", "ceram"} <= set(wider), "the pottery words come with clay"
    assert sum(1 for stem in wider if stem not in ("potteri", "ceram")) == NEIGHBOURS, "at most NEIGHBOURS per prompt word"
    for word, weight in wider.values():
        assert MIN_SIMILARITY * WEIGHT <= weight <= WEIGHT and word in words.vectors.rows
    assert "rain" not in wider and "sunni" not in wider, "unrelated words never come"


def test_names_and_words_the_conversation_never_wrote_are_not_widened():
    words = table(GROUPS)
    assert words.widen("Why did Caroline go?", {"carolin": 1.0}) == {}, "a capitalised word after the first is a name"
    assert "charlott" in words.widen("Caroline: what happened?", {"carolin": 1.0}), "the first word is widened whatever its case"
    assert words.widen("What about the spreadsheet?", {"spreadsheet": 1.0}) == {}, "no vector for it: nothing to widen"
    assert WordTable.of(["kids"], numpy.ones((1, 384), dtype=numpy.float32)).widen("the kids", {"kid": 1.0}) == {}


def test_a_prompt_word_the_conversation_never_wrote_is_widened_by_the_vector_asked_with_it():
    words = table(GROUPS)
    assert words.lacking("What did Caroline's youngsters make with the clay?") == ["youngsters"], "not a name, nor a word it has"
    kids = words.vectors.matrix[words.vectors.rows["kids"]]
    unwritten = words.with_unwritten({"youngsters": kids})
    wider = unwritten.widen("What did the youngsters do?", {"youngster": 1.0})
    assert len(wider) == NEIGHBOURS and set(wider) <= {"kid", "children", "child", "toddler", "son", "daughter"}
    assert all(word in words.vectors.rows for word, _ in wider.values()), "the neighbours are the conversation's own words"
    assert words.widen("What did the youngsters do?", {"youngster": 1.0}) == {}, "the table itself is unchanged"


FILLER = [f"We compared sales table {n} with the weekly prices of store {n}." for n in range(30)]
TEXTS = [*FILLER[:10], "Note: the kids menu needs new prices.", *FILLER[10:20], "Our children spent Saturday at a pottery class.", *FILLER[20:]]


def weekend(store: SessionManager) -> str:
    """A session of ``TEXTS``: the children's Saturday (msg_22) among talk of stores and prices."""
    session_id = store.create_session(title="the weekend")
    for number, text in enumerate(TEXTS):
        store.save_message(session_id, text, role="assistant" if number % 2 else "user")
    return session_id


def sent(store: SessionManager, session_id: str, prompt: str, words: WordTable | None) -> list[str]:
    """The messages a tight budget sends for ``prompt`` (with or without the words table)."""
    plan = select_context(store.get_session(session_id), prompt, 180, approx, words=words, pin_first_exchange=False)
    return [item.message_id for item in plan.items]


def test_a_question_in_other_words_than_its_answer_finds_it_with_the_words_table(embedder, tmp_path):
    """The answer says "children", the question "kids": by words it scores nothing, and a tight budget sends other messages."""
    from oblix_jupyter.context.vector_cache import VectorCache

    store = SessionManager(tmp_path)
    session_id = weekend(store)
    counting = Counting(embedder)
    cache = VectorCache(store, counting)
    messages = conversation_messages(store.get_session(session_id))
    cache.vectors(session_id, messages)  # a turn: its passages now, and its first here, so its words in the background
    cache.wait()
    words = cache.words(session_id)
    assert words is not None and {"kids", "children", "pottery", "saturday"} <= set(words.vectors.rows)
    assert counting.here() == len(messages), "the turn embedded the passages (a sentence each) and no word"
    assert sum(counting.calls) == len(messages) + len(words), "every word embedded once, all in the background"

    prompt = "What did the kids do?"
    assert "msg_22" not in sent(store, session_id, prompt, None)
    assert "msg_22" in sent(store, session_id, prompt, words)
    wider = select_context(store.get_session(session_id), prompt, 180, approx, words=words, pin_first_exchange=False)
    assert "children" in " ".join(wider.notes), wider.notes

    counting.calls.clear()
    again = VectorCache(SessionManager(tmp_path), counting)  # another kernel: the words' vectors come from the store
    again.vectors(session_id, messages)
    again.wait()
    assert again.words(session_id) is not None and len(again.words(session_id)) == len(words)
    assert counting.calls == [], "nothing embedded twice"


def test_a_session_embedded_before_has_its_words_from_the_store_while_turns_follow_one_another(embedder, tmp_path):
    """Reading what the store keeps is not held back by turns under way; embedding words it lacks is."""
    from oblix_jupyter.context.vector_cache import VectorCache

    store = SessionManager(tmp_path)
    session_id = weekend(store)
    messages = conversation_messages(store.get_session(session_id))
    before = VectorCache(store, embedder)  # the kernel that used the session before: passages and words stored
    before.vectors(session_id, messages)
    before.wait()

    counting, kept = Counting(embedder), Reads(SessionManager(tmp_path))
    cache = VectorCache(kept, counting)
    with cache.during_turn():  # a turn under way from start to end: the background never has a quiet moment
        cache.vectors(session_id, messages)
        words = wait_until(lambda: cache.words(session_id), 10, "the session's words, read from the store during the turn")
    assert len(words) == len(before.words(session_id)) and counting.calls == [], "read, not embedded again"

    store.save_message(session_id, "Grandma knitted woolly scarves for everyone.")
    grown = conversation_messages(store.get_session(session_id))
    other = store.create_session(title="a copy")  # its first turn here, with words the store lacks
    for message in grown:
        store.save_message(other, message["content"], role=message["role"])
    copied = conversation_messages(store.get_session(other))
    with cache.during_turn():
        cache.vectors(other, copied)
        wait_until(lambda: running_in(VectorCache._fill_words, VectorCache._wait_for_quiet), 10, "the words waiting for a quiet moment")
        assert cache.words(other) is None, "nothing embedded while a turn is under way"
    cache.wait()
    assert {"knitted", "woolly", "scarves"} <= set(cache.words(other).vectors.rows)
    turn, *background = counting.threads
    assert turn == threading.current_thread().name and counting.calls[0] == 1, "the turn embedded the new message"
    assert background and all(thread.startswith("oblix-embed_") for thread in background), "its new words, in the background"

    store.save_message(session_id, "The twins learned to juggle oranges.")  # what a turn just wrote: the store has no vector of it
    reads = kept.reads
    with cache.during_turn():  # the words are ready here: the background no longer reads at once
        cache.update_later(session_id, conversation_messages(store.get_session(session_id)))
        wait_until(lambda: running_in(VectorCache._fill, VectorCache._wait_for_quiet), 10, "the finished turn's embedding waiting")
        assert kept.reads == reads, "nothing read while a turn is under way"
    cache.wait()
    assert "juggle" in cache.words(session_id).vectors.rows


class Reads:
    """A real store's vector bytes, counting the reads."""

    def __init__(self, store: SessionManager) -> None:
        self.store, self.reads = store, 0

    def read_vectors(self, model, keys):
        self.reads += 1
        return self.store.read_vectors(model, keys)

    def write_vectors(self, model, session_id, entries):
        self.store.write_vectors(model, session_id, entries)


def test_a_prompts_word_the_session_never_wrote_is_embedded_beside_the_prompt_and_widened(embedder, tmp_path):
    """ "toddlers" is no word of the conversation: embedded with the prompt, ahead, it brings "children" all the same."""
    from oblix_jupyter.context.vector_cache import VectorCache

    store = SessionManager(tmp_path)
    session_id = weekend(store)
    counting = Counting(embedder)
    cache = VectorCache(store, counting)
    cache.update_later(session_id, conversation_messages(store.get_session(session_id)))
    cache.wait()
    prompt = "What did the toddlers do?"
    own = cache.words(session_id)
    assert own is not None and "toddlers" not in own.vectors.rows
    assert "msg_22" not in sent(store, session_id, prompt, own), "by the conversation's words alone, nothing to widen"

    long = "Thinking back over everything we discussed about the stores, the sales tables and their weekly prices, what did the toddlers do?"
    for asked in (prompt, long):  # the words in the prompt's own run; a long prompt's in a run of their own
        counting.calls.clear()
        cache.embed_prompt_ahead(asked, session_id)
        vector = cache.embed_prompt(asked)
        words = cache.words(session_id, asked)
        assert counting.calls == [], "embedded ahead, beside the prompt: nothing left for the turn to embed"
        assert words is not None and "toddlers" in words.unwritten and set(words.unwritten) == set(own.lacking(asked))
        assert float(words.unwritten["toddlers"] @ embedder.embed(["toddlers"])[0]) > 0.9999
        assert float(vector @ embedder.embed([asked])[0]) > 0.9999
        assert "msg_22" in sent(store, session_id, asked, words)

    counting.calls.clear()
    assert list(cache.words(session_id, prompt).unwritten) == ["toddlers"]
    assert counting.calls == [1], "not embedded ahead: embedded when asked for"
    assert cache.words(session_id, "What did the kids do?").unwritten == {}, "a prompt of known words embeds nothing"
    assert counting.calls == [1]


@pytest.mark.parametrize("prompt", ["", "?", "OK", "ALL CAPS SHOUTING", "über naïve café"])
def test_any_prompt_widens_without_error(prompt):
    assert isinstance(table(GROUPS).widen(prompt, {}), dict)


def test_a_turn_widens_its_prompt_by_the_words_embedded_in_the_background_after_the_last_turn(embedder, model_env):
    from oblix_jupyter import OblixClient

    client = OblixClient(max_input_tokens=500)
    session_id = client.create_session_sync()
    for number, text in enumerate(TEXTS):
        client.session_manager.save_message(session_id, text, role="assistant" if number % 2 else "user")
    first = client.execute_sync("Any news from the stores?", session_id)["plan"]
    assert "Also looked for" not in " ".join(first.notes), "no words were embedded before this first turn"
    client.wait_for_background()
    plan = client.execute_sync("What did the kids do?", session_id)["plan"]
    assert "msg_22" in [item.message_id for item in plan.items], "the children's Saturday, found by its word"
    assert "children" in " ".join(plan.notes), plan.notes
    client.wait_for_background()
    plan = client.execute_sync("And the toddlers?", session_id)["plan"]
    assert "children" in " ".join(plan.notes), "a word no message wrote, embedded with the prompt"


def test_deleting_a_session_removes_its_words_vectors_and_keeps_those_another_session_uses(embedder, model_env):
    from oblix_jupyter import OblixClient
    from oblix_jupyter.context.embedder import digest

    client = OblixClient(max_input_tokens=500)
    store = client.session_manager
    mine, theirs = client.create_session_sync(), client.create_session_sync()
    for number, text in enumerate(TEXTS):
        store.save_message(mine, text, role="assistant" if number % 2 else "user")
    store.save_message(theirs, "The children played outside all afternoon.")
    for session_id in (mine, theirs):
        client.execute_sync("What did the kids do?", session_id)
    client.wait_for_background()  # the finished turns, then each session's words
    only_mine, shared = [digest("pottery"), digest("saturday")], [digest("children")]
    assert len(store.read_vectors(embedder.name, only_mine + shared)) == 3

    assert client.delete_session(mine)
    client.wait_for_background()
    assert store.read_vectors(embedder.name, only_mine) == {}, "gone with the only session that wrote them"
    assert len(store.read_vectors(embedder.name, shared)) == 1, "still another session's"
