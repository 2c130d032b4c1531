"""The PostgreSQL store attacked by its own users: a colleague with nothing but a database login and raw SQL.

Each test is written from the attacker's side: a second user (a stranger, or one the
owner shared a session with) and a third, on their own connections through psycopg,
running whatever SQL an ``oblix_users`` member may run. What they must not learn or
change is the owner's private session; what they may do to the others is delay them a
few seconds, never hold them.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from oblix_jupyter.errors import AttachmentNotFound, DatabaseBusy, NotPermitted, SessionNotFound
from oblix_jupyter.store import pg_schema
from oblix_jupyter.store.postgres import PostgresStore

SECRET = "confidential merger acquisition of initech by globex"
SECRET_WORDS = ("confidential", "merger", "acquisition", "initech", "globex")
ALPHABET = "abcdefghijklmnopqrstuvwxyz "
TEXT_TYPES = {"text", "character varying", "name"}
TABLES = ("sessions", "messages", "shares", "bindings", "vectors", "uses", "attachments")


@pytest.fixture
def cast(postgres) -> Iterator[dict[str, object]]:
    """The owner (a store) with a private session full of ``SECRET``, a write sharee and a stranger (raw logins)."""
    suffix = uuid.uuid4().hex[:8]
    owner, writer, stranger = (postgres.create_user(f"{name}_{suffix}") for name in ("owner", "writer", "stranger"))
    store = PostgresStore(postgres.dsn(owner))
    stamp = "2025-03-01T09:00:00.000Z"
    messages = [{"role": "user", "content": SECRET, "timestamp": stamp} for _ in range(300)]
    messages += [{"role": "assistant", "content": f"noted, item {n}", "timestamp": stamp} for n in range(40)]
    private = store.add_session({"id": "-", "title": f"{SECRET} (board only)", "created_at": stamp, "updated_at": stamp,
                                 "messages": messages, "context": {"deal": SECRET}, "metadata": {"deal": SECRET}})
    for number in range(30):
        store.create_session(title=f"{SECRET} {number}", metadata={"deal": SECRET})
    shared = store.create_session(title="team notes")
    store.save_message(shared, "the offsite is in march")
    store.share(shared, writer, write=True)
    store.bind("/home/owner/deal.ipynb", private)
    store.write_vectors("m", private, {SECRET: b"vector"})
    attachment = store.save_attachment(private, SECRET.encode())  # a figure of the deal, say
    cast = {"store": store, "owner": owner, "writer": writer, "stranger": stranger, "private": private, "shared": shared,
            "attachment": attachment}
    yield cast
    store.close()


def login(postgres, role: str) -> psycopg.Connection:
    return psycopg.connect(postgres.dsn(role), autocommit=True)


def plan_rows(conn: psycopg.Connection, source: sql.Composable, column: str, low: str, high: str) -> float:
    """The planner's estimate of the rows of ``source`` whose ``column`` lies in [low, high)."""
    statement = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} AS r WHERE r.{} >= %s AND r.{} < %s").format(
        source, sql.Identifier(column), sql.Identifier(column)
    )
    return conn.execute(statement, (low, high)).fetchone()[0][0]["Plan"]["Plan Rows"]


def rebuild_prefix(conn: psycopg.Connection, source: sql.Composable, column: str, longest: int = 16) -> str:
    """The most common prefix of ``column`` as the planner's row estimates tell it, one character at a time.

    For each next character, the range of values starting with the prefix plus that
    character is estimated; the character whose range holds clearly the most rows is
    taken. Without statistics every range is estimated alike, and nothing is learned.
    """
    prefix = ""
    while len(prefix) < longest:
        estimates = {c: plan_rows(conn, source, column, prefix + c, prefix + chr(ord(c) + 1)) for c in ALPHABET}
        best = max(estimates, key=estimates.__getitem__)
        typical = sorted(estimates.values())[len(estimates) // 2]
        if estimates[best] <= typical * 1.5:
            break
        prefix += best
    return prefix


def nameable_columns(conn: psycopg.Connection) -> list[tuple[sql.Composable, str]]:
    """Every text column a user can name in the oblix schema: of its tables and of its set-returning functions' results."""
    found: list[tuple[sql.Composable, str]] = []
    for table, column in conn.execute(
        "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relnamespace = 'oblix'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p') AND a.attnum > 0 "
        "AND NOT a.attisdropped AND format_type(a.atttypid, NULL) = ANY(%s)",
        (list(TEXT_TYPES),),
    ):
        found.append((sql.SQL("oblix.{}").format(sql.Identifier(table)), column))
    # Set-returning functions the user may call: their OUT columns, the columns of the row type
    # they return, or (returning a scalar) the value itself, named after the call's alias ``r``.
    functions = conn.execute(
        "SELECT p.proname, array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) t), "
        "coalesce(p.proargnames, '{}'), coalesce(p.proargmodes::text[], '{}'), "
        "array(SELECT format_type(t, NULL) FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) t), "
        "array(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 "
        "      AND format_type(a.atttypid, NULL) = ANY(%s)), format_type(p.prorettype, NULL) "
        "FROM pg_proc p JOIN pg_type t ON t.oid = p.prorettype WHERE p.pronamespace = 'oblix'::regnamespace AND p.proretset "
        "AND has_function_privilege(p.oid, 'EXECUTE')",
        (list(TEXT_TYPES),),
    ).fetchall()
    for name, inputs, names, modes, all_types, row_columns, returned in functions:
        call = sql.SQL("oblix.{}({})").format(
            sql.Identifier(name), sql.SQL(", ").join(sql.SQL("NULL::{}").format(sql.SQL(kind)) for kind in inputs)
        )
        found += [(call, column) for column, mode, kind in zip(names, modes, all_types) if mode in ("o", "t", "b") and kind in TEXT_TYPES]
        found += [(call, column) for column in row_columns]
        found += [(call, "r")] if returned in TEXT_TYPES else []
    return found


def common_prefix(found: str, secret: str = SECRET) -> int:
    length = 0
    while length < min(len(found), len(secret)) and found[length] == secret[length]:
        length += 1
    return length


def test_planner_estimates_rebuild_nothing_of_another_users_private_text(postgres, cast):
    postgres.analyze()  # as autovacuum would, soon after the owner wrote
    with login(postgres, cast["stranger"]) as raw:
        recovered = {}
        for source, column in nameable_columns(raw):
            try:
                recovered[f"{source.as_string(raw)}.{column}"] = rebuild_prefix(raw, source, column)
            except psycopg.errors.InsufficientPrivilege:
                recovered[f"{source.as_string(raw)}.{column}"] = ""  # the column cannot even be named in a query
        print("rebuilt from EXPLAIN:", json.dumps(recovered))
        assert recovered, "the attack found no column to try"
        assert {place: found for place, found in recovered.items() if common_prefix(found) >= 3} == {}

        def estimate(word: str) -> float:
            statement = "EXPLAIN (FORMAT JSON) SELECT 1 FROM oblix.messages WHERE content_text @@ to_tsquery('english', %s)"
            return raw.execute(statement, (word,)).fetchone()[0][0]["Plan"]["Plan Rows"]

        try:
            guesses = {word: estimate(word) for word in ("acquisition", "xylophone")}
        except psycopg.errors.InsufficientPrivilege:
            guesses = {}
        print("full-text estimates:", guesses)
        assert len(set(guesses.values())) <= 1, "a guessed word must cost what an absent word costs"


def test_statistics_views_show_nothing_of_another_users_private_text(postgres, cast):
    postgres.analyze()
    store = cast["store"]
    store.list_sessions()  # the owner's connection has run queries, for pg_stat_activity
    with login(postgres, cast["stranger"]) as raw:
        visible = raw.execute("SELECT DISTINCT tablename FROM pg_stats WHERE schemaname = 'oblix'").fetchall()
        assert set(visible) <= {("migrations",)}, "only the schema's version history, which every user may read"
        assert raw.execute("SELECT count(*) FROM pg_stats_ext WHERE schemaname = 'oblix'").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw.execute("SELECT * FROM pg_statistic")
        views = [name for (name,) in raw.execute(
            "SELECT viewname FROM pg_views WHERE schemaname = 'pg_catalog' AND (viewname LIKE 'pg\\_stat%%' OR viewname LIKE 'pg\\_statio%%')"
        )]
        seen = []
        for view in views:
            try:
                seen.append(json.dumps(raw.execute(sql.SQL("SELECT * FROM pg_catalog.{}").format(sql.Identifier(view))).fetchall(), default=str))
            except psycopg.errors.InsufficientPrivilege:
                pass
        everything = " ".join(seen).lower()
        assert len(views) > 20 and not [word for word in SECRET_WORDS if word in everything]
    # Not even the administrator's catalogue keeps a sample of the users' text: the migration purged it.
    kept = postgres.admin_query(
        "SELECT a.attname FROM pg_statistic s JOIN pg_attribute a ON a.attrelid = s.starelid AND a.attnum = s.staattnum "
        "WHERE s.starelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'oblix'::regnamespace) "
        "AND a.attname IN ('title', 'content', 'context', 'metadata', 'extra', 'model', 'notebook', 'key', 'payload', "
        "'title_text', 'content_text', 'grantee', 'data')"
    )
    assert kept == []


def owners_view(store: PostgresStore, session_id: str) -> dict[str, object]:
    """What the owner sees of a session: the document, and its row in the listing."""
    return {"document": store.get_session(session_id),
            "listed": next(row for row in store.list_sessions(limit=None) if row["id"] == session_id)}


def every_raw_write(table: str, columns: list[str], session_id: str) -> list[tuple[str, tuple[object, ...]]]:
    """SELECT, INSERT, UPDATE of each column, DELETE, TRUNCATE and every LOCK mode on ``table``, aimed at ``session_id``."""
    where = "WHERE session_id = %s" if table != "sessions" else "WHERE id = %s"
    if table in ("vectors",):
        where = "WHERE %s::text IS NOT NULL"
    target = sql.SQL("oblix.{}").format(sql.Identifier(table)).as_string(None)
    attempts = [(f"SELECT * FROM {target}", ()), (f"INSERT INTO {target} DEFAULT VALUES", ()),
                (f"DELETE FROM {target} {where}", (session_id,)), (f"TRUNCATE {target}", ())]
    for column in columns:
        quoted = sql.Identifier(column).as_string(None)
        attempts.append((f"UPDATE {target} SET {quoted} = {quoted} {where}", (session_id,)))
    for mode in ("ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
                 "EXCLUSIVE", "ACCESS EXCLUSIVE"):
        attempts.append((f"LOCK TABLE {target} IN {mode} MODE NOWAIT", ()))
    return attempts


def test_raw_sql_on_every_table_is_refused_to_a_write_sharee_and_a_stranger(postgres, cast):
    store, shared, private = cast["store"], cast["shared"], cast["private"]
    before = {session_id: owners_view(store, session_id) for session_id in (shared, private)}
    columns = {table: [name for (name,) in postgres.admin_query(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "AND attgenerated = ''", (f"oblix.{table}",))] for table in TABLES}
    allowed: list[str] = []
    for role in (cast["writer"], cast["stranger"]):
        with login(postgres, role) as raw:
            for table in TABLES:
                for session_id in (shared, private):
                    for statement, params in every_raw_write(table, columns[table], session_id):
                        try:
                            with raw.transaction():
                                raw.execute(statement, params)
                        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.NotNullViolation,
                                psycopg.errors.CheckViolation) as error:
                            if not isinstance(error, psycopg.errors.InsufficientPrivilege):
                                allowed.append(f"{role}: {statement} (stopped only by {type(error).__name__})")
                        else:
                            allowed.append(f"{role}: {statement}")
    print("raw statements a user may run:", json.dumps(sorted(set(allowed)), indent=1))
    assert allowed == []
    assert {session_id: owners_view(store, session_id) for session_id in (shared, private)} == before


def test_a_write_sharee_may_append_and_nothing_else_whatever_they_call(postgres, cast):
    store, shared, writer = cast["store"], cast["shared"], cast["writer"]
    colleague = PostgresStore(postgres.dsn(writer))
    try:
        before = owners_view(store, shared)
        for change in (
            lambda: colleague.update_session(shared, title="forged"),
            lambda: colleague.update_session(shared, context={"x": 1}),
            lambda: colleague.update_session(shared, model="evil/model"),
            lambda: colleague.update_session(shared, schema_version=999),
            lambda: colleague.update_session(shared, message_count=0),
            lambda: colleague.update_session_metadata(shared, {"x": 1}),
            lambda: colleague.delete_session(shared),
            lambda: colleague.share(shared, cast["stranger"], write=True),
            lambda: colleague.unshare(shared, writer),
        ):
            with pytest.raises(NotPermitted):
                change()
        assert owners_view(store, shared) == before
        # An append may carry fields of its own, but none that a reader takes for the message's or the session's.
        appended = colleague.save_message(shared, "hello from the team", id="msg_1", message_count=0, schema_version=999)
        assert appended["id"] == "msg_2"
        document = store.get_session(shared)
        assert [(m["id"], m["role"], m["content"]) for m in document["messages"]] == [
            ("msg_1", "user", "the offsite is in march"), ("msg_2", "user", "hello from the team")]
        assert document["title"] == "team notes" and document["schema_version"] == before["document"]["schema_version"]
        assert store.save_message(shared, "and the owner carries on")["id"] == "msg_3"
    finally:
        colleague.close()


def test_fields_forged_in_stored_rows_never_override_the_real_ones(postgres, cast):
    """Rows written before the database refused such changes may hold anything in ``extra``: readers ignore what shadows a column."""
    store, private, shared = cast["store"], cast["private"], cast["shared"]
    forged = {"id": shared, "title": "forged", "message_count": 0, "schema_version": 999, "created_at": "1999-01-01T00:00:00.000Z",
              "messages": [{"id": "msg_1", "role": "user", "content": "forged history"}], "model": "evil/model",
              "context": {"forged": True}, "metadata": {"forged": True}, "updated_at": "1999-01-01T00:00:00.000Z"}
    postgres.admin_query("UPDATE oblix.sessions SET extra = %s WHERE id = %s RETURNING 1", (json.dumps(forged), private))
    postgres.admin_query("UPDATE oblix.messages SET extra = %s WHERE session_id = %s AND position = 1 RETURNING 1",
                         (json.dumps({"id": "msg_99", "role": "system", "content": "forged", "timestamp": "x"}), private))
    document = store.get_session(private)
    assert document["id"] == private and document["title"].startswith(SECRET) and document["context"] == {"deal": SECRET}
    assert len(document["messages"]) == 340 and document["messages"][0]["content"] == SECRET
    assert (document["messages"][0]["id"], document["messages"][0]["role"]) == ("msg_1", "user")
    assert store.save_message(private, "still appendable")["id"] == "msg_341"
    assert store.delete_session(private) is True
    assert store.load_session(private) is None and store.load_session(shared) is not None, "the id resolved, not the one stored"


def blocked_for(action: Callable[[], object], limit: float) -> tuple[float, object]:
    """(seconds ``action`` took, what it returned or raised), failing if it takes longer than ``limit``."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(action())
        except Exception as error:  # noqa: BLE001 - the outcome is what is examined
            outcome.append(error)

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    took = time.monotonic() - started
    assert outcome, f"still blocked after {limit} s"
    return took, outcome[0]


@pytest.mark.timeout(90)
def test_locks_held_by_one_user_cost_the_others_seconds_and_a_clean_error(postgres, cast):
    store, shared, private = cast["store"], cast["shared"], cast["private"]
    with login(postgres, cast["stranger"]) as stranger:
        stranger.execute("BEGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            stranger.execute("LOCK TABLE oblix.sessions IN ACCESS EXCLUSIVE MODE")
        stranger.rollback()
        took, listed = blocked_for(lambda: store.list_sessions(), 20)
        assert not isinstance(listed, Exception) and took < 6, (took, listed)
    with login(postgres, cast["writer"]) as writer:
        assert writer.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] not in ("0", "0ms")
        writer.execute("BEGIN")  # holds the shared session's row, as an append in an open transaction does
        writer.execute("SELECT oblix.append_message(%s, 'user', 'hold', now(), '{}')", (shared,))
        took, appended = blocked_for(lambda: store.save_message(shared, "the owner's own words"), 20)
        assert took < 6 and isinstance(appended, dict) and appended["saved_locally"], (took, appended)
        took, deleted = blocked_for(lambda: store.delete_session(shared), 20)
        assert took < 6 and isinstance(deleted, DatabaseBusy) and "busy" in str(deleted) and "\n" not in str(deleted)
        took, listed = blocked_for(lambda: store.list_sessions(), 20)
        assert took < 1 and not isinstance(listed, Exception), "reading never waits for a writer"
        writer.execute("ROLLBACK")
    assert store.save_message(shared, "once it is free")["id"] == "msg_3"
    assert [m["content"] for m in store.get_session(shared)["messages"]][1:] == ["the owner's own words", "once it is free"]
    assert store.load_session(private) is not None

    with login(postgres, cast["stranger"]) as stranger:
        stranger.execute("SELECT pg_advisory_lock(%s)", (pg_schema._LOCK_KEY,))
        took, upgraded = blocked_for(lambda: pg_schema.upgrade(postgres.admin_dsn, wait=2), 30)
        assert took < 6 and isinstance(upgraded, DatabaseBusy) and "busy" in str(upgraded), (took, upgraded)


def test_listen_after_unshare_hears_nothing_of_that_session(postgres, cast):
    store, shared, writer = cast["store"], cast["shared"], cast["writer"]
    colleague = PostgresStore(postgres.dsn(writer))
    try:
        assert colleague.wait_for_changes([shared], timeout=0) == []
        store.save_message(shared, "while shared")
        assert colleague.wait_for_changes([shared], timeout=5) == [(shared, "msg_2")], "a sharee hears of appends"
        store.unshare(shared, writer)
        with login(postgres, writer) as former, login(postgres, cast["stranger"]) as stranger:
            channels = [f"oblix_{shared}", f"oblix_{cast['private']}"]
            for raw in (former, stranger):
                for channel in channels:
                    raw.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                mine = raw.execute("SELECT oblix.my_channel()").fetchone()[0]
                raw.execute(sql.SQL("LISTEN {}").format(sql.Identifier(mine)))
            store.save_message(shared, "after the unshare")
            store.save_message(cast["private"], "and in private")
            heard = [note.payload for raw in (former, stranger) for note in raw.notifies(timeout=1, stop_after=5)]
        print("heard after unshare:", heard)
        assert heard == []
        assert colleague.wait_for_changes([shared], timeout=1) == []
    finally:
        colleague.close()


def test_set_role_to_the_group_gives_nothing_more(postgres, cast):
    with login(postgres, cast["stranger"]) as raw:
        try:
            raw.execute("SET ROLE oblix_users")
        except psycopg.errors.InsufficientPrivilege:
            return  # PostgreSQL 16 and later: add_user grants the group without SET
        leaked: list[str] = []
        for table in TABLES:
            try:
                rows = raw.execute(sql.SQL("SELECT * FROM oblix.{}").format(sql.Identifier(table))).fetchall()
                leaked += [f"{table}: {row}" for row in rows]
            except psycopg.errors.InsufficientPrivilege:
                pass
        stamp = "2025-01-01T00:00:00Z"
        try:
            raw.execute("INSERT INTO oblix.sessions (id, title, created_at, updated_at, schema_version) VALUES (%s, 'group', %s, %s, 1)",
                        (str(uuid.uuid4()), stamp, stamp))
            leaked.append("a session owned by the group, which every member reads")
        except psycopg.errors.InsufficientPrivilege:
            pass
        leaked += [f"listed {row}" for row in raw.execute("SELECT id FROM oblix.list_sessions(1000)").fetchall()]
        assert leaked == []


def test_attachments_are_as_private_as_messages_and_go_with_their_session(postgres, cast):
    store, private, shared, attachment = cast["store"], cast["private"], cast["shared"], cast["attachment"]
    for role in (cast["writer"], cast["stranger"]):
        with login(postgres, role) as raw:  # the function users may call, with the id they would need to know
            assert raw.execute("SELECT oblix.read_attachment(%s, %s)", (private, attachment)).fetchone() == (None,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                raw.execute("SELECT count(*) FROM oblix.attachments")
        other = PostgresStore(postgres.dsn(role))
        try:
            with pytest.raises(AttachmentNotFound):
                other.read_attachment(private, attachment)
            with pytest.raises(SessionNotFound):
                other.save_attachment(private, b"planted")
        finally:
            other.close()
    # A write sharee may attach to the shared session, and its owner reads it.
    writer = PostgresStore(postgres.dsn(cast["writer"]))
    try:
        added = writer.save_attachment(shared, b"\x89PNG team chart")
    finally:
        writer.close()
    assert store.read_attachment(shared, added) == b"\x89PNG team chart"
    with login(postgres, cast["writer"]) as raw:  # an id that is not its bytes' hash is refused by the database itself
        with pytest.raises(psycopg.DatabaseError) as refused:
            raw.execute("SELECT oblix.write_attachment(%s, %s, %s)", (shared, "0" * 64, b"x"))
        assert refused.value.sqlstate == "OB400"

    assert store.delete_session(private)
    assert postgres.admin_query("SELECT count(*) FROM oblix.attachments WHERE session_id = %s", (private,)) == [(0,)]
