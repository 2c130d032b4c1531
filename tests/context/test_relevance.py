"""Relevance by words and by meaning, cutting text to its relevant part, and the vector cache."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time

import numpy
import pytest
from waiting import running_in, wait_until

from oblix_jupyter.context.relevance import (
    RANK_CONSTANT,
    LexicalIndex,
    chunks,
    cut_to_relevant,
    fuse,
    query_terms,
    search,
    semantic_scores,
    stem,
    truncate_to_tokens,
    unknown_count,
    words,
)
from oblix_jupyter.context.selector import conversation_messages, select_context
from oblix_jupyter.sessions import SessionManager
from oblix_jupyter.store.vector_file import FILE_NAME


def approx(text: str) -> int:
    return len(text.split()) + 1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Plot sales_df by region", ["plot", "sales_df", "sale", "df", "region"]),
        ("The flagged customers were flagging", ["flag", "custom", "flag"]),
        ("threshold of 0.37 and 4,000 pallets", ["threshold", "0.37", "4,000", "pallet"]),
        ("What is the __init__ of it?", ["__init__"]),
    ],
)
def test_words_keep_identifiers_and_numbers(text, expected):
    assert words(text) == expected


def test_stem_joins_inflections():
    assert stem("queries") == stem("query") and stem("stopping") == "stop" and stem("class") == "class"
    # the forms the old rules kept apart: a plural with an -ing or -e word, a derivation
    assert stem("paintings") == stem("painting") == stem("painted") == "paint"
    assert stem("recipes") == stem("recipe") and stem("adoption") == stem("adopted") == stem("adopting")
    assert stem("x86") == "x86" and stem("df") == "df", "a word with a digit, or of two letters, stays"


# Porter's own examples (1980), through the whole algorithm; the same as NLTK's PorterStemmer in its
# ORIGINAL_ALGORITHM mode, which also agreed on the 11,091 words of the LoCoMo development files and our sources.
PORTER = {
    "caresses": "caress", "ponies": "poni", "ties": "ti", "cats": "cat", "feed": "feed", "agreed": "agre",
    "plastered": "plaster", "bled": "bled", "motoring": "motor", "sing": "sing", "conflated": "conflat",
    "troubled": "troubl", "sized": "size", "hopping": "hop", "tanned": "tan", "falling": "fall", "hissing": "hiss",
    "fizzed": "fizz", "failing": "fail", "filing": "file", "happy": "happi", "sky": "sky", "relational": "relat",
    "conditional": "condit", "rational": "ration", "valenci": "valenc", "digitizer": "digit", "conformabli": "conform",
    "radicalli": "radic", "differentli": "differ", "vileli": "vile", "analogousli": "analog", "vietnamization": "vietnam",
    "predication": "predic", "operator": "oper", "feudalism": "feudal", "decisiveness": "decis", "hopefulness": "hope",
    "callousness": "callous", "formaliti": "formal", "sensitiviti": "sensit", "sensibiliti": "sensibl",
    "triplicate": "triplic", "formative": "form", "formalize": "formal", "electriciti": "electr", "electrical": "electr",
    "goodness": "good", "revival": "reviv", "allowance": "allow", "inference": "infer", "airliner": "airlin",
    "gyroscopic": "gyroscop", "adjustable": "adjust", "defensible": "defens", "irritant": "irrit", "replacement": "replac",
    "dependent": "depend", "adoption": "adopt", "communism": "commun", "activate": "activ", "angulariti": "angular",
    "homologous": "homolog", "effective": "effect", "bowdlerize": "bowdler", "probate": "probat", "rate": "rate",
    "cease": "ceas", "controll": "control", "roll": "roll", "generalizations": "gener", "oscillators": "oscil",
}  # fmt: skip


@pytest.mark.parametrize("word, expected", sorted(PORTER.items()))
def test_stem_is_porters(word, expected):
    assert stem(word) == expected


def test_bm25_prefers_the_rare_matching_word_and_shorter_passages():
    messages = [
        {"id": "a", "role": "user", "content": "How do I plot the data?"},
        {"id": "b", "role": "assistant", "content": "Set random_state=2718 so runs repeat."},
        {"id": "c", "role": "user", "content": "Plot it again, the plot of the data looks odd, plot plot."},
    ]
    index = LexicalIndex(messages)
    scores = index.scores(query_terms("which random_state did we set for the data?"))
    assert max(scores, key=scores.get) == index.spans[1][0]
    assert index.describes(messages) and not index.describes(messages[:2])
    grown = LexicalIndex(messages[:1]).extend(messages)
    assert grown.texts == index.texts and grown.starts == [0, 2]
    assert index.questions == grown.questions == {0: [0]}, "only a user's passage ending in '?' is a question"
    assert not LexicalIndex([{"id": "x", "role": "assistant", "content": "Which frame do you mean?"}]).questions
    assert not index.answered, "an answer without a model (imported, typed in) does not make a question one the model was asked"
    asked = [
        {"id": "q", "role": "user", "content": "Which file did we load for the sales report?"},
        {"id": "r", "role": "assistant", "content": "sales.csv, 2 GB.", "model": "openai/gpt-4o-mini"},
        {"id": "s", "role": "user", "content": "And the other one?"},
    ]
    whole = LexicalIndex(asked)
    one_by_one = LexicalIndex()
    for number in range(1, len(asked) + 1):
        one_by_one.extend(asked[:number])
    assert whole.answered == one_by_one.answered == {whole.spans[0][0]}, "a question counts as asked once a model answered it"


def test_chunks_split_prose_by_sentence_and_keep_code_whole():
    text = "Sure. Here is how:\n\n```python\ndf.plot()\ndf.show()\n```\n\nThe first point is long enough to stand alone. And a second one too, which is also long enough."
    pieces = chunks(text)
    assert pieces[0] == "Sure. Here is how:"
    assert pieces[1] == "```python\ndf.plot()\ndf.show()\n```"
    assert pieces[2:] == ["The first point is long enough to stand alone.", "And a second one too, which is also long enough."]


def test_fuse_scales_words_alone_and_fuses_words_with_meaning_by_rank():
    assert fuse({0: 2.0, 2: 1.0}, None, 3) == [1.0, 0.0, 0.5]
    k = RANK_CONSTANT
    fused = fuse({2: 4.0}, numpy.array([0.1, 0.9, 0.2, numpy.nan]), 4)
    best = 1 / (k + 2) + 1 / (k + 1)  # passage 2: second by meaning, first by words
    assert fused.tolist() == pytest.approx([(1 / (k + 3)) / best, (1 / (k + 1)) / best, 1.0, 0.0])
    assert fuse({3: 1.0}, numpy.array([0.5, 0.1, 0.2, numpy.nan]), 4)[3] > 0  # no vector: ranked by its words


def test_semantic_scores_are_cosines_measured_from_the_passages_mean():
    """What every passage shares (here a large common component) must not decide the ranking."""
    messages = [
        {"id": "a", "role": "user", "content": "The first sentence is long enough to stand alone. The second sentence is long enough as well."},
        {"id": "b", "role": "assistant", "content": "Short."},
        {"id": "c", "role": "user", "content": "Nobody embedded this one."},
    ]
    index = LexicalIndex(messages)
    common = numpy.array([0.0, 0.0, 6.0])
    rows = {"a": [[1.0, 0.0, 0.0] + common, [0.0, 1.0, 0.0] + common], "b": [-1.0, -1.0, 0.0] + common}
    query = numpy.array([0.0, 1.0, 0.2]) + common
    query = query / numpy.linalg.norm(query)
    unit = numpy.array([row / numpy.linalg.norm(row) for row in [*rows["a"], rows["b"]]])
    centre = unit.mean(axis=0)
    expected = [float((row - centre) @ (query - centre)) / numpy.linalg.norm(row - centre) / numpy.linalg.norm(query - centre) for row in unit]
    scores = semantic_scores(query, rows, index)
    assert scores[:3].tolist() == pytest.approx(expected, abs=1e-5) and numpy.isnan(scores[3])
    assert numpy.nanargmax(scores) == 1 and unknown_count(scores) == 1
    whole = semantic_scores(query, {"a": rows["a"][1], "b": rows["b"]}, index)  # one vector per message: for all its passages
    assert whole[0] == whole[1]
    assert semantic_scores(None, rows, index) is None


def test_cut_to_relevant_keeps_the_matching_sentence_and_marks_the_cuts():
    text = " ".join(f"Filler sentence number {n} about colours." for n in range(30)) + " The warehouse ships 4,000 pallets a week. Closing words here."
    index = LexicalIndex([{"id": "x", "role": "user", "content": text}])
    cut = cut_to_relevant(text, query_terms("how many pallets per week"), 30, approx, index.idf)
    assert "4,000 pallets" in cut and cut.startswith("[…] Filler sentence number 29") and approx(cut) <= 30
    assert truncate_to_tokens("one two three four five six", 4, approx) == "one two […]"
    assert truncate_to_tokens("short", 4, approx) == "short"


def test_importing_the_package_and_selector_loads_no_embedding_runtime():
    code = (
        "import sys, oblix_jupyter, oblix_jupyter.context.selector, oblix_jupyter.kernel.variables, oblix_jupyter.context.embedder;"
        "print(sorted(m for m in ('numpy', 'onnxruntime', 'tokenizers', 'torch', 'pandas', 'litellm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


# -- with the embedding model ---------------------------------------------------------


def test_embeddings_find_a_paraphrase_that_shares_no_word(embedder):
    facts = [
        "The raw extracts sit in an S3 bucket and they are refreshed every Monday at 6am.",
        "Use a histogram with fifty bins for the prices.",
        "Merging on the customer id duplicates rows when ids repeat.",
        "The learning rate warm-up covers ten percent of the steps.",
    ]
    vectors = embedder.embed([*facts, "Where is the source data kept, and how often is it updated?"])
    scores = vectors[:-1] @ vectors[-1]
    assert scores.argmax() == 0
    assert abs(float((vectors[0] ** 2).sum()) - 1.0) < 1e-4


class Counting:
    """The real embedder, counting the texts it is asked to embed, and noting on which thread (``threads``)."""

    def __init__(self, embedder):
        self.embedder = embedder
        self.name = embedder.name
        self.calls = []
        self.threads = []

    def embed(self, texts):
        self.calls.append(len(texts))
        self.threads.append(threading.current_thread().name)
        return self.embedder.embed(texts)

    def here(self) -> int:
        """How many texts were embedded on this thread (a turn's), not the background's."""
        return sum(n for n, thread in zip(self.calls, self.threads) if thread == threading.current_thread().name)

    def __getattr__(self, attribute):  # what embedding ahead uses (feeds, run, pooled): not counted
        return getattr(self.embedder, attribute)


def test_vector_cache_embeds_each_message_once_and_keeps_the_file_private(embedder, tmp_path):
    from oblix_jupyter.context.vector_cache import VectorCache

    session = {
        "messages": [
            {"id": "msg_1", "role": "user", "content": "Where do the raw extracts live? They come from the CRM."},
            {"id": "msg_2", "role": "assistant", "content": "In the S3 bucket telco-raw-eu, refreshed on Mondays."},
        ]
    }
    messages = conversation_messages(session)
    counting = Counting(embedder)
    cache = VectorCache(SessionManager(tmp_path), counting)
    table = cache.vectors("5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a", messages)
    path = os.path.join(tmp_path, ".vectors", FILE_NAME)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert table["msg_1"].shape == (len(chunks(messages[0]["content"])), 384)
    embedded = counting.here()
    cache.vectors("5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a", messages)
    assert counting.here() == embedded  # nothing embedded twice
    session["messages"].append({"id": "msg_3", "role": "user", "content": "Thanks."})
    fresh = VectorCache(SessionManager(tmp_path), counting)  # another process: reads the file
    table = fresh.vectors("5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a", conversation_messages(session))
    assert counting.here() == embedded + 1 and list(table) == ["msg_1", "msg_2", "msg_3"]

    prompt = "Which storage location holds the source files?"
    plan = select_context(
        session, prompt, 72, approx, vectors=(table, fresh.embed_prompt(prompt)), pin_first_exchange=False
    )
    assert "meaning (embeddings)" in " ".join(plan.notes)
    assert "msg_2" in [item.message_id for item in plan.items]


def test_a_session_holding_messages_already_embedded_gets_their_vectors_without_embedding(embedder, tmp_path):
    """A copy, an import or a session re-created with the same messages starts warm, whatever its message ids."""
    from oblix_jupyter.context.vector_cache import VectorCache

    store = SessionManager(tmp_path)
    texts = [
        "Where do the raw extracts live? They come from the CRM.",
        "In the S3 bucket telco-raw-eu, refreshed on Mondays.",
        "Which region is it in?",
        "eu-west-1, next to the warehouse.",
    ]
    original = store.create_session(title="original")
    for number, text in enumerate(texts):
        store.save_message(original, text, role="assistant" if number % 2 else "user")
    counting = Counting(embedder)
    first = VectorCache(store, counting).vectors(original, conversation_messages(store.get_session(original)))
    assert len(first) == len(texts)

    copy = store.create_session(title="re-created, with one message of its own first")
    store.save_message(copy, "A question of the copy's own.")
    for number, text in enumerate(texts):
        store.save_message(copy, text, role="user" if number % 2 else "assistant")  # ids and roles differ
    counting = Counting(embedder)
    cache = VectorCache(SessionManager(tmp_path), counting)  # another kernel: nothing in memory
    table = cache.vectors(copy, conversation_messages(store.get_session(copy)))
    assert counting.here() == 1, "only the copy's own message is embedded"
    assert list(table) == ["msg_1", "msg_2", "msg_3", "msg_4", "msg_5"]
    for number in range(len(texts)):
        assert abs(table[f"msg_{number + 2}"] - first[f"msg_{number + 1}"]).max() < 1e-2  # float16 on disk

    store.delete_session(original)  # the copy still uses them
    counting = Counting(embedder)
    again = VectorCache(SessionManager(tmp_path), counting).vectors(copy, conversation_messages(store.get_session(copy)))
    assert counting.here() == 0 and list(again) == list(table)


def test_turns_on_a_long_session_find_a_fact_by_meaning_and_embed_each_finished_turn(embedder, model_env):
    from oblix_jupyter import OblixClient
    from oblix_jupyter.context.embedder import digest

    client = OblixClient(max_input_tokens=1200)
    session_id = client.create_session_sync()
    store = client.session_manager
    for number in range(80):
        text = f"Step {number}: plot the weekly sales as a bar chart with readable labels."
        if number == 20:
            text = "The raw extracts sit in an S3 bucket that is refreshed every Monday."
        store.save_message(session_id, text, role="assistant" if number % 2 else "user")

    def embedded(message_id: str) -> bool:
        content = next(m["content"] for m in store.get_session(session_id)["messages"] if m["id"] == message_id)
        return bool(store.read_vectors(embedder.name, [digest(content)]))

    for prompt in ("Where is the source data kept?", "Where is the source data kept, again?"):
        result = client.execute_sync(prompt, session_id)
        plan = result["plan"]
        assert "meaning (embeddings)" in " ".join(plan.notes) and "not embedded yet" not in " ".join(plan.notes)
        assert "msg_21" in [item.message_id for item in plan.items]
        client.wait_for_background()  # the finished turn is embedded in the background
        assert embedded(result["message_id"])


def test_meaning_is_used_only_when_most_passages_have_a_vector():
    """Ranked by meaning, the few embedded passages would push out better ones that only have words."""
    messages = [{"id": f"m{n}", "role": ("user", "assistant")[n % 2], "content": f"Note {n} about the weekly sales chart."} for n in range(10)]
    session = {"messages": messages}
    prompt = "Which note covers the sales chart?"

    def notes(embedded: int) -> str:
        vectors = {f"m{n}": [1.0, float(n), 0.5] for n in range(embedded)}
        return " ".join(select_context(session, prompt, 75, approx, vectors=(vectors, [1.0, 2.0, 0.5]), pin_first_exchange=False).notes)

    assert "words only" in notes(4) and "6 of 10 passages not embedded yet" in notes(4)
    assert "meaning (embeddings)" in notes(5) and "5 passage(s) not embedded yet" in notes(5)


def test_background_embedding_waits_while_a_turn_is_under_way(embedder, tmp_path):
    from oblix_jupyter.context.vector_cache import VectorCache

    store = SessionManager(tmp_path)
    session_id = store.create_session()
    for number in range(3):
        store.save_message(session_id, f"Message {number} of a conversation about churn.")
    counting = Counting(embedder)
    cache = VectorCache(store, counting)
    with cache.during_turn():
        cache.update_later(session_id, conversation_messages(store.get_session(session_id)))
        wait_until(lambda: running_in(VectorCache._wait_for_quiet, threading.Condition.wait), 10, "the background embedding to wait for the turn")
        assert counting.calls == []
    cache.wait()
    assert counting.calls == [3, 3], "the three messages, then their three words (message, conversation, churn)"
    assert len(cache.vectors(session_id, conversation_messages(store.get_session(session_id)))) == 3 and sum(counting.calls) == 6


def test_a_first_turn_with_too_much_to_embed_goes_by_words_and_leaves_the_embedding_to_the_background(embedder, model_env):
    """Nothing computed for a long session: the turn is not held up, and the next one finds it all embedded."""
    from oblix_jupyter import OblixClient

    client = OblixClient(max_input_tokens=1200, embed_seconds=0.05)
    session_id = client.create_session_sync()
    for number in range(80):
        client.session_manager.save_message(session_id, f"Step {number}: chart the weekly sales by region.", role=("user", "assistant")[number % 2])
    started = time.monotonic()
    first = client.execute_sync("Which step charts the sales?", session_id)
    assert time.monotonic() - started < 2.0
    assert "words only (BM25): 80 of 80 passages not embedded yet" in " ".join(first["plan"].notes)
    client.wait_for_background()
    second = client.execute_sync("Which step charts the sales, again?", session_id)
    notes = " ".join(second["plan"].notes)
    assert "meaning (embeddings)." in notes, notes


def test_deleting_a_session_removes_its_vectors_even_with_a_turn_still_embedding(embedder, model_env):
    from oblix_jupyter import OblixClient
    from oblix_jupyter.context.embedder import digest

    client = OblixClient(max_input_tokens=600)
    session_id = client.create_session_sync()
    for number in range(40):
        client.session_manager.save_message(session_id, f"Note {number}: the weekly sales chart needs readable labels.")
    client.execute_sync("Which labels?", session_id)  # overflows: embeds now, and the finished turn in the background
    store = client.session_manager
    keys = [digest(m["content"]) for m in store.get_session(session_id)["messages"]]
    assert store.read_vectors(embedder.name, keys)
    assert client.delete_session(session_id)
    client.wait_for_background()  # what was still queued for the session has run
    assert store.read_vectors(embedder.name, keys) == {}


def test_a_prompt_embedded_ahead_starts_before_the_caller_next_blocks(embedder, tmp_path):
    """The plan never blocks before it asks for the prompt's vector: the model must already be running by then."""
    from oblix_jupyter.context.vector_cache import VectorCache

    started: list[float] = []

    class Recording:
        name = embedder.name

        def __getattr__(self, attribute):
            return getattr(embedder, attribute)

        def run(self, feeds):
            started.append(time.perf_counter())
            return embedder.run(feeds)

    prompt = "Where is the source data kept?"
    cache = VectorCache(SessionManager(tmp_path), Recording())
    cache.embed_prompt_ahead(prompt)  # the worker thread exists from here on: starting one would hand over the lock
    cache.embed_prompt(prompt)
    started.clear()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(5.0)  # this thread keeps the interpreter lock unless it lets it go itself
    try:
        cache.embed_prompt_ahead(prompt)
        handed_over = time.perf_counter()
        busy_until = handed_over + 0.05
        while time.perf_counter() < busy_until:
            pass  # the rest of the plan, which never blocks
        vector = cache.embed_prompt(prompt)
    finally:
        sys.setswitchinterval(switch)
    assert started and started[0] < handed_over
    assert float(vector @ embedder.embed([prompt])[0]) > 0.9999


def test_search_finds_the_passage_by_words_and_leaves_out_unrelated_ones():
    messages = [
        {"id": "msg_1", "role": "user", "content": "How do I merge two frames? Also, what is the weather like."},
        {"id": "msg_2", "role": "assistant", "content": "Use pandas merge on the key column. It keeps matching rows."},
        {"id": "msg_3", "role": "user", "content": "Thanks, and how do I plot a histogram?"},
    ]
    index = LexicalIndex(messages)
    found = search(index, "pandas merge key", 5)
    assert found[0][0] == "msg_2" and found[0][1].startswith("Use pandas merge on the key column.")
    assert all(message_id != "msg_3" for message_id, _ in found)
    assert search(index, "zebra", 5) == []
