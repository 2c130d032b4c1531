"""``%%oblix`` and ``%oblix``: the notebook front end over ``OblixClient``.

Parsing and display only: sessions, models and context are the client's business.
Configuration uses traitlets, so ``%config Oblix.model = "..."`` and
``c.Oblix.model`` in ``ipython_config.py`` both work.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from IPython.utils._process_common import arg_split
from traitlets import Bool, Enum, Float, Int, List, Unicode, observe, validate

from ..client import OblixClient
from ..errors import AnswerInterrupted, BadArguments, OblixError
from ..kernel.binding import NotebookBinding
from ..kernel.envfile import load_dotenv
from ..kernel.images import NotebookImage, figure_image, install, memory_of
from ..redaction import WITHHELD, is_secret_name
from ..render import local_time, prepare
from .comm import LabExtension
from .commands import ASK_OPTIONS, COMMANDS, LAST_IMAGE, AskOptions, add_commands, closest, explained, listed_sessions
from .display import (
    Attached,
    Conversation,
    Message,
    PlanView,
    StreamingOutput,
    Table,
    code_blocks,
    footer,
)
from .handle import SessionHandle

if TYPE_CHECKING:
    from ..client import TurnResult
    from ..kernel.code_tool import Ask

_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*)(?:\[(-?\d+)\])?\}")


def interpolate(text: str, namespace: Mapping[str, Any], named: Collection[str] = ()) -> str:
    """Replace ``{name}`` and ``{name[i]}`` (e.g. ``{In[3]}``) by values; ``{{``/``}}`` escape.

    Unknown names, bad indexes and values whose ``str`` fails are left as typed. A
    secret-looking variable gives its value only when ``named`` (``--vars``) holds it;
    the client redacts the rest of the prompt.
    """

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name, index = match.group(1), match.group(2)
        if name not in namespace:
            return token
        if is_secret_name(name) and name not in named:
            return WITHHELD
        try:
            value = namespace[name]
            if index is not None:
                value = value[int(index)]
            return str(value)
        except Exception:  # whatever a user object raises, the prompt stays as typed
            return token

    return _FIELD.sub(replace, text)


class _Parser(argparse.ArgumentParser):
    """argparse that raises ``BadArguments`` (with the usage line) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BadArguments(f"{explained(message, self)}\n{usage(self)}")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise BadArguments((message or "").strip() or usage(self))


def usage(parser: argparse.ArgumentParser) -> str:
    """The usage line, without the reST markup IPython's help formatter adds."""
    return "usage: " + " ".join(parser.format_usage().replace("::", "").split()).removeprefix("usage: ")


def split_line(line: str) -> list[str]:
    try:
        return arg_split(line, posix=True)
    except ValueError as error:  # e.g. "No closing quotation"
        raise BadArguments(f"Could not read the options: {error}.") from None


def parse_cell_options(line: str) -> AskOptions:
    """Parse a ``%%oblix`` line; raises ``BadArguments`` for anything it cannot accept.

    The options are those of ``oblix ask`` (``commands.ASK_OPTIONS``), declared on
    ``Oblix.oblix_cell`` with ``magic_arguments``, which also gives ``%%oblix?`` its help.
    """
    parser = Oblix.oblix_cell.parser
    try:
        options = parser.parse_args(split_line(line))
    except UsageError as error:
        raise BadArguments(f"{explained(str(error), parser)}\n{usage(parser)}") from None
    except SystemExit:  # argparse exits on --help-like input despite add_help=False in some versions
        raise BadArguments(usage(parser)) from None
    return AskOptions.parsed(options)


def with_ask_options(magic: Callable[..., Any]) -> Callable[..., Any]:
    """``magic_arguments`` for every ``ASK_OPTIONS`` entry a notebook offers, in the table's order."""
    for option in reversed(ASK_OPTIONS):
        if "magic" in option.where:
            magic = argument(*option.names, **option.keywords("magic"))(magic)
    return magic_arguments(name="%oblix")(magic)  # IPython adds one more "%"


@functools.cache
def line_parser() -> _Parser:
    """The ``%oblix`` command parser, built on first use to keep ``%load_ext`` fast."""
    parser = _Parser(prog="%oblix", add_help=False, description="Manage this notebook's Oblix sessions.")
    add_commands(parser.add_subparsers(dest="command", parser_class=_Parser), COMMANDS, "magic", lambda name: _HANDLERS[name])
    return parser


def _commands() -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """``%oblix``'s commands in the order declared: each one's parser and its help line."""
    subcommands = next(action for action in line_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return {choice.dest: (subcommands.choices[choice.dest], choice.help or "") for choice in subcommands._choices_actions}


def parse_line_command(line: str) -> argparse.Namespace:
    """Parse a ``%oblix`` line; raises ``BadArguments`` for anything it cannot accept.

    An unknown command gets one line naming the closest one, and a command's own
    mistakes its own usage line, rather than the list of every command.
    """
    command, *words = split_line(line) or ["help"]
    commands = _commands()
    if command not in commands:
        close = closest(command, list(commands))
        hint = f"did you mean `%oblix {close}`?" if close else "`%oblix help` lists the commands."
        raise BadArguments(f"%oblix has no command {command!r}; {hint}")
    options = commands[command][0].parse_args(words)
    options.command = command
    return options


@magics_class
class Oblix(Magics):
    """Persistent, notebook-bound conversations with language models."""

    model = Unicode(None, allow_none=True, help="litellm model for new sessions (else OBLIX_MODEL)").tag(config=True)
    fallback_models = List(Unicode(), default_value=None, allow_none=True, help="models tried when one fails").tag(config=True)
    base_dir = Unicode(None, allow_none=True, help="session store directory (else ~/.oblix/sessions)").tag(config=True)
    store = Unicode(
        None, allow_none=True, help="where sessions live: a directory or a postgresql:// URL; wins over base_dir and OBLIX_STORE"
    ).tag(config=True)
    max_input_tokens = Int(None, allow_none=True, help="override the model's input window").tag(config=True)
    local_max_input_tokens = Int(
        None, allow_none=True, help="input tokens for local/ models (else what they read in about 3 s)"
    ).tag(config=True)
    show_footer = Bool(True, help="show model, session and tokens under each answer").tag(config=True)
    tools = Bool(True, help="let models that can call tools look at variables, cells and the conversation (read-only)").tag(config=True)
    tool_rounds = Int(5, help="most model requests in one turn when it calls tools").tag(config=True)
    image_max_px = Int(1024, help="an attached image's longest side, in pixels, as the model gets it (at least 64)").tag(config=True)
    run_code = Enum(
        ("ask", "never"), "ask", help="let a model that calls tools propose code, which runs only once you approve it; or never"
    ).tag(config=True)
    run_timeout = Float(None, allow_none=True, help="seconds an approved run may take before it is interrupted (else 120)").tag(config=True)
    max_runs = Int(None, allow_none=True, help="runs one answer may ask for (else 5)").tag(config=True)

    def __init__(self, shell: Any, **kwargs: Any) -> None:
        # Set before the traits: loading a profile's configuration calls _configuration_changed.
        self._client: OblixClient | None = None
        self._binding: NotebookBinding | None = None
        self._reported_path: str | None = None
        self._dotenv_loaded = False
        self._dotenv_notice = ""  # what the .env loaded and ignored, until a footer has shown it
        self._panel: Any = None
        self.lab = LabExtension(self.follow_path, self.chat_panel)
        self.warming: threading.Thread | None = None  # what a first turn would do first, done after %load_ext
        super().__init__(shell=shell, **kwargs)

    @validate("image_max_px")
    def _image_max_px_at_least_64(self, proposal: Any) -> int:
        """Held here, once: the turn and the kernel's head start must shrink to the same size, or the one never finds the other's work."""
        return max(64, proposal["value"])

    @observe(
        "model", "fallback_models", "base_dir", "store", "max_input_tokens", "local_max_input_tokens", "tools", "tool_rounds", "image_max_px",
        "run_code", "run_timeout", "max_runs",
    )
    def _configuration_changed(self, change: Any) -> None:
        self._client = None
        self._binding = None
        if self._panel is not None:  # an open chat panel follows the new model and store
            self._panel.use_client(self.client, self.binding)

    @property
    def client(self) -> OblixClient:
        if self._client is None:
            self._client = OblixClient(
                model=self.model or None,
                fallback_models=self.fallback_models,
                store=self.store or self.base_dir or None,
                max_input_tokens=self.max_input_tokens or None,
                local_max_input_tokens=self.local_max_input_tokens or None,
                tools=self.tools,
                max_tool_rounds=max(1, self.tool_rounds),
                image_max_px=self.image_max_px,
                run_code=self.run_code,
                run_timeout=self.run_timeout,
                max_runs=self.max_runs,
            )
        return self._client

    @property
    def binding(self) -> NotebookBinding:
        if self._binding is None:
            self._binding = NotebookBinding(self.client, self.shell.user_ns)
            self._binding.reported_path = self._reported_path
        return self._binding

    def follow_path(self, path: str) -> None:
        """Called when the JupyterLab extension reports this notebook's path."""
        self.binding.follow_path(path)
        self._reported_path = path

    @property
    def rich(self) -> bool:
        """True in a Jupyter kernel (display updates work); False in terminal IPython."""
        return getattr(self.shell, "kernel", None) is not None

    def _prepare(self) -> None:
        """Per-turn set-up that must not run at load time: .env keys."""
        if not self._dotenv_loaded:
            self._dotenv_loaded = True
            dotenv = load_dotenv(os.getcwd())
            if dotenv is not None:
                self._dotenv_notice = dotenv.describe()

    def _with_dotenv_notice(self, footer_line: str) -> str:
        """``footer_line``, and on the first answer after the .env was read, what it loaded and ignored.

        Shown once, even with ``show_footer`` off: it tells the user which of their keys
        came from a file and which of its settings were refused.
        """
        notice, self._dotenv_notice = self._dotenv_notice, ""
        return " · ".join(part for part in (footer_line, notice) if part)

    # -- %%oblix ---------------------------------------------------------------------

    @with_ask_options
    @cell_magic("oblix")
    def oblix_cell(self, line: str, cell: str) -> None:
        """Ask the model in this notebook's session; the cell body is the prompt.

        ``{name}`` in the prompt is replaced by the variable's value (``{{`` escapes).
        Variables named in --vars, written as ``{name}`` or mentioned in the prompt are
        summarised for the model; secret-looking names only when --vars names them.
        """
        stream: StreamingOutput | None = None
        try:
            options = parse_cell_options(line)
            prompt = interpolate(cell, self.shell.user_ns, options.vars).strip()
            if not prompt:
                raise BadArguments("The cell is empty: write the question below the %%oblix line.")
            images = self._images(options.image, cell)  # before anything is written: a wrong --image changes nothing
            stream = StreamingOutput(self.rich, as_text=options.format == "text")
            stream.waiting()  # at once: what follows may write the session and summarise variables first
            session_id = self._session_for(options)
            if options.model:
                self.client.set_model(session_id, options.model)
            self._prepare()
            from ..kernel.state import gather_notebook_context
            from ..kernel.variables import summarize_variables

            # Variables are read from the cell as typed: {name} still marks a reference there.
            variables = summarize_variables(self.shell.user_ns, cell, named=options.vars)
            notebook = gather_notebook_context(self.shell, force_error=options.error, force_cells=options.cells)
            turn = functools.partial(
                self.client.turn,
                prompt,
                session_id,
                stream_to=stream,
                history=not options.no_history,
                temperature=options.temperature,
                max_tokens=options.max_tokens,
                variables=variables,
                notebook=notebook,
                tools=False if options.no_tools else None,
                on_tool=stream.tool,
                on_model=stream.waiting,
                images=images,
            )
        except (OblixError, KeyboardInterrupt) as error:
            if stream is not None:
                stream.close()
            display(Message(str(error)) if isinstance(error, OblixError) else Message("Interrupted before the model was asked.", error=False))
            return
        conclude = functools.partial(self._conclude, stream, options, images)
        if not self.lab.connected or options.no_tools or not self.tools or self.run_code == "never":
            conclude(lambda: turn(ask=self._terminal_ask()), display)
            return
        from .handoff import CellHandoff  # ipywidgets: only where the lab extension shows the boxes

        handoff = CellHandoff(stream, self.lab.insert_cell, self.lab.keep_output)
        handoff.run(lambda ask: turn(ask=ask, should_stop=handoff.stop.is_set), conclude)

    def _terminal_ask(self) -> Ask | None:
        """How terminal IPython asks before code a model proposed runs (y/N/e); None in a kernel without the lab extension: nobody can approve."""
        if self.rich or not sys.stdin.isatty():
            return None
        from .terminal_approval import ask_in_terminal

        return ask_in_terminal

    def _conclude(
        self, stream: StreamingOutput, options: AskOptions, images: list[NotebookImage], outcome: Callable[[], TurnResult], show: Callable[[Any], None]
    ) -> None:
        """Show how a cell's turn ended, ``outcome()`` giving its result or raising; ``show`` puts more below the answer."""
        try:
            result = outcome()
            stream.finish(result.response, self._with_dotenv_notice(footer(result) if self.show_footer else ""))
            if images and result.session_id:
                self._show_attached(result.session_id, show)
            if self._panel is not None:
                self._panel.refresh()
            if options.explain:
                show(PlanView(result.plan))
            if options.format == "code":
                self._next_cell(result.response, show, in_cell=show is display)
        except AnswerInterrupted as stopped:
            stream.finish(stopped.partial, self._with_dotenv_notice("interrupted: the partial answer was kept"))
        except KeyboardInterrupt:
            show(Message("Interrupted. Your message was kept in the session.", error=False))
        except OblixError as error:
            if stream.text:
                stream.finish(stream.text, self._with_dotenv_notice("failed: the partial answer was kept"))
            show(Message(str(error)))
        finally:
            stream.close()

    def _session_for(self, options: AskOptions) -> str:
        if options.new:
            return self.binding.new_session(options.title or None)
        if options.session:
            return self.client.resolve_session_id(options.session)
        session_id = self.binding.session_id(create=True)
        assert session_id is not None
        return session_id

    def _show_attached(self, session_id: str, show: Callable[[Any], None]) -> None:
        """Thumbnails of the images the cell's question carried, as the session keeps them (what the model was sent)."""
        asked = next((m for m in reversed(self.client.get_session(session_id)["messages"]) if m.get("role") == "user"), {})
        if asked.get("attachments"):
            show(Attached(asked["attachments"], functools.partial(self.client.read_attachment, session_id)))

    def _images(self, image: int | None, cell: str) -> list[NotebookImage]:
        """What the cell attaches: the images cell ``image`` displayed (``--image``), then each matplotlib figure it names as ``{name}``."""
        chosen: list[NotebookImage] = []
        if image is not None:
            memory = memory_of(self.shell)
            if memory is None:
                raise BadArguments("--image needs a Jupyter kernel: this shell does not show which images cells displayed.")
            number = memory.last_cell() if image == LAST_IMAGE else image
            chosen = memory.images_of(number) if number is not None else []
            if not chosen:
                where = f"Cell {number} displayed no image" if number is not None else "No cell has displayed an image"
                raise BadArguments(f"{where} since Oblix was loaded (%load_ext oblix_jupyter); run the cell that shows it again.")
        namespace = self.shell.user_ns
        for name in dict.fromkeys(match.group(1) for match in _FIELD.finditer(cell) if match.group(1)):
            figure = figure_image(namespace[name], name) if name in namespace else None
            if figure is not None:
                chosen.append(figure)
        return chosen

    def _next_cell(self, answer: str, show: Callable[[Any], None], in_cell: bool) -> None:
        """The answer's first code block as the next cell: set by IPython while the cell runs, else asked of the page."""
        blocks = code_blocks(answer)
        if not blocks:
            show(Message("--format code: the answer has no code block.", error=False))
        elif in_cell:
            self.shell.set_next_input(blocks[0], replace=False)
        elif not self.lab.insert_cell(blocks[0]):  # the cell has ended: only the page can add a cell now
            show(Message("--format code: the answer's code could not be put in a new cell (no lab extension).", error=False))

    # -- %oblix ----------------------------------------------------------------------

    @line_magic("oblix")
    def oblix_line(self, line: str) -> Any:
        """Manage this notebook's sessions; ``%oblix help`` lists the commands (``commands.COMMANDS``)."""
        try:
            options = parse_line_command(line)
            return options.run(self, options)
        except OblixError as error:
            display(Message(str(error)))
        return None

    def _command_help(self, options: argparse.Namespace) -> None:
        for table in help_tables():
            display(table)

    def _command_sessions(self, options: argparse.Namespace) -> None:
        client = self.client
        sessions = listed_sessions(client, options)
        bound = self.binding.session_id(create=False)
        snippets = any(s.get("snippet") for s in sessions)  # the database quotes what matched; files have nothing to quote
        rows = [
            [s["title"], s["id"][:8], str(s["message_count"]), s.get("model") or "", local_time(s["updated_at"]),
             _whose(s, bound), *([s.get("snippet") or ""] if snippets else [])]
            for s in sessions
        ]
        display(Table(["title", "id", "messages", "model", "updated", "", *(["match"] if snippets else [])], rows))
        for problem in client.unreadable_sessions():
            display(Message(str(problem)))

    def _command_new(self, options: argparse.Namespace) -> None:
        title = " ".join(options.title) or None
        session_id = self.binding.new_session(title)
        display(Message(f"New session {session_id[:8]} bound to this notebook.", error=False))

    def _command_use(self, options: argparse.Namespace) -> None:
        session_id = self.client.resolve_session_id(options.id)
        self.binding.use(session_id)
        title = self.client.get_session(session_id)["title"]
        display(Message(f"This notebook now continues {title!r} ({session_id[:8]}).", error=False))

    def _target(self, session: str | None, create: bool = False) -> str:
        """The session a command is about: the one named, else the notebook's (made if ``create``)."""
        if session:
            return self.client.resolve_session_id(session)
        session_id = self.binding.session_id(create=create)
        if session_id is None:
            raise BadArguments("This notebook has no session yet: run a %%oblix cell first, or name a session.")
        return session_id

    def _command_show(self, options: argparse.Namespace) -> None:
        session = self.client.get_session(self._target(options.id))
        display(Conversation(session, options.last, options.explain, functools.partial(self.client.read_attachment, session["id"])))

    def _command_delete(self, options: argparse.Namespace) -> None:
        session_id = self.client.resolve_session_id(options.id)
        if session_id == self.binding.session_id(create=False) and not options.yes:  # --yes, or its old spelling --force
            raise BadArguments("That is this notebook's session; add --yes to delete it anyway.")
        self.client.delete_session(session_id)
        display(Message(f"Deleted session {session_id[:8]}.", error=False))

    def _command_rename(self, options: argparse.Namespace) -> None:
        session_id = self._target(None, create=True)
        self.client.rename_session(session_id, " ".join(options.title))
        display(Message(f"Renamed session {session_id[:8]} to {' '.join(options.title)!r}.", error=False))

    def _command_model(self, options: argparse.Namespace) -> None:
        session_id = self._target(None, create=True)
        session = self.client.get_session(session_id)
        if options.model or options.fallbacks is not None:
            chain = self.client.set_model(session_id, options.model or session.get("model"), options.fallbacks)
        else:
            chain = self.client.models_for(session)
        display(Message(f"Model: {chain[0]}; fallbacks: {', '.join(chain[1:]) or 'none'}.", error=False))

    def _command_context(self, options: argparse.Namespace) -> None:
        session_id = self._target(None, create=True)
        if options.pairs or options.clear:
            context = self.client.update_context(session_id, _parse_pairs(options.pairs), clear=options.clear)
        else:
            context = self.client.get_session(session_id).get("context") or {}
        display(Message(json.dumps(context, indent=1, ensure_ascii=False), error=False))

    def _command_pin(self, options: argparse.Namespace) -> None:
        self._set_pinned(options.message, pin=True)

    def _command_unpin(self, options: argparse.Namespace) -> None:
        self._set_pinned(options.message, pin=False)

    def _set_pinned(self, message_id: str, pin: bool) -> None:
        """Pinned messages are always sent, whatever the budget pressure (the selector keeps them first)."""
        pinned = self.client.pin_message(self._target(None), message_id, pinned=pin)
        display(Message(f"Pinned messages: {', '.join(pinned) or 'none'}.", error=False))

    def _command_export(self, options: argparse.Namespace) -> None:
        path = self.client.export_session(self._target(options.id), options.path)
        display(Message(f"Exported to {path}.", error=False))

    def _command_import(self, options: argparse.Namespace) -> None:
        session_id = self.client.import_session(options.path, keep_id=options.keep_id)
        self.binding.use(session_id)
        display(Message(f"Imported session {session_id[:8]}; this notebook now continues it.", error=False))

    def _command_share(self, options: argparse.Namespace) -> None:
        session_id = self.client.resolve_session_id(options.id)
        self.client.share(session_id, options.user, write=options.write)
        access = "read and add to" if options.write else "read"
        display(Message(f"{options.user} can now {access} session {session_id[:8]}.", error=False))

    def _command_unshare(self, options: argparse.Namespace) -> None:
        session_id = self.client.resolve_session_id(options.id)
        self.client.unshare(session_id, options.user)
        display(Message(f"{options.user} can no longer open session {session_id[:8]}.", error=False))

    def chat_panel(self) -> Any:
        """This notebook's chat panel (one per kernel), sharing the session with ``%%oblix`` cells."""
        from .panel import ChatPanel

        if self._panel is None:
            self._panel = ChatPanel(
                self.client,
                namespace=self.shell.user_ns,
                binding=self.binding,
                insert_code=self.lab.insert_cell,
                can_approve=lambda: self.lab.connected,
            )
        return self._panel

    def _command_chat(self, options: argparse.Namespace) -> None:
        display(self.chat_panel())

    def current(self) -> SessionHandle:
        """The notebook's session as a scripting object (created if there is none yet)."""
        session_id = self.binding.session_id(create=True)
        assert session_id is not None
        return SessionHandle(self.client, session_id)


# Each ``%oblix`` command's method, by its name in the command table (a command without one fails the parser's build).
_HANDLERS: dict[str, Callable[[Oblix, argparse.Namespace], None]] = {
    "help": Oblix._command_help, "sessions": Oblix._command_sessions, "new": Oblix._command_new,
    "use": Oblix._command_use, "show": Oblix._command_show, "delete": Oblix._command_delete,
    "rename": Oblix._command_rename, "model": Oblix._command_model, "context": Oblix._command_context,
    "pin": Oblix._command_pin, "unpin": Oblix._command_unpin, "export": Oblix._command_export,
    "import": Oblix._command_import, "share": Oblix._command_share, "unshare": Oblix._command_unshare,
    "chat": Oblix._command_chat,
}


def help_tables() -> tuple[Table, Table]:
    """``%oblix help``: the commands, then a ``%%oblix`` cell's options, a row each, from the parsers that read them."""
    commands = [[usage(parser).removeprefix("usage: "), what] for parser, what in _commands().values()]
    options = [[_invocation(action), action.help or ""] for action in Oblix.oblix_cell.parser._actions]
    return (
        Table(["command", "what it does"], commands, caption="%oblix: this notebook's sessions"),
        Table(["option", "what it does"], options, caption="%%oblix [options]: the rest of the cell is the prompt; {name} puts in a variable's value"),
    )


def _invocation(action: argparse.Action) -> str:
    """An option as it is typed: ``--format {markdown,code,text}``, ``--max-tokens MAX_TOKENS``."""
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    value = "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.metavar or action.dest.upper()
    return f"{', '.join(action.option_strings)} {value}"


def _whose(summary: Mapping[str, Any], bound: str | None) -> str:
    """The listing's note on a session: this notebook's, or someone else's shared with this user."""
    notes = []
    if summary["id"] == bound:
        notes.append("◀ this notebook")
    if summary.get("shared_by"):
        notes.append(f"shared by {summary['shared_by']}")
    return " · ".join(notes)


def _parse_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` words; a VALUE that reads as JSON (numbers, lists...) is kept typed."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadArguments(f"Context entries are KEY=VALUE; got {pair!r}.")
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return parsed


_active: Oblix | None = None


def load(shell: Any) -> Oblix:
    """Register the magics on ``shell`` (once), start warming up the first turn, and listen to the lab extension."""
    global _active
    if _active is not None and _active.shell is shell:
        return _active
    magics = Oblix(shell=shell, parent=shell)
    shell.register_magics(magics)
    shell.configurables.append(magics)
    memory = install(shell)  # from now on, the images cells display can be attached (--image)
    if memory is not None:  # and each cell's figures are made ready for a model while the user reads them
        memory.on_cell_end = lambda images: OblixClient.prepare_images(images, magics.image_max_px)
    if getattr(shell, "kernel", None) is not None:
        magics.lab.listen()
        from ..kernel.main_thread import main_thread_caller

        main_thread_caller()  # the kernel's loop, remembered: an approval clicked on another thread runs its code on this one
    _active = magics
    threading.Thread(target=prepare, name="oblix-render-import", daemon=True).start()  # the first answer's display
    magics.warming = OblixClient.warm_up(magics.model, magics.fallback_models)  # last: its imports compete for the GIL
    return magics


def active() -> Oblix:
    """The loaded magics; ``%load_ext oblix_jupyter`` must have run in this kernel."""
    if _active is None:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            raise BadArguments("Not in IPython: use OblixClient directly, or run %load_ext oblix_jupyter.")
        return load(shell)
    return _active
