"""The PostgreSQL store's schema: numbered SQL migrations recorded in the database, and its users.

An administrator runs ``upgrade`` (``oblix db upgrade``) as a superuser; clients only
check that the schema is the one they were written for (``check_version``). The
migrations are the files ``sql/NNN_name.sql``, applied in order, each in its own
transaction, and recorded in ``oblix.migrations``; an advisory lock lets only one
upgrade run at a time, so two admins (or two deploys) cannot apply one twice. Nothing
waits for a lock longer than ``upgrade``'s ``wait``: a user's open transaction, or a
user holding the advisory lock, makes an upgrade fail soon with ``DatabaseBusy``, never
hang. ``add_user`` makes a login role a user of the store: a member of ``oblix_users``,
which may call the store's functions and nothing else (``sql/002_private_functions.sql``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from importlib import resources
from typing import ParamSpec, TypeVar

import psycopg
from psycopg import sql

from ..errors import DatabaseBusy, NotPermitted, StoreUnavailable
from .dsn import describe as describe_dsn
from .dsn import scrub

Params = ParamSpec("Params")
Result = TypeVar("Result")

_LOCK_KEY = 0x0B11_7A5E  # pg_advisory_lock's key for "an oblix upgrade is running"
UPGRADE_WAIT = 10.0  # seconds an upgrade waits for any lock (another upgrade's, a table's)
IDLE_IN_TRANSACTION = "10s"  # after which the server ends a user's transaction left open (and its locks)
_FILE_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
USERS_ROLE = "oblix_users"


def _administration(run: Callable[Params, Result]) -> Callable[Params, Result]:
    """An administrator's command whose database failures are ours, naming the database without its password."""

    @functools.wraps(run)
    def checked(dsn: str, *args: Params.args, **kwargs: Params.kwargs) -> Result:
        try:
            return run(dsn, *args, **kwargs)
        except psycopg.errors.InsufficientPrivilege as error:
            raise NotPermitted(f"The session database refused this: {error.diag.message_primary}") from None
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
            raise DatabaseBusy(
                f"The session database ({describe_dsn(dsn)}) is busy: another connection held a lock this needs "
                "(another upgrade, or a user's open transaction); nothing was changed. Try again in a minute."
            ) from None
        except psycopg.Error as error:
            raise StoreUnavailable(f"The session database ({describe_dsn(dsn)}) cannot be used: {scrub(str(error), dsn)}") from None

    return checked  # type: ignore[return-value]


def migrations() -> dict[int, str]:
    """The SQL of every migration shipped with this code, by number."""
    found = {}
    for entry in resources.files(__package__).joinpath("sql").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found[int(match.group(1))] = entry.read_text(encoding="utf-8")
    if sorted(found) != list(range(1, len(found) + 1)):
        raise RuntimeError(f"store/sql migrations are not numbered 1..n: {sorted(found)}")
    return found


LATEST = len(migrations())


def current_version(conn: psycopg.Connection) -> int:
    """The newest migration recorded in the database (0 before the first upgrade)."""
    if conn.execute("SELECT to_regclass('oblix.migrations')").fetchone()[0] is None:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM oblix.migrations").fetchone()[0]


def check_version(conn: psycopg.Connection, where: str) -> None:
    """Refuse a database whose schema this code was not written for, saying who must do what."""
    current = current_version(conn)
    if current < LATEST:
        raise StoreUnavailable(
            f"The session database {where} has schema version {current}; this oblix_jupyter needs {LATEST}. "
            "Ask its administrator to run `oblix db upgrade`."
        )
    if current > LATEST:
        raise StoreUnavailable(
            f"The session database {where} has schema version {current}, newer than this oblix_jupyter "
            f"understands (up to {LATEST}): upgrade oblix_jupyter."
        )


@_administration
def upgrade(dsn: str, wait: float = UPGRADE_WAIT) -> int:
    """Apply the migrations the database lacks, as a superuser; returns how many were applied (0: up to date).

    Waits at most ``wait`` seconds for each lock, the advisory lock of upgrades included.
    """
    scripts = migrations()
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            raise NotPermitted(
                f"`oblix db upgrade` must run as a PostgreSQL superuser, not {conn.info.user}: it creates the "
                "oblix_users role and the functions through which its members, who may not touch the tables, reach their sessions."
            )
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{round(wait * 1000)}ms")))
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            with conn.transaction():
                conn.execute("CREATE SCHEMA IF NOT EXISTS oblix")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS oblix.migrations "
                    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
            current = current_version(conn)
            if current > len(scripts):
                raise StoreUnavailable(
                    f"The database's schema (version {current}) is newer than this oblix_jupyter's ({len(scripts)}): "
                    "upgrade oblix_jupyter before upgrading the database."
                )
            for number in range(current + 1, len(scripts) + 1):
                with conn.transaction():
                    conn.execute(scripts[number])
                    conn.execute("INSERT INTO oblix.migrations (version) VALUES (%s)", (number,))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return len(scripts) - current


@_administration
def status(dsn: str) -> tuple[int, int]:
    """(the database's schema version, the newest this code knows), for ``oblix db status``."""
    with psycopg.connect(dsn) as conn:
        return current_version(conn), LATEST


@_administration
def add_user(dsn: str, name: str) -> None:
    """Make ``name`` a user of the store: a LOGIN role (created if absent) in ``oblix_users``.

    The role gets no password here (the administrator sets one, or the server's
    authentication needs none). On PostgreSQL 16 and later the membership is granted
    without SET (on older ones ``SET ROLE oblix_users`` gains nothing: the store's
    functions go by the login, ``session_user``). In this database, a transaction the
    user leaves open is ended after ``IDLE_IN_TRANSACTION``, so that its locks do not
    hold the others.
    """
    role = sql.Identifier(name)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        grant = sql.SQL("GRANT {} TO {}").format(sql.Identifier(USERS_ROLE), role)
        if conn.info.server_version >= 160000:
            grant = sql.SQL("{} WITH INHERIT TRUE, SET FALSE").format(grant)
        conn.execute(grant)
        conn.execute(
            sql.SQL("ALTER ROLE {} IN DATABASE {} SET idle_in_transaction_session_timeout = {}").format(
                role, sql.Identifier(conn.info.dbname), sql.Literal(IDLE_IN_TRANSACTION)
            )
        )
