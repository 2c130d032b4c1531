"""Sessions in PostgreSQL: the ``SessionStore`` a team shares, chosen with ``OBLIX_STORE=postgresql://...``.

The contract of ``base.SessionStore``, as the file store (``sessions.SessionManager``) has it, over the schema of
``sql/`` (``pg_schema``). PostgreSQL, not this code, keeps sessions private: a database
user holds no privilege on the tables and calls the functions of
``sql/002_private_functions.sql``, which decide by the login (``session_user``) what it
may read and write, so every call here is written as if the user's own sessions and
those shared with them were the only ones. Their refusals arrive as errors of codes of
our own (OB403, OB404, OB400), turned into ours by ``_refused``.

A session is a row and each message a row at the next dense position: an append locks
the session row and inserts at that position, so appends from many kernels at once
never gap, repeat or reorder. Each message carries an idempotency key made here when it
is created (sql/003), and the database stores a key once: an append whose COMMIT was cut
off, so that nobody knows whether it arrived, goes to the spool with its key and is
appended again later, harmlessly. Each append also NOTIFYs the channel of each user who
may read the session (``oblix.my_channel()``: named from a secret, so nobody else can
listen) with the ids, never the text, for ``wait_for_changes``.

A kernel holds at most ``max_connections`` (two) connections, the listening one of
``wait_for_changes`` among them, and none once it has been idle for ``idle`` seconds (a
minute), so a hundred kernels fit in the server's default ``max_connections``. No
statement waits for a lock longer than ``LOCK_WAIT``: a colleague's open transaction
costs a command a few seconds and ``DatabaseBusy`` (an append then goes to the spool),
never a hang. Once the database has failed, the store stops waiting for it: calls fail
at once (an append goes to the spool) while a background thread tries to reconnect,
more and more slowly up to every ``RECONNECT_MOST`` seconds, and writes every message
the spool holds as soon as the database answers.

The DSN's password never leaves this module: ``location`` and every error show the
connection string without it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import (
    BadArguments,
    DatabaseBusy,
    ImportFormatError,
    NotPermitted,
    OblixError,
    SessionNotFound,
    StoreUnavailable,
)
from .base import ChangeFeed, SessionStore, Sharing, Spooling
from .migrations import SCHEMA_VERSION, readable
from .pg_schema import check_version, describe_dsn, scrub
from .shape import (
    change_time,
    check_update,
    format_time,
    listing_row,
    message_parts,
    now_iso,
    parse_time,
    redacted_context,
    resolve_session_id,
    validate_session_id,
)
from .spool import Spool

_COLUMNS = {"title", "context", "model", "metadata", "schema_version"}  # session fields with a column; others go to ``extra``
_KEPT_APART = _COLUMNS | {"id", "messages", "created_at", "updated_at"}
# What a session's ``extra`` may never hold (sql/002 drops them too): a field a reader would
# take for a column's, or for the store's own. Rows written before may, so readers skip them.
_NOT_EXTRA = _KEPT_APART | {"owner", "message_count", "shared_by"}
_MESSAGE_FIELDS = ("id", "role", "content", "timestamp")  # a message's columns, never among its extra fields
LOCK_WAIT = 3  # seconds a statement waits for a lock another connection holds, before DatabaseBusy
STATEMENT_LIMIT = 15  # seconds any statement of the store may run
RECONNECT_FIRST = 0.25  # seconds after a failure before the database is tried again; doubled each time it still fails
RECONNECT_MOST = 2.0  # the longest pause between two tries: a database back is found within this
QUICK_REFUSAL = 0.05  # seconds within which a refused try is cheap enough for a caller to make it itself
PROBE_WAIT = 2  # seconds a try to reach a database that does not answer may take (libpq's least connect_timeout)
_HIGHLIGHT = "StartSel=«, StopSel=», MaxWords=18, MinWords=6, MaxFragments=1, FragmentDelimiter=\" … \""

Result = TypeVar("Result")


def _summary(row: tuple[Any, ...]) -> dict[str, Any]:
    """A listing row from an ``oblix.list_sessions`` row: ``shape.summarize``'s fields, and who shared it (None: mine)."""
    session_id, title, created, updated, count, _context, model, metadata, _extra, _version, shared_by = row
    return {**listing_row(session_id, title, format_time(created), format_time(updated), count, model, metadata), "shared_by": shared_by}


def _message(row: tuple[str, str, str, str, str]) -> dict[str, Any]:
    """A message from an ``oblix.read_messages`` row; most have no extra fields, and decoding ``{}`` a thousand times shows.

    Its columns win over any extra field of the same name (in rows written before the database dropped those).
    """
    message_id, role, content, stamp, extra = row
    message = {"id": message_id, "role": role, "content": content, "timestamp": stamp}
    if extra != "{}":
        message.update((name, value) for name, value in json.loads(extra).items() if name not in message)
    return message


def _configure(conn: psycopg.Connection) -> None:
    # The planner's cost of a search over many rows would have every query compiled by
    # JIT, which costs more than the query; the user's own settings are not touched. A
    # lock held elsewhere (a colleague's open transaction) fails a statement after
    # LOCK_WAIT rather than holding it, and so does a statement that runs on and on.
    conn.execute(f"SET jit = off; SET lock_timeout = '{LOCK_WAIT}s'; SET statement_timeout = '{STATEMENT_LIMIT}s'")


class _ReadMessages:
    """The messages of the sessions read here last, so that a session read again fetches only the newer ones.

    A turn reads its session again each time, and fetching and decoding all of a long
    session grows with it (measured: see benchmarks/bench_store_postgres.py and README's
    "Speed"). Sound because messages are only ever appended (no function
    changes or removes one; they go only with their session): those read before are
    still the first ones. A session deleted elsewhere and stored again under the same
    id (an import that keeps ids) is another one, told apart by its creation time.
    At most ``size`` sessions are kept, the least recently read leaving first.
    """

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[Any, list[dict[str, Any]]]] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, session_id: str, created: Any, count: int) -> list[dict[str, Any]]:
        """The first (at most ``count``) messages kept of this session as created at ``created``; [] if none."""
        with self._lock:
            entry = self._entries.get(session_id)
        return entry[1][:count] if entry is not None and entry[0] == created else []

    def keep(self, session_id: str, created: Any, messages: list[dict[str, Any]]) -> None:
        with self._lock:
            self._entries[session_id] = (created, messages)
            self._entries.move_to_end(session_id)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)


class PostgresStore(SessionStore, Sharing, ChangeFeed, Spooling):
    """The sessions this database user may see, with ``SessionManager``'s methods, plus sharing, search and live changes."""

    def __init__(self, dsn: str = "", max_connections: int = 2, timeout: float = 5.0, idle: float = 60.0) -> None:
        """Connect (``dsn`` as libpq reads it; empty: the ``PG*`` variables) and check the schema's version.

        A wrong DSN, an unreachable server or a schema this code was not written for
        raises ``StoreUnavailable`` here, at once, rather than at the first turn. Later,
        a call waits at most ``timeout`` seconds for a connection: someone is waiting at
        a notebook, and an answer that cannot be stored by then goes to the spool. At
        most ``max_connections`` are open at once (the listening one included, when there
        are at least two), and each is closed once unused for ``idle`` seconds.
        """
        super().__init__()
        self._dsn = dsn
        self._where = describe_dsn(dsn)
        self._theirs: set[str] = set()  # sessions read here that another user shared with this one
        self._read = _ReadMessages()
        try:
            with psycopg.connect(dsn, connect_timeout=max(2, round(timeout))) as conn:  # libpq: 0 waits forever
                _configure(conn)
                check_version(conn, self._where)
                # messages kept here while the database cannot take them: this database's, this user's
                self.spool = Spool(self._where, conn.info.user)
        except psycopg.Error as error:
            raise self._unavailable(error) from None
        self._max_connections = max_connections
        self.timeout = timeout
        self.idle = idle
        self._listener: psycopg.Connection | None = None  # LISTENs to this user's channel
        self._listening = threading.Lock()
        self._followed: dict[str, int] = {}  # sessions the listener reports on: the last position it heard of
        self._followed_at = 0.0  # when wait_for_changes last returned (monotonic): the listener closes ``idle`` after
        self._pool = self._open_pool()
        self._state = threading.Lock()  # guards the fields below, which the keeper thread shares with callers
        self._away_since: float | None = None  # when the database failed (monotonic); None while it answers
        self._away_because = ""
        self._refused_at_once = False  # whether the database's last refusal came at once (trying it again costs nothing)
        self._flush_wanted = bool(self.spool.pending())  # a spool left by this user's earlier (or killed) processes
        self._keeper: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False
        if self._flush_wanted:
            self._keep()

    def _open_pool(self) -> ConnectionPool:
        # psycopg_pool closes at most one connection per ``max_idle`` that went unused all that
        # while, checked on a schedule of its own: a third of ``idle`` closes both in time.
        return ConnectionPool(
            self._dsn,
            min_size=0,
            max_size=self._pool_size(),
            max_idle=self.idle / 3,
            timeout=self.timeout,
            kwargs={"autocommit": True},
            configure=_configure,
            name="oblix",
            open=True,
        )

    def _pool_size(self) -> int:
        """What the pool may hold: ``max_connections``, less the listening connection while there is one (never below one)."""
        return max(1, self._max_connections - (self._listener is not None))

    @property
    def location(self) -> str:
        """Where the sessions are, for people (``oblix doctor``): the connection string without its password."""
        return self._where

    def close(self) -> None:
        """Close every connection and stop the background thread; the store cannot be used afterwards."""
        with self._state:
            self._closed = True
            keeper = self._keeper
        self._wake.set()
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(PROBE_WAIT + self.timeout)
        self._pool.close()
        with self._listening:
            self._drop_listener()

    # -- running statements -----------------------------------------------------------

    def _unavailable(self, error: BaseException, detail: str = "", uncertain: bool = False) -> StoreUnavailable:
        return StoreUnavailable(
            f"The session database ({self._where}) cannot be reached{detail}: {scrub(str(error), self._dsn)}",
            uncertain=uncertain,
        )

    def _run(self, work: Callable[[psycopg.Connection], Result], write: bool = False, retry: bool = True) -> Result:
        """``work`` on a pooled connection; with ``write``, in one transaction.

        While the database is away (it failed, and the keeper thread has not reached it
        since), fails at once. A connection that breaks (the server restarted, a network
        hiccup) is replaced, with every idle one that broke too, and ``work`` run once more,
        if the server answers and it is safe: always for reads, and for a write only if it
        broke before its COMMIT was sent, because an uncommitted transaction dies with its
        connection. Once COMMIT is on its way, nobody can tell whether it arrived; the
        caller is told (``uncertain``), and an append goes to the spool with its key. A
        statement that waited too long for a lock is not run again: its transaction was
        rolled back, and the user hears at once that the database is busy.
        """
        self._check_not_away()
        committing = False
        try:
            with self._pool.connection() as conn:
                if not write:
                    return work(conn)
                with conn.transaction():
                    result = work(conn)
                    committing = True  # leaving this block sends COMMIT
                return result
        except PoolTimeout as error:  # an OperationalError too, but the pool has already waited as long as we would
            self._lost(error)
            raise self._unavailable(error) from None
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):  # OperationalErrors, but nothing broke
            raise DatabaseBusy(
                f"The session database ({self._where}) is busy: another connection held what this needed for more than "
                f"{LOCK_WAIT} s, so nothing was done. Try again in a moment."
            ) from None
        except psycopg.OperationalError as error:
            answers = self._reachable()
            if not answers:
                self._lost(error)
            if committing:
                raise self._unavailable(error, " while a change was being saved; it may or may not have been", uncertain=True) from None
            if not retry or not answers:
                raise self._unavailable(error) from None
            # Rather than test every connection as it leaves the pool (a round trip per
            # statement), test the idle ones once one has failed: a restart broke them all.
            self._pool.check()
        except psycopg.errors.InsufficientPrivilege as error:
            raise NotPermitted(f"The session database refused this: {error.diag.message_primary}") from None
        except psycopg.DatabaseError as error:
            refusal = self._refused(error)
            if refusal is None:
                raise
            raise refusal from None
        return self._run(work, write, retry=False)

    # -- while the database is away --------------------------------------------------------

    def _reachable(self) -> bool:
        """Whether the server takes a new connection now: one try, on a connection of its own, closed at once."""
        started = time.monotonic()
        try:
            psycopg.connect(self._dsn, connect_timeout=PROBE_WAIT).close()
        except psycopg.Error:
            self._refused_at_once = time.monotonic() - started < QUICK_REFUSAL
            return False
        return True

    def _check_not_away(self) -> None:
        """Fail at once while the database is away; but try it first when that costs nothing (it refused at once last time)."""
        with self._state:
            since, because = self._away_since, self._away_because
        if since is None:
            return
        if self._refused_at_once and self._back():
            return
        raise StoreUnavailable(
            f"The session database ({self._where}) cannot be reached: it has not answered for {time.monotonic() - since:.0f} s "
            f"({because}); it is tried again in the background."
        )

    def _back(self) -> bool:
        """Whether the database answers again; if so, a new pool, and the keeper writes the spool."""
        if not self._reachable():
            return False
        with self._state:
            if self._away_since is not None:
                self._pool = self._open_pool()
                self._away_since, self._flush_wanted = None, True
        self._keep()
        return True

    def _lost(self, error: BaseException) -> None:
        """Stop waiting for the database: calls fail at once until the keeper thread reaches it again."""
        with self._state:
            if self._away_since is None:
                self._away_since = time.monotonic()
                self._away_because = scrub(str(error), self._dsn).splitlines()[0] if str(error) else type(error).__name__
                # The pool would go on connecting, ever more slowly; a new one connects as soon as the server is back.
                self._pool.close(timeout=0)
        self._keep()

    def _keep(self) -> None:
        """Make sure the keeper thread runs (it ends itself once there is nothing to keep)."""
        with self._state:
            if self._closed:
                return
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keeping, name="oblix-store-keeper", daemon=True)
                self._keeper.start()
        self._wake.set()

    def _keeping(self) -> None:
        """The keeper thread: reconnect after a failure, write the spool, close the listener once idle; end when none is due."""
        try:
            self._keep_until_done()
        finally:  # also after an error nobody foresaw: the next failure starts another
            with self._state:
                if self._keeper is threading.current_thread():
                    self._keeper = None

    def _keep_until_done(self) -> None:
        pause = RECONNECT_FIRST
        while True:
            with self._state:
                if self._closed:
                    return
                away, flush = self._away_since is not None, self._flush_wanted
            if away:
                if not self._back():
                    self._wake.wait(pause)
                    self._wake.clear()
                    pause = min(2 * pause, RECONNECT_MOST)
                    continue
                flush, pause = True, RECONNECT_FIRST
            if flush:
                with self._state:
                    self._flush_wanted = False
                try:
                    self.flush_spool()
                except OblixError:
                    with self._state:
                        self._flush_wanted = True
                    self._wake.wait(pause)
                    self._wake.clear()
                    continue
            until_idle = self._close_idle_listener()
            with self._state:
                if self._closed or self._away_since is not None or self._flush_wanted:
                    continue
                if until_idle is None:
                    self._keeper = None  # under the lock: a _keep() from now on starts another
                    return
            self._wake.wait(until_idle)
            self._wake.clear()

    def _close_idle_listener(self) -> float | None:
        """Close the listening connection if nothing has followed a session for ``idle`` s; else seconds until it may be (None: none open)."""
        if not self._listening.acquire(blocking=False):
            return self.idle  # a wait_for_changes is under way: not idle
        try:
            if self._listener is None:
                return None
            left = self._followed_at + self.idle - time.monotonic()
            if left > 0:
                return left
            self._drop_listener()
            self._followed.clear()  # a later call listens afresh: what came in between is for a read to show
            return None
        finally:
            self._listening.release()

    def _refused(self, error: psycopg.DatabaseError) -> OblixError | None:
        """A refusal of the store's functions (sql/002) as our error; None for any other error."""
        message = error.diag.message_primary or ""
        if error.sqlstate == "OB404":  # the message is the session's id
            return SessionNotFound(message, self._where)
        if error.sqlstate == "OB403":
            return NotPermitted(message)
        if error.sqlstate == "OB400":
            return BadArguments(message)
        return None

    # -- the Oblix SDK's SessionManager API ---------------------------------------------

    def _store_new(self, session: dict[str, Any], attachments: Mapping[str, bytes] = MappingProxyType({})) -> str:
        """The session, its messages and their bytes in one transaction."""
        fields = {name: value for name, value in session.items() if name not in _NOT_EXTRA}
        messages = session["messages"]
        statement = (
            "SELECT oblix.create_session(%s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::jsonb[])"
        )
        params = (
            session["id"], session.get("title"), session["created_at"], session["updated_at"], Jsonb(session.get("context")),
            session.get("model"), Jsonb(session.get("metadata", {})), Jsonb(fields), session.get("schema_version", SCHEMA_VERSION),
            *([m[field] for m in messages] for field in _MESSAGE_FIELDS),
            [Jsonb({k: v for k, v in m.items() if k not in _MESSAGE_FIELDS}) for m in messages],
        )

        def store(conn: psycopg.Connection) -> None:
            conn.execute(statement, params)
            for attachment_id, data in attachments.items():
                conn.execute("SELECT oblix.write_attachment(%s, %s, %s)", (session["id"], attachment_id, data))

        try:
            self._run(store, write=True)
        except psycopg.errors.UniqueViolation as error:
            if error.diag.constraint_name == "sessions_pkey":
                raise ImportFormatError(f"A session with id {session['id']} already exists.") from None
            raise ImportFormatError(f"Session {session['id']} has two messages with the same id.") from None
        return session["id"]

    def save_message(self, session_id: str, message: Any, role: str = "user", **fields: Any) -> dict[str, Any]:
        """Append a message and return it as stored, numbered ``msg_<n>`` like the file store's.

        ``n`` is the message's position unless an imported message already has that id;
        then the next free number, as the file store does. When the database cannot take
        it (unreachable, busy, or it broke while the message was being committed), the
        message is kept in this machine's spool instead, with its idempotency key, and
        returned with ``"saved_locally": True`` and no id; the session's kept messages are
        written, in order, before its next one is and before it is read
        (``flush_spool``), and all of them as soon as the database answers again.
        """
        validate_session_id(session_id)
        content, extra = message_parts(message, role, fields)
        extra = {name: value for name, value in extra.items() if name not in _MESSAGE_FIELDS}
        stored = {"role": role, "content": content, "timestamp": now_iso(), **extra}
        key = str(uuid.uuid4())  # the message's from now on: however often it is sent, the database stores it once
        try:
            self.flush_spool(session_id)
            return self._append(session_id, key, stored)
        except StoreUnavailable:
            self.spool.add(session_id, stored, key)
            return {"id": None, **stored, "saved_locally": True}

    def flush_spool(self, session_id: str | None = None) -> int:
        """Write the messages kept while the database could not take them (``session_id``'s, or all), oldest first."""
        return self.spool.flush(self._append, session_id, wait=self.timeout)

    def _append(self, session_id: str, key: str, stored: dict[str, Any]) -> dict[str, Any]:
        role, content, stamp = stored["role"], stored["content"], stored["timestamp"]
        extra = {name: value for name, value in stored.items() if name not in ("role", "content", "timestamp")}
        statement = "SELECT oblix.append_message(%s, %s, %s, %s, %s, %s, %s)"

        def append(conn: psycopg.Connection) -> dict[str, Any]:
            number = conn.execute(statement, (session_id, role, content, stamp, Jsonb(extra), change_time(), key)).fetchone()[0]
            return {"id": number, **stored}

        return self._run(append, write=True)

    def load_session(self, session_id: str) -> dict[str, Any] | None:
        """The whole session as a plain dict, or None when this user has no such session (as in the SDK).

        Messages this machine keeps for the session are written first, so that the
        session read is the conversation as the user had it; when they cannot be written
        but the session can be read, they are included from the spool (``saved_locally``).
        """
        validate_session_id(session_id)
        try:
            self.flush_spool(session_id)
        except StoreUnavailable:
            pass  # read below if the database lets us, with what still waits added

        def load(conn: psycopg.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT * FROM oblix.read_session(%s)", (session_id,)).fetchone()
            if row is None:
                self._read.forget(session_id)
                return None
            if row[-1] is not None:
                self._theirs.add(session_id)
            # Those up to the count read are the session as it was then.
            known = self._read.first(session_id, row[2], row[4])
            newer = conn.execute("SELECT * FROM oblix.read_messages(%s, %s, %s)", (session_id, len(known), row[4])).fetchall()
            messages = known + [_message(m) for m in newer]
            self._read.keep(session_id, row[2], messages)
            waiting = [{"id": None, **record["message"], "saved_locally": True} for record in self.spool.pending(session_id)]
            return self._document(row, [dict(message) for message in messages] + waiting)

        return self._run(load)

    def _document(self, row: tuple[Any, ...], messages: list[dict[str, Any]]) -> dict[str, Any]:
        session_id, title, created, updated, _count, context, model, metadata, extra, version, _shared_by = row
        document: dict[str, Any] = {
            "id": session_id,
            "title": title,
            "created_at": format_time(created),
            "updated_at": format_time(updated),
            "messages": messages,
            "context": context,
            "model": model,
            "metadata": metadata,
            "schema_version": version,
        }
        document.update((name, value) for name, value in extra.items() if name not in _NOT_EXTRA)
        return readable(document, f"Session {session_id} in {self._where}")

    def session_version(self, session_id: str) -> Any:
        """A value that changes whenever the session is written (its row's ``xmin``; None while it does not exist)."""
        validate_session_id(session_id)
        return self._run(lambda conn: conn.execute("SELECT oblix.session_version(%s)", (session_id,)).fetchone()[0])

    def list_sessions(self, limit: int | None = 50) -> list[dict[str, Any]]:
        """Summaries of the most recently updated sessions this user may read, newest first.

        Each has ``shared_by``: None for the user's own, else the owner who shared it.
        """
        rows = self._run(lambda conn: conn.execute("SELECT * FROM oblix.list_sessions(%s)", (limit,)).fetchall())
        return [_summary(row) for row in rows]

    def delete_session(self, session_id: str) -> bool:
        """Remove a session and every trace of it, of every user: messages, shares, bindings, vectors; False when there was none.

        Only its owner may; the rest goes with the session row (foreign keys, and a
        trigger for vectors no other session uses).
        """
        validate_session_id(session_id)
        self._read.forget(session_id)
        return self._run(lambda conn: conn.execute("SELECT oblix.delete_session(%s)", (session_id,)).fetchone()[0], write=True)

    def update_session(self, session_id: str, **fields: Any) -> dict[str, Any]:
        """Change ``title``, ``context``, ``model``, ``metadata`` or other extra fields; returns the session. Only its owner may."""
        validate_session_id(session_id)
        fields = check_update(fields)
        columns = {name: value for name, value in fields.items() if name in _COLUMNS}
        extra = {name: value for name, value in fields.items() if name not in _COLUMNS}
        statement = "SELECT oblix.update_session(%s, %s, %s, %s)"
        self._run(lambda conn: conn.execute(statement, (session_id, Jsonb(columns), Jsonb(extra), change_time())), write=True)
        return self.get_session(session_id)

    def update_session_metadata(self, session_id: str, metadata: dict[str, Any]) -> bool:
        """Merge ``metadata`` into the session's metadata (the SDK's call), in one statement. Only its owner may."""
        validate_session_id(session_id)
        params = (session_id, Jsonb(redacted_context(metadata)), change_time())
        self._run(lambda conn: conn.execute("SELECT oblix.merge_metadata(%s, %s, %s)", params), write=True)
        return True

    def search_sessions(self, query: str, limit: int = 50) -> list[dict[str, Any]]:
        """Sessions whose title or messages match ``query`` (web search syntax: words, "phrases", -not, or), best first.

        Each row is a listing row plus ``snippet``: the best matching text, shortened,
        its matches between « and » (plain text, never markup). An empty query finds
        every session, newest first, as the file store's does.
        """
        if not query.strip():
            return [{**row, "snippet": ""} for row in self.list_sessions(limit)]
        params = (query, limit, _HIGHLIGHT)
        rows = self._run(lambda conn: conn.execute("SELECT * FROM oblix.search_sessions(%s, %s, %s)", params).fetchall())
        return [{**_summary(row[:-1]), "snippet": row[-1]} for row in rows]

    def _prune(self, cutoff: str, dry_run: bool) -> list[str]:
        """This user's own sessions only, newest first."""

        def prune(conn: psycopg.Connection) -> list[str]:
            params = (parse_time(cutoff), dry_run)
            return [row[0] for row in conn.execute("SELECT * FROM oblix.prune_sessions(%s, %s)", params)]

        return self._run(prune, write=True)

    def resolve_id(self, id_or_prefix: str) -> str:
        """Turn a full id or a unique prefix of one into the full id, among the sessions this user may read."""

        def matching(candidate: str) -> list[str]:
            statement = "SELECT * FROM oblix.matching_sessions(%s)"
            return [row[0] for row in self._run(lambda conn: conn.execute(statement, (candidate,)).fetchall())]

        return resolve_session_id(id_or_prefix, matching, self._where)

    # -- vectors: a cache, so a failure costs embedding again, never a turn ---------------

    def _read_vectors(self, model: str, keys: list[str]) -> dict[str, bytes]:
        """This user's vectors: the database reads those they stored."""
        statement = "SELECT * FROM oblix.read_vectors(%s, %s::text[])"
        try:
            return dict(self._run(lambda conn: conn.execute(statement, (model, keys)).fetchall()))
        except StoreUnavailable:
            return {}

    def _write_vectors(self, model: str, session_id: str, entries: Mapping[str, bytes | None]) -> None:
        """Deleting the session removes its uses, and the database then removes the vectors left unused."""
        statement = "SELECT oblix.write_vectors(%s, %s, %s::text[], %s::bytea[])"
        params = (session_id, model, list(entries), list(entries.values()))
        try:
            self._run(lambda conn: conn.execute(statement, params), write=True)
        except (StoreUnavailable, psycopg.errors.ForeignKeyViolation):
            pass  # no database, or the session went meanwhile: nothing to keep vectors for

    # -- attachments: as private as the session's messages, gone with it ------------------

    def _write_attachment(self, session_id: str, attachment_id: str, data: bytes) -> None:
        statement = "SELECT oblix.write_attachment(%s, %s, %s)"
        self._run(lambda conn: conn.execute(statement, (session_id, attachment_id, data)), write=True)

    def _read_attachment(self, session_id: str, attachment_id: str) -> bytes | None:
        statement = "SELECT oblix.read_attachment(%s, %s)"
        row = self._run(lambda conn: conn.execute(statement, (session_id, attachment_id)).fetchone())
        return None if row is None or row[0] is None else bytes(row[0])

    # -- notebook bindings (each user's own) ---------------------------------------------

    def bind(self, key: str, session_id: str) -> None:
        """Bind a notebook (any stable identifier of it, usually its path) to a session this user may read."""
        validate_session_id(session_id)
        if not key:
            raise ValueError("a binding needs a non-empty notebook key")
        try:
            self._run(lambda conn: conn.execute("SELECT oblix.bind(%s, %s)", (key, session_id)), write=True)
        except psycopg.errors.ForeignKeyViolation:  # the session went meanwhile
            raise SessionNotFound(session_id, self._where) from None

    def unbind(self, key: str) -> None:
        self._run(lambda conn: conn.execute("SELECT oblix.unbind(%s)", (key,)), write=True)

    def bound_session(self, key: str) -> str | None:
        """The session bound to ``key``, or None if there is none or this user can no longer read it."""
        return self._run(lambda conn: conn.execute("SELECT oblix.bound_session(%s)", (key,)).fetchone()[0])

    def bindings(self) -> dict[str, str]:
        """Every notebook key of this user and the session bound to it."""
        rows = self._run(lambda conn: conn.execute("SELECT * FROM oblix.bindings()").fetchall())
        return dict(rows)

    # -- sharing --------------------------------------------------------------------------

    def share(self, session_id: str, user: str, write: bool = False) -> None:
        """Let database user ``user`` read the session (and, with ``write``, add messages to it); only its owner may.

        Sharing again changes ``write``. A writer may add messages, nothing else: the
        title, context, model, metadata, sharing and deletion stay the owner's.
        """
        validate_session_id(session_id)
        self._run(lambda conn: conn.execute("SELECT oblix.share(%s, %s, %s)", (session_id, user, write)), write=True)

    def unshare(self, session_id: str, user: str) -> None:
        """Take the session back from ``user`` (nothing if it was not shared with them); only its owner may.

        From then on ``user`` reads nothing of it and hears of none of its appends.
        """
        validate_session_id(session_id)
        self._run(lambda conn: conn.execute("SELECT oblix.unshare(%s, %s)", (session_id, user)), write=True)

    def shares(self, session_id: str) -> list[dict[str, Any]]:
        """Who else may read the session, and who may write: ``[{"user", "write"}]``, for its owner (others see only their own)."""
        validate_session_id(session_id)
        statement = "SELECT * FROM oblix.shares(%s)"
        rows = self._run(lambda conn: conn.execute(statement, (session_id,)).fetchall())
        return [{"user": user, "write": can_write} for user, can_write in rows]

    def can_write(self, session_id: str) -> bool:
        """Whether this user may add messages to a session read here: theirs, or shared with them for writing.

        Asked before a turn calls the model, so that a reader learns at once that they
        cannot add to the session, not after an answer that could not be stored. Costs a
        query only for sessions someone else shared (the database enforces it anyway).
        """
        if session_id not in self._theirs:
            return True
        return bool(self._run(lambda conn: conn.execute("SELECT oblix.can_write(%s)", (session_id,)).fetchone()[0]))

    # -- live changes ---------------------------------------------------------------------

    def wait_for_changes(self, session_ids: Iterable[str], timeout: float = 10.0) -> list[tuple[str, str]]:
        """(session id, message id) of messages appended to ``session_ids``, waiting up to ``timeout`` s for one.

        The first call starts listening, on a connection of its own kept for the next
        calls (one of the store's ``max_connections``), so nothing appended between two
        calls is missed; an append before a session's first call is not reported (read
        the session after it). The connection closes once no call has come for ``idle``
        seconds. If it breaks, it is opened again and the messages appended meanwhile are
        read and reported, so none goes unannounced. The notification carries ids only,
        and only to the users who may read the session at the time of the append.
        """
        wanted = {validate_session_id(session_id) for session_id in session_ids}
        deadline = time.monotonic() + timeout
        found: list[tuple[str, str]] = []
        self._check_not_away()
        with self._listening:
            try:
                self._collect(wanted, deadline, found)
            except psycopg.OperationalError:
                self._drop_listener()
                try:
                    self._collect(wanted, deadline, found)
                except psycopg.OperationalError as error:
                    self._drop_listener()
                    raise self._unavailable(error) from None
            finally:
                self._followed_at = time.monotonic()
        return found

    def _collect(self, wanted: set[str], deadline: float, found: list[tuple[str, str]]) -> None:
        """Add to ``found`` what arrives for ``wanted`` until one has come and nothing more is waiting, or ``deadline``."""
        if self._listener is None:
            self._listen(found)
        for session_id in wanted - self._followed.keys():  # from now on: its position as the listener starts to follow it
            self._followed[session_id] = self._position(self._listener, session_id)
        while True:
            waiting = 0.0 if found else max(0.0, deadline - time.monotonic())
            batch = [note.payload for note in self._listener.notifies(timeout=waiting, stop_after=1)]
            for payload in batch:
                session_id, message_id, position = payload.split(" ")
                if session_id in self._followed:
                    self._followed[session_id] = max(self._followed[session_id], int(position))
                if session_id in wanted:
                    found.append((session_id, message_id))
            if not batch and (found or time.monotonic() >= deadline):
                return

    def _listen(self, found: list[tuple[str, str]]) -> None:
        """Open the listening connection (the pool gives up a place for it), and report what the sessions followed before got meanwhile."""
        self._listener = psycopg.connect(self._dsn, autocommit=True, connect_timeout=PROBE_WAIT)
        self._pool.resize(0, self._pool_size())
        _configure(self._listener)
        channel = self._listener.execute("SELECT oblix.my_channel()").fetchone()[0]
        self._listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        for session_id, heard in list(self._followed.items()):  # listening again, after a break: what was missed
            now = self._position(self._listener, session_id)
            missed = self._listener.execute("SELECT id FROM oblix.read_messages(%s, %s, %s)", (session_id, heard, now)).fetchall()
            found.extend((session_id, message_id) for (message_id,) in missed)
            self._followed[session_id] = max(heard, now)
        self._keep()  # which closes the listener once idle

    @staticmethod
    def _position(conn: psycopg.Connection, session_id: str) -> int:
        """The session's last position as ``conn`` reads it now (0 if it cannot read the session)."""
        row = conn.execute("SELECT message_count FROM oblix.read_session(%s)", (session_id,)).fetchone()
        return row[0] if row is not None else 0

    def _drop_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if not self._pool.closed:
                self._pool.resize(0, self._pool_size())
