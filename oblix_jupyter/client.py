"""``OblixClient``: the one public API that the magics, the chat panel and the CLI call.

It decides which session and which model a turn uses, asks the context selector what
to send, has the gateway stream the answer, and has the store record the exchange.
The user's message is stored before the model is called, so no failure can lose it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

from .context import ContextPlan, select_context
from .errors import AnswerInterrupted, ModelError, NoModelConfigured
from .models import (
    DEFAULT_ANSWER_RESERVE,
    ModelGateway,
    configured_models,
    count_tokens,
    max_input_tokens,
    model_notice,
    redact,
)
from .sessions import SessionManager, SessionStore

TextSink = Callable[[str], Any] | IO[str]


class OblixClient:
    """Persistent conversations with language models, in the Oblix SDK's shape.

    ``oblix_api_key`` is accepted so code written for the Oblix SDK runs unchanged;
    models are called through litellm, with provider keys from the usual environment
    variables. ``model_options`` maps a model name to extra litellm arguments
    (``api_base``...), which are never written into a session.
    """

    def __init__(
        self,
        oblix_api_key: str | None = None,
        model: str | None = None,
        fallback_models: str | Sequence[str] | None = None,
        session_manager: SessionStore | None = None,
        max_input_tokens: int | None = None,
        model_options: dict[str, dict[str, Any]] | None = None,
        timeout: float | None = None,
    ) -> None:
        del oblix_api_key  # deliberately not kept: nothing of it may reach a session or a log
        self.model = model
        self.fallback_models = fallback_models
        self.max_input_tokens = max_input_tokens
        self.session_manager: SessionStore = session_manager or SessionManager()
        self.current_session_id: str | None = None
        self.gateway = ModelGateway(model_options=model_options, timeout=timeout)
        self._token_cache: dict[tuple[str, str], int] = {}

    # -- sessions -----------------------------------------------------------------

    async def create_session(
        self, title: str | None = None, initial_context: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None
    ) -> str:
        """Create a session and return its id; it is not made current (set ``current_session_id``)."""
        return self.create_session_sync(title=title, initial_context=initial_context, metadata=metadata)

    def create_session_sync(
        self, title: str | None = None, initial_context: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None
    ) -> str:
        return self.session_manager.create_session(initial_context=initial_context, title=title, metadata=metadata)

    def list_sessions(self, limit: int = 10) -> list[dict[str, Any]]:
        """The most recently updated sessions: ``id``, ``title``, ``message_count``, timestamps, ``model``."""
        return self.session_manager.list_sessions(limit=limit)

    def load_session(self, session_id: str) -> dict[str, Any] | None:
        """The full session dict in the seed's shape, or None if there is no such session."""
        return self.session_manager.load_session(session_id)

    def delete_session(self, session_id: str) -> bool:
        if self.current_session_id == session_id:
            self.current_session_id = None
        return self.session_manager.delete_session(session_id)

    def resolve_session_id(self, id_or_prefix: str) -> str:
        """A full session id from an id or a unique prefix, as the front ends accept."""
        return self.session_manager.resolve_id(id_or_prefix)

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
    ) -> ContextPlan:
        """What would be sent for ``prompt`` to ``model``: the context selector's plan."""
        window = max_input_tokens(model, self.max_input_tokens)
        reserve = min(max_tokens or DEFAULT_ANSWER_RESERVE, window // 2)
        return select_context(session, prompt, window - reserve, lambda text: self._count(model, text), history=history)

    def _count(self, model: str, text: str) -> int:
        key = (model, text)
        tokens = self._token_cache.get(key)
        if tokens is None:
            tokens = self._token_cache[key] = count_tokens(model, text)
        return tokens

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
    ) -> dict[str, Any]:
        """One turn: store the prompt, stream the answer to ``stream_to``, store the answer.

        Without a session (none given and no ``current_session_id``) nothing is stored.
        Raises ``AnswerInterrupted`` or ``ModelError`` after keeping any partial answer.
        """
        session_id = session_id or self.current_session_id
        store = self.session_manager
        session = store.get_session(session_id) if session_id else None
        models = self.models_for(session)
        plan = self.plan(prompt, session, models[0], history=history, max_tokens=max_tokens)
        if session_id:
            store.save_message(session_id, redact(prompt), role="user")
        try:
            completion = self.gateway.complete(
                models,
                plan.messages,
                on_text=_sink(stream_to),
                should_stop=should_stop,
                temperature=temperature,
                max_tokens=max_tokens,
            )
        except ModelError as error:
            if session_id and error.partial:
                store.save_message(session_id, redact(error.partial), role="assistant", model=error.model, status="error")
            raise
        message_id = None
        if session_id:
            stored = store.save_message(
                session_id,
                redact(completion.text),
                role="assistant",
                model=completion.model,
                status=None if completion.status == "complete" else completion.status,
                usage={"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
                cost=completion.cost,
            )
            message_id = stored["id"]
            if session is not None and not session.get("model"):
                store.update_session(session_id, model=completion.model)
        if completion.status == "interrupted":
            raise AnswerInterrupted(
                "The answer was interrupted; the part that arrived was kept.", model=completion.model, partial=completion.text
            )
        return {
            "response": completion.text,
            "session_id": session_id,
            "message_id": message_id,
            "model": completion.model,
            "status": completion.status,
            "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
            "cost": completion.cost,
            "failed_models": completion.failed_models,
            "notice": model_notice(completion.model),
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

    async def chat_once(self, message: str, session_id: str | None = None, **options: Any) -> dict[str, Any]:
        """One chat turn; without ``session_id`` a new session is started (pass the returned id to continue)."""
        return await asyncio.to_thread(self.chat_once_sync, message, session_id, **options)

    def chat_once_sync(self, message: str, session_id: str | None = None, **options: Any) -> dict[str, Any]:
        if session_id is None:
            session_id = self.create_session_sync()
        return self.execute_sync(message, session_id, **options)

    async def start_chat(self, session_id: str | None = None) -> str | None:
        """An interactive chat in the terminal (``exit`` to leave); returns the last session id."""
        from .terminal_chat import run_terminal_chat

        return await asyncio.to_thread(run_terminal_chat, self, session_id)


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
