"""The PostgreSQL store's schema: numbered SQL migrations recorded in the database, and its users.

An administrator runs ``upgrade`` (``oblix db upgrade``) as a superuser; clients only
check that the schema is the one they were written for (``check_version``). The
migrations are the files ``sql/NNN_name.sql``, applied in order, each in its own
transaction, and recorded in ``oblix.migrations``; an advisory lock lets only one
upgrade run at a time, so two admins (or two deploys) cannot apply one twice.
``add_user`` makes a login role a user of the store: a member of ``oblix_users``, which
holds exactly the rights the store needs and no more (row security does the rest).
"""

from __future__ import annotations

import re
from importlib import resources

import psycopg
from psycopg import sql

from ..errors import NotPermitted, StoreUnavailable

_LOCK_KEY = 0x0B11_7A5E  # pg_advisory_lock's key for "an oblix upgrade is running"
_FILE_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
USERS_ROLE = "oblix_users"


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


def upgrade(dsn: str) -> int:
    """Apply the migrations the database lacks, as a superuser; returns how many were applied (0: up to date)."""
    scripts = migrations()
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            raise NotPermitted(
                f"`oblix db upgrade` must run as a PostgreSQL superuser, not {conn.info.user}: it creates the "
                "oblix_users role and functions that pass row security to remove unused vectors."
            )
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


def status(dsn: str) -> tuple[int, int]:
    """(the database's schema version, the newest this code knows), for ``oblix db status``."""
    with psycopg.connect(dsn) as conn:
        return current_version(conn), LATEST


def add_user(dsn: str, name: str) -> None:
    """Make ``name`` a user of the store: a LOGIN role (created if absent) in ``oblix_users``.

    The role gets no password here (the administrator sets one, or the server's
    authentication needs none). On PostgreSQL 16 and later the membership is granted
    without SET, so the user cannot ``SET ROLE oblix_users`` and own rows as the group.
    """
    role = sql.Identifier(name)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        grant = sql.SQL("GRANT {} TO {}").format(sql.Identifier(USERS_ROLE), role)
        if conn.info.server_version >= 160000:
            grant = sql.SQL("{} WITH INHERIT TRUE, SET FALSE").format(grant)
        conn.execute(grant)
