"""Messages kept on this machine while the session database cannot take them, written there in order later.

A turn's answer arrives from the model whether or not the database still answers; when
it does not, the answer must not be lost. Each such message becomes one private file
(0600, in a 0700 folder beside the file store) named so that names sort in the order
the messages were saved; ``flush`` appends them to the database in that order and
removes each file once its message is stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..errors import CorruptSession
from .files import atomic_write_bytes, ensure_private_dir, read_json_file, remove_file
from .sessions import default_base_dir


class Spool:
    """Pending messages for one database and one of its users, by session: what ``PostgresStore.save_message`` could not write.

    ``location`` names the database (without its password) and ``user`` is the role the
    store logged in as, as libpq resolved it (from the connection string, ``PGUSER``, a
    service file or the login name). Each pair has a folder of its own, so that a
    message is only ever written to the database it was meant for, as the user who
    wrote it: two database users of one machine account never flush each other's.
    """

    def __init__(self, location: str, user: str) -> None:
        spool = os.path.join(os.path.dirname(default_base_dir()), "spool")
        self.directory = os.path.join(spool, _folder_name(location, user))

    def add(self, session_id: str, message: dict[str, Any]) -> None:
        """Keep ``message`` (role, content, timestamp and extra fields) for ``session_id`` until ``flush``."""
        ensure_private_dir(self.directory)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.json"
        record = {"session_id": session_id, "message": message}
        atomic_write_bytes(os.path.join(self.directory, name), json.dumps(record, ensure_ascii=False).encode("utf-8"))

    def pending(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """The kept messages, oldest first, each ``{"session_id", "message", "path"}`` (only ``session_id``'s if given)."""
        try:
            names = sorted(name for name in os.listdir(self.directory) if name.endswith(".json"))
        except FileNotFoundError:
            return []
        records = []
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                record = read_json_file(path)
            except (OSError, CorruptSession):
                continue  # a damaged record stays for a person to look at (``oblix doctor`` counts files)
            if session_id is None or record.get("session_id") == session_id:
                records.append({**record, "path": path})
        return records

    def flush(self, write: Callable[[str, dict[str, Any]], Any], session_id: str | None = None) -> int:
        """Write the kept messages with ``write(session_id, message)``, oldest first; stop at the first failure.

        Returns how many were written. Each file goes only after its message is stored,
        so a failure leaves the rest, still in order, for the next attempt.
        """
        written = 0
        for record in self.pending(session_id):
            write(record["session_id"], record["message"])
            remove_file(record["path"])
            written += 1
        return written


def _folder_name(location: str, user: str) -> str:
    """A name that differs for every (database, user) pair and says nothing of either."""
    return hashlib.sha256(json.dumps([location, user]).encode("utf-8")).hexdigest()[:16]
