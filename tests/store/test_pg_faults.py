"""The PostgreSQL store under faults: commits cut off before their reply, a database that dies and comes back,
processes flushing one spool at once or killed in the middle of it, and the connections a kernel holds.

Faults are made deterministic by ``fault_proxy.FaultProxy`` (a TCP proxy between the
store and the server that cuts a connection right after the ``COMMIT`` went through) and
by processes that kill themselves (``SIGKILL``) at a chosen step of a flush. Whatever
happens, every message is stored exactly once, in order, at dense positions.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from multiprocessing import get_context

import psycopg
import pytest
from fault_proxy import COMMIT, FaultProxy
from postgres_server import DATABASE

from oblix_jupyter.errors import StoreUnavailable
from oblix_jupyter.store.postgres import PostgresStore
from oblix_jupyter.store.shape import now_iso
from oblix_jupyter.store.spool import waiting_on_this_machine

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def proxy(postgres):
    proxy = FaultProxy(os.path.join(postgres.socket_dir, ".s.PGSQL.5432"))
    yield proxy
    proxy.close()


@pytest.fixture
def stores():
    """``stores(dsn, **options)``: a store closed after the test."""
    opened: list[PostgresStore] = []

    def open_store(dsn: str, **options) -> PostgresStore:
        opened.append(PostgresStore(dsn, **options))
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()


def stored(postgres, session_id: str) -> list[tuple[int, str, str]]:
    """(position, id, content) of every row of the session, as the superuser sees the table."""
    return postgres.admin_query(
        "SELECT position, id, content FROM oblix.messages WHERE session_id = %s ORDER BY position", (session_id,)
    )


def exactly(contents: list[str]) -> list[tuple[int, str, str]]:
    """The rows of a session holding ``contents``, once each, in order, at dense positions."""
    return [(n, f"msg_{n}", content) for n, content in enumerate(contents, 1)]


def eventually(check, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.02)


# -- exactly once ---------------------------------------------------------------------


def test_the_database_stores_a_key_once_and_tells_the_caller_the_message_it_is(postgres):
    role = postgres.create_user()
    store = PostgresStore(postgres.dsn(role))
    try:
        session_id = store.create_session(title="keys")
        key = str(uuid.uuid4())
        with psycopg.connect(postgres.dsn(role), autocommit=True) as raw:
            append = "SELECT oblix.append_message(%s, 'user', %s, now(), '{}', now(), %s)"
            first = raw.execute(append, (session_id, "once", key)).fetchone()[0]
            again = raw.execute(append, (session_id, "once, sent again", key)).fetchone()[0]
            other = raw.execute(append, (session_id, "another", str(uuid.uuid4()))).fetchone()[0]
        assert (first, again, other) == ("msg_1", "msg_1", "msg_2")
        assert stored(postgres, session_id) == exactly(["once", "another"])
        assert store.list_sessions()[0]["message_count"] == 2, "a repeated key counts no message"
    finally:
        store.close()


@pytest.mark.parametrize("lost", ["question", "answer"])
def test_a_commit_cut_off_before_its_reply_goes_to_the_spool_and_is_stored_once(postgres, proxy, stores, lost):
    role = postgres.create_user()
    store = stores(proxy.dsn(role, DATABASE), timeout=2)
    session_id = store.create_session(title="cut after COMMIT")
    before = ["question"] if lost == "answer" else []
    for content in before:
        store.save_message(session_id, content)
    proxy.cut_after(COMMIT)
    kept = store.save_message(session_id, lost, role="assistant" if lost == "answer" else "user")
    assert proxy.cut.is_set() and kept["saved_locally"] and kept["id"] is None
    [record] = store.spool.pending(session_id)
    assert record["message"]["content"] == lost and uuid.UUID(record["key"])
    # The server had the COMMIT: the message is there already, and the spool holds it too.
    assert eventually(lambda: stored(postgres, session_id) == exactly([*before, lost]))
    store.save_message(session_id, "next")
    assert stored(postgres, session_id) == exactly([*before, lost, "next"]), "written again, stored once"
    assert store.spool.pending() == []
    assert [m["content"] for m in store.get_session(session_id)["messages"]] == [*before, lost, "next"]


def test_a_database_that_dies_with_a_commit_gets_the_message_once_as_soon_as_it_is_back(postgres, proxy, stores):
    role = postgres.create_user()
    store = stores(proxy.dsn(role, DATABASE), timeout=2)
    session_id, other = store.create_session(title="died"), store.create_session(title="also waiting")
    store.save_message(session_id, "question")
    proxy.cut_after(COMMIT, then_refuse=True)
    started = time.monotonic()
    assert store.save_message(session_id, "answer", role="assistant")["saved_locally"]
    assert store.save_message(other, "meanwhile elsewhere")["saved_locally"]
    assert time.monotonic() - started < 1.0, "no waiting for a database that refused"
    assert [(waits, refused) for where, _user, waits, refused in waiting_on_this_machine() if str(proxy.port) in where] == [(2, 0)]
    proxy.accept()  # back: no call of ours, the store writes what waits by itself
    assert eventually(lambda: not store.spool.pending())
    assert stored(postgres, session_id) == exactly(["question", "answer"])
    assert stored(postgres, other) == exactly(["meanwhile elsewhere"])


# -- many processes, one spool -----------------------------------------------------------


def _flush_when_told(dsn: str, ready, go, written) -> None:
    store = PostgresStore(dsn)
    ready.release()
    go.wait()
    written.put(store.flush_spool())
    store.close()


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_flushing_one_spool_at_once_write_each_message_once_in_order(postgres, stores, processes):
    role = postgres.create_user()
    store = stores(postgres.dsn(role))
    sessions = [store.create_session(title=f"spooled {n}") for n in range(2)]
    context = get_context("spawn")
    ready, go, written = context.Semaphore(0), context.Event(), context.Queue()
    children = [context.Process(target=_flush_when_told, args=(postgres.dsn(role), ready, go, written)) for _ in range(processes)]
    for child in children:
        child.start()
    for _ in children:
        assert ready.acquire(timeout=60)
    contents = {session_id: [f"{session_id[:4]} #{n}" for n in range(40)] for session_id in sessions}
    for n in range(40):
        for session_id in sessions:
            store.spool.add(session_id, {"role": "user", "content": contents[session_id][n], "timestamp": now_iso()})
    go.set()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    counts = [written.get(timeout=5) for _ in children]
    assert sum(counts) == 80, f"each file written by one process: {counts}"
    for session_id in sessions:
        assert stored(postgres, session_id) == exactly(contents[session_id])
    assert store.spool.pending() == []


def _flush_and_die(dsn: str, step: str) -> None:
    """Flush the spool, and SIGKILL this process at ``step`` of the third message."""
    from oblix_jupyter.store import spool as spool_module

    store = PostgresStore(dsn)
    seen = []
    append, remove = store._append, spool_module.remove_file

    def appending(session_id, key, message):
        seen.append(key)
        if step == "claimed" and len(seen) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        result = append(session_id, key, message)
        if step == "appended" and len(seen) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def removing(path):
        remove(path)
        if step == "removed" and len(seen) == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    store._append, spool_module.remove_file = appending, removing
    store.flush_spool()


@pytest.mark.parametrize("step", ["claimed", "appended", "removed"])
def test_a_flusher_killed_at_any_step_leaves_the_next_one_every_message_once(postgres, stores, step):
    role = postgres.create_user()
    store = stores(postgres.dsn(role))
    session_id = store.create_session(title=f"killed when {step}")
    contents = [f"kept {n}" for n in range(6)]
    for content in contents:
        store.spool.add(session_id, {"role": "user", "content": content, "timestamp": now_iso()})
    child = get_context("spawn").Process(target=_flush_and_die, args=(postgres.dsn(role), step))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert len(store.spool.pending()) == {"claimed": 4, "appended": 4, "removed": 3}[step]
    started = time.monotonic()
    assert store.flush_spool() >= 3
    assert time.monotonic() - started < 2, "the claim died with its process"
    assert stored(postgres, session_id) == exactly(contents)
    assert store.spool.pending() == []


# -- the spool before a read, and fast while away --------------------------------------------


def gone_away(postgres, proxy, stores, first: str, timeout: float) -> tuple[PostgresStore, str]:
    """A store through the proxy, a session of it holding ``first``, and from then on the database refusing everyone."""
    store = stores(proxy.dsn(postgres.create_user(), DATABASE), timeout=timeout)
    session_id = store.create_session(title="away")
    store.save_message(session_id, first)
    proxy.refuse()
    return store, session_id


def read_or_none(store: PostgresStore, session_id: str) -> dict | None:
    """The session, or None while the store still takes the database for away."""
    try:
        return store.get_session(session_id)
    except StoreUnavailable:
        return None


def test_a_session_read_has_its_spooled_messages_written_first(postgres, proxy, stores):
    store, session_id = gone_away(postgres, proxy, stores, "question", timeout=2)
    assert store.save_message(session_id, "answer kept here", role="assistant")["saved_locally"]
    with pytest.raises(StoreUnavailable, match="cannot be reached: it has not answered"):
        store.get_session(session_id)
    proxy.accept()
    # No later append needed. At once when the refusal was quick (the store then tries the database
    # itself); on a loaded machine it may not have been, and the first read after the keeper's next try.
    messages = eventually(lambda: read_or_none(store, session_id))["messages"]
    assert [(m["id"], m["role"], m["content"]) for m in messages] == [
        ("msg_1", "user", "question"), ("msg_2", "assistant", "answer kept here"),
    ]


def test_once_the_database_failed_calls_stop_waiting_for_it(postgres, proxy, stores):
    store, session_id = gone_away(postgres, proxy, stores, "before", timeout=5)
    took = []
    for n in range(20):
        started = time.monotonic()
        assert store.save_message(session_id, f"while away {n}")["saved_locally"]
        took.append(time.monotonic() - started)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.list_sessions()
    print(f"first save while away {took[0] * 1000:.1f} ms, then at most {max(took[1:]) * 1000:.1f} ms; a read refused in "
          f"{(time.monotonic() - started) * 1000:.1f} ms (the pool's wait: {store.timeout:g} s)")
    assert took[0] < 1.0 and max(took[1:]) < 0.2 and time.monotonic() - started < 0.2
    proxy.accept()
    assert eventually(lambda: not store.spool.pending())
    assert stored(postgres, session_id) == exactly(["before", *(f"while away {n}" for n in range(20))])


# -- connections --------------------------------------------------------------------


def connections_of(postgres, role: str) -> int:
    return postgres.admin_query("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,))[0][0]


def test_a_kernel_following_a_session_under_load_holds_at_most_two_connections_and_none_once_idle(postgres, stores):
    role = postgres.create_user()
    idle = 1.5
    store = stores(postgres.dsn(role), idle=idle)
    session_id = store.create_session(title="followed")
    heard: list[tuple[str, str]] = []
    stop = threading.Event()

    def follow() -> None:
        while not stop.is_set():
            heard.extend(store.wait_for_changes([session_id], timeout=0.2))

    def write(writer: int) -> None:
        for n in range(15):
            store.save_message(session_id, f"w{writer}-{n}")

    assert store.wait_for_changes([session_id], timeout=0) == []  # following from now on
    follower = threading.Thread(target=follow)
    follower.start()
    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in writers:
        thread.start()
    most = 0
    while any(thread.is_alive() for thread in writers):
        most = max(most, connections_of(postgres, role))
        time.sleep(0.01)
    assert eventually(lambda: len(heard) == 60, 5), len(heard)
    stop.set()
    follower.join()
    assert 1 <= most <= 2, most
    quiet = time.monotonic()
    assert eventually(lambda: connections_of(postgres, role) == 0, idle * 3)
    print(f"at most {most} connection(s) under load; none {time.monotonic() - quiet:.2f} s after the last use (idle = {idle} s)")
    assert time.monotonic() - quiet <= idle + 0.8
    assert len(stored(postgres, session_id)) == 60

