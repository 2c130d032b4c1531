"""The session document: its fields, its times and its ids, checked before anything is written.

A session is one JSON object in the Oblix SDK's shape (``SEED_FIELDS``, plus ``model``,
``metadata`` and the extra fields front ends set through the client). Times are UTC ISO
8601 with milliseconds and ``Z``; ids are UUID4 strings, which is also what keeps an id
from ever naming a path outside the store.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from ..errors import ImportFormatError, InvalidContext, InvalidSessionId

SEED_FIELDS = ("id", "title", "created_at", "updated_at", "messages", "context")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def now_iso() -> str:
    """UTC now as ISO 8601 with milliseconds and ``Z``, the seed's timestamp format."""
    return format_time(datetime.now(timezone.utc))


_MILLISECOND = timedelta(milliseconds=1)
_last_change = datetime.min.replace(tzinfo=timezone.utc)
_change_lock = threading.Lock()


def change_time() -> str:
    """``now_iso()`` for a session's ``created_at`` or ``updated_at``, later than any this process gave before.

    Sessions are listed newest first, by these stamps; two changed within one
    millisecond (a script, a loop of appends) must still list in the order they were
    changed. The stamp runs ahead of the clock by a millisecond per extra change.
    """
    global _last_change
    with _change_lock:
        moment = datetime.now(timezone.utc)
        moment = max(moment.replace(microsecond=moment.microsecond // 1000 * 1000), _last_change + _MILLISECOND)
        _last_change = moment
    return format_time(moment)


def format_time(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    """Read our timestamps and the original SDK's (``isoformat()``, with or without zone)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def validate_session_id(session_id: object) -> str:
    """Reject anything that could name a path outside the store, before any file is touched."""
    if not isinstance(session_id, str) or not UUID.match(session_id):
        raise InvalidSessionId(session_id)
    return session_id


def check_context(context: Any) -> dict[str, Any]:
    """Refuse a context that JSON cannot hold, naming the key, so nothing half-valid is written."""
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise InvalidContext(f"Session context must be a dict, not {type(context).__name__}.")
    for key, value in context.items():
        if not isinstance(key, str):
            raise InvalidContext(f"Session context keys must be strings; got {key!r}.")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise InvalidContext(
                f"Session context key {key!r} holds a {type(value).__name__}, which cannot be stored as JSON ({exc})."
            ) from None
    return copy.deepcopy(context)


def stamp(updated_at: str) -> str:
    """A stored time as a compact name part that sorts by time (``20260101T000000.000Z``)."""
    return format_time(parse_time(updated_at)).replace("-", "").replace(":", "")


def summarize(session: dict[str, Any]) -> dict[str, Any]:
    """The listing view of a session: what ``list_sessions`` returns for it."""
    return {
        "id": session["id"],
        "title": session["title"],
        "created_at": session["created_at"],
        "updated_at": session["updated_at"],
        "message_count": len(session["messages"]),
        "model": session.get("model"),
        "metadata": session.get("metadata", {}),
    }


def check_session_shape(data: Any, where: str) -> dict[str, Any]:
    """Make sure ``data`` has every field of the seed's session shape, with the right types."""
    if not isinstance(data, dict):
        raise ImportFormatError(f"{where}: a session must be a JSON object, not {type(data).__name__}.")
    missing = [field for field in ("id", "messages", "created_at", "updated_at") if field not in data]
    if missing:
        raise ImportFormatError(f"{where}: not a session, missing field(s) {', '.join(missing)}.")
    if not isinstance(data["messages"], list):
        raise ImportFormatError(f"{where}: 'messages' must be a list.")
    for index, message in enumerate(data["messages"]):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ImportFormatError(f"{where}: message {index + 1} has no text 'content'.")
        if message.get("role") not in ("user", "assistant", "system"):
            raise ImportFormatError(f"{where}: message {index + 1} has role {message.get('role')!r}.")
    for field in ("created_at", "updated_at"):
        try:
            parse_time(str(data[field]))
        except ValueError:
            raise ImportFormatError(f"{where}: {field} {data[field]!r} is not an ISO 8601 time.") from None
    check_context(data.get("context"))
    return data
