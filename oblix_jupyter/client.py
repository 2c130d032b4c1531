"""``OblixClient``: the one public API that the magics, the chat panel and the CLI call.

It decides which session and which model a turn uses, asks the context selector what
to send, has the gateway stream the answer, and has the store record the exchange.
The user's message is written while the request goes out, and the turn waits for that
write before it shows any answer, stores the answer or reports a failure, so no failure
can lose it.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import replace
from datetime import timedelta
from typing import IO, TYPE_CHECKING, Any

from .errors import (
    AnswerInterrupted,
    BadArguments,
    CorruptSession,
    ModelError,
    NoModelConfigured,
    NotPermitted,
    OblixError,
    StoreUnavailable,
    redact,
)
from .models import local_model
from .models.gateway import (
    DEFAULT_ANSWER_RESERVE,
    DEFAULT_MAX_TOOL_ROUNDS,
    ModelGateway,
    ToolRunner,
    configured_models,
    count_tokens,
    local_input_budget,
    max_input_tokens,
    model_notice,
    model_rows,
    split_models,
    supports_tools,
)
from .redaction import is_secret_name, withhold_values
from .store.dsn import check, describe, is_connection_string
from .store.base import ChangeFeed, SessionStore, Sharing, Spooling
from .store.factory import open_store

if TYPE_CHECKING:  # the selector's modules load on the first turn, keeping %load_ext light
    from .context.inputs import NotebookContext, VariableSummary
    from .context.relevance import LexicalIndex
    from .context.selector import ContextPlan
    from .kernel.tools import KernelTools
    from .vectors import VectorCache

TextSink = Callable[[str], Any] | IO[str]
TOKEN_COUNTS = 20_000  # texts whose token count a client remembers per model: a long session's messages, many times over
INDEXED_SESSIONS = 16  # sessions whose word index a client keeps between turns
SPEED_LIMIT_NOTE = "input limited to {tokens} tokens so the local model answers sooner (local_max_input_tokens)"
TITLE_FROM_PROMPT = "title_from_prompt"  # in a session's metadata until its first prompt names it
PROMPT_TITLE_CHARS = 60  # a title made from a prompt is its first line, cut at a word within this length

# Clear while a warm-up does a first turn's imports; turns wait for it rather than import the same modules at
# once, since two threads importing litellm's (circular) modules together can each get the other's half-made one.
_warmed = threading.Event()
_warmed.set()
_warming: threading.Thread | None = None
_leaving = threading.Event()  # Python is exiting: the warm-up skips what it has not started


class OblixClient:
    """Persistent conversations with language models, in the Oblix SDK's shape.

    ``oblix_api_key`` is accepted so code written for the Oblix SDK runs unchanged;
    models are called through litellm, with provider keys from the usual environment
    variables. ``model_options`` maps a model name to extra litellm arguments
    (``api_base``...), which are never written into a session. ``store`` is where the
    sessions live, unless a ``session_manager`` is given: a directory, or a
    connection string (``postgresql://...``, ``host=... dbname=...``) for a team's
    database; by default ``$OBLIX_STORE``, else ``~/.oblix/sessions``. Inside a
    kernel, a model that can call tools may look at the notebook's variables, cells
    and this conversation through read-only tools (``tools=False`` turns them off,
    ``max_tool_rounds`` bounds the requests of a turn).
    """

    def __init__(
        self,
        oblix_api_key: str | None = None,
        model: str | None = None,
        fallback_models: str | Sequence[str] | None = None,
        session_manager: SessionStore | None = None,
        max_input_tokens: int | None = None,
        model_options: dict[str, dict[str, Any]] | None = None,
        local_max_input_tokens: int | None = None,
        timeout: float | None = None,
        semantic: bool | None = None,
        embed_seconds: float = 2.0,
        store: str | os.PathLike[str] | None = None,
        tools: bool = True,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    ) -> None:
        del oblix_api_key  # deliberately not kept: nothing of it may reach a session or a log
        self.model = model
        self.fallback_models = fallback_models
        self.max_input_tokens = max_input_tokens
        self.local_max_input_tokens = local_max_input_tokens
        self.session_manager: SessionStore = session_manager or open_store(store)
        self.current_session_id: str | None = None
        self.gateway = ModelGateway(model_options=model_options, timeout=timeout)
        self.semantic = semantic
        self.embed_seconds = embed_seconds
        # Read-only kernel tools for models that can call them (``kernel.tools``); a turn may turn them off.
        self.tools = tools
        self.max_tool_rounds = max_tool_rounds
        self._token_counters: dict[str, Callable[[str], int]] = {}  # by model, each remembering its last TOKEN_COUNTS texts
        self._indexes: OrderedDict[str, LexicalIndex] = OrderedDict()  # the INDEXED_SESSIONS last used
        self._vectors: VectorCache | None = None
        # Writes the prompt while the request goes out: measured on 1,000 messages (paired, 300 ms first
        # token), 6-9 ms a turn when the selector must choose, about 2 ms (noise) when everything fits.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oblix-store")

    # -- sessions -----------------------------------------------------------------

    async def create_session(
        self,
        title: str | None = None,
        initial_context: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        title_from_prompt: bool = False,
    ) -> str:
        """Create a session and return its id; it is not made current (set ``current_session_id``).

        Without a title it is called "Chat Session" and the date, as the Oblix SDK does;
        with ``title_from_prompt`` that title lasts only until the first prompt is sent,
        and the session is then named after it.
        """
        return self.create_session_sync(title=title, initial_context=initial_context, metadata=metadata, title_from_prompt=title_from_prompt)

    def create_session_sync(
        self,
        title: str | None = None,
        initial_context: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        title_from_prompt: bool = False,
    ) -> str:
        if title_from_prompt and not title:
            metadata = {**(metadata or {}), TITLE_FROM_PROMPT: True}
        return self.session_manager.create_session(initial_context=initial_context, title=title, metadata=metadata)

    def list_sessions(self, limit: int = 10) -> list[dict[str, Any]]:
        """The most recently updated sessions: ``id``, ``title``, ``message_count``, timestamps, ``model``."""
        return self.session_manager.list_sessions(limit=limit)

    def load_session(self, session_id: str) -> dict[str, Any] | None:
        """The full session dict in the seed's shape, or None if there is no such session."""
        return self.session_manager.load_session(session_id)

    def delete_session(self, session_id: str) -> bool:
        """Delete a session and every trace the store keeps of it; False when there was none.

        The vector cache lets go first, so that an embedding of this session still under
        way here cannot write its file again after the store has removed it.
        """
        if self.current_session_id == session_id:
            self.current_session_id = None
        if self._vectors is not None:
            self._vectors.forget(session_id)
        self._indexes.pop(session_id, None)
        return self.session_manager.delete_session(session_id)

    def resolve_session_id(self, id_or_prefix: str) -> str:
        """A full session id from an id or a unique prefix, as the front ends accept."""
        return self.session_manager.resolve_id(id_or_prefix)

    def get_session(self, session_id: str) -> dict[str, Any]:
        """The full session; ``SessionNotFound`` when there is none (``load_session`` returns None instead)."""
        return self.session_manager.get_session(session_id)

    def search_sessions(self, query: str, limit: int = 50) -> list[dict[str, Any]]:
        """Summaries of the sessions whose title or messages match ``query``, best first, each with a ``snippet``.

        The PostgreSQL store ranks by full-text relevance and quotes the best match (its
        words between « and »); the file store finds substrings, newest first, and has no
        snippet to give (``""``), so front ends can show both the same way.
        """
        return [{"snippet": "", **row} for row in self.session_manager.search_sessions(query, limit=limit)]

    def share(self, session_id: str, user: str, write: bool = False) -> None:
        """Let database user ``user`` read the session (and with ``write`` add to it); sharing again changes ``write``."""
        self._sharing_store().share(session_id, user, write=write)

    def unshare(self, session_id: str, user: str) -> None:
        """Take the session back from ``user``; nothing happens if it was not shared with them."""
        self._sharing_store().unshare(session_id, user)

    def can_share(self) -> bool:
        """Whether this store has other users to share sessions with (the PostgreSQL store; files have none)."""
        return isinstance(self.session_manager, Sharing)

    def shares(self, session_id: str) -> list[dict[str, Any]]:
        """Who else may read the session: ``[{"user", "write"}]``; always empty on the file store, which nobody shares."""
        store = self.session_manager
        return store.shares(session_id) if isinstance(store, Sharing) else []

    def _sharing_store(self) -> Sharing:
        """The store, if it can share: only a database knows other users to share with."""
        store = self.session_manager
        if not isinstance(store, Sharing):
            raise BadArguments(
                f"Sessions in {store.location} cannot be shared: sharing needs the PostgreSQL store "
                "(OBLIX_STORE=postgresql://...)."
            )
        return store

    def import_files(self, directory: str | os.PathLike[str] | None = None) -> dict[str, int]:
        """Copy a file store (default ``~/.oblix/sessions``) into this client's store, keeping ids; returns counts.

        Safe to run again: a session already here is skipped, and a binding is copied only
        where this store has none for that notebook, so nothing is copied twice and nothing
        newer is overwritten. A session that cannot be stored (an id another user of the
        database holds, a malformed file) is warned about and counted as ``failed``.
        """
        from .store.files import default_base_dir
        from .store.sessions import SessionManager

        source_dir = os.path.abspath(os.fspath(directory) if directory is not None else default_base_dir())
        if not os.path.isdir(source_dir):
            raise BadArguments(f"There is no session directory {source_dir} to import.")
        source, target = SessionManager(source_dir), self.session_manager
        counts = {"copied": 0, "skipped": 0, "failed": 0, "bindings": 0}
        for session in source.iter_sessions():
            if target.session_version(session["id"]) is not None:  # already here: one row read, not the messages
                counts["skipped"] += 1
                continue
            try:
                target.add_session(session, new_id=False)
            except OblixError as error:
                warnings.warn(f"Session {session['id']} was not copied: {error}", RuntimeWarning, stacklevel=2)
                counts["failed"] += 1
                continue
            counts["copied"] += 1
        for notebook, session_id in source.bindings().items():
            if target.bound_session(notebook) is None and target.session_version(session_id) is not None:
                target.bind(notebook, session_id)
                counts["bindings"] += 1
        counts["unreadable"] = len(source.problems)
        return counts

    def unreadable_sessions(self) -> list[CorruptSession]:
        """The session files the last listing could not read (each is also warned about once)."""
        return list(self.session_manager.problems)

    def rename_session(self, session_id: str, title: str) -> dict[str, Any]:
        return self.session_manager.update_session(session_id, title=title)

    def set_model(self, session_id: str, model: str | None, fallback_models: str | Sequence[str] | None = None) -> list[str]:
        """Pin ``model`` to the session (None: the configured default) and, if given, its own fallbacks; returns the chain.

        ``fallback_models`` may be a list or a comma-separated string, as typed.
        """
        fields: dict[str, Any] = {"model": model}
        if fallback_models is not None:
            fields["fallback_models"] = split_models(fallback_models)
        return self.models_for(self.session_manager.update_session(session_id, **fields))

    def update_context(self, session_id: str, values: dict[str, Any] | None = None, clear: Sequence[str] = ()) -> dict[str, Any]:
        """Set and remove keys of the session's context (sent as a system message); returns the context."""
        context = dict(self.get_session(session_id).get("context") or {})
        context.update(values or {})
        for key in clear:
            context.pop(key, None)
        return self.session_manager.update_session(session_id, context=context)["context"]

    def pin_message(self, session_id: str, message_id: str, pinned: bool = True) -> list[str]:
        """Always send (or, with ``pinned=False``, stop always sending) a message; returns the pinned ids."""
        session = self.get_session(session_id)
        if message_id not in {message.get("id") for message in session["messages"]}:
            raise BadArguments(f"Session {session_id[:8]} has no message {message_id!r}.")
        current = [m for m in session.get("pinned") or [] if m != message_id]
        ids = [*current, message_id] if pinned else current
        return self.session_manager.update_session(session_id, pinned=ids)["pinned"]

    def prune_sessions(self, older_than: timedelta, dry_run: bool = False) -> list[str]:
        """Delete (or with ``dry_run`` only name) the sessions not updated within ``older_than``."""
        doomed = self.session_manager.prune(older_than, dry_run=True)
        if not dry_run:
            for session_id in doomed:
                self.delete_session(session_id)
        return doomed

    def export_session(self, session_id: str, path: str | os.PathLike[str]) -> str:
        """Write the session to ``path`` as ``.json`` (the SDK's shape), ``.ipynb`` or ``.md``; returns the absolute path."""
        from .store.formats import export_session

        return export_session(self.session_manager, session_id, path)

    def import_session(self, path: str | os.PathLike[str], keep_id: bool = False) -> str:
        """Store the session in a ``.json`` or exported ``.ipynb`` file; returns its id (a new one unless ``keep_id`` and free)."""
        from .context.selector import conversation_messages
        from .store.formats import import_session

        session_id = import_session(self.session_manager, path, keep_id=keep_id)
        vectors = self._vector_cache()
        if vectors is not None:  # vectors another session holds are found by content; the rest embedded now, aside
            vectors.update_later(session_id, conversation_messages(self.session_manager.get_session(session_id)))
        return session_id

    def session_version(self, session_id: str) -> Any:
        """A value that changes whenever the session is written, for front ends that follow it."""
        return self.session_manager.session_version(session_id)

    def wait_for_change(self, session_id: str, timeout: float) -> None:
        """Return when ``session_id`` may have changed, at the latest after ``timeout`` seconds.

        A database announces each message as it is stored (LISTEN/NOTIFY), so a panel
        following the session shows another kernel's or a colleague's message at once;
        session files announce nothing, so this only waits and the caller checks
        ``session_version``.
        """
        store = self.session_manager
        if not isinstance(store, ChangeFeed):
            threading.Event().wait(timeout)
            return
        try:
            store.wait_for_changes([session_id], timeout)
        except OblixError:
            threading.Event().wait(timeout)  # the database is away: the caller's next check says so, or finds it back

    def bind(self, notebook: str, session_id: str) -> None:
        """Bind a notebook (its path, or another stable key) to a session."""
        self.session_manager.bind(notebook, session_id)

    def unbind(self, notebook: str) -> None:
        self.session_manager.unbind(notebook)

    def bound_session(self, notebook: str) -> str | None:
        """The session bound to ``notebook``, or None (also when that session was deleted)."""
        return self.session_manager.bound_session(notebook)

    def bindings(self) -> dict[str, str]:
        """Every notebook key and the session bound to it."""
        return self.session_manager.bindings()

    @staticmethod
    def warm_up(model: str | None = None, fallback_models: str | Sequence[str] | None = None) -> threading.Thread:
        """Start doing in the background what a first turn would otherwise do first, so it costs what later ones do.

        For the model new sessions use (``model`` and ``fallback_models`` as for the client):
        litellm and the selector's modules, the tokenizer, and one answer rehearsed through
        the gateway with litellm's mock response (nothing is sent, stored or logged); then
        the offline model when it is the one that answers, and the embedding model. Turns
        wait for the rehearsal's imports; the models have locks of their own. Once per process.
        """
        global _warming
        if _warming is None:
            _warmed.clear()
            _warming = threading.Thread(target=_rehearse, args=(model, fallback_models), name="oblix-warm-up", daemon=True)
            try:
                _warming.start()
            except BaseException:
                _warmed.set()  # no warm-up: no turn may wait for one
                raise
            atexit.register(_end_warm_up)
        return _warming

    def diagnose(self) -> list[tuple[str, str]]:
        """What ``oblix doctor`` reports of the store and the models: rows of (what, state), never a key's value."""
        store = self.session_manager
        rows = [("store", store.location)]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # unreadable files are listed below instead
                readable = store.list_sessions(limit=None)
        except StoreUnavailable as error:
            rows.append(("store state", f"not answering: {error}"))
        else:
            rows += [("store state", self._store_state()), ("sessions", str(len(readable)))]
            rows += [("unreadable", f"{problem.path} ({problem.reason})") for problem in store.problems] or [("unreadable", "none")]
        if isinstance(store, Spooling):  # read from the spool's files: true whether or not the database answers
            spool = store.spool
            waiting = len(spool.pending())
            rows.append(("saved locally", f"{waiting} message(s) waiting for the database" if waiting else "none waiting"))
            refused = spool.refused()
            if refused:
                rows.append(("saved locally, refused", f"{len(refused)} message(s) the database will not take, kept in {spool.directory}"))
        return rows + [("relevance", self._relevance_state())] + model_rows(self.model, self.fallback_models)

    def _store_state(self) -> str:
        """A store that just answered: files, or a database whose schema is the one this code reads (it opens no other)."""
        from .store.sessions import SessionManager

        if isinstance(self.session_manager, SessionManager):
            return "answers (session files)"
        from .store.pg_schema import LATEST

        return f"answers (PostgreSQL, schema version {LATEST}, up to date)"

    # -- local models: GGUF files the user brings ---------------------------------------

    @staticmethod
    def add_local_model(path: str | os.PathLike[str], name: str | None = None) -> str:
        """Register a GGUF file so that ``local/NAME`` answers from it, here and in every later process; returns that model string."""
        return local_model.add(path, name)

    @staticmethod
    def remove_local_model(model: str) -> str:
        """Forget ``local/NAME`` (or ``NAME``); the file is left where it is, and its path returned."""
        return str(local_model.remove(model))

    @staticmethod
    def local_models() -> list[tuple[str, str]]:
        """Each local model string and what it is: its file, size, context length, measured speed and input budget."""
        return local_model.local_models()

    # -- the team database, for its administrator ------------------------------------

    @staticmethod
    def describe_store(location: str | os.PathLike[str] | None = None) -> str:
        """Where ``OblixClient(store=location)`` keeps sessions, for people, without opening it: a database without its password."""
        location = os.fspath(location) if location is not None else os.environ.get("OBLIX_STORE") or None
        if is_connection_string(location):
            return describe(location)
        from .store.files import default_base_dir

        return os.path.abspath(location or default_base_dir())

    @staticmethod
    def waiting_on_this_machine() -> list[tuple[str, str, int, int]]:
        """(database, user, messages waiting, refused) for each local spool that holds any: read from files, so it answers while the database is away."""
        from .store.spool import waiting_on_this_machine

        return waiting_on_this_machine()

    @staticmethod
    def upgrade_database(dsn: str) -> int:
        """Bring the database's schema up to date (as a PostgreSQL superuser); returns how many migrations ran."""
        from .store.pg_schema import upgrade

        check(dsn)  # before libpq sees a string it would misread, or quote in its errors
        return upgrade(dsn)

    @staticmethod
    def database_status(dsn: str) -> tuple[int, int]:
        """(the database's schema version, the newest this oblix_jupyter knows)."""
        from .store.pg_schema import status

        check(dsn)
        return status(dsn)

    @staticmethod
    def add_database_user(dsn: str, name: str) -> None:
        """Make login role ``name`` (created without a password if absent) a user of the store."""
        from .store.pg_schema import add_user

        check(dsn)
        add_user(dsn, name)

    def _relevance_state(self) -> str:
        """How the selector judges relevance here: by words and meaning, or by words alone and why."""
        from .context.embedder import load_embedder, unavailable_reason

        if self.semantic is False:
            return "words only (semantic=False)"
        embedder = load_embedder()
        return f"words and meaning ({embedder.name})" if embedder is not None else f"words only: {unavailable_reason()}"

    # -- turns --------------------------------------------------------------------

    def models_for(self, session: dict[str, Any] | None) -> list[str]:
        """The model chain of a turn: the session's pinned model, its own fallbacks, then the configured ones."""
        session = session or {}
        pinned = session.get("model")
        try:
            configured = configured_models(self.model, self.fallback_models)
        except NoModelConfigured:
            if not pinned:
                raise
            configured = []  # a pinned session still works on its own model
        chain = [pinned or configured[0], *(session.get("fallback_models") or []), *configured]
        return list(dict.fromkeys(chain))

    def plan(
        self,
        prompt: str,
        session: dict[str, Any] | None,
        model: str,
        history: bool = True,
        max_tokens: int | None = None,
        *,
        variables: Sequence[VariableSummary] = (),
        notebook: NotebookContext | None = None,
        pinned: Sequence[str] | None = None,
    ) -> ContextPlan:
        """What would be sent for ``prompt`` to ``model``: the context selector's plan.

        The selector is pure; what it may need is computed here, and only when the
        conversation does not fit whole (``Selection.fits``): the word index (kept per
        session and extended, never rebuilt) and the embeddings (computed within
        ``embed_seconds`` on a first turn, the rest later).
        """
        from .context.embedder import unavailable_reason
        from .context.selector import start_selection

        window, limited = self._input_window(model)
        budget = window - min(max_tokens or DEFAULT_ANSWER_RESERVE, window // 2)
        session_id = (session or {}).get("id")
        selection = start_selection(
            session,
            prompt,
            budget,
            self._counter(model),
            history,
            variables=variables,
            notebook=notebook,
            pinned=pinned if pinned is not None else (session or {}).get("pinned", ()),
        )
        if selection.fits or session_id is None:
            plan = selection.finish()
        else:
            messages = selection.earlier
            selection.choose_pinned_and_recent(self._lexical_index(session_id, messages))  # while the prompt embeds
            vectors = self._vector_cache()
            if vectors is None or vectors.embedder is None:
                plan = selection.finish()
                plan.notes.append(unavailable_reason() or "Meaning is switched off for this client (semantic=False).")
            else:
                plan = selection.finish((vectors.vectors(session_id, messages, self.embed_seconds), vectors.embed_prompt(prompt)))
        if limited is not None and not selection.fits:
            plan.notes.append(limited)
        return plan

    def _input_window(self, model: str) -> tuple[int, str | None]:
        """The tokens ``model`` may be sent, and, when its reading speed rather than its window set them, a note saying so.

        A local model reads a few hundred tokens a second on a CPU, so it is given what it
        reads in a few seconds (``local_max_input_tokens`` overrides), within the window.
        """
        window = max_input_tokens(model, self.max_input_tokens)
        budget = local_input_budget(model, self.local_max_input_tokens)
        if budget is None or budget >= window:
            return window, None
        return budget, SPEED_LIMIT_NOTE.format(tokens=budget)

    def _kernel_tools(self, models: Sequence[str], session: dict[str, Any] | None, variables: Sequence[VariableSummary]) -> KernelTools | None:
        """The kernel's read-only tools for this turn; None outside a kernel or when no model of the chain can call tools.

        Secret-looking variables are shown only when the user named them for this turn
        (the summaries the front end sent them in).
        """
        from .kernel.tools import KernelTools, current_shell

        shell = current_shell()
        if shell is None or not any(supports_tools(model, self.gateway.model_options.get(model)) for model in models):
            return None
        named = [summary.name for summary in variables if not summary.excluded]
        search = self._conversation_search(session) if session and session.get("messages") else None
        return KernelTools.from_shell(shell, named, search=search, count=self._counter(models[0]), rounds=self.max_tool_rounds)

    def _conversation_search(self, session: dict[str, Any]) -> Callable[[str, int], list[str]]:
        """The search tool's backend: the selector's relevance over this session's messages, as ``[msg_N] passage`` lines."""
        from .context.relevance import search
        from .context.selector import conversation_messages

        def find(query: str, limit: int) -> list[str]:  # the work happens only if the model searches
            messages = conversation_messages(session)
            vectors = self._vector_cache()
            index = self._lexical_index(session["id"], messages)
            table = query_vector = None
            if vectors is not None and vectors.embedder is not None:
                table, query_vector = vectors.vectors(session["id"], messages, 0.0), vectors.embedder.embed([query])[0]
            return [f"[{message_id}] {passage}" for message_id, passage in search(index, query, limit, table, query_vector)]

        return find

    def _lexical_index(self, session_id: str, messages: list[dict[str, Any]]) -> LexicalIndex:
        """The session's word index, extended with new messages rather than rebuilt each turn."""
        from .context.relevance import LexicalIndex

        index = self._indexes.get(session_id)
        if index is None or not index.extend(messages).describes(messages):
            index = self._indexes[session_id] = LexicalIndex(messages)
        self._indexes.move_to_end(session_id)
        while len(self._indexes) > INDEXED_SESSIONS:  # a long-lived kernel that visits many sessions keeps only the recent ones
            self._indexes.popitem(last=False)
        return index

    def _vector_cache(self) -> VectorCache | None:
        """The embedding cache beside the store (its model loads on first use), or None when meaning is switched off."""
        if self._vectors is None and self.semantic is not False:
            from .vectors import VectorCache

            self._vectors = VectorCache(self.session_manager)
        return self._vectors

    def wait_for_background(self) -> None:
        """Wait until what turns left to the background is done: the store's writes, then the embeddings."""
        self._writer.submit(lambda: None).result()
        if self._vectors is not None:
            self._vectors.wait()

    def _counter(self, model: str) -> Callable[[str], int]:
        """A token counter for ``model`` that remembers its last answers: every turn counts the same messages."""
        counter = self._token_counters.get(model)
        if counter is None:
            counter = self._token_counters[model] = functools.lru_cache(maxsize=TOKEN_COUNTS)(functools.partial(count_tokens, model))
        return counter

    def execute_sync(
        self,
        prompt: str,
        session_id: str | None = None,
        stream_to: TextSink | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
        history: bool = True,
        temperature: float | None = None,
        max_tokens: int | None = None,
        variables: Sequence[VariableSummary] = (),
        notebook: NotebookContext | None = None,
        pinned: Sequence[str] | None = None,
        tools: bool | None = None,
        on_tool: Callable[[dict[str, Any]], Any] | None = None,
        on_model: Callable[[str], Any] | None = None,
    ) -> dict[str, Any]:
        """One turn: store the prompt, stream the answer to ``stream_to``, store the answer.

        Without a session (none given and no ``current_session_id``) nothing is stored.
        ``variables`` and ``notebook`` are what the front end saw in the notebook
        (``variables.summarize_variables``, ``notebook_state.gather_notebook_context``).
        ``tools`` (default: the client's ``tools``) lets a model that can call tools look
        at the kernel; ``on_tool`` hears each call as it is made (``{"name", "arguments",
        "summary", "ok", "result"}``), and the calls are stored on the answer as ``tools``.
        ``on_model`` hears the model asked first, before the request is prepared.
        Raises ``AnswerInterrupted`` or ``ModelError`` after keeping any partial answer;
        a ``ModelError`` also leaves a ``status: "failed"`` answer holding its message when
        nothing arrived, so the session shows the failure and the prompt is never sent again
        on its own. Sending the prompt of the session's last turn again right after it
        failed retries that turn (as ``retry_sync`` does): the prompt is not stored a
        second time, the answer follows the failure, and the model gets the prompt once.
        """
        vectors = self._vector_cache()
        with vectors.during_turn() if vectors is not None else nullcontext():  # background embedding waits meanwhile
            session_id = session_id or self.current_session_id
            store = self.session_manager
            if session_id and vectors is not None and vectors.keeps(session_id):
                vectors.embed_prompt_ahead(prompt)  # while the session is read and the plan made
            session = store.get_session(session_id) if session_id else None
            if session_id and isinstance(store, Sharing) and not store.can_write(session_id):
                raise NotPermitted(
                    f"Session {session_id} was shared with you to read: you cannot add to it. "
                    "Start a session of your own, or ask its owner to share it with --write."
                )
            models = self.models_for(session)
            if on_model is not None:
                on_model(models[0])
            _warmed.wait()  # a warm-up doing this turn's imports: wait for it rather than meet it halfway
            # The one redaction, on everything of the notebook's that goes out; what the user
            # sent on purpose (a variable named with --vars, in its summary) stays in the prompt.
            sent = redact(prompt, keep=[summary.text for summary in variables if not summary.excluded])
            to_store = _for_the_store(variables)
            # Asking again what just failed is a retry: the prompt is stored once, and the
            # selector sees the session as it was before the failed attempts.
            retried = _retried_exchange(session, to_store(prompt))
            before = session if session is None or retried is None else {**session, "messages": session["messages"][:retried]}
            plan = self.plan(
                sent, before, models[0], history=history, max_tokens=max_tokens, variables=variables, notebook=_redacted(notebook), pinned=pinned
            )
            # The prompt is written while the request goes out; the answer's first text is not
            # shown, nor the answer stored, nor any failure reported, before that write is done.
            title = _title_from(to_store(prompt)) if session is not None and (session.get("metadata") or {}).get(TITLE_FROM_PROMPT) else None
            saving = self._writer.submit(_save_prompt, store, session, to_store(prompt), title) if session_id and retried is None else None
            kernel = self._kernel_tools(models, session, variables) if (self.tools if tools is None else tools) else None
            runner = None
            if kernel is not None:
                runner = ToolRunner(kernel.schemas(), kernel.run, on_tool=on_tool, max_rounds=self.max_tool_rounds, max_calls=kernel.max_calls)
            try:
                completion = self.gateway.complete(
                    models,
                    plan.messages,
                    on_text=_after(saving, _sink(stream_to)),
                    should_stop=should_stop,
                    tools=runner,
                    temperature=temperature,
                    max_tokens=max_tokens,
                )
            except BaseException as error:
                _settle(saving)
                if isinstance(error, ModelError) and session_id:
                    _record_failure(store, session_id, error, _stored_tools(error.tools, kernel, to_store), to_store)
                raise
            question = _settle(saving)
            message_id = None
            if session_id:
                stored = store.save_message(
                    session_id,
                    to_store(completion.text),
                    role="assistant",
                    model=completion.model,
                    status=None if completion.status == "complete" else completion.status,
                    usage={"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
                    cost=completion.cost,
                    tools=_stored_tools(completion.tool_calls, kernel, to_store),
                )
                message_id = stored["id"]
                if session is not None and not session.get("model"):
                    try:
                        store.update_session(session_id, model=completion.model)
                    except NotPermitted:  # a write sharee adds messages; the model stays the owner's to pin
                        pass
                    except StoreUnavailable:  # the answer is kept (spooled if need be); the next answer pins the model
                        pass
                self._writer.submit(store.prepare_read, session_id)  # the next turn's read, parsed while this answer is read
                if history and vectors is not None:  # embedded as soon as stored: the session is warm when it outgrows the window
                    from .context.selector import conversation_messages

                    stored_now = {"messages": [*session["messages"], *filter(None, [question]), stored]}
                    self._writer.submit(lambda: vectors.update_later(session_id, conversation_messages(stored_now)))  # listed off the turn's path
            plan.add_requests(completion.tool_messages, completion.requests, self._counter(models[0]))
            plan.shown = to_store  # a secret named for this turn was sent, but is not shown where the notebook keeps it
            if completion.status == "interrupted":
                raise AnswerInterrupted(
                    "The answer was interrupted; the part that arrived was kept.", model=completion.model, partial=completion.text
                )
            notices = [
                _saved_locally_notice(stored if session_id else None),
                model_notice(completion.model),
                _limited_note(plan),
            ]
            return {
                "response": completion.text,
                "session_id": session_id,
                "session_title": title or session["title"] if session is not None else None,
                "message_id": message_id,
                "model": completion.model,
                "status": completion.status,
                "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
                "cost": completion.cost,
                "tools": completion.tool_calls,
                "failed_models": completion.failed_models,
                "notice": " · ".join(filter(None, notices)) or None,
                "plan": plan,
            }

    async def execute(self, prompt: str, session_id: str | None = None, stream_to: TextSink | None = None, **options: Any) -> dict[str, Any]:
        """``execute_sync`` without blocking the event loop; cancelling the task stops the answer."""
        stop = threading.Event()
        caller_stop = options.pop("should_stop", None)

        def stopped() -> bool:
            return stop.is_set() or bool(caller_stop and caller_stop())

        try:
            return await asyncio.to_thread(self.execute_sync, prompt, session_id, stream_to, should_stop=stopped, **options)
        except asyncio.CancelledError:
            stop.set()
            raise

    def failed_prompt(self, session_id: str | None = None, session: dict[str, Any] | None = None) -> str | None:
        """The prompt of the session's last turn if that turn failed (what ``retry_sync`` asks again), else None.

        A front end offers Retry while this is not None; the retried turn stores no new
        user message, only its answer. ``session``: the session as the caller just read it,
        so that a front end rendering it does not read it again.
        """
        from .context.selector import failed_exchange

        if session is None:
            session_id = session_id or self.current_session_id
            session = self.get_session(session_id) if session_id else None
        position = failed_exchange(session)
        return None if position is None else str((session or {})["messages"][position]["content"])

    def retry_sync(self, session_id: str | None = None, stream_to: TextSink | None = None, **options: Any) -> dict[str, Any]:
        """Ask the session's last prompt again after its turn failed; ``execute_sync``'s options and result.

        The prompt is the one stored (secrets named for the failed turn stay withheld).
        ``BadArguments`` when the last turn did not fail.
        """
        return self.execute_sync(self._prompt_to_retry(session_id), session_id, stream_to, **options)

    async def retry(self, session_id: str | None = None, stream_to: TextSink | None = None, **options: Any) -> dict[str, Any]:
        """``retry_sync`` without blocking the event loop; cancelling the task stops the answer."""
        prompt = await asyncio.to_thread(self._prompt_to_retry, session_id)
        return await self.execute(prompt, session_id, stream_to, **options)

    def _prompt_to_retry(self, session_id: str | None) -> str:
        prompt = self.failed_prompt(session_id)
        if prompt is None:
            raise BadArguments("There is nothing to retry: the session's last turn did not fail.")
        return prompt

    async def chat_once(self, message: str, session_id: str | None = None, **options: Any) -> dict[str, Any]:
        """One chat turn; without ``session_id`` a new session is started (pass the returned id to continue)."""
        return await asyncio.to_thread(self.chat_once_sync, message, session_id, **options)

    def chat_once_sync(self, message: str, session_id: str | None = None, **options: Any) -> dict[str, Any]:
        if session_id is None:
            session_id = self.create_session_sync()
        return self.execute_sync(message, session_id, **options)


def _retried_exchange(session: dict[str, Any] | None, prompt: str) -> int | None:
    """Where the exchange a turn retries starts: the session's last one, when it failed and asked ``prompt`` (as stored)."""
    from .context.selector import failed_exchange

    position = failed_exchange(session)
    if position is None or (session or {})["messages"][position].get("content") != prompt:
        return None
    return position


def _save_prompt(store: SessionStore, session: dict[str, Any], prompt: str, title: str | None) -> dict[str, Any]:
    """Store a turn's prompt (as stored: redacted) and, for a session waiting for one, name the session after it.

    A session that cannot be renamed (shared with this user to add to, or the database
    away) keeps its title and the mark, so that a later prompt names it.
    """
    stored = store.save_message(session["id"], prompt, role="user")
    if title is not None:
        metadata = {key: value for key, value in (session.get("metadata") or {}).items() if key != TITLE_FROM_PROMPT}
        try:
            store.update_session(session["id"], title=title, metadata=metadata)
        except OblixError:
            pass
    return stored


def _title_from(prompt: str) -> str | None:
    """A session title from a prompt: its first line of text, cut at a word boundary; None when it has no text."""
    line = next((" ".join(line.split()).lstrip("#> ") for line in prompt.splitlines() if line.strip()), "")  # a heading's marks go
    if len(line) <= PROMPT_TITLE_CHARS:
        return line or None
    room = line[: PROMPT_TITLE_CHARS - 1]
    return (room.rsplit(" ", 1)[0] if " " in room else room).rstrip(",;:.") + "…"


def _record_failure(
    store: SessionStore, session_id: str, error: ModelError, tools: list[dict[str, Any]] | None, to_store: Callable[[str], str]
) -> None:
    """Mark a failed turn's prompt by what follows it, since messages are only ever appended.

    What follows is the partial answer that arrived (status ``error``), or, when nothing
    did, the one-line error the user was shown (``FAILED``): the selector never sends
    that line, nor a prompt that got nothing else, and asking again reuses the prompt.
    """
    from .context.selector import FAILED

    status = "error" if error.partial else FAILED
    store.save_message(session_id, to_store(error.partial or str(error)), role="assistant", model=error.model, status=status, tools=tools)


def _rehearse(model: str | None, fallback_models: str | Sequence[str] | None) -> None:
    """``OblixClient.warm_up``'s work. A failure here is left for the first turn to meet and report."""
    try:
        try:
            first = _rehearse_turn(model, fallback_models)
        finally:
            _warmed.set()
        if first is not None and local_model.is_local(first) and not _leaving.is_set():
            local_model.warm_up(first)
        if not _leaving.is_set():
            from .context.embedder import load_embedder

            load_embedder()
    except Exception:  # noqa: BLE001 - whatever failed here, the turn does again and reports
        pass


def _end_warm_up() -> None:
    """At exit, wait for the warm-up's current step and skip the rest.

    A thread still inside llama.cpp, onnxruntime or litellm's native parts when Python
    finalizes is ended by unwinding through them, which aborts the process.
    """
    _leaving.set()
    if _warming is not None:
        _warming.join()


def _rehearse_turn(model: str | None, fallback_models: str | Sequence[str] | None) -> str | None:
    """A turn's first-time work for the model new sessions use, without a turn; returns that model (None if there is none)."""
    from . import vectors  # noqa: F401  (what a turn imports, imported now)
    from .context import relevance, selector  # noqa: F401
    from .kernel import tools  # noqa: F401
    from .store import sessions  # noqa: F401  (the default store's backend: open_store imports it on first use)

    try:
        first = configured_models(model, fallback_models)[0]
    except NoModelConfigured:
        return None
    selector.start_selection(None, "Hello", max_input_tokens(first, None), lambda text: count_tokens(first, text)).finish()
    supports_tools(first)
    rehearsal = {"mock_response": "Hello", "no-log": True}  # litellm answers itself, and tells no callback
    ModelGateway(model_options={first: rehearsal}).complete([first], [{"role": "user", "content": "Hello"}])
    return first


def _limited_note(plan: ContextPlan) -> str | None:
    """The footer's word that a local model was sent less than its window holds, so it answers sooner (only when it left something out)."""
    prefix = SPEED_LIMIT_NOTE.split("{", 1)[0]
    return next((note for note in plan.notes if note.startswith(prefix)), None)


def _saved_locally_notice(stored: dict[str, Any] | None) -> str | None:
    """What the user must know when the answer could not reach the session database: it is kept, not lost."""
    if stored is None or not stored.get("saved_locally"):
        return None
    return (
        "The session database could not be reached: this answer is saved on this machine and will be written "
        "to the session, in order, when the database answers again (`oblix doctor` shows what is waiting)."
    )


def _for_the_store(variables: Sequence[VariableSummary]) -> Callable[[str], str]:
    """How a text of this turn is redacted to be stored: the one redaction, and without the secrets named for the turn.

    A secret the user named with ``--vars`` is sent to the model on purpose, for this
    turn; the session is read later, and by the colleagues it is shared with, so the
    value is taken out of the prompt, the answer and the tool records it keeps.
    """
    names = [summary.name for summary in variables if not summary.excluded and is_secret_name(summary.name)]
    named: list[str] = []
    if names:
        from .kernel.tools import current_shell
        from .kernel.variables import secret_values

        namespace = getattr(current_shell(), "user_ns", None) or {}
        named = secret_values({name: namespace[name] for name in names if name in namespace})
    return lambda text: withhold_values(redact(text), named)


def _stored_tools(calls: list[dict[str, Any]], kernel: KernelTools | None, to_store: Callable[[str], str]) -> list[dict[str, Any]] | None:
    """The tool calls of an answer as the session keeps them; None when there were none.

    Each result is what the call gives without the secrets the user named for this turn
    (a shared session's readers never see what the owner's redaction removes), and
    every text is redacted by ``to_store``.
    """
    stored = []
    for call in calls:
        if kernel is not None:
            call = {**call, "result": kernel.recorded(call["name"], call["arguments"], call["result"])}
        stored.append({key: to_store(value) if isinstance(value, str) else value for key, value in call.items()})
    return stored or None


def _redacted(notebook: NotebookContext | None) -> NotebookContext | None:
    """The notebook's last error and cell sources through the one redaction."""
    if notebook is None:
        return None
    return replace(notebook, error=redact(notebook.error) if notebook.error else notebook.error, cells=tuple(map(redact, notebook.cells)))


def _settle(pending: Future[Any] | None) -> Any:
    """The result of a background store write, waited for even through Ctrl-C: a turn never leaves one behind."""
    while pending is not None:
        try:
            return pending.result()
        except KeyboardInterrupt:
            continue
    return None


def _after(pending: Future[Any] | None, sink: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """``sink``, made to wait for ``pending`` before it passes on the first text.

    Only waits: a failed write is raised after the answer, by the turn, and not here,
    where the gateway would take it for the model failing.
    """
    if pending is None or sink is None:
        return sink

    def write(text: str) -> None:
        wait([pending])
        sink(text)

    return write


def _sink(stream_to: TextSink | None) -> Callable[[str], None] | None:
    """Accept a callable or a text stream as the destination of streamed text."""
    if stream_to is None:
        return None
    if callable(stream_to):
        return stream_to
    target = stream_to

    def write(text: str) -> None:
        target.write(text)
        target.flush()

    return write
