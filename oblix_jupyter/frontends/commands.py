"""The one table of commands and options that both ``oblix`` and ``%oblix``/``%%oblix`` parse with.

Each command and option is declared once, with its help and the front ends that
offer it, so the same action has the same name, flags and help wherever it is typed;
``cli.py`` and ``magics.py`` build their argparse parsers from it (argparse rather than
click: IPython's ``magic_arguments``, which gives ``%%oblix?`` its help, is argparse,
and one parser library keeps ``oblix --version`` and ``%load_ext`` as light as before).
An old spelling stays accepted as an alias after the canonical flag; help shows the
canonical one first.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from ..errors import BadArguments

if TYPE_CHECKING:
    from ..client import OblixClient

FrontEnd = Literal["cli", "magic"]
BOTH: frozenset[FrontEnd] = frozenset(("cli", "magic"))
CLI: frozenset[FrontEnd] = frozenset(("cli",))
MAGIC: frozenset[FrontEnd] = frozenset(("magic",))


# -- argument types (argparse turns their ArgumentTypeError into a usage error) ------


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, not {text!r}")
    return int(text)


def cell_count(text: str) -> int:
    if not text.isdigit() or int(text) > 50:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 50, not {text!r}")
    return int(text)


def temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 2, not {text!r}")
    return value


def variable_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in names if not name.isidentifier()]
    if bad:
        raise argparse.ArgumentTypeError(f"takes variable names separated by commas; not a name: {', '.join(bad)}")
    return names


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age such as 30d (units: s, m, h, d, w)")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


# -- the table's shape ----------------------------------------------------------------
# NamedTuples rather than dataclasses: ``dataclasses`` imports ``inspect``, which ``oblix --version`` would pay for.


class Arg(NamedTuple):
    """One positional or option: ``names[0]`` is canonical, the rest old spellings still accepted."""

    names: tuple[str, ...]
    help: str = ""
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    default: Any = None
    flag: bool = False  # takes no value: store_true
    nargs: str | None = None
    const: Any = None  # an option's value when it is given without one (with ``nargs="?"``)
    required: bool = False
    choices: tuple[str, ...] | None = None
    repeat: bool = False  # may be given several times (action="append")
    where: frozenset[FrontEnd] = BOTH
    notebook_default: bool = False  # a session positional a notebook fills in with its own session

    @property
    def dest(self) -> str:
        return self.names[0].lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, front_end: FrontEnd) -> None:
        parser.add_argument(*self.names, **self.keywords(front_end))

    def keywords(self, front_end: FrontEnd) -> dict[str, Any]:
        """``add_argument``'s keywords for this argument as ``front_end`` offers it."""
        keywords: dict[str, Any] = {"help": self.help}
        if self.flag:
            return {**keywords, "action": "store_true"}
        if not self.names[0].startswith("-"):
            keywords["metavar"] = self.metavar
            nargs = "?" if self.notebook_default and front_end == "magic" else self.nargs
            return {**keywords, **({"nargs": nargs} if nargs else {})}
        keywords.update(metavar=self.metavar, default=[] if self.repeat else self.default)
        if self.repeat:
            keywords["action"] = "append"
        if self.nargs:
            keywords.update(nargs=self.nargs, const=self.const)
        if self.required:
            keywords["required"] = True
        for name in ("type", "choices"):
            if getattr(self, name) is not None:
                keywords[name] = getattr(self, name)
        return keywords


class Command(NamedTuple):
    """A subcommand: its name, one line of help, its arguments, and the front ends that offer it."""

    name: str
    help: str
    args: tuple[Arg, ...] = ()
    where: frozenset[FrontEnd] = BOTH
    actions: tuple[Command, ...] = ()  # the second word of ``oblix db upgrade``
    exclusive: tuple[str, ...] = ()  # dests of options that cannot be given together

    def offered(self, front_end: FrontEnd) -> tuple[Arg, ...]:
        return tuple(arg for arg in self.args if front_end in arg.where)


def add_arguments(parser: argparse.ArgumentParser, args: tuple[Arg, ...], front_end: FrontEnd, exclusive: tuple[str, ...] = ()) -> None:
    """Declare ``args`` on ``parser`` as ``front_end`` offers them."""
    group = parser.add_mutually_exclusive_group() if exclusive else None
    for arg in args:
        if front_end in arg.where:
            arg.add_to(group if group is not None and arg.dest in exclusive else parser, front_end)


def add_commands(
    subparsers: Any, commands: tuple[Command, ...], front_end: FrontEnd, run: Callable[[str], Any] | None = None, within: str = ""
) -> None:
    """One parser per command ``front_end`` offers (``-h`` only on the command line, where it is the convention).

    ``run`` is given each command's full name (``"db upgrade"``) and what it returns is
    stored as that command's parsed ``run``.
    """
    for command in commands:
        if front_end not in command.where:
            continue
        name = f"{within}{command.name}"
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help, add_help=front_end == "cli")
        add_arguments(sub, command.args, front_end, command.exclusive)
        if command.actions:
            actions = sub.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(sub))
            add_commands(actions, command.actions, front_end, run, within=f"{name} ")
        elif run is not None:
            sub.set_defaults(run=run(name))


# -- the table ------------------------------------------------------------------------

SESSION_ID = "an id or a unique prefix"
SESSION = Arg(("id",), metavar="ID", help=f"the session ({SESSION_ID})")
NOTEBOOK_SESSION = Arg(("id",), metavar="ID", help=f"the session ({SESSION_ID}); in a notebook, default: its own", notebook_default=True)
USER = Arg(("user",), metavar="USER", help="a login role of the session database")
LIMIT = Arg(("--limit",), type=positive, default=20, metavar="N", help="show at most N sessions (default 20)")

# ``oblix ask`` and a ``%%oblix`` cell are one action: asking in a session.
LAST_IMAGE = 0  # ``--image`` without a number: the last cell that displayed one
ASK_OPTIONS: tuple[Arg, ...] = (
    Arg(("--session",), metavar="ID", help=f"continue session ID ({SESSION_ID}) instead of the notebook's or a new one"),
    Arg(("--new",), flag=True, help="start a new session: the command line's default (its id goes to stderr); a notebook binds to it"),
    Arg(("--title",), metavar="TITLE", help="title of the session started by --new (default: from the prompt)"),
    Arg(("--model",), metavar="M", help="litellm model for this session from now on"),
    Arg(("--no-history",), flag=True, help="send no earlier messages"),
    Arg(("--vars",), type=variable_names, default=[], metavar="NAMES", help="notebook variables to include, comma-separated", where=MAGIC),
    Arg(("--format",), choices=("markdown", "code", "text"), default="markdown", help="markdown (default), code (next cell), text", where=MAGIC),
    Arg(("--explain",), flag=True, help="show what context was sent", where=MAGIC),
    Arg(("--temperature",), type=temperature, metavar="T", help="sampling temperature, 0 to 2"),
    Arg(("--max-tokens",), type=positive, metavar="N", help="longest answer, in tokens"),
    Arg(("--error",), flag=True, help="include the last exception and its traceback", where=MAGIC),
    Arg(("--cells",), type=cell_count, default=0, metavar="N", help="include the source of the last N executed cells (0 to 50)", where=MAGIC),
    Arg(("--image",), type=positive, nargs="?", const=LAST_IMAGE, metavar="N", where=MAGIC,
        help="attach the images cell N displayed (alone: the last cell that showed one)"),
    # Tools look into a kernel, so only a notebook has any to withhold.
    Arg(("--no-tools",), flag=True, help="offer the model no tools for this cell", where=MAGIC),
    Arg(("prompt",), metavar="PROMPT", nargs="*", help="the question; '-' or nothing reads it from piped stdin", where=CLI),
)


COMMANDS: tuple[Command, ...] = (
    Command(
        "sessions",
        "List sessions, most recently updated first.",
        (
            LIMIT,
            Arg(("--all",), flag=True, help="show every session, not only the first N"),
            Arg(("--search",), metavar="TEXT", help="only sessions whose title or messages contain TEXT"),
            Arg(("--json",), flag=True, help="one JSON object per line instead of a table", where=CLI),
        ),
        exclusive=("limit", "all"),
    ),
    Command("new", "Start a new session for this notebook.", (Arg(("title",), metavar="TITLE", nargs="*"),), where=MAGIC),
    Command("use", "Bind this notebook to session ID.", (SESSION,), where=MAGIC),
    Command(
        "show",
        "Show a conversation (on the command line, as Markdown).",
        (
            NOTEBOOK_SESSION,
            Arg(("--last",), type=positive, metavar="N", help="only the last N messages"),
            Arg(("--explain",), flag=True, help="under each answer, what its model was sent (kept with the answer)"),
            Arg(("--json",), flag=True, help="the session as JSON, in the seed's shape", where=CLI),
        ),
    ),
    Command(
        "chat",
        "Chat in the terminal, in a new session or in session ID.",
        (
            Arg(("id",), metavar="ID", nargs="?", help=f"the session ({SESSION_ID}); default: a new one"),
            Arg(("--model",), metavar="M", help="litellm model string for a new session (default: OBLIX_MODEL)"),
        ),
        where=CLI,
    ),
    Command("chat", "Show the chat panel, in this notebook's session.", where=MAGIC),
    Command("ask", "Ask one question; the answer is streamed to stdout.", ASK_OPTIONS, where=CLI),
    Command(
        "export",
        "Write a session to PATH: .ipynb, .md or .json, by extension.",
        (NOTEBOOK_SESSION, Arg(("path",), metavar="PATH")),
    ),
    Command(
        "import",
        "Add the session in PATH (.json or an .ipynb exported by oblix); prints its id, or in a notebook continues it.",
        (Arg(("path",), metavar="PATH"), Arg(("--keep-id",), flag=True, help="keep the file's session id when it is free")),
    ),
    Command(
        "rename",
        "Give a session a new title (in a notebook, its own session).",
        (Arg(("id",), metavar="ID", where=CLI, help=f"the session ({SESSION_ID})"), Arg(("title",), metavar="TITLE", nargs="+")),
    ),
    Command(
        "delete",
        "Delete a session; without --yes, asks first on a terminal and keeps a notebook's own session.",
        (
            SESSION,
            Arg(
                ("--yes", "--force"),
                flag=True,
                help="delete without asking (--force: the old spelling, still accepted)",
            ),
        ),
    ),
    Command(
        "prune",
        "Delete the sessions not updated for a while.",
        (
            Arg(("--older-than",), type=duration, required=True, metavar="AGE", help="e.g. 90m, 12h, 30d, 8w"),
            Arg(("--dry-run",), flag=True, help="only list what would be deleted"),
        ),
        where=CLI,
    ),
    Command(
        "search",
        "Find sessions by their title and messages, best match first.",
        (Arg(("query",), metavar="QUERY", nargs="+", help='words; on PostgreSQL also "phrases", -not and or'), LIMIT),
        where=CLI,
    ),
    Command("model", "Show or set the session's model.", (
        Arg(("model",), metavar="M", nargs="?", help="a litellm model string"),
        Arg(("--fallbacks",), metavar="M1,M2", help="comma-separated fallback models for this session"),
    ), where=MAGIC),
    Command("context", "Show or change the session's context.", (
        Arg(("pairs",), metavar="KEY=VALUE", nargs="*"),
        Arg(("--clear",), metavar="KEY", repeat=True, help="remove KEY (may be repeated)"),
    ), where=MAGIC),
    Command("pin", "Always send this message (e.g. msg_3).", (Arg(("message",), metavar="MSG_ID"),), where=MAGIC),
    Command("unpin", "Stop always sending this message.", (Arg(("message",), metavar="MSG_ID"),), where=MAGIC),
    Command(
        "share",
        "Let database user USER read session ID (PostgreSQL store only).",
        (SESSION, USER, Arg(("--write",), flag=True, help="let USER add messages too (sharing again without it takes that back)")),
    ),
    Command("unshare", "Stop sharing session ID with USER.", (SESSION, USER)),
    Command("shares", "List who else may read session ID, and who may write.", (SESSION,), where=CLI),
    Command(
        "db",
        "Administer the team's PostgreSQL store: upgrade, status, add-user, import-files.",
        (Arg(("--dsn",), metavar="DSN", help="the database to work on (default: $OBLIX_STORE); its password is never shown"),),
        where=CLI,
        actions=(
            Command("upgrade", "Apply the schema migrations the database lacks (as a PostgreSQL superuser).", where=CLI),
            Command("status", "Show the database's schema version and the one this oblix_jupyter needs.", where=CLI),
            Command(
                "add-user",
                "Make login role NAME a user of the store (created without a password if absent).",
                (Arg(("name",), metavar="NAME"),),
                where=CLI,
            ),
            Command(
                "import-files",
                "Copy a session directory into the database, keeping ids; safe to repeat.",
                (Arg(("directory",), metavar="DIR", nargs="?", help="default: $OBLIX_HOME/sessions (~/.oblix/sessions)"),),
                where=CLI,
            ),
        ),
    ),
    Command(
        "local",
        "Register GGUF model files you have, to use as local/NAME: add, list, remove.",
        where=CLI,
        actions=(
            Command(
                "add",
                "Register the GGUF file PATH as local/NAME (the file stays where it is).",
                (
                    Arg(("path",), metavar="PATH"),
                    Arg(("--name",), metavar="NAME", help="default: from the file's name, e.g. qwen2.5-coder-0.5b-instruct-q4_k_m"),
                ),
                where=CLI,
            ),
            Command("list", "List the local models: file, size, context length, measured speed.", where=CLI),
            Command("remove", "Forget local/NAME (its file is not deleted).", (Arg(("name",), metavar="NAME"),), where=CLI),
        ),
    ),
    Command("doctor", "Check the store, the model configuration and the JupyterLab extension.", where=CLI),
    Command("help", "This help.", where=MAGIC),
)

class AskOptions(NamedTuple):
    """A question's options, parsed from ``oblix ask`` or a ``%%oblix`` line (one field per ``ASK_OPTIONS`` entry)."""

    session: str | None = None
    new: bool = False
    title: str | None = None
    model: str | None = None
    no_history: bool = False
    vars: Sequence[str] = ()
    format: str = "markdown"
    explain: bool = False
    temperature: float | None = None
    max_tokens: int | None = None
    error: bool = False
    cells: int = 0
    image: int | None = None  # a cell's execution count, or LAST_IMAGE
    no_tools: bool = False
    prompt: Sequence[str] = ()

    @classmethod
    def parsed(cls, namespace: argparse.Namespace, new_by_default: bool = False) -> AskOptions:
        """The options in ``namespace`` (those its front end does not offer keep their defaults), checked together.

        ``new_by_default``: without ``--session`` the question starts a new session
        (the command line's way; a notebook continues its own).
        """
        given = vars(namespace)
        options = cls(**{name: given[name] for name in cls._fields if name in given})
        if options.new and options.session:
            raise BadArguments("--new and --session cannot be used together.")
        options = options._replace(new=options.new or (new_by_default and not options.session))
        if options.title and not options.new:
            raise BadArguments("--title only goes with a new session (--new).")
        return options


def listed_sessions(client: OblixClient, options: argparse.Namespace) -> list[dict[str, Any]]:
    """The summaries ``sessions [--search TEXT] [--limit N | --all]`` asks for, in either front end."""
    if options.search:
        return client.search_sessions(options.search, limit=sys.maxsize if options.all else options.limit)
    return client.list_sessions(None if options.all else options.limit)  # type: ignore[arg-type]  # None: every one


# -- after a mistake ---------------------------------------------------------------------

_INVALID_CHOICE = re.compile(r"argument (?P<name>[^:]+): invalid choice: '?(?P<word>[^'(]*?)'? \(choose from (?P<choices>.*)\)$")


def explained(message: str, parser: argparse.ArgumentParser) -> str:
    """argparse's message as one line that names what a typo most likely meant, never the list of every choice."""
    invalid = _INVALID_CHOICE.match(message)
    if invalid:
        choices = [choice.strip(" '") for choice in invalid["choices"].split(",")]
        what = "command" if invalid["name"] in ("COMMAND", "ACTION") else invalid["name"]
        close = closest(invalid["word"], choices)
        hint = f"did you mean {close!r}?" if close else f"`{parser.prog} --help` lists them."
        where = f" in `{parser.prog}`" if " " in parser.prog else ""  # a subcommand's own choices
        return f"no {what} {invalid['word']!r}{where}; {hint}"
    if not message.startswith("unrecognized arguments:"):
        return message
    known = _option_strings(parser)
    typed = [word.split("=", 1)[0] for word in message.partition(":")[2].split() if word.startswith("-")]
    guesses = list(dict.fromkeys(filter(None, (closest(word, known) for word in typed))))
    return message + (f" (did you mean {' or '.join(guesses)}?)" if guesses else "")


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice a mistyped ``word`` most likely meant, if one is close enough."""
    import difflib  # only after a mistake: %load_ext stays light

    close = difflib.get_close_matches(word, choices, n=1)
    return close[0] if close else None


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option of ``parser`` and of its subcommands: the top parser reports what none of them took."""
    found = []
    for action in parser._actions:
        found += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _option_strings(sub)
    return list(dict.fromkeys(found))
