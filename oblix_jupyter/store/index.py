"""The listing index: one small header file per session, named so that a directory scan sorts them by recency.

Listing must stay cheap with thousands of sessions and an append must never rewrite a
store-wide file, so recency lives in the *names* of the header files,
``.index/<stamp>.<id>.json``, the stamp being the session's ``updated_at``: one
``listdir`` orders every session without opening or even ``stat``-ing them. A header
is a cache of the session file (``summarize``, plus the file's mtime and size): any that
is missing, stale or unreadable is rebuilt from its session file by the store.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import CorruptSession, InvalidSessionId
from .files import atomic_write_bytes, dump_json, read_json_file, remove_file
from .shape import stamp, summarize

_NAME_LENGTH = len("20260101T000000.000Z.") + 36 + len(".json")


class ListingIndex:
    """The headers of one store's sessions."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, stamp_text: str, session_id: str) -> str:
        return os.path.join(self.directory, f"{stamp_text}.{session_id}.json")

    def write(self, session: dict[str, Any], file_state: list[int], old_stamp: str | None = None) -> None:
        """Record ``session``'s header, for its file as it is now (``[mtime_ns, size]``)."""
        new_stamp = stamp(session["updated_at"])
        header = {**summarize(session), "file": file_state}
        # Not fsynced: a header lost in a crash is noticed (file state) and rebuilt.
        atomic_write_bytes(self.path(new_stamp, session["id"]), dump_json(header), durable=False)
        if old_stamp and old_stamp != new_stamp:
            remove_file(self.path(old_stamp, session["id"]))

    def read(self, stamp_text: str, session_id: str, file_state: list[int] | None) -> dict[str, Any] | None:
        """The header if it still describes the session file (``file_state``), else None: rebuild it."""
        try:
            data = read_json_file(self.path(stamp_text, session_id))
        except (FileNotFoundError, CorruptSession, InvalidSessionId):
            return None
        if not isinstance(data, dict) or file_state is None or data.pop("file", None) != file_state:
            return None
        return data

    def ordered(self, on_disk: set[str]) -> tuple[list[tuple[str, str]], set[str]]:
        """(stamp, id) of the sessions with a header, newest first, and the ids on disk that have none.

        Headers of deleted sessions and superseded ones are removed on the way.
        """
        names = [n for n in os.listdir(self.directory) if len(n) == _NAME_LENGTH and n.endswith(".json")]
        names.sort(reverse=True)
        ordered: list[tuple[str, str]] = []
        seen: set[str] = set()
        for name in names:
            session_id = name[21:57]
            if session_id in seen or session_id not in on_disk:  # superseded, or session deleted
                remove_file(os.path.join(self.directory, name))
                continue
            seen.add(session_id)
            ordered.append((name[:20], session_id))
        return ordered, on_disk - seen

    def forget(self, session_id: str) -> None:
        """Remove every header of a session (it is being deleted)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(f".{session_id}.json"):
                remove_file(os.path.join(self.directory, name))
