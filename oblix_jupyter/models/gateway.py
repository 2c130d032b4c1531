"""The model gateway: which models to call, and calling them through litellm.

Everything that touches litellm lives here, so the rest of the package stays cheap to
import (litellm takes seconds to import) and provider quirks stay out of the client.
A turn streams from the session's model; only when that model fails *before any
text arrived* with an error worth retrying elsewhere (connection, timeout, 5xx, 429)
does the gateway try the next configured model. A model that can call tools may be
given some (a ``ToolRunner``): the gateway runs the calls it asks for and asks again,
for a few rounds, without knowing what the tools do.

Images travel in the messages as OpenAI content parts, each carrying its label and the
note a model that cannot see reads instead (``image_part``). The gateway gives each
model of the chain what it can take (``supports_vision``): the image to one that sees,
its note to any other, so a fallback that cannot see never gets the bytes. Images a
tool returns follow the tool results as a user message, the one place every provider
takes them (OpenAI's tool messages carry text only; litellm merges the two into one
turn for Anthropic).
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, NamedTuple, Protocol

from ..errors import ModelError, NoModelConfigured, redact
from . import local_model

DEFAULT_MAX_INPUT_TOKENS = 8192
DEFAULT_ANSWER_RESERVE = 1024
DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_TOOL_ROUNDS = 5
TOOL_MODELS_ENV = "OBLIX_TOOL_MODELS"
VISION_MODELS_ENV = "OBLIX_VISION_MODELS"

# Per-model options oblix reads itself; everything else in model_options goes to litellm.
_GATEWAY_OPTIONS = frozenset({"supports_tools", "supports_vision"})

_litellm: ModuleType | None = None
_import_lock = threading.Lock()
# litellm repeats the exception's class and names the provider's before what the server said:
# "litellm.InternalServerError: InternalServerError: OpenAIException - the server's message".
_LITELLM_PREFIXES = re.compile(r"^(?:litellm\.\w+:\s*|[A-Za-z]\w*(?:Error|Exception)(?::\s+|\s+-\s+))+")


def litellm_module() -> ModuleType:
    """Import litellm on first use, configured to stay quiet and offline."""
    global _litellm
    if _litellm is None:
        with _import_lock:
            if _litellm is None:
                # Without this litellm downloads its price map at import, which hangs offline.
                os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                # Unless LITELLM_MODE says otherwise, importing litellm loads the first .env
                # found from the working directory upwards, endpoints and proxies included:
                # the back door envfile closes. litellm reads LITELLM_MODE for nothing else.
                os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
                import litellm

                litellm.suppress_debug_info = True
                litellm.telemetry = False
                if local_model.is_available():
                    local_model.register(litellm)
                _litellm = litellm
    return _litellm


def preload_litellm() -> threading.Thread:
    """Start importing litellm in the background so the first turn does not wait for it."""
    thread = threading.Thread(target=litellm_module, name="oblix-litellm-import", daemon=True)
    thread.start()
    return thread


def split_models(value: str | Sequence[str] | None) -> list[str]:
    """Model names from a comma-separated string (``OBLIX_FALLBACK_MODELS``, a form field) or a list."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item and item.strip()]


def configured_models(model: str | None = None, fallback_models: str | Sequence[str] | None = None) -> list[str]:
    """The model chain for new sessions; the one place every front end resolves the default.

    An explicit model wins, then ``OBLIX_MODEL``, then the GGUF file ``OBLIX_LOCAL_MODEL``
    names (``local/<its name>``); with none, the embedded offline model when it is
    installed (unless ``OBLIX_LOCAL_MODEL=off``). Fallbacks come from
    the argument or ``OBLIX_FALLBACK_MODELS``. Raises ``NoModelConfigured`` otherwise.
    """
    primary = model or os.environ.get("OBLIX_MODEL", "").strip() or local_model.env_model()
    if primary is None:
        if not local_model_allowed():
            raise NoModelConfigured("(The offline model is turned off by OBLIX_LOCAL_MODEL=off.)")
        if not local_model.is_available():
            raise NoModelConfigured(f"Or add the small offline model: {local_model.INSTALL_HINT}")
        primary = local_model.LOCAL_MODEL
    fallbacks = split_models(fallback_models if fallback_models is not None else os.environ.get("OBLIX_FALLBACK_MODELS"))
    return _dedupe([primary, *fallbacks])


def local_model_allowed() -> bool:
    return os.environ.get("OBLIX_LOCAL_MODEL", "").strip().lower() not in ("0", "off", "false", "no")


def model_notice(model: str) -> str | None:
    """A one-line warning to show with answers from a local model (tiny, or without a chat template), or None."""
    return local_model.notice(model) if local_model.is_local(model) else None


def local_input_budget(model: str, override: int | None = None) -> int | None:
    """The input budget of a local model: ``override``, else what it reads before its first word comes in seconds; None for others."""
    if not local_model.is_local(model):
        return None
    return override or local_model.input_budget(model)


def _dedupe(models: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(models))


def model_rows(model: str | None = None, fallback_models: str | Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Which models a new session would use, and whether each can authenticate; never a key's value."""
    offline = local_model.unavailable_reason() or "installed"
    rows = [("offline model", offline if local_model_allowed() else f"{offline}, turned off by OBLIX_LOCAL_MODEL")]
    try:
        models = configured_models(model, fallback_models)
    except NoModelConfigured as error:
        return [("model", f"none. {error}"), *rows]
    if models[0] == local_model.LOCAL_MODEL:
        first = f"{models[0]}, the offline default (tiny, unreliable); set OBLIX_MODEL, e.g. OBLIX_MODEL=openai/gpt-4o-mini"
    else:
        source = "OBLIX_MODEL" if os.environ.get("OBLIX_MODEL", "").strip() else "OBLIX_LOCAL_MODEL"
        first = f"{models[0]} ({source})" if model is None else models[0]
    rows = [("model", first), *[("fallback", name) for name in models[1:]], *rows, *local_model.local_models()]
    for name in models:
        if local_model.is_local(name):
            continue  # needs no key, and so no litellm import just to say so
        litellm = litellm_module()
        try:
            missing = litellm.validate_environment(model=name).get("missing_keys") or []
        except Exception as error:  # litellm raises various types for providers it cannot check
            rows.append((f"key for {name}", f"cannot tell ({type(error).__name__})"))
            continue
        rows.append((f"key for {name}", f"missing: set {' or '.join(missing)}" if missing else "set"))
    return rows


def max_input_tokens(model: str, override: int | None = None) -> int:
    """The model's input window: an explicit override, else the local file's or litellm's model map's, else a default."""
    if override:
        return override
    if local_model.is_local(model):
        try:
            return local_model.resolve(model).context_tokens
        except local_model.LocalModelMissing:
            return DEFAULT_MAX_INPUT_TOKENS  # the turn reports what is missing
    return _model_window(model)


@functools.lru_cache(maxsize=64)
def _model_window(model: str) -> int:
    try:
        info = litellm_module().get_model_info(model)
    except Exception:  # litellm raises several types for models it does not know
        return DEFAULT_MAX_INPUT_TOKENS
    return int(info.get("max_input_tokens") or info.get("max_tokens") or DEFAULT_MAX_INPUT_TOKENS)


def count_tokens(model: str, text: str) -> int:
    """Tokens in ``text`` for ``model``'s tokenizer (litellm ships cl100k for unknown models)."""
    return int(litellm_module().token_counter(model=model, text=text))


def supports_tools(model: str, model_options: dict[str, Any] | None = None) -> bool:
    """Whether ``model`` is offered tools: an explicit setting first, else what litellm knows.

    litellm answers from its model map, so it says no for every model it has no entry
    for, which includes any OpenAI-compatible endpoint reached through an ``api_base``
    (``openai/<name>``, ``hosted_vllm/...``) and most ``ollama/...`` names. Those are
    switched on by the per-model option ``{"supports_tools": True}`` or by naming the
    model in ``OBLIX_TOOL_MODELS`` (comma-separated); the option can also switch tools
    off for a model litellm lists. ``litellm.register_model`` with
    ``supports_function_calling`` works too, since litellm is asked. The offline model
    never gets tools: 135M parameters cannot use them, and its server ignores them.
    """
    return _model_can(model, model_options, "supports_tools", TOOL_MODELS_ENV, lambda litellm: litellm.supports_function_calling(model=model))


def supports_vision(model: str, model_options: dict[str, Any] | None = None) -> bool:
    """Whether ``model`` is sent images: an explicit setting first, else what litellm knows, as ``supports_tools`` decides tools.

    litellm answers ``supports_vision`` from its model map, so it says no for every model
    it has no entry for (an OpenAI-compatible endpoint behind ``api_base``, most
    ``ollama/...`` names). The per-model option ``{"supports_vision": True}``, or naming
    the model in ``OBLIX_VISION_MODELS`` (comma-separated), says yes for those; the option
    can also say no to a model litellm lists. The offline model reads text only.
    """
    return _model_can(model, model_options, "supports_vision", VISION_MODELS_ENV, lambda litellm: litellm.supports_vision(model=model))


def _model_can(
    model: str, model_options: dict[str, Any] | None, option: str, env_name: str, litellm_says: Callable[[ModuleType], bool]
) -> bool:
    """Whether ``model`` has an ability: never the offline model's; else its per-model ``option``, the models ``env_name`` lists, what litellm says."""
    if local_model.is_local(model):
        return False
    explicit = (model_options or {}).get(option)
    if explicit is not None:
        return bool(explicit)
    if model in split_models(os.environ.get(env_name)):
        return True
    try:
        return bool(litellm_says(litellm_module()))
    except Exception:  # litellm raises several types for providers it cannot resolve
        return False


IMAGE_ABOUT = "oblix_image"  # key of an image part holding its label and note: read here, never sent
CANNOT_SEE = "[an image: this model cannot see images]"  # for an image part that came without its own note
_TOOL_IMAGES = "The images the tool calls above returned:"


def image_part(part: Mapping[str, Any], label: str, note: str) -> dict[str, Any]:
    """``part`` (an OpenAI ``image_url`` content part) carrying its ``label`` and the ``note`` a model that cannot see reads instead."""
    return {**part, IMAGE_ABOUT: {"label": label, "note": note}}


def images_as_text(messages: Sequence[dict[str, Any]], text_for: Callable[[Mapping[str, Any]], str]) -> list[dict[str, Any]]:
    """``messages`` with each image part replaced by ``text_for(its label and note)``; a content left all text becomes one string.

    Returns a copy only of the messages that hold an image: what a model that cannot see
    is sent (``text_for`` giving the note), or what a record names (giving the label).
    """
    return [_content_as_text(message, text_for) if _images_in(message) else message for message in messages]


def _content_as_text(message: dict[str, Any], text_for: Callable[[Mapping[str, Any]], str]) -> dict[str, Any]:
    parts = [{"type": "text", "text": text_for(part.get(IMAGE_ABOUT) or {})} if _is_image(part) else part for part in message["content"]]
    if all(isinstance(part, Mapping) and part.get("type") == "text" for part in parts):
        return {**message, "content": "\n\n".join(str(part.get("text", "")) for part in parts)}
    return {**message, "content": parts}


def _images_in(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(map(_is_image, content))


def _is_image(part: Any) -> bool:
    return isinstance(part, Mapping) and part.get("type") == "image_url"


def _note_of(about: Mapping[str, Any]) -> str:
    return str(about.get("note") or CANNOT_SEE)


def _bare(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` as a provider takes them: image parts without what only the gateway reads."""
    return [
        {**message, "content": [_without_about(part) for part in message["content"]]} if _images_in(message) else message
        for message in messages
    ]


def _without_about(part: Any) -> Any:
    return {key: value for key, value in part.items() if key != IMAGE_ABOUT} if isinstance(part, Mapping) and IMAGE_ABOUT in part else part


class ToolOutcome(Protocol):
    """What running a tool gives back; the kernel's ``ToolResult`` has this shape without importing it."""

    @property
    def text(self) -> str: ...  # what the model is sent

    @property
    def summary(self) -> str: ...  # the line the user sees

    @property
    def ok(self) -> bool: ...

    @property
    def parts(self) -> Sequence[Mapping[str, Any]]: ...  # images it shows the model (``image_part``), sent after the results

    @property
    def kept(self) -> Mapping[str, Any] | None: ...  # more the call's record keeps (a run's record), never sent to the model


@dataclass
class ToolRunner:
    """Tools a model may call during a turn, and how to run them.

    The gateway does not know what a tool does or where it runs (for the product, in
    the kernel): it hands ``run`` the tool's name and the JSON arguments the model
    wrote, and sends the model the ``text`` of what ``run`` returns. ``on_tool`` hears
    each call as soon as it has run, so a front end can show it while the answer is
    still coming. A turn makes at most ``max_rounds`` requests and the last offers no
    tools, so it must be answered in text; of the calls one request asks for, the first
    ``max_calls`` run (None: all), and the model hears that the others did not. The
    tools named in ``sighted`` show images, and are offered only to a model that can see;
    those in ``showing`` may show some too (a run's plots), and are offered to every model.
    """

    schemas: list[dict[str, Any]]
    run: Callable[[str, str], ToolOutcome]
    on_tool: Callable[[dict[str, Any]], None] | None = None
    max_rounds: int = DEFAULT_MAX_TOOL_ROUNDS
    max_calls: int | None = None
    sighted: frozenset[str] = frozenset()
    showing: frozenset[str] = frozenset()

    @property
    def shows_images(self) -> bool:
        """Whether a tool that shows images is among those offered: only then must each model be asked whether it can see."""
        return any(schema["function"]["name"] in self.sighted | self.showing for schema in self.schemas)

    def offered_to(self, sees: bool) -> list[dict[str, Any]]:
        """The schemas offered to a model: without the tools that show images, to one that cannot see them."""
        return self.schemas if sees else [schema for schema in self.schemas if schema["function"]["name"] not in self.sighted]


@dataclass
class Completion:
    """One model answer, possibly partial, and what it cost."""

    text: str
    model: str
    status: str = "complete"  # or "interrupted" / "error"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    failed_models: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    # The tools the model called, in order: {"name", "arguments", "summary", "ok", "result"},
    # where result is the text the model was sent, and "images" the labels of those it was shown.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # What the tool rounds added after the messages given, as sent (each round: the assistant's
    # message asking for calls, then their results), and every request of the answer in order:
    # ``--explain`` shows a turn's input as the sum of its requests, as the usage does.
    tool_messages: list[dict[str, Any]] = field(default_factory=list)
    requests: list[SentRequest] = field(default_factory=list)
    # Whether this model was sent images (those given, and offered the tools that show some);
    # one that was not read each given image's note instead.
    sees: bool = False


class SentRequest(NamedTuple):
    """One request of an answer: how many messages it sent, and its input tokens."""

    messages: int  # those given to ``complete``, then the tool rounds' before this request
    prompt_tokens: int
    reported: bool  # counted by the model's server; else by litellm's tokenizer, here


def _is_retryable(error: BaseException, litellm: ModuleType) -> bool:
    if isinstance(error, (litellm.APIConnectionError, litellm.Timeout)):
        return True
    status = getattr(error, "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


def _explain(error: BaseException, model: str, litellm: ModuleType) -> str:
    """One line for the user: what failed, and what to do when we know."""
    status = getattr(error, "status_code", None)
    if isinstance(error, (litellm.AuthenticationError, litellm.PermissionDeniedError)) or status in (401, 403):
        try:
            missing = litellm.validate_environment(model=model).get("missing_keys") or []
        except Exception:
            missing = []
        hint = f"Set {' or '.join(missing)} in the environment." if missing else "Check the API key for this provider."
        return f"{model} refused the request: authentication failed. {hint}"
    if isinstance(error, litellm.NotFoundError) or status == 404:
        return f"{model} was not found by its provider. Check the model name (OBLIX_MODEL or --model)."
    if isinstance(error, litellm.ContextWindowExceededError):
        return f"{model}: the conversation sent is larger than the model's window. Lower max_input_tokens."
    if isinstance(error, litellm.Timeout):
        return f"{model} did not answer in time."
    if isinstance(error, litellm.APIConnectionError) and status is None:
        return f"{model} could not be reached ({type(error).__name__})."
    return f"{model} failed{f' with HTTP {status}' if status else ''}: {server_said(error)[:300]}"


def server_said(error: BaseException) -> str:
    """What the server said, once: litellm's error text without its class and provider prefixes, on one line.

    A provider that answered with a JSON error body (``{"error": {"message": ...}}``)
    is quoted by its message.
    """
    text = _LITELLM_PREFIXES.sub("", str(getattr(error, "message", "") or error).strip())
    if text.startswith("{"):
        text = _json_error_message(text) or text
    lines = text.splitlines()
    return lines[0].strip() if lines and lines[0].strip() else type(error).__name__


def _json_error_message(text: str) -> str | None:
    """The message of a JSON error body, ``{"error": {"message": ...}}`` or ``{"message": ...}``; None if ``text`` is none."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    inner = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else body
    message = inner.get("message") if isinstance(inner, dict) else None
    return message.strip() if isinstance(message, str) and message.strip() else None


class ModelGateway:
    """Streams answers through litellm with per-session model consistency and fallback."""

    def __init__(self, model_options: dict[str, dict[str, Any]] | None = None, timeout: float | None = None) -> None:
        # Per-model litellm arguments such as ``api_base``; never stored in a session.
        self.model_options = dict(model_options or {})
        self.timeout = timeout if timeout is not None else float(os.environ.get("OBLIX_TIMEOUT", DEFAULT_TIMEOUT))

    def complete(
        self,
        models: Sequence[str],
        messages: list[dict[str, Any]],
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        tools: ToolRunner | None = None,
        **params: Any,
    ) -> Completion:
        """Stream an answer from the first model in ``models`` that works.

        Returns a ``Completion`` whose status is ``complete``, or ``interrupted`` when
        ``should_stop`` said so or the user pressed Ctrl-C; raises ``ModelError`` (with
        the partial text) when every model failed or the stream broke mid-answer.
        ``tools`` are offered only to a model that ``supports_tools``; once a model has
        shown text or run a tool, no other model takes over from it. The images in
        ``messages`` are sent to a model that ``supports_vision``, and their notes to any other.
        """
        litellm = litellm_module()
        failed: list[tuple[str, str]] = []
        for model in _dedupe(models):
            try:
                completion = self._answer(litellm, model, messages, on_text, should_stop, tools, params)
            except _FailedBeforeText as failure:
                failed.append((model, failure.message))
                if failure.retryable:
                    continue
                raise ModelError(self._summary(failed), model=model) from None
            completion.failed_models = failed
            return completion
        if not failed:
            raise NoModelConfigured()
        raise ModelError(self._summary(failed), model=failed[-1][0])

    @staticmethod
    def _summary(failed: list[tuple[str, str]]) -> str:
        if len(failed) == 1:
            return failed[0][1]
        return "Every configured model failed: " + "; ".join(message for _, message in failed)

    def _answer(
        self,
        litellm: ModuleType,
        model: str,
        messages: list[dict[str, Any]],
        on_text: Callable[[str], None] | None,
        should_stop: Callable[[], bool] | None,
        tools: ToolRunner | None,
        params: dict[str, Any],
    ) -> Completion:
        """``model``'s answer: one request, or with tools a request per round until it answers in text."""
        options = self.model_options.get(model, {})
        arguments = {"timeout": self.timeout, "num_retries": 0, "max_retries": 0}
        arguments.update({key: value for key, value in options.items() if key not in _GATEWAY_OPTIONS})
        arguments.update({key: value for key, value in params.items() if value is not None})
        _skip_idle_stream_logging(litellm)
        runner = tools if tools is not None and supports_tools(model, options) else None
        rounds = max(1, runner.max_rounds) if runner is not None else 1
        turn = _Turn(model, on_text)
        missing = local_model.problem(model) if local_model.is_local(model) else None
        if missing is not None:  # like a server that cannot be reached: the next model may answer
            raise _FailedBeforeText(missing, retryable=True)
        images = any(map(_images_in, messages))
        turn.sees = (images or runner is not None and runner.shows_images) and supports_vision(model, options)  # asked only when it matters
        turn.holds_images = images and turn.sees
        conversation = turn.conversation = images_as_text(messages, _note_of) if images and not turn.sees else list(messages)
        turn.given = len(messages)
        try:
            for number in range(1, rounds + 1):
                schemas = (runner.offered_to(turn.sees) or None) if runner is not None and number < rounds else None
                turn.next_round()
                reply, calls, stopped = self._round(litellm, turn, conversation, should_stop, arguments, schemas)
                if stopped:
                    return turn.completion("interrupted")
                if runner is None or schemas is None or not calls:  # calls asked for without tools offered are not run
                    break
                conversation += _run_tools(runner, reply, calls, turn)
                if should_stop is not None and should_stop():
                    return turn.completion("interrupted")
        except KeyboardInterrupt:
            if not turn.started:
                raise
            return turn.completion("interrupted")
        return turn.completion("complete")

    @staticmethod
    def _round(
        litellm: ModuleType,
        turn: _Turn,
        messages: list[dict[str, Any]],
        should_stop: Callable[[], bool] | None,
        arguments: dict[str, Any],
        schemas: list[dict[str, Any]] | None,
    ) -> tuple[str, list[dict[str, str]], bool]:
        """One request: stream its text into ``turn``; return that text, the tool calls asked for, and whether it was stopped."""
        request = {**arguments, "tools": schemas} if schemas else arguments
        messages = _bare(messages) if turn.holds_images else messages
        try:
            stream = litellm.completion(
                model=turn.model, messages=messages, stream=True, stream_options={"include_usage": True}, **request
            )
        except Exception as error:
            raise turn.failure(error, litellm) from None
        pieces: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        usage_chunk: Any = None
        stopped = False
        try:
            for chunk in stream:
                if getattr(chunk, "usage", None) is not None:
                    usage_chunk = chunk
                delta = chunk.choices[0].delta if chunk.choices else None
                if delta is not None and delta.content:
                    pieces.append(delta.content)
                    turn.show(delta.content)
                if delta is not None:
                    _gather_tool_calls(calls, getattr(delta, "tool_calls", None))
                if should_stop is not None and should_stop():
                    stopped = True
                    break
        except KeyboardInterrupt:
            stopped = True
        except Exception as error:
            raise turn.failure(error, litellm) from None
        finally:
            _close_quietly(stream)
        reply = "".join(pieces)
        requested = _whole_calls(calls)
        turn.account(litellm, messages, reply + "".join(call["arguments"] for call in requested), usage_chunk)
        return reply, requested, stopped


class _Turn:
    """One model's answer as it builds up over the rounds of a turn: text shown, tools run, tokens spent."""

    def __init__(self, model: str, on_text: Callable[[str], None] | None) -> None:
        self.model = model
        self.pieces: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost: float | None = None
        self.conversation: list[dict[str, Any]] = []  # what the requests send, growing with each tool round
        self.given = 0  # the messages of ``conversation`` that came from the caller
        self.requests: list[SentRequest] = []
        self.sees = False  # whether this model is sent images (those given, and those tools return)
        self.holds_images = False  # the conversation has image parts to send: each request strips what only the gateway reads
        self._on_text = on_text
        self._paragraph_pending = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def started(self) -> bool:
        """Whether the user has seen any of this answer: from then on no other model may take over."""
        return bool(self.pieces or self.tool_calls)

    def next_round(self) -> None:
        """Text after a tool call starts a new paragraph: it does not continue the sentence before the call."""
        self._paragraph_pending = bool(self.pieces)

    def show(self, text: str) -> None:
        if self._paragraph_pending:
            text, self._paragraph_pending = "\n\n" + text, False
        self.pieces.append(text)
        if self._on_text is not None:
            self._on_text(text)

    def failure(self, error: Exception, litellm: ModuleType) -> Exception:
        """What a failed request raises: a chance for the next model while nothing was shown, else the end of the turn."""
        message = redact(_explain(error, self.model, litellm))
        if not self.started:
            return _FailedBeforeText(message, _is_retryable(error, litellm))
        kept = " The partial answer was kept." if self.pieces else ""
        return ModelError(message + kept, model=self.model, partial=self.text, tools=self.tool_calls)

    def account(self, litellm: ModuleType, messages: list[dict[str, Any]], reply: str, usage_chunk: Any) -> None:
        """Add one request's tokens (from the provider when it sent them) and the cost litellm computed, if it knows prices."""
        usage = getattr(usage_chunk, "usage", None)
        reported = usage is not None and getattr(usage, "prompt_tokens", None) is not None
        if reported:
            prompt_tokens = int(usage.prompt_tokens)
            self.completion_tokens += int(usage.completion_tokens or 0)
        else:
            prompt_tokens = int(litellm.token_counter(model=self.model, messages=messages))
            self.completion_tokens += count_tokens(self.model, reply) if reply else 0
        self.prompt_tokens += prompt_tokens
        self.requests.append(SentRequest(len(messages), prompt_tokens, reported))
        # litellm prices the chunk that carries the usage (``_hidden_params["response_cost"]``);
        # None for models without a known price, which is then left out rather than guessed.
        cost = (getattr(usage_chunk, "_hidden_params", None) or {}).get("response_cost")
        if cost is not None:
            self.cost = (self.cost or 0.0) + float(cost)

    def completion(self, status: str) -> Completion:
        return Completion(
            text=self.text,
            model=self.model,
            status=status,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost=self.cost,
            tool_calls=self.tool_calls,
            tool_messages=self.conversation[self.given :],
            requests=self.requests,
            sees=self.sees,
        )


def _gather_tool_calls(calls: dict[int, dict[str, str]], deltas: Any) -> None:
    """Fold streamed tool-call fragments into whole calls.

    A call's first fragment carries its id and name, the later ones only pieces of
    its JSON arguments; the index says which call a fragment belongs to, since
    parallel calls stream one after another.
    """
    for position, delta in enumerate(deltas or ()):
        index = getattr(delta, "index", None)
        call = calls.setdefault(position if index is None else index, {"id": "", "name": "", "arguments": ""})
        call["id"] = getattr(delta, "id", None) or call["id"]
        function = getattr(delta, "function", None)
        if function is not None:
            call["name"] = function.name or call["name"]
            call["arguments"] += function.arguments or ""


def _whole_calls(calls: dict[int, dict[str, str]]) -> list[dict[str, str]]:
    """The gathered calls in order, each with an id and JSON arguments (some servers send neither for a call without any)."""
    return [
        {"id": call["id"] or f"call_{index}", "name": call["name"], "arguments": call["arguments"] or "{}"}
        for index, call in sorted(calls.items())
        if call["name"]
    ]


def _run_tools(runner: ToolRunner, reply: str, calls: list[dict[str, str]], turn: _Turn) -> list[dict[str, Any]]:
    """Run the calls the model asked for; return the messages that tell it what it asked and what came back."""
    asked = {
        "role": "assistant",
        "content": reply or None,
        "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
            for call in calls
        ],
    }
    answers: list[dict[str, Any]] = []
    shown: list[dict[str, Any]] = []
    for number, call in enumerate(calls):
        if runner.max_calls is not None and number >= runner.max_calls:
            answers.append({"role": "tool", "tool_call_id": call["id"], "content": f"Not run: at most {runner.max_calls} tool calls per request."})
            continue
        text, summary, ok, parts, kept = _run_tool(runner.run, call["name"], call["arguments"])
        if parts and not turn.sees:  # a model that cannot see reads the notes, whatever the tool returned
            text = "\n".join([text, *(_note_of(part.get(IMAGE_ABOUT) or {}) for part in parts)])
        record = {"name": call["name"], "arguments": call["arguments"], "summary": summary, "ok": ok, "result": text, **kept}
        if parts and turn.sees:
            shown += parts
            record["images"] = [str((part.get(IMAGE_ABOUT) or {}).get("label") or "an image") for part in parts]
        turn.tool_calls.append(record)
        if runner.on_tool is not None:
            runner.on_tool(record)
        answers.append({"role": "tool", "tool_call_id": call["id"], "content": text})
    if shown:
        turn.holds_images = True
        answers.append({"role": "user", "content": [{"type": "text", "text": _TOOL_IMAGES}, *shown]})
    return [asked, *answers]


def _run_tool(
    run: Callable[[str, str], ToolOutcome], name: str, arguments: str
) -> tuple[str, str, bool, list[dict[str, Any]], Mapping[str, Any]]:
    """Run one tool, giving (text for the model, summary for the user, ok, the image parts it shows, more for its record).

    A tool that raises tells the model so in one line, never with a traceback, and the turn goes on.
    """
    try:
        outcome = run(name, arguments)
        parts = [dict(part) for part in outcome.parts if _is_image(part)]
        return str(outcome.text), str(outcome.summary), bool(outcome.ok), parts, outcome.kept or {}
    except Exception as error:  # whatever broke, the model hears of it and the answer goes on
        detail = str(error).strip().splitlines()
        failure = redact(f"tool failed: {type(error).__name__}" + (f": {detail[0][:200]}" if detail else ""))
        return failure, failure, False, [], {}


_logging_switched_off = False


def _skip_idle_stream_logging(litellm: ModuleType) -> None:
    """Stop litellm logging every streamed chunk on a worker thread when nothing would receive it.

    With no callbacks and no cache configured that work has no effect, yet it takes
    about a third of the CPU of a streamed answer, from the thread that is streaming,
    and more the longer the answer (measured: see benchmarks/bench_turn.py and README's
    "Speed").
    It is switched back on as soon as the user configures a callback or a cache.
    """
    global _logging_switched_off
    needed = bool(
        litellm.cache is not None or litellm.callbacks or litellm.success_callback or litellm._async_success_callback
    )
    if not needed and not litellm.disable_streaming_logging:
        litellm.disable_streaming_logging = _logging_switched_off = True
    elif needed and _logging_switched_off:
        litellm.disable_streaming_logging = _logging_switched_off = False


class _FailedBeforeText(Exception):
    """Internal: a model failed before streaming any text, so another may be tried."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


def _close_quietly(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:
        pass


__all__ = [
    "Completion",
    "ModelGateway",
    "SentRequest",
    "ToolOutcome",
    "ToolRunner",
    "configured_models",
    "count_tokens",
    "image_part",
    "images_as_text",
    "litellm_module",
    "local_input_budget",
    "max_input_tokens",
    "model_notice",
    "model_rows",
    "preload_litellm",
    "split_models",
    "supports_tools",
    "supports_vision",
]
