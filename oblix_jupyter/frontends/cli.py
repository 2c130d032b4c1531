"""``oblix``: sessions and one-off questions from the shell.

A front end like the magics: it parses arguments, calls ``OblixClient`` and prints.
The client is imported inside each command, and litellm only by the commands that
reach a model (``ask``, ``chat``, ``doctor``), so ``oblix sessions`` answers at
Python's own start-up speed. Those three take the keys (and nothing else) of the
working directory's ``.env``, as a notebook kernel started there does (``envfile``).

Exit status: 0 on success, 1 on a user error (shown as one ``oblix: ...`` line,
never a traceback), 130 when interrupted. Usage mistakes are user errors too, so
they exit 1 like the rest rather than argparse's 2: a script needs one test.

Titles, answers, model names, a colleague's role name: what the commands print was
written by others, and a terminal obeys the control characters in it (an ``ESC ]52``
writes the clipboard). So ``main`` puts ``render.TerminalWriter`` over stdout and
stderr, and nothing printed while a command runs reaches the terminal with them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .. import __version__
from ..errors import BadArguments, OblixError, StoreUnavailable
from ..render import TerminalWriter, terminal_text
from .commands import COMMANDS, AskOptions, add_commands, explained, listed_sessions

if TYPE_CHECKING:
    from ..client import OblixClient
    from ..kernel.envfile import DotenvResult

LAB_EXTENSION = "oblix-jupyter"
TITLE_WIDTH = 40


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors shown and counted like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise BadArguments(explained(message, self))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``oblix`` command; returns the exit status."""
    parser = build_parser()
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = TerminalWriter(out), TerminalWriter(err)
    try:
        return _run(parser, argv)
    finally:
        sys.stdout, sys.stderr = out, err


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            args = parser.parse_args(argv)
            return args.run(args)
        except OblixError as error:
            print(f"oblix: {_one_line(error)}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            # The reader of our output (head, less) has gone: stop quietly, and point
            # stdout at nowhere so Python's final flush does not complain either.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except OSError as error:  # an unwritable export path, an unreadable file...
            print(f"oblix: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130


def build_parser() -> argparse.ArgumentParser:
    """``oblix``'s parser, built from the command table the magics share (``commands.py``)."""
    parser = _Parser(
        prog="oblix",
        description="Persistent conversations with language models. Sessions are kept where $OBLIX_STORE says "
        "(a directory, or a team's postgresql:// database), else in $OBLIX_HOME/sessions (default ~/.oblix/sessions); "
        "ids may be shortened to any unique prefix.",
    )
    parser.add_argument("--version", action="version", version=f"oblix {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_commands(subcommands, COMMANDS, "cli", lambda name: _RUN[name])
    return parser


# -- commands -----------------------------------------------------------------------


def _client(model: str | None = None) -> OblixClient:
    from ..client import OblixClient

    return OblixClient(model=model)


def _sessions(args: argparse.Namespace) -> int:
    from ..render import local_time

    client = _client()
    found = listed_sessions(client, args)
    notebooks: dict[str, list[str]] = {}
    for notebook, session_id in client.bindings().items():
        notebooks.setdefault(session_id, []).append(notebook)
    if args.json:
        for summary in found:
            print(_json({**summary, "notebooks": notebooks.get(summary["id"], [])}))
        return 0
    if not found:
        print("No sessions found." if args.search else "No sessions yet: start one with `oblix chat` or `oblix ask`.")
        return 0
    shared = any(summary.get("shared_by") for summary in found)  # the column only on a team's database
    rows = [["TITLE", "ID", "MESSAGES", "MODEL", "UPDATED", "NOTEBOOK", *(["ACCESS"] if shared else [])]]
    for summary in found:
        rows.append(
            [
                _clip(summary["title"]),
                summary["id"][:8],
                str(summary["message_count"]),
                summary.get("model") or "-",
                local_time(summary["updated_at"]),
                ", ".join(notebooks.get(summary["id"], [])),
                *([_access(summary)] if shared else []),
            ]
        )
    print(format_table(rows))
    return 0


def _access(summary: dict[str, Any]) -> str:
    """Whose session this is, for a listing: empty for the user's own."""
    return f"shared by {summary['shared_by']}" if summary.get("shared_by") else ""


def _search(args: argparse.Namespace) -> int:
    query = " ".join(args.query)
    if not query.strip():
        raise BadArguments("the search is empty.")
    found = _client().search_sessions(query, limit=args.limit)
    if not found:
        print(f"No session matches {query!r}.")
    for rank, hit in enumerate(found, start=1):
        owner = f" · {_access(hit)}" if hit.get("shared_by") else ""
        print(f"{rank}. {_clip(hit['title'])} ({hit['id'][:8]}){owner}")
        if hit["snippet"]:
            print(f"   {' '.join(hit['snippet'].split())}")
    return 0


def _share(args: argparse.Namespace) -> int:
    client = _client()
    session_id = client.resolve_session_id(args.id)
    client.share(session_id, args.user, write=args.write)
    print(f"Shared {session_id[:8]} with {args.user} ({'read and write' if args.write else 'read only'}).")
    return 0


def _unshare(args: argparse.Namespace) -> int:
    client = _client()
    session_id = client.resolve_session_id(args.id)
    client.unshare(session_id, args.user)
    print(f"{args.user} can no longer open {session_id[:8]}.")
    return 0


def _shares(args: argparse.Namespace) -> int:
    client = _client()
    session_id = client.resolve_session_id(args.id)
    shares = client.shares(session_id)
    if not shares:
        print(f"{session_id[:8]} is shared with nobody.")
        return 0
    print(format_table([["USER", "ACCESS"], *([share["user"], "read and write" if share["write"] else "read only"] for share in shares)]))
    return 0


def _show(args: argparse.Namespace) -> int:
    from ..render import transcript

    client = _client()
    session = client.get_session(client.resolve_session_id(args.id))
    if args.last:
        session["messages"] = session["messages"][-args.last :]
    if args.json:
        print(_json(session, indent=2))
    else:
        print(transcript(session, escape=terminal_text, sent=args.explain), end="")
    return 0


def _keys_from_dotenv() -> DotenvResult | None:
    """The keys of the working directory's ``.env``, taken as a notebook kernel started here takes them.

    Called by the commands that reach a model.
    """
    from ..kernel.envfile import load_dotenv

    return load_dotenv(os.getcwd())


def _chat(args: argparse.Namespace) -> int:
    from .terminal_chat import run_terminal_chat

    _keys_from_dotenv()
    client = _client(args.model)
    client.warm_up(args.model)  # the first turn's imports and model load happen while the user types
    run_terminal_chat(client, args.id)
    return 0


def _ask(args: argparse.Namespace) -> int:
    options = AskOptions.parsed(args, new_by_default=True)
    prompt = _read_prompt(options.prompt)
    _keys_from_dotenv()
    client = _client(options.model)
    if options.session:
        session_id = client.resolve_session_id(options.session)
    else:
        client.models_for(None)  # with no model configured, fail before creating a session that would stay empty
        session_id = client.create_session_sync(title=options.title, title_from_prompt=True)
        print(f"oblix: new session {session_id}", file=sys.stderr)
    if options.model:  # as in a %%oblix cell: the session keeps this model from now on
        client.set_model(session_id, options.model)
    result = client.turn(
        prompt,
        session_id,
        stream_to=sys.stdout,
        history=not options.no_history,
        temperature=options.temperature,
        max_tokens=options.max_tokens,
        tools=False if options.no_tools else None,
    )
    if not result.response.endswith("\n"):
        print()
    for model, reason in result.failed_models:
        print(f"oblix: {model} failed ({reason}); answered by {result.model}.", file=sys.stderr)
    if result.notice:
        print(f"oblix: {result.notice}", file=sys.stderr)
    return 0


def _read_prompt(words: Sequence[str]) -> str:
    """The prompt from the arguments; from stdin for ``-``, or when nothing is given and stdin is piped."""
    if list(words) in ([], ["-"]):
        if not words and sys.stdin.isatty():
            raise BadArguments("no prompt: give one, or pipe one in (echo hi | oblix ask -).")
        text = sys.stdin.read()
    else:
        text = " ".join(words)
    if not text.strip():
        raise BadArguments("the prompt is empty.")
    return text.strip()


def _export(args: argparse.Namespace) -> int:
    client = _client()
    print(f"Exported to {client.export_session(client.resolve_session_id(args.id), args.path)}")
    return 0


def _import(args: argparse.Namespace) -> int:
    print(_client().import_session(args.path, keep_id=args.keep_id))
    return 0


def _rename(args: argparse.Namespace) -> int:
    title = " ".join(args.title).strip()
    if not title:
        raise BadArguments("the title is empty.")
    client = _client()
    session_id = client.resolve_session_id(args.id)
    client.rename_session(session_id, title)
    print(f"Renamed {session_id[:8]} to {title!r}.")
    return 0


def _delete(args: argparse.Namespace) -> int:
    client = _client()
    session_id = client.resolve_session_id(args.id)  # acted on as resolved, never as read back from the stored row
    session = client.get_session(session_id)
    described = f"{session['title']!r} ({session_id[:8]}, {len(session['messages'])} messages)"
    if not args.yes:  # --yes, or its notebook spelling --force
        if not sys.stdin.isatty():
            raise BadArguments(f"not deleting {described} without --yes: stdin is not a terminal to confirm on.")
        try:
            answer = input(terminal_text(f"Delete {described}? [y/N] "))  # on a terminal, input() writes past sys.stdout
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("Kept.")
            return 0
    client.delete_session(session_id)
    print(f"Deleted {described}.")
    return 0


def _prune(args: argparse.Namespace) -> int:
    doomed = _client().prune_sessions(args.older_than, dry_run=args.dry_run)
    print(f"{'Would delete' if args.dry_run else 'Deleted'} {len(doomed)} session(s){':' if doomed else '.'}")
    for session_id in doomed:
        print(f"  {session_id}")
    return 0


def _database(args: argparse.Namespace) -> str:
    """The DSN a ``db`` action works on: ``--dsn``, else ``$OBLIX_STORE`` when it names a database."""
    from ..client import is_connection_string

    dsn = args.dsn or os.environ.get("OBLIX_STORE", "")
    if args.dsn is None and not is_connection_string(dsn):
        raise BadArguments("which database? Give --dsn, or set OBLIX_STORE=postgresql://... (the store's administrator's).")
    return dsn


def _db_upgrade(args: argparse.Namespace) -> int:
    from ..client import OblixClient

    dsn = _database(args)
    applied = OblixClient.upgrade_database(dsn)
    version = OblixClient.database_status(dsn)[0]
    done = f"applied {applied} migration(s)" if applied else "already up to date"
    print(f"{OblixClient.describe_store(dsn)}: {done}; schema version {version}.")
    return 0


def _db_status(args: argparse.Namespace) -> int:
    from ..client import OblixClient

    dsn = _database(args)
    current, latest = OblixClient.database_status(dsn)
    if current == latest:
        state = "up to date"
    elif current < latest:
        state = f"this oblix_jupyter needs {latest}: run `oblix db upgrade`"
    else:
        state = f"newer than this oblix_jupyter understands ({latest}): upgrade oblix_jupyter"
    print(f"{OblixClient.describe_store(dsn)}: schema version {current}, {state}.")
    return 0


def _db_add_user(args: argparse.Namespace) -> int:
    from ..client import OblixClient

    OblixClient.add_database_user(_database(args), args.name)
    print(f"{args.name} is a user of the session database (give the role a password if the server asks for one).")
    return 0


def _db_import_files(args: argparse.Namespace) -> int:
    from ..client import OblixClient

    dsn = _database(args)
    counts = OblixClient(store=dsn).import_files(args.directory)
    print(
        f"Copied {counts['copied']} session(s) and {counts['bindings']} notebook binding(s) to {OblixClient.describe_store(dsn)}; "
        f"{counts['skipped']} already there, {counts['failed']} failed, {counts['unreadable']} unreadable."
    )
    return 1 if counts["failed"] else 0


def _local_add(args: argparse.Namespace) -> int:
    from ..client import OblixClient

    model = OblixClient.add_local_model(args.path, args.name)
    print(f"{model} is ready: use --model {model}, or OBLIX_MODEL={model}.")
    return 0


def _local_list(args: argparse.Namespace) -> int:
    from ..client import OblixClient

    print(format_table([["MODEL", "FILE"], *([model, _one_line(what)] for model, what in OblixClient.local_models())]))
    return 0


def _local_remove(args: argparse.Namespace) -> int:
    from ..client import OblixClient

    path = OblixClient.remove_local_model(args.name)
    print(f"local/{args.name.removeprefix('local/')} removed; its file {path} was left where it is.")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from ..client import OblixClient

    dotenv = _keys_from_dotenv()  # first: the key checks below must see what a notebook started here would
    try:
        rows = [["oblix", __version__], *([what, _one_line(state)] for what, state in _client().diagnose())]
    except StoreUnavailable as error:  # the store is what must be fixed first; the model rows need a client
        rows = [["oblix", __version__], ["store", OblixClient.describe_store()], ["store state", f"not answering: {_one_line(error)}"]]
        rows += [
            ["saved locally", f"{waiting} message(s) waiting for {location} as {user}" + (f", {refused} refused" if refused else "")]
            for location, user, waiting, refused in OblixClient.waiting_on_this_machine()
        ]
    rows.append([".env", dotenv.describe() if dotenv else f"none in {os.getcwd()}"])
    rows.append(["lab extension", _lab_extension_status()])
    print(format_table(rows))
    return 0


_RUN: dict[str, Callable[[argparse.Namespace], int]] = {
    "sessions": _sessions, "show": _show, "chat": _chat, "ask": _ask, "export": _export, "import": _import,
    "rename": _rename, "delete": _delete, "prune": _prune, "search": _search, "share": _share, "unshare": _unshare,
    "shares": _shares, "db upgrade": _db_upgrade, "db status": _db_status, "db add-user": _db_add_user,
    "db import-files": _db_import_files, "local add": _local_add, "local list": _local_list,
    "local remove": _local_remove, "doctor": _doctor,
}


def _lab_extension_status() -> str:
    """Installed and enabled, judged from the files JupyterLab itself reads (no subprocess)."""
    from jupyter_core.paths import jupyter_config_path, jupyter_path

    installed = [
        os.path.join(directory, LAB_EXTENSION)
        for directory in jupyter_path("labextensions")
        if os.path.isfile(os.path.join(directory, LAB_EXTENSION, "package.json"))
    ]
    if not installed:
        return f"not installed (no {LAB_EXTENSION}/package.json in any Jupyter labextensions directory)"
    for directory in jupyter_config_path():
        page_config = os.path.join(directory, "labconfig", "page_config.json")
        try:
            with open(page_config, encoding="utf-8") as handle:
                disabled = json.load(handle).get("disabledExtensions") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(disabled, list):  # the layout before JupyterLab 3
            disabled = dict.fromkeys(disabled, True)
        if any(off and name.split(":")[0] == LAB_EXTENSION for name, off in disabled.items()):
            return f"installed in {installed[0]}, but disabled in {page_config} (jupyter labextension enable {LAB_EXTENSION})"
    return f"installed in {installed[0]}, enabled"


# -- output -------------------------------------------------------------------------


def format_table(rows: list[list[str]]) -> str:
    """Rows as left-aligned columns, the widest cell of each setting its width.

    Each cell is made one line of terminal text first, so that what is measured is what
    the terminal will show.
    """
    rows = [[" ".join(terminal_text(cell).split()) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _json(value: object, indent: int | None = None) -> str:
    """``value`` as JSON whose C1 controls and DEL are escapes: the same data, nothing for a terminal to obey.

    ``json.dumps`` escapes the C0 controls itself; without ``ensure_ascii`` it writes the
    others raw, and the terminal filter would then drop them from the data.
    """
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    return _C1_CONTROLS.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


_C1_CONTROLS = re.compile(r"[\x7f-\x9f]")


def _one_line(text: object) -> str:
    """A message (an error, a state) on one line: libpq, for one, puts its hints on lines of their own."""
    return " ".join(str(text).split())


def _clip(text: str, width: int = TITLE_WIDTH) -> str:
    text = " ".join(terminal_text(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, *rest: Any) -> None:
    """Warnings (an unreadable session file...) as one line for a person, not a source location."""
    print(f"oblix: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
