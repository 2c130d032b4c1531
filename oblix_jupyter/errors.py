"""Exception types whose messages are written for the person at the keyboard, kept free of keys.

Front ends (magics, chat panel, command line) show ``str(error)`` as one line and
never a traceback, so every message here must say what went wrong and what to do.
Such a message may quote a provider's reply, which can echo a key: ``redact`` (the
package's one redaction, ``redaction.py``, named here for the callers of errors) takes
those out.
"""

from __future__ import annotations

from typing import Any

from .redaction import is_secret_name, redact  # noqa: F401 - re-exported: the store and the gateway redact through errors


class OblixError(Exception):
    """Base class: anything a front end may show to the user as-is."""


class InvalidSessionId(OblixError, ValueError):
    """A string that is not an id this store could have issued (e.g. a path)."""

    def __init__(self, session_id: object) -> None:
        super().__init__(
            f"{session_id!r} is not a valid session id (expected a UUID such as "
            "'5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a', or a unique prefix of one)."
        )
        self.session_id = session_id


class SessionNotFound(OblixError, KeyError):
    """No session with this id exists in the store."""

    def __init__(self, session_id: str, base_dir: str | None = None) -> None:
        where = f" in {base_dir}" if base_dir else ""
        super().__init__(f"No session {session_id!r}{where}. List them with `oblix sessions`.")
        self.session_id = session_id

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class AmbiguousSessionId(OblixError, ValueError):
    """A prefix that matches more than one session."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        shown = ", ".join(sorted(candidates)[:5])
        more = "" if len(candidates) <= 5 else f" and {len(candidates) - 5} more"
        super().__init__(f"Session prefix {prefix!r} matches {len(candidates)} sessions: {shown}{more}. Type more characters.")
        self.candidates = candidates


class CorruptSession(OblixError):
    """A session file exists but cannot be read; it is left untouched on disk."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"Session file {path} is unreadable ({reason}). It was left as it is; "
            "move it away or repair it by hand."
        )
        self.path = path
        self.reason = reason


class NewerSchema(OblixError):
    """A session written by a newer oblix_jupyter, in a shape this one would read wrongly: refused, and left as it is.

    ``path`` names where it is (a file, or the session in a database) and ``reason`` says
    why it cannot be read, as ``CorruptSession``'s do, so a store lists both among its problems.
    """

    def __init__(self, path: str, version: int, readable: int) -> None:
        self.path = path
        self.reason = f"written by a newer oblix_jupyter: session schema {version}; this one reads up to {readable}"
        super().__init__(f"{path} was {self.reason}: upgrade oblix_jupyter to open it.")


class StoreBusy(OblixError, TimeoutError):
    """Another process held a session file's lock for longer than the store waits."""

    def __init__(self, path: str, seconds: float) -> None:
        super().__init__(
            f"{path} stayed locked by another process for {seconds:g} s, so nothing was written to it. "
            "Is a kernel or `oblix` command stuck on it? Try again."
        )
        self.path = path


class StoreUnavailable(OblixError):
    """The session database cannot be used now: unreachable, or its schema is not the one this code reads.

    ``uncertain`` when a change was on its way as the connection broke: it may have been
    saved, so it must not simply be made again.
    """

    def __init__(self, message: str, uncertain: bool = False) -> None:
        super().__init__(message)
        self.uncertain = uncertain


class DatabaseBusy(StoreUnavailable):
    """The session database kept a command waiting for a lock longer than the store waits (another connection holds it).

    A ``StoreUnavailable``, so that a turn's message goes to the spool as it does when the
    database cannot be reached.
    """


class NotPermitted(OblixError, PermissionError):
    """A session this user can see but may not change that way (someone else's, shared with them)."""


class BadArguments(OblixError, ValueError):
    """Options of a magic or command that cannot be accepted; the message includes the usage."""


class InvalidContext(OblixError, TypeError):
    """A session context value that cannot be stored as JSON."""


class ImportFormatError(OblixError, ValueError):
    """A file given to import is not a session this project can read."""


class ExportFormatError(OblixError, ValueError):
    """A path given to export whose extension names no format we can write."""


class NoModelConfigured(OblixError):
    """Nothing tells us which model to call."""

    def __init__(self, extra: str = "") -> None:
        super().__init__(
            "No model configured. Set the OBLIX_MODEL environment variable to a litellm "
            "model string (for example OBLIX_MODEL=openai/gpt-4o-mini, with OPENAI_API_KEY set), "
            "or pass model=... to OblixClient." + (f" {extra}" if extra else "")
        )


class ModelError(OblixError):
    """A model call failed; ``partial`` holds any text that had already arrived, ``tools`` the tool calls already made."""

    def __init__(self, message: str, *, model: str | None = None, partial: str = "", tools: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.partial = partial
        self.tools = tools or []


class AnswerInterrupted(ModelError):
    """The user stopped the answer (Ctrl-C, Stop button); the partial answer was kept."""


class PromptTooLarge(OblixError):
    """The prompt alone does not fit in the model's input window; nothing was sent."""


class AttachmentNotFound(OblixError, KeyError):
    """A session holds no attachment of that id (or the id is not one: the SHA-256 of its bytes, in hex)."""

    def __init__(self, session_id: str, attachment_id: str) -> None:
        super().__init__(f"Session {session_id} has no attachment {attachment_id[:80]!r}.")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnreadableImage(OblixError, ValueError):
    """Image bytes that cannot be decoded: corrupt, truncated, too many pixels, or not an image at all."""


class ImagesUnavailable(OblixError):
    """An image was to be prepared for a model, and Pillow, which does it, is not installed."""

    def __init__(self) -> None:
        super().__init__("Sending images needs Pillow: pip install 'oblix-jupyter[images]' (or pip install pillow).")
