"""A throwaway PostgreSQL server for the tests: Debian's PostgreSQL 15, on a Unix socket in a temporary directory.

The server is made once per test session (``initdb`` is the slow part) and tuned for
speed over durability: a crash loses nothing the tests need. It listens on no TCP port.
When the tests run as root (CI does), the server runs as the ``postgres`` OS user, as
PostgreSQL refuses to run as root. Authentication on the socket is ``trust``: a role's
DSN may carry a password, which the server ignores, so tests can check that a password
never leaks into what the store shows.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from oblix_jupyter.store.pg_schema import add_user, upgrade

BIN_DIR = "/usr/lib/postgresql/15/bin"
DATABASE = "oblix"
ADMIN = "postgres"
_SETTINGS = {
    "listen_addresses": "''",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "log_min_messages": "fatal",
}


class PostgresServer:
    """One server in a temporary directory (fsync off: a crash of the server, unlike one of the machine, loses no commit): ``start``, ``stop``, ``dsn(role)``, ``create_user``, ``close``."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="oblix-pg-")
        self.data_dir = os.path.join(self.root, "data")
        self.socket_dir = os.path.join(self.root, "socket")
        self._as_postgres = os.geteuid() == 0
        self._numbers = itertools.count(1)
        os.chmod(self.root, 0o755)  # the test process must reach the socket inside
        os.mkdir(self.socket_dir)
        if self._as_postgres:
            shutil.chown(self.root, ADMIN, ADMIN)
            shutil.chown(self.socket_dir, ADMIN, ADMIN)
        self._run("initdb", "-D", self.data_dir, "-U", ADMIN, "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions")
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as conf:
            settings = {**_SETTINGS, "unix_socket_directories": f"'{self.socket_dir}'"}
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _run(self, program: str, *args: str) -> None:
        """Run a PostgreSQL program (as the ``postgres`` user when we are root); its output only if it fails."""
        command = [os.path.join(BIN_DIR, program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", ADMIN, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stdout}{result.stderr}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections (``pg_ctl -w``)."""
        self._run("pg_ctl", "-D", self.data_dir, "-l", os.path.join(self.root, "server.log"), "-w", "-t", "60", "start")

    def stop(self, immediate: bool = False) -> None:
        """Stop the server; ``immediate`` aborts it like a crash (no shutdown checkpoint, clients cut off)."""
        self._run("pg_ctl", "-D", self.data_dir, "-m", "immediate" if immediate else "fast", "-w", "stop")

    def dsn(self, role: str = ADMIN, password: str | None = None, database: str = DATABASE) -> str:
        """A libpq DSN for ``role`` over the socket (with ``password``, which trust authentication ignores)."""
        secret = f" password={password}" if password else ""
        return f"host={self.socket_dir} port=5432 dbname={database} user={role}{secret}"

    @property
    def admin_dsn(self) -> str:
        """The superuser's DSN, for migrations, roles and looking behind the store's back."""
        return self.dsn(ADMIN)

    def create_database(self) -> None:
        """Create the store's database and bring its schema up to date, as an administrator would."""
        with psycopg.connect(self.dsn(ADMIN, database="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        upgrade(self.admin_dsn)

    def create_user(self, name: str | None = None, password: str | None = None) -> str:
        """A user of the store (``add_user``), named ``name`` or fresh (``user_<n>``: its sessions are its own); its name."""
        name = name or f"user_{next(self._numbers)}"
        add_user(self.admin_dsn, name)
        if password:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
        return name

    def admin_query(self, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Rows of ``statement`` run as the superuser, who passes row security: what is really stored."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            return conn.execute(statement, params).fetchall()

    def analyze(self) -> None:
        """Gather the planner's statistics of every table, as autovacuum does soon after rows are written."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute("ANALYZE")

    def log(self) -> str:
        """The server's log, for a failing test's message."""
        with open(os.path.join(self.root, "server.log")) as handle:
            return handle.read()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        """Stop the server, as abruptly as the tests allow, and remove every file of it."""
        try:
            self.stop(immediate=True)
        finally:
            self.remove()


@contextmanager
def running() -> Iterator[PostgresServer]:
    """A started server with its database upgraded, stopped and removed afterwards (tests' fixture, benchmarks)."""
    server = PostgresServer()
    try:
        server.start()
        server.create_database()
        yield server
    finally:
        server.close()
