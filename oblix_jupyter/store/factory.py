"""``open_store``: the store a location names, a directory of session files or a PostgreSQL database.

Each backend is imported only when it is opened: psycopg is an optional extra, and
``import oblix_jupyter`` pays for neither.
"""

from __future__ import annotations

import os

from .base import SessionStore
from .dsn import check, is_connection_string


def open_store(location: str | os.PathLike[str] | None = None) -> SessionStore:
    """The store ``location`` names, else ``$OBLIX_STORE``, else the default directory (``files.default_base_dir``).

    A connection string (a ``postgresql://`` URL or libpq's ``key=value`` pairs, see
    ``dsn``) opens the PostgreSQL store (libpq's ``PG*`` variables, service file and
    ``~/.pgpass`` fill in what it leaves out); anything else is a directory.
    """
    location = os.fspath(location) if location is not None else os.environ.get("OBLIX_STORE") or None
    if is_connection_string(location):
        check(location)  # before libpq sees a string it would misread, or quote in its errors
        from .postgres import PostgresStore

        return PostgresStore(location)
    from .sessions import SessionManager

    return SessionManager(location)
