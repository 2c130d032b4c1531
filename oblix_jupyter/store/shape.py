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
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from itertools import repeat
from typing import Any

from ..errors import (
    AmbiguousSessionId,
    ImportFormatError,
    InvalidContext,
    InvalidSessionId,
    SessionNotFound,
)
from ..redaction import WITHHELD, is_secret_name, redact
from .migrations import SCHEMA_VERSION, readable

SEED_FIELDS = ("id", "title", "created_at", "updated_at", "messages", "context")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PREFIX = re.compile(r"^[0-9a-f][0-9a-f-]{0,35}$")


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
    return listing_row(
        session["id"],
        session["title"],
        session["created_at"],
        session["updated_at"],
        len(session["messages"]),
        session.get("model"),
        session.get("metadata", {}),
    )


def listing_row(
    session_id: str, title: str, created_at: str, updated_at: str, message_count: int, model: str | None, metadata: dict[str, Any]
) -> dict[str, Any]:
    """One row of ``list_sessions``, the same fields from every store (a store may add its own, e.g. ``shared_by``)."""
    return {
        "id": session_id,
        "title": title,
        "created_at": created_at,
        "updated_at": updated_at,
        "message_count": message_count,
        "model": model,
        "metadata": metadata,
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


def new_session(
    initial_context: dict[str, Any] | None, title: str | None, metadata: dict[str, Any] | None, model: str | None
) -> dict[str, Any]:
    """A new empty session (``create_session``), with a fresh UUID4 id, its texts redacted (``redacted_context``)."""
    created = change_time()
    return {
        "id": str(uuid.uuid4()),
        "title": redact(title) if title else f"Chat Session {datetime.now().strftime('%Y-%m-%d %H:%M')}",
        "created_at": created,
        "updated_at": created,
        "messages": [],
        "context": redacted_context(initial_context),
        "model": model,
        "metadata": redacted_context(metadata),
        "schema_version": SCHEMA_VERSION,
    }


def message_parts(message: Any, role: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The content and extra fields of a message to append, checked and redacted before anything is written.

    ``message`` may be text or a dict with ``content`` (as the SDK accepted); extra
    ``fields`` (``model``, ``status``, ``usage``...) are stored on the message, None ones left out.
    A turn has redacted what it stores already; a message written through the SDK has
    not, and later turns send it to a model just the same (``_redact_message``).
    """
    if role not in ("user", "assistant", "system"):
        raise ValueError(f"role must be 'user', 'assistant' or 'system', not {role!r}")
    content = message.get("content", "") if isinstance(message, dict) else str(message)
    extra = check_context({key: value for key, value in fields.items() if value is not None})
    redacted = _redact_message({**extra, "content": content})
    return redacted.pop("content"), redacted


def next_message_id(messages: list[dict[str, Any]]) -> str:
    """The id of a message appended after ``messages``: ``msg_<its position>``, or the next number no imported message took.

    The PostgreSQL store numbers the same way, in ``oblix.append_message`` (sql/), under the session's row lock.
    """
    taken = set(map(dict.get, messages, repeat("id")))
    number = len(messages) + 1
    while f"msg_{number}" in taken:
        number += 1
    return f"msg_{number}"


def mentions(session: dict[str, Any], needle: str) -> bool:
    """Whether the session's title or any message contains ``needle`` (casefolded by the caller, once per search)."""
    texts = [session.get("title") or ""] + [message.get("content", "") for message in session["messages"]]
    return any(needle in text.casefold() for text in texts)


def check_update(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields of an ``update_session`` call, refused if they name what a store keeps itself; title, context and metadata redacted."""
    protected = {"id", "messages", "created_at", "updated_at"} & set(fields)
    if protected:
        raise ValueError(f"update_session cannot change {', '.join(sorted(protected))}")
    fields = {name: redacted_context(value) if name in ("context", "metadata") else value for name, value in fields.items()}
    if isinstance(fields.get("title"), str):
        fields["title"] = redact(fields["title"])
    return check_context(fields)


def imported_session(data: dict[str, Any], new_id: bool) -> dict[str, Any]:
    """A complete session dict (from an import) in the current shape, its timestamps normalised to ours, its texts redacted.

    A file is not a turn: nothing it says went through the redaction every stored text
    goes through, yet its messages, their tools' summaries and images' labels, and the
    session's context are what later turns send a model. So every text of those is
    redacted here, as a turn would have stored it (a copy within a store changes nothing).
    """
    session = readable(copy.deepcopy(check_session_shape(data, "session")), "The session to import")
    if new_id:
        session["id"] = str(uuid.uuid4())
    else:
        validate_session_id(session["id"])
    session["title"] = redact(str(session.get("title") or "Imported session"))
    session["context"] = redacted_context(session.get("context"))
    session["metadata"] = redacted_context(session.get("metadata"))
    for field in ("created_at", "updated_at"):
        session[field] = format_time(parse_time(str(session[field])))
    for number, message in enumerate(session["messages"], start=1):
        message.setdefault("id", f"msg_{number}")
        message["timestamp"] = format_time(parse_time(str(message.get("timestamp") or session["updated_at"])))
    session["messages"] = [_redact_message(message) for message in session["messages"]]
    return session


def redacted_context(context: Any) -> dict[str, Any]:
    """A session's context or metadata, checked (``check_context``) and redacted (``_redacted``), as every store keeps it.

    Whatever path wrote it (a turn, the SDK, an import, the panel), the context is
    what every later turn sends a model first, and a session is read by those it is
    shared with: a key typed into it is withheld before it is stored.
    """
    return _redacted(check_context(context))


def _redact_message(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with its text, its tools' records and its images' labels redacted; its other fields (usage, model) are the program's."""
    redacted = {**message, "content": redact(message["content"])}
    if "tools" in message:
        redacted["tools"] = _redacted(message["tools"])
    if isinstance(message.get("attachments"), list):
        redacted["attachments"] = [
            {**entry, **{field: redact(entry[field]) for field in ("label", "withheld") if isinstance(entry.get(field), str)}} if isinstance(entry, dict) else entry
            for entry in message["attachments"]
        ]
    return redacted


def _redacted(value: Any) -> Any:
    """``value`` with every text in it redacted, at any depth, and every value under a secret-looking key withheld.

    Each text alone is redacted by shape and by the names written in it; a name that is
    a JSON key is structure, which the text redaction never sees (``{"db": {"password":
    "hunter2"}}``), so it is judged here, as the kernel's describers judge keys.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    if isinstance(value, dict):
        return {
            redact(key) if isinstance(key, str) else key: WITHHELD if isinstance(key, str) and is_secret_name(key) and item not in (None, "") else _redacted(item)
            for key, item in value.items()
        }
    return value


def resolve_session_id(id_or_prefix: str, matching: Callable[[str], list[str]], where: str) -> str:
    """Turn a full id or a unique prefix of one into the full id, given the store's ``matching`` ids of a prefix."""
    candidate = (id_or_prefix or "").strip().lower()
    if not _PREFIX.match(candidate):
        raise InvalidSessionId(id_or_prefix)
    matches = matching(candidate)
    if not matches:
        raise SessionNotFound(candidate, where)
    if len(matches) > 1:
        raise AmbiguousSessionId(candidate, matches)
    return matches[0]
