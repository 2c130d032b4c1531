"""``OblixClient``: the one public API that the magics, the chat panel and the CLI call.

A facade: it holds the settings (which model, which store, what limits) and the
current session, answers the session API from the store, and delegates the rest, a
turn to ``turn.Turns`` and the store's administration and ``oblix doctor`` to ``admin``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from . import admin
from .errors import BadArguments, CorruptSession, OblixError
from .models import local_model
from .models.gateway import DEFAULT_MAX_TOOL_ROUNDS, ModelGateway, split_models
from .models.images import DEFAULT_MAX_PX, prepare_ahead
from .models.images import thumbnail as images_thumbnail
from .store.base import ChangeFeed, SessionStore, Sharing
from .store.dsn import is_connection_string  # noqa: F401 - the front ends' test of a database location: they import only the client
from .store.factory import open_store
from .turn import TITLE_FROM_PROMPT, TextSink, TurnOptions, TurnResult, Turns, failed_images, failed_prompt, warm_up

if TYPE_CHECKING:  # the selector's modules load on the first turn, keeping %load_ext light
    from .context.selector import ContextPlan
    from .kernel.images import NotebookImage


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
    ``max_tool_rounds`` bounds the requests of a turn). Given an ``approve`` callback, a
    turn also lets it propose code (``run_code``): each proposal runs in the kernel only
    as the callback approves it, within ``run_timeout`` seconds, at most ``max_runs`` an
    answer (None: 120 s and 5, ``kernel.runs``' defaults); ``run_code="never"`` withholds
    the tool whatever the callback.
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
        image_max_px: int = DEFAULT_MAX_PX,
        run_code: str = "ask",
        run_timeout: float | None = None,
        max_runs: int | None = None,
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
        self.image_max_px = image_max_px  # an attached image's longest side as the model gets it (``attachments``)
        if run_code not in ("ask", "never"):
            raise BadArguments(f'run_code is "ask" (code runs only as the user approves it) or "never", not {run_code!r}.')
        if run_timeout is not None and not run_timeout > 0:
            raise BadArguments(f"run_timeout is a positive number of seconds, not {run_timeout!r}.")
        if max_runs is not None and max_runs < 1:
            raise BadArguments(f"max_runs is at least 1 (run_code=\"never\" offers no runs), not {max_runs!r}.")
        self.run_code = run_code
        self.run_timeout = run_timeout
        self.max_runs = max_runs
        self._turns = Turns(self)  # reads these settings as each turn starts, so changing one between turns takes effect

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

        The turns' caches let go first, so that an embedding of this session still under
        way here cannot write its file again after the store has removed it.
        """
        if self.current_session_id == session_id:
            self.current_session_id = None
        self._turns.forget(session_id)
        return self.session_manager.delete_session(session_id)

    def resolve_session_id(self, id_or_prefix: str) -> str:
        """A full session id from an id or a unique prefix, as the front ends accept."""
        return self.session_manager.resolve_id(id_or_prefix)

    def get_session(self, session_id: str) -> dict[str, Any]:
        """The full session; ``SessionNotFound`` when there is none (``load_session`` returns None instead)."""
        return self.session_manager.get_session(session_id)

    def read_attachment(self, session_id: str, attachment_id: str) -> bytes:
        """The bytes of an image a message of the session carries (its ``attachments`` entry's ``id``); ``AttachmentNotFound`` if none."""
        return self.session_manager.read_attachment(session_id, attachment_id)

    @staticmethod
    def prepare_images(images: Sequence[NotebookImage], image_max_px: int = DEFAULT_MAX_PX) -> None:
        """Start making ``images`` ready for a model in the background (shrunk to ``image_max_px``), so that a turn attaching one later does not wait.

        The magics call it as each cell that showed a figure ends, before any client need
        exist (opening a store there would hold up the user's cell); it returns at once,
        and what it cannot prepare is simply prepared (or refused) by the turn.
        """
        prepare_ahead(((image.data, image.mime) for image in images if image.data is not None), image_max_px)

    @staticmethod
    def thumbnail(data: bytes, mime: str, size: int, label: str = "image") -> bytes | None:
        """A PNG of an image at most ``size`` px on its longest side, decoded as a model's copy is (its claimed type only,
        a pixel cap); None when it cannot be drawn."""
        return images_thumbnail(data, mime, size, label)

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
        """Copy a file store (default ``~/.oblix/sessions``) into this client's store, keeping ids; returns counts (``admin.import_files``)."""
        return admin.import_files(self.session_manager, directory)

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
        vectors = self._turns.vector_cache()
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
        return warm_up(model, fallback_models)

    # -- the stores, for their administrator (``admin``) --------------------------------

    def diagnose(self) -> list[tuple[str, str]]:
        """What ``oblix doctor`` reports of the store and the models: rows of (what, state), never a key's value."""
        return admin.diagnose(self.session_manager, self.model, self.fallback_models, self.semantic)

    @staticmethod
    def describe_store(location: str | os.PathLike[str] | None = None) -> str:
        """Where ``OblixClient(store=location)`` keeps sessions, for people, without opening it: a database without its password."""
        return admin.describe_store(location)

    @staticmethod
    def waiting_on_this_machine() -> list[tuple[str, str, int, int]]:
        """(database, user, messages waiting, refused) for each local spool that holds any, even while the database is away."""
        return admin.waiting_on_this_machine()

    @staticmethod
    def upgrade_database(dsn: str) -> int:
        """Bring the database's schema up to date (as a PostgreSQL superuser); returns how many migrations ran."""
        return admin.upgrade_database(dsn)

    @staticmethod
    def database_status(dsn: str) -> tuple[int, int]:
        """(the database's schema version, the newest this oblix_jupyter knows)."""
        return admin.database_status(dsn)

    @staticmethod
    def add_database_user(dsn: str, name: str) -> None:
        """Make login role ``name`` (created without a password if absent) a user of the store."""
        admin.add_database_user(dsn, name)

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

    # -- turns (``turn.Turns``) ------------------------------------------------------

    def models_for(self, session: dict[str, Any] | None) -> list[str]:
        """The model chain of a turn: the session's pinned model, its own fallbacks, then the configured ones."""
        return self._turns.models_for(session)

    def plan(self, prompt: str, session: dict[str, Any] | None, model: str, **options: Any) -> ContextPlan:
        """What would be sent for ``prompt`` to ``model``: the context selector's plan (``options``: ``TurnOptions``' fields)."""
        return self._turns.plan(prompt, session, model, TurnOptions(**options))

    def wait_for_background(self) -> None:
        """Wait until what turns left to the background is done: the store's writes, then the embeddings."""
        self._turns.wait_for_background()

    def turn(self, prompt: str, session_id: str | None = None, stream_to: TextSink | None = None, **options: Any) -> TurnResult:
        """One turn: store the prompt, stream the answer to ``stream_to``, store the answer, and say what came of it.

        Without a session (none given and no ``current_session_id``) nothing is stored.
        ``options`` are ``TurnOptions``' fields (history, temperature, max_tokens, the
        notebook's variables and state, tools, and callbacks for tool calls, the model
        and stopping); another name is a ``TypeError``, as in any call.
        Raises ``AnswerInterrupted`` or ``ModelError`` after keeping any partial answer;
        a ``ModelError`` also leaves a ``status: "failed"`` answer holding its message when
        nothing arrived, so the session shows the failure and the prompt is never sent again
        on its own. Sending the prompt of the session's last turn again right after it
        failed retries that turn (as ``retry_sync`` does): the prompt is not stored a
        second time, the answer follows the failure, and the model gets the prompt once.
        """
        return self._turns.take(prompt, session_id or self.current_session_id, stream_to, TurnOptions(**_asking(options)))

    def execute_sync(self, prompt: str, session_id: str | None = None, stream_to: TextSink | None = None, **options: Any) -> dict[str, Any]:
        """``turn``, its result the Oblix SDK's dict (``TurnResult.as_dict``).

        ``approve=callback`` lets a model that calls tools propose code to run in this
        kernel: ``callback(request)`` sees ``request.code`` and ``request.reason`` and
        returns True (run it), False (skip it) or the code to run instead. It is called,
        and the code runs, on the kernel's main thread, in the user's namespace, as a
        cell would; so the call must come from that thread (a cell).
        """
        return self.turn(prompt, session_id, stream_to, **options).as_dict()

    async def execute(self, prompt: str, session_id: str | None = None, stream_to: TextSink | None = None, **options: Any) -> dict[str, Any]:
        """``execute_sync`` without blocking the event loop; cancelling the task stops the answer.

        With ``approve``, the callback and the code it approves run on this loop's thread
        (the kernel's main thread, when awaited in a cell) while the answer waits.
        """
        options = _asking(options)  # here, on the loop's thread, which the turn's thread hands approved code to
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
        if session is None:
            session_id = session_id or self.current_session_id
            session = self.get_session(session_id) if session_id else None
        return failed_prompt(session)

    def failed_images(self, session_id: str | None = None, session: dict[str, Any] | None = None) -> list[NotebookImage]:
        """The images the prompt of the session's failed last turn carried, as the session keeps them ([] when it did not fail).

        A retry sends them again by itself; a front end shows them in the retried prompt's place.
        """
        if session is None:
            session_id = session_id or self.current_session_id
            session = self.get_session(session_id) if session_id else None
        return failed_images(session, self.read_attachment)

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


def _asking(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with an ``approve`` callback made the turn's ``ask``, bound to this thread (the kernel's main thread)."""
    approve = options.get("approve")
    if approve is None:
        options.pop("approve", None)
        return options
    if not callable(approve):
        raise BadArguments(f"approve is a callback taking the request and returning True, False or code, not {type(approve).__name__}.")
    from .kernel.code_tool import ask_by
    from .kernel.main_thread import main_thread_caller

    on_main = main_thread_caller() if threading.current_thread() is threading.main_thread() else None
    if on_main is None:  # from another thread the callback would wait for a main thread that may be waiting for this one
        raise BadArguments(
            "approve= runs the approved code on the kernel's main thread, so the turn must be asked from it (a cell), not from another thread."
        )
    rest = {key: value for key, value in options.items() if key != "approve"}
    return {**rest, "ask": ask_by(approve, on_main)}
