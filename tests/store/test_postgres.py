"""What only the PostgreSQL store does, on a real server: concurrency, privacy enforced by the database, sharing,
search, live changes, surviving a server restart, and its migrations.

The operations both stores share are tested on both in ``test_sessions.py``; what users'
own SQL cannot do to each other is attacked in ``test_pg_attacks.py``.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from multiprocessing import get_context

import psycopg
import pytest
from psycopg import sql

from oblix_jupyter.errors import NewerSchema, NotPermitted, SessionNotFound, StoreUnavailable
from oblix_jupyter.store import pg_schema
from oblix_jupyter.store.factory import open_store
from oblix_jupyter.store.migrations import SCHEMA_VERSION
from oblix_jupyter.store.postgres import PostgresStore, describe_dsn

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def open_as(postgres):
    """``open_as(name)``: a store for a new database user (``name`` plus a number); closed after the test."""
    opened: list[PostgresStore] = []

    def open_as(name: str = "user", **options) -> PostgresStore:
        role = postgres.create_user(f"{name}_{uuid.uuid4().hex[:8]}")
        opened.append(PostgresStore(postgres.dsn(role), **options))
        return opened[-1]

    yield open_as
    for store in opened:
        store.close()


def role_of(store: PostgresStore) -> str:
    return store.location.split("user=")[1].split()[0]


def _append(dsn: str, session_id: str, writer: int, count: int) -> None:
    store = PostgresStore(dsn)
    for number in range(count):
        store.save_message(session_id, f"w{writer}-{number}")
    store.close()


@pytest.mark.timeout(60)
def test_eight_processes_appending_to_one_session_number_every_message_densely_in_each_writers_order(postgres, open_as):
    store = open_as()
    session_id = store.create_session(title="busy")
    context = get_context("spawn")
    dsn = postgres.dsn(role_of(store))
    processes = [context.Process(target=_append, args=(dsn, session_id, writer, 50)) for writer in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(50)
        assert process.exitcode == 0
    messages = store.get_session(session_id)["messages"]
    assert [m["id"] for m in messages] == [f"msg_{n}" for n in range(1, 401)]
    for writer in range(8):
        mine = [m["content"] for m in messages if m["content"].startswith(f"w{writer}-")]
        assert mine == [f"w{writer}-{n}" for n in range(50)]
    positions = postgres.admin_query("SELECT position FROM oblix.messages WHERE session_id = %s ORDER BY 1", (session_id,))
    assert [p for (p,) in positions] == list(range(1, 401))
    assert store.list_sessions()[0]["message_count"] == 400


def test_sessions_are_private_even_to_raw_sql_and_sharing_gives_exactly_what_it_says(postgres):
    names = ("alice", "bob", "carol")
    for name in names:
        postgres.create_user(name, password=PASSWORD)
    alice, bob, carol = (PostgresStore(postgres.dsn(name, password=PASSWORD)) for name in names)
    try:
        secret = bob.create_session(title="bob's plans")
        bob.save_message(secret, "the launch is on Friday")
        bob.bind("/home/bob/plans.ipynb", secret)
        bob.write_vectors("model", secret, {"key-of-friday": b"vector"})

        with psycopg.connect(postgres.dsn("alice", password=PASSWORD), autocommit=True) as raw:
            def seen() -> list[int]:
                """What alice's own SQL gets of bob's session, through every function that reads."""
                calls = ("list_sessions(NULL)", "read_session(%(s)s)", "read_messages(%(s)s, 0, 100)", "shares(%(s)s)",
                         "bindings()", "read_vectors('model', ARRAY['key-of-friday'])", "matching_sessions(left(%(s)s, 4))")
                return [raw.execute(f"SELECT count(*) FROM oblix.{call}", {"s": secret}).fetchone()[0] for call in calls]

            assert secret not in {s["id"] for s in alice.list_sessions()}
            assert alice.load_session(secret) is None
            assert alice.read_vectors("model", ["key-of-friday"]) == {}
            assert alice.search_sessions("launch Friday") == []
            with pytest.raises(SessionNotFound):
                alice.save_message(secret, "let me in")
            with pytest.raises(SessionNotFound):
                alice.share(secret, "alice", write=True)
            assert alice.delete_session(secret) is False
            assert seen() == [0, 0, 0, 0, 0, 0, 0]
            assert raw.execute("SELECT oblix.delete_session(%s)", (secret,)).fetchone()[0] is False
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                raw.execute("INSERT INTO oblix.shares (session_id, grantee, owner, can_write) VALUES (%s, 'alice', 'bob', true)",
                            (secret,))

            bob.share(secret, "alice", write=True)
            bob.share(secret, "carol")
            assert bob.shares(secret) == [{"user": "alice", "write": True}, {"user": "carol", "write": False}]
            assert [(s["id"], s["shared_by"]) for s in alice.list_sessions()] == [(secret, "bob")]
            assert alice.save_message(secret, "count me in")["id"] == "msg_2"
            assert [m["content"] for m in carol.get_session(secret)["messages"]] == ["the launch is on Friday", "count me in"]
            assert alice.shares(secret) == [{"user": "alice", "write": True}]  # her own access, not the others'
            with pytest.raises(NotPermitted, match="belongs to bob"):
                carol.save_message(secret, "a reader cannot write")
            with pytest.raises(NotPermitted):
                alice.delete_session(secret)
            with pytest.raises(NotPermitted):
                alice.share(secret, "carol", write=True)
            for statement in ("UPDATE oblix.sessions SET owner = 'alice' WHERE id = %s", "DELETE FROM oblix.sessions WHERE id = %s",
                              "UPDATE oblix.shares SET can_write = true WHERE session_id = %s",
                              "UPDATE oblix.messages SET content = 'rewritten' WHERE session_id = %s"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    raw.execute(statement, (secret,))
            assert seen() == [1, 1, 2, 1, 0, 0, 1]  # bob's bindings and vectors stay his; of the shares, her own
            assert bob.get_session(secret)["messages"][0]["content"] == "the launch is on Friday"

            bob.unshare(secret, "alice")
            assert alice.list_sessions() == [] and alice.load_session(secret) is None
            assert seen() == [0, 0, 0, 0, 0, 0, 0]
            assert carol.load_session(secret) is not None
    finally:
        for store in (alice, bob, carol):
            store.close()


def test_delete_removes_every_trace_of_every_user_and_only_vectors_nothing_else_uses(postgres, open_as):
    owner, writer = open_as("owner"), open_as("writer")
    doomed, kept = owner.create_session(title="doomed"), owner.create_session(title="kept")
    owner.share(doomed, role_of(writer), write=True)
    writer.save_message(doomed, "hello")
    writer.bind("/w.ipynb", doomed)
    owner.bind("/o.ipynb", doomed)
    owner.write_vectors("m", doomed, {"only-doomed": b"1", "both": b"2"})
    owner.write_vectors("m", kept, {"both": None})
    writer.write_vectors("m", doomed, {"writer's": b"3"})

    assert owner.delete_session(doomed) is True
    assert owner.delete_session(doomed) is False
    for table in ("messages", "shares", "bindings", "uses"):
        assert postgres.admin_query(f"SELECT count(*) FROM oblix.{table} WHERE session_id = %s", (doomed,)) == [(0,)]
    assert owner.read_vectors("m", ["only-doomed", "both"]) == {"both": b"2"}
    assert writer.read_vectors("m", ["writer's"]) == {}
    assert postgres.admin_query("SELECT count(*) FROM oblix.vectors WHERE key IN ('only-doomed', 'writer''s')") == [(0,)]
    assert writer.bindings() == {} and owner.bindings() == {}


def test_search_ranks_hits_with_snippets_over_thousands_of_messages_and_only_readable_ones(open_as):
    alice, bob = open_as("alice"), open_as("bob")
    rng = random.Random(3)
    words = ["data", "frame", "plot", "column", "index", "merge", "group", "filter", "model", "train", "test", "split", "value", "array"]

    def filler(count: int) -> list[dict[str, str]]:
        return [{"role": rng.choice(("user", "assistant")), "content": " ".join(rng.choices(words, k=12))} for _ in range(count)]

    def add(store: PostgresStore, title: str, messages: list[dict[str, str]]) -> str:
        stamp = "2025-01-01T00:00:00.000Z"
        return store.add_session({"id": "-", "title": title, "created_at": stamp, "updated_at": stamp, "messages": messages})

    for number in range(25):
        add(alice, f"notebook {number}", filler(100))
    in_title = add(alice, "Ornithopter wing loads", filler(60))
    in_text = add(alice, "misc", [*filler(60), {"role": "user", "content": "How heavy is an ornithopter's wing, roughly?"}])
    bobs = add(bob, "Ornithopter secrets", [{"role": "user", "content": "the ornithopter prototype flies"}])

    hits = alice.search_sessions("ornithopter wings", limit=10)  # its speed: benchmarks/bench_store_postgres.py
    assert [hit["id"] for hit in hits] == [in_title, in_text]
    assert "«Ornithopter»" in hits[0]["snippet"] and "«wing»" in hits[0]["snippet"]
    assert "«ornithopter»'s «wing»" in hits[1]["snippet"] and len(hits[1]["snippet"]) < 200
    assert {"id", "title", "created_at", "updated_at", "message_count", "model", "metadata", "shared_by"} <= set(hits[0])
    assert bobs not in {hit["id"] for hit in alice.search_sessions("ornithopter prototype")}
    assert len(alice.search_sessions("column", limit=5)) == 5
    assert alice.search_sessions('"plot merge" -index', limit=100)  # websearch syntax is accepted
    bob.share(bobs, role_of(alice))
    shared = alice.search_sessions("prototype")
    assert [(hit["id"], hit["shared_by"]) for hit in shared] == [(bobs, role_of(bob))]


def test_search_passes_the_indexes_yet_gives_raw_sql_only_what_its_caller_may_read(postgres, open_as):
    owner, reader, stranger = open_as("owner"), open_as("reader"), open_as("stranger")
    secret = owner.add_session({"id": "-", "title": "zeppelin plans", "created_at": "2025-01-01T00:00:00.000Z",
                                "updated_at": "2025-01-01T00:00:00.000Z",
                                "messages": [{"role": "user", "content": "the zeppelin leaves at dawn"}]})
    owner.share(secret, role_of(reader))

    def raw_hits(store: PostgresStore) -> list[tuple[str, str]]:
        with psycopg.connect(postgres.dsn(role_of(store)), autocommit=True) as raw:
            return raw.execute("SELECT id, title FROM oblix.search_sessions('zeppelin', 10, '')").fetchall()

    assert raw_hits(owner) == [(secret, "zeppelin plans")]
    assert raw_hits(reader) == [(secret, "zeppelin plans")]
    assert raw_hits(stranger) == []
    with psycopg.connect(postgres.dsn(role_of(stranger)), autocommit=True) as raw:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # only its owner may redefine who may read what
            raw.execute("CREATE OR REPLACE FUNCTION oblix.search_sessions(query text, most integer, highlight text) "
                        "RETURNS SETOF text LANGUAGE sql AS 'SELECT NULL::text'")
    owner.unshare(secret, role_of(reader))
    assert raw_hits(reader) == [] and reader.search_sessions("zeppelin") == []


def test_a_message_belongs_to_its_sessions_owner_whoever_writes_it(postgres, open_as):
    owner, writer = open_as("owner"), open_as("writer")
    session_id = owner.create_session(title="together")
    owner.share(session_id, role_of(writer), write=True)
    with psycopg.connect(postgres.dsn(role_of(writer)), autocommit=True) as raw:
        appended = raw.execute("SELECT oblix.append_message(%s, 'user', 'mine now?', now(), '{}')", (session_id,)).fetchone()
        assert appended == ("msg_1",)
    assert postgres.admin_query("SELECT owner FROM oblix.messages WHERE session_id = %s", (session_id,)) == [(role_of(owner),)]
    owner.unshare(session_id, role_of(writer))
    with psycopg.connect(postgres.dsn(role_of(owner)), autocommit=True) as raw:
        assert raw.execute("SELECT content FROM oblix.read_messages(%s, 0, 10)", (session_id,)).fetchall() == [("mine now?",)]
    with psycopg.connect(postgres.dsn(role_of(writer)), autocommit=True) as raw:
        assert raw.execute("SELECT count(*) FROM oblix.read_messages(%s, 0, 10)", (session_id,)).fetchone()[0] == 0


def test_an_append_on_another_connection_reaches_a_listener_within_a_second(open_as, postgres):
    listener = open_as("listener")
    session_id = listener.create_session(title="live")
    other = PostgresStore(postgres.dsn(role_of(listener)))  # another kernel of the same user
    try:
        assert listener.wait_for_changes([session_id], timeout=0) == []  # listening from now on
        unrelated = listener.create_session(title="unrelated")
        threading.Timer(0.2, lambda: (other.save_message(unrelated, "not this one"), other.save_message(session_id, "hi"))).start()
        started = time.monotonic()
        assert listener.wait_for_changes([session_id], timeout=5) == [(session_id, "msg_1")]
        assert time.monotonic() - started < 1.0
        other.save_message(session_id, "two")
        other.save_message(session_id, "three")
        heard = listener.wait_for_changes([session_id, unrelated], timeout=5)
        if len(heard) == 1:  # the second announcement had not reached this connection yet
            heard += listener.wait_for_changes([session_id, unrelated], timeout=5)
        assert heard == [(session_id, "msg_2"), (session_id, "msg_3")]
    finally:
        other.close()


@pytest.mark.timeout(60)
def test_the_store_carries_on_after_the_server_crashes_and_comes_back(postgres, open_as):
    store = open_as("survivor", timeout=1)
    session_id = store.create_session(title="before")
    store.save_message(session_id, "before the crash")
    assert store.wait_for_changes([session_id], timeout=0) == []
    postgres.stop(immediate=True)
    try:
        with pytest.raises(StoreUnavailable, match="cannot be reached") as info:
            store.list_sessions()
        assert PASSWORD not in str(info.value)
    finally:
        postgres.start()
    assert [m["content"] for m in store.get_session(session_id)["messages"]] == ["before the crash"]
    assert store.save_message(session_id, "after")["id"] == "msg_2"
    # the listener broke with the server: listening again, it reports what it missed meanwhile
    assert store.wait_for_changes([session_id], timeout=5) == [(session_id, "msg_2")]
    threading.Timer(0.2, lambda: store.save_message(session_id, "heard")).start()
    assert store.wait_for_changes([session_id], timeout=5) == [(session_id, "msg_3")]


@pytest.mark.timeout(60)
def test_messages_saved_while_the_database_is_down_wait_in_a_private_spool_and_land_in_order(postgres, open_as):
    store = open_as("spooler", timeout=1)
    session_id = store.create_session(title="spooled")
    store.save_message(session_id, "question one")
    postgres.stop(immediate=True)
    try:
        kept = store.save_message(session_id, "the answer that arrived meanwhile", role="assistant", model="m")
        also = store.save_message(session_id, "and one more")
    finally:
        postgres.start()
    assert kept["saved_locally"] and kept["id"] is None and kept["model"] == "m" and also["saved_locally"]
    files = [record["path"] for record in store.spool.pending()]
    assert len(files) == 2 and all(os.stat(path).st_mode & 0o777 == 0o600 for path in files)
    assert os.stat(store.spool.directory).st_mode & 0o777 == 0o700
    assert store.save_message(session_id, "after the restart")["id"] == "msg_4"
    messages = store.get_session(session_id)["messages"]
    assert [(m["id"], m["content"]) for m in messages] == [
        ("msg_1", "question one"),
        ("msg_2", "the answer that arrived meanwhile"),
        ("msg_3", "and one more"),
        ("msg_4", "after the restart"),
    ]
    assert messages[1]["model"] == "m" and messages[1]["timestamp"] == kept["timestamp"]
    assert store.spool.pending() == [] and store.flush_spool() == 0, "nothing is written twice"


def test_an_append_whose_connection_dies_before_its_commit_is_made_once_on_a_new_connection(postgres, open_as):
    store = open_as("retry")
    session_id = store.create_session(title="retried")

    def blocked_append(other_than: int | None) -> int:
        """The backend of the store's append waiting for the session row's lock (not ``other_than``)."""
        for _ in range(200):
            rows = postgres.admin_query(
                "SELECT pid FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock' AND pid <> %s",
                (role_of(store), other_than or 0),
            )
            if rows:
                return rows[0][0]
            time.sleep(0.02)
        raise AssertionError("the append never waited for the row lock")

    appended: list[dict] = []
    with psycopg.connect(postgres.admin_dsn) as holder:  # holds the session row, so the append waits mid-transaction
        holder.execute("SELECT 1 FROM oblix.sessions WHERE id = %s FOR UPDATE", (session_id,))
        thread = threading.Thread(target=lambda: appended.append(store.save_message(session_id, "once")))
        thread.start()
        first = blocked_append(None)
        postgres.admin_query("SELECT pg_terminate_backend(%s)", (first,))  # before COMMIT: nothing was written
        blocked_append(first)  # the store tried again, on a new connection
        holder.commit()
    thread.join(10)
    assert [m["id"] for m in appended] == ["msg_1"]
    assert [m["content"] for m in store.get_session(session_id)["messages"]] == ["once"]


def test_migrations_are_recorded_applied_once_and_a_schema_of_another_version_is_refused(postgres, open_as):
    assert pg_schema.upgrade(postgres.admin_dsn) == 0
    assert pg_schema.upgrade(postgres.admin_dsn) == 0
    assert pg_schema.status(postgres.admin_dsn) == (pg_schema.LATEST, pg_schema.LATEST)
    role = role_of(open_as())
    with pytest.raises(NotPermitted, match="superuser"):
        pg_schema.upgrade(postgres.dsn(role))

    postgres.admin_query(f"INSERT INTO oblix.migrations (version) VALUES ({pg_schema.LATEST + 1}) RETURNING version")
    try:
        with pytest.raises(StoreUnavailable, match="newer than this oblix_jupyter"):
            PostgresStore(postgres.dsn(role))
        with pytest.raises(StoreUnavailable, match="upgrade oblix_jupyter"):
            pg_schema.upgrade(postgres.admin_dsn)
    finally:
        postgres.admin_query(f"DELETE FROM oblix.migrations WHERE version > {pg_schema.LATEST} RETURNING version")

    blank = f"blank_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn(database="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(blank)))
    with pytest.raises(StoreUnavailable, match="oblix db upgrade"):
        PostgresStore(postgres.dsn(role, database=blank))
    results: list[int] = []
    upgrades = [threading.Thread(target=lambda: results.append(pg_schema.upgrade(postgres.dsn(database=blank)))) for _ in range(2)]
    for thread in upgrades:
        thread.start()
    for thread in upgrades:
        thread.join(30)
    assert sorted(results) == [0, pg_schema.LATEST]  # the advisory lock let one of them do it all
    store = PostgresStore(postgres.dsn(role, database=blank))
    try:
        assert store.list_sessions() == []
    finally:
        store.close()


def test_the_password_never_shows_and_oblix_store_chooses_the_database(postgres, open_as, monkeypatch):
    role = role_of(open_as())
    url = f"postgresql://{role}:{PASSWORD}@/oblix?host={postgres.socket_dir}"
    monkeypatch.setenv("OBLIX_STORE", url)
    store = open_store()
    try:
        assert isinstance(store, PostgresStore)
        assert PASSWORD not in store.location and role in store.location
        session_id = store.create_session(title="configured")
        assert PASSWORD not in repr(store.load_session(session_id))
    finally:
        store.close()
    for unreachable in (url.replace(postgres.socket_dir, "/nonexistent"), postgres.dsn(role, password=PASSWORD) + " port=1"):
        with pytest.raises(StoreUnavailable) as info:
            PostgresStore(unreachable, timeout=2)
        assert PASSWORD not in str(info.value) and "cannot be reached" in str(info.value)
    assert PASSWORD not in describe_dsn(f"postgresql://u:{PASSWORD}@host:notaport/db")


@pytest.fixture
def read_twice(open_as):
    """A store that has read a session of five messages, and a second connection of the same user (another kernel)."""
    store = open_as("reader")
    other = PostgresStore(store._dsn)
    session_id = store.create_session(title="first life")
    for number in range(5):
        store.save_message(session_id, f"m{number}")
    assert len(store.get_session(session_id)["messages"]) == 5
    yield store, other, session_id
    other.close()


def test_a_session_read_again_has_every_message_including_those_another_connection_added(read_twice):
    store, other, session_id = read_twice
    first = store.get_session(session_id)
    first["messages"][0]["content"] = "changed by the caller"
    other.save_message(session_id, "from another kernel", role="assistant", model="m")
    again = store.get_session(session_id)
    assert [m["content"] for m in again["messages"]] == ["m0", "m1", "m2", "m3", "m4", "from another kernel"]
    assert [m["id"] for m in again["messages"]] == [f"msg_{n}" for n in range(1, 7)] and again["messages"][-1]["model"] == "m"
    assert store.delete_session(session_id) and store.load_session(session_id) is None


def test_a_session_deleted_elsewhere_and_stored_again_under_its_id_is_read_afresh(read_twice):
    store, other, session_id = read_twice
    stamp = "2020-01-01T00:00:00.000Z"
    again = {
        "id": session_id, "title": "second life", "created_at": stamp, "updated_at": stamp,
        "messages": [{"id": f"msg_{n}", "role": "user", "content": f"new {n}", "timestamp": stamp} for n in (1, 2, 3)],
    }
    assert other.delete_session(session_id) and other.add_session(again, new_id=False) == session_id
    assert [m["content"] for m in store.get_session(session_id)["messages"]] == ["new 1", "new 2", "new 3"]


def test_upgrading_a_database_of_the_first_schema_shuts_its_users_out_of_the_tables_and_purges_the_statistics(postgres, monkeypatch):
    """A team's database as the first schema left it: a user's rows, forged fields among them, and the planner's statistics."""
    database, user = f"old_{uuid.uuid4().hex[:8]}", f"veteran_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn(database="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    shipped = pg_schema.migrations()
    monkeypatch.setattr(pg_schema, "migrations", lambda: {1: shipped[1]})
    assert pg_schema.upgrade(postgres.dsn(database=database)) == 1
    monkeypatch.undo()
    session_id, stamp = str(uuid.uuid4()), "2024-01-01T00:00:00Z"
    try:
        with psycopg.connect(postgres.dsn(database=database), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(user)))  # as the first add_user made them
            admin.execute(sql.SQL("GRANT oblix_users TO {}").format(sql.Identifier(user)))
        with psycopg.connect(postgres.dsn(user, database=database), autocommit=True) as raw:  # the first schema let users write rows
            raw.execute("INSERT INTO oblix.sessions (id, title, created_at, updated_at, message_count, extra, schema_version) "
                        "VALUES (%s, 'board minutes', %s, %s, 100, %s, 1)",
                        (session_id, stamp, stamp, json.dumps({"id": str(uuid.uuid4()), "message_count": 0, "tags": ["kept"]})))
            raw.execute("INSERT INTO oblix.messages (session_id, position, id, role, content, timestamp, extra) "
                        "SELECT %s, n, 'msg_' || n, 'user', 'the board approved the merger', %s, '{\"content\": \"forged\"}' "
                        "FROM generate_series(1, 100) n", (session_id, stamp))
        with psycopg.connect(postgres.dsn(database=database), autocommit=True) as admin:
            admin.execute("ANALYZE")

            def content_statistics() -> int:
                return admin.execute(
                    "SELECT count(*) FROM pg_statistic s JOIN pg_attribute a ON a.attrelid = s.starelid AND a.attnum = s.staattnum "
                    "WHERE s.starelid IN ('oblix.sessions'::regclass, 'oblix.messages'::regclass) AND a.attname IN "
                    "('title', 'content', 'content_text', 'title_text', 'extra')"
                ).fetchone()[0]

            assert content_statistics() > 0
            assert pg_schema.upgrade(postgres.dsn(database=database)) == pg_schema.LATEST - 1
            assert content_statistics() == 0
            admin.execute("ANALYZE")
            assert content_statistics() == 0, "and none are gathered again"
            settings = admin.execute("SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                                     "WHERE r.rolname = %s", (user,)).fetchone()
            assert settings == ([f"idle_in_transaction_session_timeout={pg_schema.IDLE_IN_TRANSACTION}"],)
        with psycopg.connect(postgres.dsn(user, database=database), autocommit=True) as raw:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                raw.execute("SELECT count(*) FROM oblix.messages")
        store = PostgresStore(postgres.dsn(user, database=database))
        try:
            session = store.get_session(session_id)
            assert session["id"] == session_id and session["tags"] == ["kept"] and "message_count" not in session
            assert {m["content"] for m in session["messages"]} == {"the board approved the merger"}
            assert store.save_message(session_id, "minuted")["id"] == "msg_101"
        finally:
            store.close()
    finally:
        with psycopg.connect(postgres.dsn(database="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


def test_a_session_row_of_a_newer_version_is_refused_as_the_files_refuse_one_and_hides_no_other(postgres, open_as):
    store = open_as()
    future, present = store.create_session(title="from the future"), store.create_session(title="of today")
    postgres.admin_query("UPDATE oblix.sessions SET schema_version = 999 WHERE id = %s RETURNING id", (future,))
    with pytest.raises(NewerSchema, match=f"Session {future} in .* session schema 999; this one reads up to {SCHEMA_VERSION}: upgrade"):
        store.get_session(future)
    assert store.get_session(present)["title"] == "of today"
    assert {row["id"] for row in store.list_sessions()} == {future, present}  # listing reads no document
