"""The PostgreSQL store (#17) beside the file store, in one process: append, load, list, search, a turn.

PostgreSQL is the tests' own throwaway server (``tests/postgres_server.py``: Debian's
PostgreSQL 15 on a Unix socket, fsync off), each figure's data owned by a database
user of its own, as a team's are, so every call goes through the functions that decide
what that user may read and write. Everything is loaded before anything is measured,
so every PostgreSQL figure is taken in a database holding all three users' data
(10,201 sessions, 201,000 messages): a user's queries pay for rows they cannot see.
Bulk data is inserted by the administrator in its user's name (users may not touch the
tables), in single statements on a connection of its own, while the file store's is
built; then the tables are analysed, as autovacuum would within a minute.

The files are the same data through the file store's API (``bench_store.fill`` for the
10,000 sessions). The 200,000 messages are 200 sessions of 1,000, each of 20 words
drawn from 8,000 made-up words with Zipf's frequencies, and the queries range from a
common word to one that is absent. The file store's search is a case-insensitive
substring test over every message, PostgreSQL's a ranked full-text search with
snippets: the same calls, not the same work.

The turns are ``bench_turn``'s paired comparison (300 ms first token, whole conversation
in a 128k window), with fewer repeats to keep the benchmark near three minutes.
"""

from __future__ import annotations

import itertools
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import psycopg
from bench_store import append_exchange, fill
from common import Behavior, median_ms, paired_medians, report, server_process
from postgres_server import running

from oblix_jupyter import OblixClient, SessionManager
from oblix_jupyter.models.gateway import litellm_module
from oblix_jupyter.store.migrations import SCHEMA_VERSION
from oblix_jupyter.store.postgres import PostgresStore
from oblix_jupyter.store.base import SessionStore

MODEL = "openai/gpt-4o-mini"
PAUSE = 0.2
LISTED = 10_000
SEARCHED_SESSIONS, SEARCHED_PER_SESSION, WORDS_PER_MESSAGE = 200, 1_000, 20
SEARCHED = SEARCHED_SESSIONS * SEARCHED_PER_SESSION
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "to", "sa", "vi", "de", "po", "la", "fe", "gu", "ho", "ji", "be", "co", "da", "ze", "wu")


def long_session(title: str) -> dict[str, object]:
    """A 1,000-message conversation, as ``bench_turn`` builds one, whole (one write instead of 1,000 appends)."""
    stamp = "2024-05-01T12:00:00.000Z"
    messages = []
    for number in range(500):
        messages.append({"role": "user", "content": f"question {number} about the data frame", "timestamp": stamp})
        messages.append({"role": "assistant", "content": f"answer {number}: use groupby", "timestamp": stamp, "model": MODEL})
    return {"id": str(uuid.uuid4()), "title": title, "created_at": stamp, "updated_at": stamp, "messages": messages, "context": {}}


def corpus() -> tuple[list[str], list[str]]:
    """(vocabulary by falling frequency, the ``SEARCHED`` messages' texts), the same on every run."""
    chance = random.Random(17)
    vocabulary = ["".join(parts) for parts in itertools.product(SYLLABLES, repeat=3)]
    chance.shuffle(vocabulary)
    weights = list(itertools.accumulate(1 / rank for rank in range(1, len(vocabulary) + 1)))
    words = chance.choices(vocabulary, cum_weights=weights, k=SEARCHED * WORDS_PER_MESSAGE)
    texts = [" ".join(words[start : start + WORDS_PER_MESSAGE]) for start in range(0, len(words), WORDS_PER_MESSAGE)]
    return vocabulary, texts


def queries(vocabulary: list[str]) -> list[str]:
    """Searches a person might type: words from common to rare, two words, a phrase, and one found nowhere."""
    word = vocabulary.__getitem__
    return [word(3), word(30), word(300), word(3000), f"{word(10)} {word(100)}", f'"{word(0)} {word(1)}"', "absentword"]


def searched_sessions(texts: list[str]) -> Iterator[dict[str, object]]:
    """The ``SEARCHED`` messages as sessions of ``SEARCHED_PER_SESSION``, for the file store's ``add_session``."""
    stamp = "2024-05-01T12:00:00.000Z"
    for number in range(SEARCHED_SESSIONS):
        chunk = texts[number * SEARCHED_PER_SESSION : (number + 1) * SEARCHED_PER_SESSION]
        messages = [{"role": ("user", "assistant")[n % 2], "content": text, "timestamp": stamp} for n, text in enumerate(chunk)]
        yield {"id": str(uuid.uuid4()), "title": f"analysis {number}", "created_at": stamp, "updated_at": stamp, "messages": messages, "context": {}}


# -- PostgreSQL bulk data, inserted by the administrator in the store's user's name ----------


def insert_sessions(admin_dsn: str, owner: str, count: int, messages: int = 0) -> list[str]:
    """``count`` empty sessions of ``owner`` (or holding ``messages`` each, inserted by ``insert_messages``), a second apart; their ids."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with psycopg.connect(admin_dsn) as conn:
        conn.execute(
            "INSERT INTO oblix.sessions (id, owner, title, created_at, updated_at, message_count, schema_version) "
            "SELECT id, %s, 'session ' || n, now() - make_interval(secs => n), now() - make_interval(secs => n), %s, %s "
            "FROM unnest(%s::uuid[]) WITH ORDINALITY AS s(id, n)",
            (owner, messages, SCHEMA_VERSION, ids),
        )
    return ids


def insert_messages(admin_dsn: str, owner: str, texts: list[str]) -> None:
    """``texts`` as messages of new sessions of ``owner``, ``SEARCHED_PER_SESSION`` each, in one statement."""
    ids = insert_sessions(admin_dsn, owner, SEARCHED_SESSIONS, SEARCHED_PER_SESSION)
    with psycopg.connect(admin_dsn) as conn:
        conn.execute(
            "INSERT INTO oblix.messages (session_id, position, id, role, content, timestamp) "
            "SELECT session_id, position, 'msg_' || position, (ARRAY['user', 'assistant'])[1 + (position - 1) %% 2], "
            "content, now() FROM unnest(%s::uuid[], %s::int[], %s::text[]) AS m(session_id, position, content)",
            (
                [ids[n // SEARCHED_PER_SESSION] for n in range(len(texts))],
                [n % SEARCHED_PER_SESSION + 1 for n in range(len(texts))],
                texts,
            ),
        )


# -- what is measured ----------------------------------------------------------------------


def conversation(store: SessionStore, name: str, session_id: str) -> None:
    """Load and append on the 1,000-message session."""
    loaded = median_ms(lambda: store.get_session(session_id), repeat=20)
    appended = median_ms(lambda: append_exchange(store, session_id), repeat=50)
    report(f"{name}: append one exchange, 1,000-message session", f"{appended:.2f} ms", "goal <= 3 ms")
    report(f"{name}: get_session, 1,000-message session", f"{loaded:.2f} ms")


def listing(store: SessionStore, name: str) -> None:
    listed = median_ms(lambda: store.list_sessions(limit=20), repeat=30)
    report(f"{name}: list_sessions(limit=20), {LISTED:,} sessions", f"{listed:.2f} ms", "goal <= 5 ms")


def search(store: SessionStore, name: str, kind: str, searches: list[str]) -> None:
    """The median and slowest of ``searches``, each timed once after one untimed warm-up search."""
    store.search_sessions(searches[0], limit=20)
    times = []
    for query in searches:
        start = time.perf_counter()
        store.search_sessions(query, limit=20)
        times.append((time.perf_counter() - start) * 1000)
    report(f"{name}: search_sessions ({kind}), {SEARCHED:,} msgs, median of {len(times)}", f"{statistics.median(times):.2f} ms", "goal <= 20 ms")
    report(f"  slowest of those searches ({name})", f"{max(times):.2f} ms")


def turn_ratio(litellm, store: SessionStore, name: str, session_id: str, url: str) -> None:
    """``bench_turn``'s paired turn against a bare ``litellm.completion`` of the same messages."""
    prompt = "and what about the last column?"
    client = OblixClient(model=MODEL, session_manager=store, model_options={MODEL: {"api_base": url}}, max_input_tokens=128_000)
    client.execute_sync(prompt, session_id)  # the first turn after a restart indexes the session
    client.wait_for_background()
    messages = client.plan(prompt, client.load_session(session_id), MODEL).messages

    def bare() -> None:
        stream = litellm.completion(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True},
            api_base=url, num_retries=0, max_retries=0,
        )
        "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    baseline, ours = paired_medians(bare, lambda: client.execute_sync(prompt, session_id), repeat=10, pause=PAUSE)
    client.wait_for_background()
    report(f"{name}: bare litellm.completion, {len(messages)} msgs, 300 ms first token", f"{baseline:.2f} ms")
    report(f"{name}: execute turn, 1,000-message session, same server", f"{ours:.2f} ms")
    report(f"  ratio execute / bare ({name})", f"{ours / baseline:.3f}", "goal <= 1.05")


def timed(action: Callable[[], object]) -> Callable[[], float]:
    """``action`` started in a thread; a call that waits for it and returns its seconds."""
    seconds: list[float] = []

    def run() -> None:
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)

    worker = threading.Thread(target=run)
    worker.start()

    def finished() -> float:
        worker.join()
        if not seconds:
            raise RuntimeError("building the PostgreSQL data failed (its traceback is above)")
        return seconds[0]

    return finished


def main() -> None:
    litellm = litellm_module()
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    vocabulary, texts = corpus()
    with ExitStack() as stack:
        base = stack.enter_context(tempfile.TemporaryDirectory())
        url = stack.enter_context(server_process(Behavior(first_token_delay=0.3)))
        server = stack.enter_context(running())

        def stores(user: str) -> dict[str, SessionStore]:
            postgres = PostgresStore(server.dsn(server.create_user(user)))
            stack.callback(postgres.close)
            return {"files": SessionManager(os.path.join(base, user)), "postgresql": postgres}

        talk, listed, searched = stores("talker"), stores("lister"), stores("searcher")
        talks = {name: store.add_session(long_session("long"), new_id=False) for name, store in talk.items()}
        # The server does PostgreSQL's bulk work, so it overlaps the file store's, which is Python's.
        postgres_built = timed(
            lambda: (insert_sessions(server.admin_dsn, "lister", LISTED), insert_messages(server.admin_dsn, "searcher", texts))
        )
        start = time.perf_counter()
        fill(listed["files"], LISTED)
        for session in searched_sessions(texts):
            searched["files"].add_session(session, new_id=False)
        report(f"  (building {LISTED:,} sessions and {SEARCHED:,} messages, files)", f"{time.perf_counter() - start:.1f} s")
        report("  (the same, postgresql, meanwhile)", f"{postgres_built():.1f} s")
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute("ANALYZE")

        for name in talk:
            conversation(talk[name], name, talks[name])
        for name in listed:
            listing(listed[name], name)
        searches = queries(vocabulary)
        search(searched["postgresql"], "postgresql", "full text", searches)
        search(searched["files"], "files", "substring", searches)
        for name in talk:
            turn_ratio(litellm, talk[name], name, talks[name], url)


if __name__ == "__main__":
    main()
