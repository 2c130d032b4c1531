"""A turn: read the session, plan what to send, store the prompt while the answer streams, store the answer; a ``TurnResult`` says what came of it.

``OblixClient`` owns the settings (model, store, limits: public attributes a user may
change between turns) and delegates here; ``Turns`` keeps what turns share (token
counts, word indexes, embeddings, the store's writer). The user's message is written
while the request goes out, and the turn waits for that write before it shows any
answer, stores the answer or reports a failure, so no failure can lose it.
"""

from __future__ import annotations

import atexit
import functools
import gc
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields, replace
from typing import IO, TYPE_CHECKING, Any, Protocol

from .attachments import attach, images_named, sight, stored_images, tool_images
from .context.record import record_of  # light: the turn's record of what it sent
from .errors import AnswerInterrupted, ModelError, NoModelConfigured, NotPermitted, OblixError, StoreUnavailable, redact
from .models import local_model
from .models.gateway import (
    DEFAULT_ANSWER_RESERVE,
    ModelGateway,
    ToolRunner,
    configured_models,
    count_tokens,
    local_input_budget,
    max_input_tokens,
    model_notice,
    supports_tools,
)
from .redaction import is_secret_name
from .store.base import SessionStore, Sharing

if TYPE_CHECKING:  # the selector's modules load on the first turn, keeping %load_ext light
    from .context.inputs import NotebookContext, VariableSummary
    from .context.relevance import LexicalIndex
    from .context.selector import ContextPlan
    from .kernel.code_tool import Ask, CodeTool, PendingRun
    from .kernel.runs import RunOutcome
    from .kernel.images import NotebookImage
    from .kernel.tools import KernelTools, ShowImage  # noqa: F401
    from .context.vector_cache import VectorCache

TextSink = Callable[[str], Any] | IO[str]
TOKEN_COUNTS = 20_000  # texts whose token count a client remembers per model: a long session's messages, many times over
INDEXED_SESSIONS = 16  # sessions whose word index a client keeps between turns
MOVE_ON_SECONDS = 10.0  # the most a turn waits for its session's earlier answer, whose approval it ended, to be stored
SPEED_LIMIT_NOTE = "input limited to {tokens} tokens so the local model answers sooner (local_max_input_tokens)"
TITLE_FROM_PROMPT = "title_from_prompt"  # in a session's metadata until its first prompt names it
PROMPT_TITLE_CHARS = 60  # a title made from a prompt is its first line, cut at a word within this length

# Clear while a warm-up does a first turn's imports; turns wait for it rather than import the same modules at
# once, since two threads importing litellm's (circular) modules together can each get the other's half-made one.
_warmed = threading.Event()
_warmed.set()
_warming: threading.Thread | None = None
_leaving = threading.Event()  # Python is exiting: the warm-up skips what it has not started
# Each session's answer that may still ask to run code, and the event set once its turn is over. Kept for the
# process, not per client: %config makes a new client (the panel follows it) while a box already shown can be clicked.
_OPEN: dict[str, tuple[CodeTool, threading.Event]] = {}
_OPEN_LOCK = threading.Lock()


@dataclass
class TurnResult:
    """What came of a turn that answered (a failed one raises instead).

    ``message_id`` is the stored answer's (None when nothing is stored: no session);
    ``status`` the gateway's word for how the answer ended (``"complete"``); ``tools``
    the calls the model made, as ``on_tool`` heard them; ``failed_models`` the (model,
    reason) of each model the chain fell back from; ``notice`` what the user must be told
    beside the answer; ``plan`` what was sent, and why.
    """

    response: str
    session_id: str | None
    session_title: str | None
    message_id: str | None
    model: str
    status: str
    usage: dict[str, int | None]
    cost: float | None
    tools: list[dict[str, Any]]
    failed_models: list[tuple[str, str]]
    notice: str | None
    plan: ContextPlan

    def as_dict(self) -> dict[str, Any]:
        """The seed's SDK-shaped result (``execute``, ``chat_once``): built here alone, so the two shapes cannot drift.

        Shallow, unlike ``dataclasses.asdict``: the plan stays the object front ends show.
        """
        return {field.name: getattr(self, field.name) for field in fields(self)}


@dataclass(frozen=True)
class TurnOptions:
    """How one turn runs, beyond its prompt and session: the keyword options of ``OblixClient.turn`` and ``execute_sync``.

    ``history`` False sends no earlier message; ``temperature`` and ``max_tokens`` go to
    the model (``max_tokens`` also sets what the input leaves for the answer).
    ``variables`` and ``notebook`` are what the front end saw in the notebook
    (``kernel.variables.summarize_variables``, ``kernel.state.gather_notebook_context``);
    ``pinned`` the message ids always sent (None: the session's own pins). ``tools``
    (None: the client's ``tools``) lets a model that can call tools look at the kernel;
    ``on_tool`` hears each call as it is made (``{"name", "arguments", "summary", "ok",
    "result"}``), and the calls are stored on the answer as ``tools``. ``on_model`` hears
    the model asked first, before the request is prepared; ``should_stop`` is asked while
    the answer streams, and True stops it (the part that arrived is kept). ``images``
    are attached to the prompt (``attachments.attach``): sent to a model that can see,
    named to one that cannot, kept with the prompt either way. ``ask`` is how the
    model's ``run_code`` proposals are put to the user (``kernel.code_tool``); without it
    no code is ever proposed, for nobody could approve it.
    """

    should_stop: Callable[[], bool] | None = None
    history: bool = True
    temperature: float | None = None
    max_tokens: int | None = None
    variables: Sequence[VariableSummary] = ()
    notebook: NotebookContext | None = None
    pinned: Sequence[str] | None = None
    tools: bool | None = None
    on_tool: Callable[[dict[str, Any]], Any] | None = None
    on_model: Callable[[str], Any] | None = None
    images: Sequence[NotebookImage] = ()
    ask: Ask | None = None


class TurnSettings(Protocol):
    """What a turn reads of its client, at the moment it runs: the user may change any of these between turns."""

    model: str | None
    fallback_models: str | Sequence[str] | None
    max_input_tokens: int | None
    local_max_input_tokens: int | None
    semantic: bool | None
    embed_seconds: float
    tools: bool
    max_tool_rounds: int
    image_max_px: int
    run_code: str  # "ask" or "never"
    run_timeout: float | None  # None: the kernel's defaults (``kernel.runs``)
    max_runs: int | None
    gateway: ModelGateway
    session_manager: SessionStore


class Turns:
    """A client's turns: the turn itself, and what turns keep between them (bounded), read against ``settings``."""

    def __init__(self, settings: TurnSettings) -> None:
        self.settings = settings
        self._token_counters: dict[str, Callable[[str], int]] = {}  # by model, each remembering its last TOKEN_COUNTS texts
        self._indexes: OrderedDict[str, LexicalIndex] = OrderedDict()  # the INDEXED_SESSIONS last used
        self._vectors: VectorCache | None = None
        # Writes the prompt while the request goes out, so the request does not wait for the
        # store (measured: see ``benchmarks/bench_turn.py``).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oblix-store")

    def forget(self, session_id: str) -> None:
        """Let go of a session being deleted: an embedding of it still under way here cannot write its file again, nor its answer ask to run code."""
        _end_earlier(session_id, wait=0.0)
        if self._vectors is not None:
            self._vectors.forget(session_id)
        self._indexes.pop(session_id, None)

    def models_for(self, session: dict[str, Any] | None) -> list[str]:
        """The model chain of a turn: the session's pinned model, its own fallbacks, then the configured ones."""
        session = session or {}
        pinned = session.get("model")
        try:
            configured = configured_models(self.settings.model, self.settings.fallback_models)
        except NoModelConfigured:
            if not pinned:
                raise
            configured = []  # a pinned session still works on its own model
        chain = [pinned or configured[0], *(session.get("fallback_models") or []), *configured]
        return list(dict.fromkeys(chain))

    def plan(
        self, prompt: str, session: dict[str, Any] | None, model: str, options: TurnOptions = TurnOptions(), image_tokens: int = 0
    ) -> ContextPlan:
        """What would be sent for ``prompt`` to ``model``: the context selector's plan (of ``options``, what shapes the input).

        ``image_tokens``: what the images sent with the prompt cost, taken from the budget.

        The selector is pure; what it may need is computed here, and only when the
        conversation does not fit whole (``Selection.fits``): the word index (kept per
        session and extended, never rebuilt) and the embeddings (computed within
        ``embed_seconds`` on a first turn, the rest later).
        """
        from .context.embedder import unavailable_reason
        from .context.selector import start_selection

        window, limited = self._input_window(model)
        budget = window - min(options.max_tokens or DEFAULT_ANSWER_RESERVE, window // 2) - image_tokens
        session_id = (session or {}).get("id")
        selection = start_selection(
            session,
            prompt,
            budget,
            self.counter(model),
            options.history,
            variables=options.variables,
            notebook=options.notebook,
            pinned=options.pinned if options.pinned is not None else (session or {}).get("pinned", ()),
        )
        if selection.fits or session_id is None:
            plan = selection.finish()
        else:
            messages = selection.earlier
            selection.choose_pinned_and_recent(self.lexical_index(session_id, messages))  # while the prompt embeds
            vectors = self.vector_cache()
            if vectors is None or vectors.embedder is None:
                plan = selection.finish()
                plan.notes.append(unavailable_reason() or "Meaning is switched off for this client (semantic=False).")
            else:
                table = vectors.vectors(session_id, messages, self.settings.embed_seconds)
                plan = selection.finish((table, vectors.embed_prompt(prompt)), vectors.words(session_id, prompt))
        if limited is not None and not selection.fits:
            plan.notes.append(limited)
        return plan

    def _input_window(self, model: str) -> tuple[int, str | None]:
        """The tokens ``model`` may be sent, and, when its reading speed rather than its window set them, a note saying so.

        A local model reads a few hundred tokens a second on a CPU, so it is given what it
        reads in a few seconds (``local_max_input_tokens`` overrides), within the window.
        """
        window = max_input_tokens(model, self.settings.max_input_tokens)
        budget = local_input_budget(model, self.settings.local_max_input_tokens)
        if budget is None or budget >= window:
            return window, None
        return budget, SPEED_LIMIT_NOTE.format(tokens=budget)

    def _kernel_tools(
        self,
        models: Sequence[str],
        session: dict[str, Any] | None,
        variables: Sequence[VariableSummary],
        sees: Callable[[str], bool],
        image_tokens: int,
        may_run: bool,
    ) -> KernelTools | None:
        """The kernel's read-only tools for this turn; None outside a kernel or when no model of the chain can call tools.

        Secret-looking variables are shown only when the user named them for this turn
        (the summaries the front end sent them in). Images can be shown, within
        ``image_tokens``, when a model that calls tools ``sees``, and the kernel keeps some
        or code may run (``may_run``) and display some: only then is any model asked.
        """
        from .kernel.images import memory_of
        from .kernel.tools import KernelTools, current_shell

        shell = current_shell()
        options = self.settings.gateway.model_options
        if shell is None or not any(supports_tools(model, options.get(model)) for model in models):
            return None
        named = [summary.name for summary in variables if not summary.excluded]
        search = self._conversation_search(session) if session and session.get("messages") else None
        memory = memory_of(shell)
        show = None
        if may_run or memory is not None and memory.last_cell() is not None:
            show = self._tool_images(models, sees)
        return KernelTools.from_shell(
            shell, named, search=search, count=self.counter(models[0]), rounds=self.settings.max_tool_rounds, show=show, image_tokens=image_tokens
        )

    def _tool_images(self, models: Sequence[str], sees: Callable[[str], bool]) -> ShowImage | None:
        """How a tool shows an image to the first model of the chain that calls tools and can see; None when none can."""
        options = self.settings.gateway.model_options
        seer = next((model for model in models if supports_tools(model, options.get(model)) and sees(model)), None)
        return tool_images(seer, self.settings.image_max_px) if seer is not None else None

    def _code_tool(self, models: Sequence[str], ask: Ask | None, kernel: KernelTools) -> CodeTool | None:
        """This answer's ``run_code``, beside the read-only ``kernel`` tools: only with someone to ask, unless ``run_code="never"``.

        The images a run displays are shown through ``kernel``, within the answer's image limits.
        """
        from .kernel.code_tool import CodeTool
        from .kernel.tools import current_shell

        limits = {"max_runs": self.settings.max_runs, "timeout": self.settings.run_timeout}
        given = {key: value for key, value in limits.items() if value is not None}
        return CodeTool(current_shell(), ask, self.counter(models[0]), show_images=kernel.show_images, **given) if ask is not None else None

    def _conversation_search(self, session: dict[str, Any]) -> Callable[[str, int], list[str]]:
        """The search tool's backend: the selector's relevance over this session's messages, as ``[msg_N] passage`` lines."""
        from .context.relevance import search
        from .context.selector import conversation_messages

        def find(query: str, limit: int) -> list[str]:  # the work happens only if the model searches
            messages = conversation_messages(session)
            vectors = self.vector_cache()
            index = self.lexical_index(session["id"], messages)
            table = query_vector = None
            if vectors is not None and vectors.embedder is not None:
                table, query_vector = vectors.vectors(session["id"], messages, 0.0), vectors.embedder.embed([query])[0]
            return [f"[{message_id}] {passage}" for message_id, passage in search(index, query, limit, table, query_vector)]

        return find

    def lexical_index(self, session_id: str, messages: list[dict[str, Any]]) -> LexicalIndex:
        """The session's word index, extended with new messages rather than rebuilt each turn."""
        from .context.relevance import LexicalIndex

        index = self._indexes.get(session_id)
        if index is None or not index.extend(messages).describes(messages):
            index = self._indexes[session_id] = LexicalIndex(messages)
        self._indexes.move_to_end(session_id)
        while len(self._indexes) > INDEXED_SESSIONS:  # a long-lived kernel that visits many sessions keeps only the recent ones
            self._indexes.popitem(last=False)
        return index

    def vector_cache(self) -> VectorCache | None:
        """The embedding cache beside the store (its model loads on first use), or None when meaning is switched off."""
        if self._vectors is None and self.settings.semantic is not False:
            from .context.vector_cache import VectorCache

            self._vectors = VectorCache(self.settings.session_manager)
        return self._vectors

    def wait_for_background(self) -> None:
        """Wait until what turns left to the background is done: the store's writes, then the embeddings."""
        self._writer.submit(lambda: None).result()
        if self._vectors is not None:
            self._vectors.wait()

    def counter(self, model: str) -> Callable[[str], int]:
        """A token counter for ``model`` that remembers its last answers: every turn counts the same messages."""
        counter = self._token_counters.get(model)
        if counter is None:
            counter = self._token_counters[model] = functools.lru_cache(maxsize=TOKEN_COUNTS)(functools.partial(count_tokens, model))
        return counter

    def take(self, prompt: str, session_id: str | None, stream_to: TextSink | None, options: TurnOptions) -> TurnResult:
        """One turn (``OblixClient.execute_sync`` says what it promises): the session read, the plan made, the prompt
        stored while the answer streams to ``stream_to``, the answer stored; ``session_id`` None stores nothing.

        A turn of a session whose earlier answer is still open with ``run_code`` (usually:
        waiting for an approval) ends that answer first: a waiting request expires, the
        answer stops, and it is stored before this prompt.
        """
        if session_id:
            _end_earlier(session_id)
        over = threading.Event()
        try:
            return self._take(prompt, session_id, stream_to, options, over)
        finally:
            over.set()
            with _OPEN_LOCK:
                if session_id and _OPEN.get(session_id, (None, None))[1] is over:
                    del _OPEN[session_id]

    def _take(self, prompt: str, session_id: str | None, stream_to: TextSink | None, options: TurnOptions, over: threading.Event) -> TurnResult:
        variables = options.variables
        vectors = self.vector_cache()
        with vectors.during_turn() if vectors is not None else nullcontext():  # background embedding waits meanwhile
            store = self.settings.session_manager
            if session_id and vectors is not None and vectors.keeps(session_id):
                vectors.embed_prompt_ahead(prompt, session_id)  # while the session is read and the plan made
            session = store.get_session(session_id) if session_id else None
            if session_id and isinstance(store, Sharing) and not store.can_write(session_id):
                raise NotPermitted(
                    f"Session {session_id} was shared with you to read: you cannot add to it. "
                    "Start a session of your own, or ask its owner to share it with --write."
                )
            models = self.models_for(session)
            if options.on_model is not None:
                options.on_model(models[0])
            _warmed.wait()  # a warm-up doing this turn's imports: wait for it rather than meet it halfway
            # The one redaction, on everything of the notebook's that goes out; what the user
            # sent on purpose (a variable named with --vars, in its summary) stays in the prompt.
            sent = redact(prompt, keep=[summary.text for summary in variables if not summary.excluded])
            sees = sight(self.settings.gateway.model_options)
            to_store = _for_the_store(variables)
            # Asking again what just failed is a retry: the prompt is stored once, with its images, which
            # go again (unless others are given), and the selector sees the session as it was before the failed attempts.
            retried = _retried_exchange(session, to_store(prompt))
            images = options.images
            if retried is not None and not images:
                images = failed_images(session, store.read_attachment)
            attached = attach(images, models, sees, self.settings.image_max_px)
            sent = attached.with_notes(sent)
            before = session if session is None or retried is None else {**session, "messages": session["messages"][:retried]}
            plan = self.plan(sent, before, models[0], replace(options, notebook=_redacted(options.notebook)), attached.tokens)
            if attached.parts:
                plan.messages[-1] = {**plan.messages[-1], "content": attached.content(plan.messages[-1]["content"])}
            # The prompt is written while the request goes out; the answer's first text is not
            # shown, nor the answer stored, nor any failure reported, before that write is done.
            title = _title_from(to_store(prompt)) if session is not None and (session.get("metadata") or {}).get(TITLE_FROM_PROMPT) else None
            saving = self._writer.submit(_save_prompt, store, session, to_store(prompt), title, attached.stored) if session_id and retried is None else None
            wants_tools = self.settings.tools if options.tools is None else options.tools
            ask = options.ask if self.settings.run_code == "ask" else None
            if ask is not None and vectors is not None:
                ask = _aside(ask, vectors)
            kernel = (
                self._kernel_tools(models, session, variables, sees, max(0, plan.budget - plan.used), ask is not None) if wants_tools else None
            )
            code = self._code_tool(models, ask, kernel) if kernel is not None else None
            runner = _tool_runner(kernel, code, options.on_tool, self.settings.max_tool_rounds) if kernel is not None else None
            should_stop = options.should_stop
            if code is not None:
                should_stop = _either(options.should_stop, code.approvals.over.is_set)  # a later turn of the session ends this one
                if session_id:
                    with _OPEN_LOCK:
                        _OPEN[session_id] = (code, over)
            try:
                completion = self.settings.gateway.complete(
                    models,
                    plan.messages,
                    on_text=_after(saving, _sink(stream_to)),
                    should_stop=should_stop,
                    tools=runner,
                    temperature=options.temperature,
                    max_tokens=options.max_tokens,
                )
            except BaseException as error:
                _settle(saving)
                if isinstance(error, ModelError) and session_id:
                    _record_failure(store, session_id, error, _stored_tools(error.tools, kernel, to_store), to_store)
                raise
            finally:
                if code is not None:
                    code.close()  # no approval outlives its answer
            question = _settle(saving)
            plan.add_requests(images_named(completion.tool_messages), completion.requests, self.counter(models[0]))
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
                    sent=record_of(
                        plan,
                        [schema["function"]["name"] for schema in runner.offered_to(completion.sees)] if runner is not None else (),
                        attached.outcome(completion.sees, completion.tool_calls),
                    ),
                )
                message_id = stored["id"]
                if session is not None and not session.get("model"):
                    try:  # the model the session was meant for, not a fallback that stood in for it during an outage
                        store.update_session(session_id, model=models[0])
                    except NotPermitted:  # a write sharee adds messages; the model stays the owner's to pin
                        pass
                    except StoreUnavailable:  # the answer is kept (spooled if need be); the next answer pins the model
                        pass
                self._writer.submit(store.prepare_read, session_id)  # the next turn's read, parsed while this answer is read
                if options.history and vectors is not None:  # embedded as soon as stored: the session is warm when it outgrows the window
                    from .context.selector import conversation_messages

                    stored_now = {"messages": [*session["messages"], *filter(None, [question]), stored]}
                    self._writer.submit(lambda: vectors.update_later(session_id, conversation_messages(stored_now)))  # listed off the turn's path
            plan.shown = to_store  # a secret named for this turn was sent, but is not shown where the notebook keeps it
            if completion.status == "interrupted":
                raise AnswerInterrupted(
                    "The answer was interrupted; the part that arrived was kept.", model=completion.model, partial=completion.text
                )
            notices = [
                _saved_locally_notice(stored if session_id else None),
                model_notice(completion.model),
                _limited_note(plan),
                attached.notice(completion.model, completion.sees),
            ]
            return TurnResult(
                response=completion.text,
                session_id=session_id,
                session_title=title or session["title"] if session is not None else None,
                message_id=message_id,
                model=completion.model,
                status=completion.status,
                usage={"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
                cost=completion.cost,
                tools=completion.tool_calls,
                failed_models=completion.failed_models,
                notice=" · ".join(filter(None, notices)) or None,
                plan=plan,
            )


def _end_earlier(session_id: str, wait: float = MOVE_ON_SECONDS) -> None:
    """End the session's earlier answer that may still ask to run code (its waiting box expires) and wait up to ``wait`` s for it to be stored."""
    with _OPEN_LOCK:
        earlier = _OPEN.pop(session_id, None)
    if earlier is not None:
        code, over = earlier
        code.close()
        over.wait(wait)


def warm_up(model: str | None = None, fallback_models: str | Sequence[str] | None = None) -> threading.Thread:
    """Start doing in the background what a first turn would otherwise do first (``OblixClient.warm_up``); once per process."""
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


def failed_prompt(session: dict[str, Any] | None) -> str | None:
    """The prompt of the session's last turn if that turn failed (what a retry asks again), else None."""
    from .context.selector import failed_exchange

    position = failed_exchange(session)
    return None if position is None else str((session or {})["messages"][position]["content"])


def failed_images(session: dict[str, Any] | None, read: Callable[[str, str], bytes]) -> list[NotebookImage]:
    """The images of the session's last prompt if its turn failed (what a retry sends again), read with ``read(session_id, id)``."""
    from .context.selector import failed_exchange

    position = failed_exchange(session)
    if session is None or position is None:
        return []
    return stored_images(session["messages"][position], functools.partial(read, session["id"]))


def _retried_exchange(session: dict[str, Any] | None, prompt: str) -> int | None:
    """Where the exchange a turn retries starts: the session's last one, when it failed and asked ``prompt`` (as stored)."""
    from .context.selector import failed_exchange

    position = failed_exchange(session)
    if position is None or (session or {})["messages"][position].get("content") != prompt:
        return None
    return position


def _save_prompt(
    store: SessionStore, session: dict[str, Any], prompt: str, title: str | None, images: Sequence[tuple[dict[str, Any], bytes]] = ()
) -> dict[str, Any]:
    """Store a turn's prompt (as stored: redacted) with its images and, for a session waiting for one, name the session after it.

    The images' bytes are stored first, so the prompt never names bytes that are not
    there. A database that is away takes no bytes, but the prompt still goes to its
    spool, its images named without them: the user's message is never lost for a picture.
    A session that cannot be renamed (shared with this user to add to, or the database
    away) keeps its title and the mark, so that a later prompt names it.
    """
    entries = []
    for entry, data in images:
        try:
            entries.append({**entry, "id": store.save_attachment(session["id"], data)})
        except StoreUnavailable:
            entries.append({**entry, "withheld": "not kept: the session database was unavailable"})
    stored = store.save_message(session["id"], prompt, role="user", attachments=entries or None)
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
    """``warm_up``'s work. A failure here is left for the first turn to meet and report."""
    try:
        try:
            with _uncollected():
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


@contextmanager
def _uncollected() -> Iterator[None]:
    """No garbage collection while the warm-up imports, and none ever over what it imported (``gc.freeze``).

    litellm and its kin bring some 400,000 objects (550,000 are alive once they are in).
    Each full collection over them holds the interpreter lock for 60-200 ms: six came
    while importing and one every so often after, and meanwhile the kernel could not even
    show that a prompt was sent (the panel's Enter waited 211 and 279 ms for it). Frozen,
    they are never scanned again (``benchmarks/bench_warm_up.py``). The price: for the
    imports' 2-3 s no reference cycle is freed anywhere in the process, and what was alive
    at the end, the user's objects too, is never freed as one; it is what a kernel keeps.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


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
    from .context import vector_cache  # noqa: F401  (what a turn imports, imported now)
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
    return lambda text: redact(text, withheld=named)


def _tool_runner(kernel: KernelTools, code: CodeTool | None, on_tool: Callable[[dict[str, Any]], Any] | None, rounds: int) -> ToolRunner:
    """The gateway's view of this answer's tools: the kernel's read-only ones, and ``run_code`` when it is offered."""
    if code is None:
        return ToolRunner(kernel.schemas(), kernel.run, on_tool=on_tool, max_rounds=rounds, max_calls=kernel.max_calls, sighted=kernel.sighted)

    def run(name: str, arguments: str) -> Any:
        return code.run(arguments) if name == code.name else kernel.run(name, arguments)

    schemas = [*kernel.schemas(), code.schema()]
    return ToolRunner(schemas, run, on_tool=on_tool, max_rounds=rounds, max_calls=kernel.max_calls, sighted=kernel.sighted, showing=frozenset({code.name}))


def _stored_tools(calls: list[dict[str, Any]], kernel: KernelTools | None, to_store: Callable[[str], str]) -> list[dict[str, Any]] | None:
    """The tool calls of an answer as the session keeps them; None when there were none.

    Each result is what the call gives without the secrets the user named for this turn
    (a shared session's readers never see what the owner's redaction removes), and
    every text is redacted by ``to_store``. A run keeps its record (``runs.RunRecord``),
    redacted when it was made.
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


def _aside(ask: Ask, vectors: VectorCache) -> Ask:
    """``ask``, during which the turn counts as not under way: the user may take hours, and background embedding goes on."""

    def asking(pending: PendingRun) -> RunOutcome:
        with vectors.aside():
            return ask(pending)

    return asking


def _either(first: Callable[[], bool] | None, second: Callable[[], bool]) -> Callable[[], bool]:
    """A ``should_stop`` that is True once either is."""
    return second if first is None else lambda: first() or second()
