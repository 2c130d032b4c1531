"""llama.cpp inside this process: a GGUF file loaded through xllamacpp, the prompt its chat template writes, and generations.

Nothing here knows model names, the registry or litellm (``local_model`` does): an
``Engine`` serves one file, and a ``Generation`` is one request to it.

* Importing this module is cheap: xllamacpp and Jinja2 are imported on first use.
* An engine loads on its first request, in that request's worker thread (never on an
  event loop), under a lock, and is kept. llama.cpp's server core is thread-safe and
  queues concurrent requests itself; one slot each, so a second caller waits its turn.
* xllamacpp always starts llama.cpp's HTTP front end next to the engine. We never use
  it (requests go through in-process calls), so on POSIX it is bound to a Unix socket in
  a private temporary folder that is deleted as soon as the engine is up: no TCP port is
  opened, and with the socket's name gone nothing can connect to it. It also requires a
  random API key. Where Unix sockets are not usable the fallback is 127.0.0.1 on a random
  port, still behind that key.
* llama.cpp streams through a callback inside a blocking call; that call runs in a
  worker thread and hands chunks to the consumer's event loop. When the consumer stops
  reading (closes the stream, is interrupted, its task is cancelled) the callback tells
  llama.cpp to stop at the next token.
* Nothing is printed: llama.cpp's log threshold is set below its error level.
* The prompt is written here, from the chat template the file carries (the Jinja the
  model was published with, rendered in Jinja2's sandbox, as Hugging Face does), and
  llama.cpp is asked to continue that text: any family (Qwen, Llama, Gemma, Phi,
  SmolLM) chats as it was trained to with no code of its own, and the exact text the
  model reads is known. A file without a template is sent a plain transcript
  ("User: ... Assistant:").
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from .gguf_file import GGUFInfo

THREADS_ENV = "OBLIX_LOCAL_THREADS"
DEFAULT_TEMPERATURE = 0.2  # the 135M model rambles at the usual 0.8
DEFAULT_MAX_TOKENS = 512
#: (text, None, None) for each piece of an answer, then ("", finish_reason, usage) to close it.
Event = tuple[str, str | None, dict | None]

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
_NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


class LocalModelError(Exception):
    """The engine rejected a request. ``status_code``/``error_type`` come from llama.cpp."""

    def __init__(self, message: str, status_code: int = 500, error_type: str = "server_error"):
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type


# --------------------------------------------------------------------------- #
# Threads
# --------------------------------------------------------------------------- #


def _physical_cores() -> int:
    try:
        import psutil  # ipykernel's dependency, so there wherever a kernel runs

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def threads_for(physical_cores: int) -> int:
    """Threads that read the prompt and write the answer: ``OBLIX_LOCAL_THREADS``, else every physical core but one (at least one).

    llama.cpp's worker threads spin-wait on each other, so a thread on a core the kernel,
    the browser or the front end also needs is slower than no thread there at all: the
    last core is left to them, for reading the prompt too.
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, physical_cores - 1)


def default_threads() -> int:
    """``threads_for`` this machine."""
    return threads_for(_physical_cores())


# --------------------------------------------------------------------------- #
# The prompt
# --------------------------------------------------------------------------- #


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
    """OpenAI-style messages reduced to what every chat template knows: system, user and assistant text."""
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


def completion_request(messages: list, optional_params: dict | None, info: GGUFInfo, window: int) -> dict:
    """The llama.cpp completion request for OpenAI-style ``messages`` and litellm ``optional_params``.

    ``prompt`` is the conversation written out by the file's chat template: what the
    model reads, exactly. Raises Jinja2's ``TemplateError`` when the template refuses it.
    """
    p = dict(optional_params or {})
    temperature = p.get("temperature")
    max_tokens = p.get("max_tokens") or p.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
    prompt, stops = render_prompt(_normalize_messages(messages), info)
    req: dict[str, Any] = {
        "prompt": prompt,
        "temperature": DEFAULT_TEMPERATURE if temperature is None else float(temperature),
        "max_tokens": max(1, min(int(max_tokens), window)),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    stop = p.get("stop")
    stops += [stop] if isinstance(stop, str) else list(stop or [])
    if stops:
        req["stop"] = stops
    for key in _PASSTHROUGH:
        if p.get(key) is not None:
            req[key] = p[key]
    return req


def render_prompt(messages: list[dict], info: GGUFInfo) -> tuple[str, list[str]]:
    """The text the model reads for ``messages``, and the stop strings it needs.

    With the file's chat template: the template's own rendering (its end-of-turn token
    ends the answer; a leading BOS is left to llama.cpp when the file says it adds one,
    or the model would read it twice). A template that refuses a system message (some
    Gemma files) is given it as the start of the first user message. Without a template:
    a plain transcript, stopped where the model would start writing the user's next line.
    """
    if info.chat_template is None:
        lines = [f"{message['role'].capitalize()}: {message['content']}" for message in messages]
        return "\n\n".join([*lines, "Assistant:"]), ["\nUser:"]
    from jinja2 import TemplateError

    try:
        text = _render(info, messages)
    except TemplateError:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        rest = [m for m in messages if m["role"] != "system"]
        if not system or not rest:
            raise
        rest[0] = {**rest[0], "content": f"{system}\n\n{rest[0]['content']}"}
        text = _render(info, rest)
    if info.add_bos_token and info.bos_token and text.startswith(info.bos_token):
        text = text[len(info.bos_token) :]
    return text, []


def _render(info: GGUFInfo, messages: list[dict]) -> str:
    return _template(info.chat_template).render(
        messages=messages, add_generation_prompt=True, bos_token=info.bos_token, eos_token=info.eos_token
    )


@functools.lru_cache(maxsize=8)
def _template(source: str) -> Any:
    """A chat template compiled in Jinja2's sandbox: the file is data, its template may not reach Python."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def strftime_now(format: str) -> str:
        return time.strftime(format)

    def tojson(value: Any, indent: int | None = None) -> str:
        return json.dumps(value, indent=indent, ensure_ascii=False)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env.from_string(source)


# --------------------------------------------------------------------------- #
# The engine
# --------------------------------------------------------------------------- #


class Engine:
    """llama.cpp serving one GGUF file in this process: loaded on its first request, then kept.

    ``endpoint`` is where its unused HTTP front end can be reached: "" once its Unix
    socket's name is removed. ``last_generation`` is the latest request it was handed,
    kept for diagnosis: what the model read, and how that ended.
    """

    def __init__(self, path: Path, context_tokens: int, alias: str, transport: str = "unix" if os.name == "posix" else "tcp"):
        if transport not in ("unix", "tcp"):
            raise ValueError(f"unknown transport {transport!r}")
        self.path = path
        self.context_tokens = context_tokens
        self.alias = alias
        self.transport = transport
        self.api_key = secrets.token_urlsafe(32)
        self.endpoint = ""
        self.load_seconds: float | None = None
        self.last_generation: Generation | None = None
        self._server: Any = None
        self._lock = threading.Lock()

    def generate(self, request: dict) -> Generation:
        """A generation of ``request`` (it starts when its events are read)."""
        generation = self.last_generation = Generation(self, request)
        return generation

    def load(self) -> Any:
        """The loaded llama.cpp server, loading it now (seconds) if it is not yet."""
        with self._lock:
            if self._server is None:
                started = time.monotonic()
                self._server = self._start()
                self.load_seconds = time.monotonic() - started
            return self._server

    def _start(self) -> Any:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(self.path)
        params.n_ctx = self.context_tokens
        params.n_parallel = 1
        params.n_predict = DEFAULT_MAX_TOKENS
        params.sampling.temp = DEFAULT_TEMPERATURE
        params.verbosity = -1  # below LOG_LEVEL_ERROR (1): llama.cpp prints nothing
        params.fit_params = False  # no device-memory probing: CPU only, and it loads faster
        params.cache_ram_mib = 256  # host-RAM prompt cache (default 8 GiB)
        threads = default_threads()
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.model_alias = {self.alias}
        # The HTTP front end: locked and as small as possible.
        params.api_keys = [self.api_key]
        params.ui = False
        params.endpoint_slots = False
        params.endpoint_metrics = False
        params.endpoint_props = False
        params.n_threads_http = 1

        socket_folder = None
        if self.transport == "unix":
            socket_folder = tempfile.mkdtemp(prefix="oblix-llm-")  # mode 0700
            socket_path = os.path.join(socket_folder, "engine.sock")
            if len(socket_path) > 100:  # sun_path limit (104 on macOS, 108 on Linux)
                shutil.rmtree(socket_folder, ignore_errors=True)
                socket_folder = tempfile.mkdtemp(prefix="oblix-llm-", dir="/tmp")
                socket_path = os.path.join(socket_folder, "engine.sock")
            params.hostnames = [socket_path]
        else:
            params.hostnames = ["127.0.0.1"]
            params.port = 0  # random free port
        try:
            server = xllamacpp.Server(params)
        except Exception as exc:
            if socket_folder:
                shutil.rmtree(socket_folder, ignore_errors=True)
            raise RuntimeError(f"could not load the local model from {self.path}: {exc}") from exc
        self.endpoint = server.listening_address
        if socket_folder:
            self._close_endpoint(socket_folder)
        return server

    def _close_endpoint(self, socket_folder: str) -> None:
        """Remove the HTTP front end's socket name: nothing can connect to a Unix socket whose name is gone."""
        shutil.rmtree(socket_folder, ignore_errors=True)
        self.endpoint = ""


_engines: dict[Path, Engine] = {}  # by file: each loaded once, on first use, and kept
_engines_lock = threading.Lock()


def engine_for(path: Path, context_tokens: int, alias: str) -> Engine:
    """The engine serving the file at ``path`` (not loaded until its first request)."""
    with _engines_lock:
        engine = _engines.get(path)
        if engine is None:
            engine = _engines[path] = Engine(path, context_tokens, alias)
        return engine


# --------------------------------------------------------------------------- #
# Generations
# --------------------------------------------------------------------------- #

_DONE = object()
_running: set[Generation] = set()
_running_lock = threading.Lock()


class Generation:
    """One request handed to an engine, and what came of it.

    ``request`` is exactly what llama.cpp is handed (its ``prompt`` is the text the model
    reads); ``finish_reason``, ``usage`` and ``timings`` are what llama.cpp reported;
    ``ended_by`` is "consumer" when the reader stopped it before llama.cpp was done,
    "engine" when llama.cpp ended it, None while it runs; ``finished`` is set once the
    worker thread is done with llama.cpp.
    """

    def __init__(self, engine: Engine, request: dict):
        self.engine = engine
        self.request = request
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.timings: dict | None = None
        self.ended_by: str | None = None
        self.finished = threading.Event()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Make llama.cpp stop at its next token."""
        self._cancel.set()

    async def events(self) -> AsyncIterator[Event]:
        """Run the request: (text, None, None) per piece, then ("", finish_reason, usage); the loop never blocks."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()
        sink = functools.partial(loop.call_soon_threadsafe, chunks.put_nowait)
        worker = threading.Thread(target=self._run, args=(sink,), name="oblix-local-model", daemon=True)
        with _running_lock:
            _running.add(self)
        worker.start()
        try:
            while (item := await chunks.get()) is not _DONE:
                if text := self._feed(item):
                    yield text, None, None
            yield "", self.finish_reason or "stop", self.usage or dict(_NO_USAGE)
        finally:
            self.cancel()

    def _run(self, sink: Callable[[Any], None]) -> None:
        """The worker thread: llama.cpp's chunks to ``sink``, then an exception if one occurred, then ``_DONE``."""

        def emit(item: Any) -> bool:
            try:
                sink(item)
                return True
            except BaseException:  # e.g. the consumer's event loop is closed
                self._cancel.set()
                return False

        def on_chunk(chunk: Any) -> bool:
            # Called by llama.cpp (with the GIL) for every chunk; True means "stop". Nothing may raise into C++.
            if self._cancel.is_set():
                self.ended_by = "consumer"
                return True
            return not emit(chunk)

        try:
            server = self.engine.load()
            if self._cancel.is_set():
                self.ended_by = "consumer"
            else:
                server.handle_completions(self.request, on_chunk)
        except BaseException as exc:
            emit(exc)
        finally:
            self.ended_by = self.ended_by or "engine"
            with _running_lock:
                _running.discard(self)
            self.finished.set()
            emit(_DONE)

    def _feed(self, chunk: Any) -> str:
        """The text of one llama.cpp chunk; its finish reason, usage and timings are kept."""
        if isinstance(chunk, BaseException):
            raise chunk
        if not isinstance(chunk, dict):
            raise LocalModelError(f"unexpected reply from the local model: {chunk!r}")
        if "error" in chunk or chunk.get("code") == 500:
            err = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
            raise LocalModelError(str(err.get("message") or err), int(err.get("code") or 500), str(err.get("type") or "server_error"))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
            total = int(usage.get("total_tokens") or prompt + completion)
            self.usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
        if isinstance(chunk.get("timings"), dict):
            self.timings = chunk["timings"]
        text = ""
        for choice in chunk.get("choices") or []:
            if isinstance(choice.get("text"), str):
                text += choice["text"]
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return text


@atexit.register
def _stop_generations() -> None:
    """Stop what the engines still generate before Python exits (a warm-up's token, an answer left unread).

    Once Python finalizes, a worker thread that calls back into it is ended by unwinding
    through llama.cpp, which aborts the process ("FATAL: exception not rethrown").
    """
    with _running_lock:
        running = list(_running)
    for generation in running:
        generation.cancel()
    for generation in running:
        generation.finished.wait(5)
