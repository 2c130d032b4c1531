"""The interactive terminal chat behind ``OblixClient.start_chat`` and ``oblix chat``.

A front end like the others: it parses a line, calls the client, prints. Slash
commands manage sessions without leaving the loop. Titles and answers are someone
else's text, so everything goes out through ``render.TerminalWriter``, streamed
answers included: the terminal never gets a control character from them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from ..errors import AnswerInterrupted, OblixError
from ..render import TerminalWriter

if TYPE_CHECKING:
    from ..client import OblixClient

HELP = "Commands: /list, /load ID, /new [TITLE], /help, exit"


def run_terminal_chat(
    client: OblixClient,
    session_id: str | None = None,
    read: Callable[[str], str] = input,
    out: IO[str] = sys.stdout,
) -> str | None:
    """Chat until ``exit`` or end of input; returns the session id the chat ended in."""
    out = TerminalWriter(out)  # type: ignore[assignment]  # a text stream too
    if session_id is None:
        session_id = client.create_session_sync()
    else:
        session_id = client.resolve_session_id(session_id)
    session = client.get_session(session_id)
    print(f"Session {session['title']} ({session_id[:8]}). {HELP}", file=out)
    while True:
        try:
            line = read("You: ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return session_id
        if not line:
            continue
        if line.lower() in ("exit", "quit", "/exit", "/quit"):
            return session_id
        try:
            if line.startswith("/"):
                session_id = _command(client, line, session_id, out)
                continue
            print("Assistant: ", end="", file=out, flush=True)
            result = client.turn(line, session_id, stream_to=out)
            print(f"\n  [{result.model}]", file=out)
        except AnswerInterrupted:
            print("\n  [interrupted; the partial answer was kept]", file=out)
        except OblixError as error:
            print(f"\nError: {error}", file=out)


def _command(client: OblixClient, line: str, session_id: str, out: IO[str]) -> str:
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    if name == "/list":
        for item in client.list_sessions(limit=20):
            marker = "*" if item["id"] == session_id else " "
            print(f"{marker} {item['id'][:8]}  {item['message_count']:>4} msgs  {item['title']}", file=out)
        return session_id
    if name == "/load" and argument:
        session_id = client.resolve_session_id(argument)
        print(f"Loaded {client.get_session(session_id)['title']}", file=out)
        return session_id
    if name == "/new":
        session_id = client.create_session_sync(title=argument or None)
        print(f"New session {session_id[:8]}", file=out)
        return session_id
    print(HELP, file=out)
    return session_id
