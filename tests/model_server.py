"""A small, scriptable OpenAI-compatible chat-completions server for tests.

Standard library only.  Serves on 127.0.0.1 (an ephemeral port by default) in
a daemon thread, speaks HTTP/1.1 with keep-alive, and streams Server-Sent
Events with ``Transfer-Encoding: chunked`` so connections can be reused after a
stream.

Typical use::

    with ModelServer() as server:
        server.enqueue(Behavior(reply="hi", status=500))
        litellm.completion(model="openai/test-model", api_base=server.url, ...)

A reply can be a request to call tools, streamed the way OpenAI streams it; a
conversation with tools is a queue of behaviours, one per request::

    server.enqueue(Behavior(tool_calls=[ToolCall("look", {"name": "df"})]), Behavior(reply="df has 3 rows"))

Run it as a program (``python tests/model_server.py --port 0``) to serve in
the foreground; the first line printed is the base URL.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["DEFAULT_MODEL", "LOOK", "Behavior", "ModelServer", "ToolCall", "split_pieces"]

DEFAULT_MODEL = "test-model"
# A tool schema for tests that script a model calling a tool: "look" at a variable by name.
LOOK = {
    "type": "function",
    "function": {
        "name": "look",
        "description": "Describe a variable of the notebook.",
        "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    },
}

_PIECE_RE = re.compile(r"\s*\S+\s*")
_ARGUMENT_FRAGMENT = 8  # characters of tool-call arguments per chunk: providers stream them a token at a time
_CONNECTION_ERRORS = (OSError,)  # BrokenPipe, ConnectionReset, timeouts, ...


@dataclass
class ToolCall:
    """One tool call the scripted model asks for."""

    name: str
    arguments: str | dict = "{}"  # a dict is sent as its JSON; a string as it is, even if it is not JSON
    id: str | None = None  # None -> "call_" + a random hex

    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass
class Behavior:
    """How the server answers one request (or all requests of a kind)."""

    reply: str | None = None  # None -> "Echo: " + content of the last user message ("" when tool_calls are set)
    status: int = 200  # non-200 -> OpenAI-style error JSON with this status
    token_delay: float = 0.0  # seconds between streamed chunks
    first_token_delay: float = 0.0  # seconds before the first chunk / non-stream body
    drop_after: int | None = None  # streaming: close socket after N chunks (text pieces, then tool-call fragments)
    stall_after: int | None = None  # streaming: stop sending after N chunks until release()/stop()
    prompt_tokens: int | None = None  # default: word count of all message contents
    completion_tokens: int | None = None  # default: number of chunks (text pieces and tool-call fragments)
    pieces: list[str] | None = None  # streaming: exactly these content chunks (the reply is their concatenation)
    tool_calls: list[ToolCall] | None = None  # the reply (if any) then these calls, finish_reason "tool_calls"


def offered(request: dict) -> list[str]:
    """The names of the tools a recorded request offered."""
    return [tool["function"]["name"] for tool in request.get("tools") or []]


def split_pieces(text: str) -> list[str]:
    """Split ``text`` into one-word pieces that concatenate back to ``text``."""
    pieces = _PIECE_RE.findall(text)
    if not pieces:
        return [text] if text else []
    return pieces


def _content_text(content: Any) -> str:
    """Text of a message ``content`` (a string or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return str(content)


def _messages(body: Any) -> list[dict]:
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        return [m for m in body["messages"] if isinstance(m, dict)]
    return []


def _default_reply(body: Any) -> str:
    for message in reversed(_messages(body)):
        if message.get("role") == "user":
            return "Echo: " + _content_text(message.get("content"))
    return "Echo: "


def _tool_call_deltas(calls: list[tuple[str, ToolCall]]) -> list[dict]:
    """Stream deltas for ``calls`` as OpenAI sends them.

    Each call opens with its index, id, type and name and empty arguments; its
    arguments follow in fragments that carry only the index. Calls come one after
    another, so a client must gather the fragments by index.
    """
    deltas = []
    for index, (call_id, call) in enumerate(calls):
        opening = {"index": index, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        deltas.append({"tool_calls": [opening]})
        arguments = call.arguments_json()
        for start in range(0, len(arguments), _ARGUMENT_FRAGMENT):
            fragment = arguments[start : start + _ARGUMENT_FRAGMENT]
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
    return deltas


def _count_prompt_tokens(body: Any) -> int:
    return sum(len(_content_text(m.get("content")).split()) for m in _messages(body))


_ERROR_TYPES = {
    400: ("invalid_request_error", "bad_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", "timeout"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}


def _error_body(status: int, message: str | None = None) -> dict:
    etype, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", str(status)))
    return {"error": {"message": message or f"Scripted error (HTTP {status})", "type": etype, "code": code}}


class _Aborted(Exception):
    """The stream must end by closing the socket without a proper ending."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    owner: "ModelServer"

    def handle_error(self, request, client_address):  # noqa: D401 - stdlib hook
        exc = sys.exc_info()[1]
        if isinstance(exc, _CONNECTION_ERRORS) or self.owner._stopping.is_set():
            return  # client went away / server stopping: stay quiet
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ModelServer/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server

    # ---- plumbing -------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.owner._untrack(self.connection)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _Aborted:
            self.close_connection = True
            self._hard_close()
        except _CONNECTION_ERRORS:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # silence access log
        pass

    def _hard_close(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = bytearray()
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _sse(self, obj: Any) -> None:
        payload = obj if isinstance(obj, str) else json.dumps(obj)
        self._write_chunk(b"data: " + payload.encode("utf-8") + b"\n\n")

    # ---- routing --------------------------------------------------------
    def _route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.startswith("/v1/") or path == "/v1":
            path = path[3:]
        return path or "/"

    def _dispatch(self, method: str) -> None:
        try:
            raw = self._read_body()
        except ValueError:  # malformed Content-Length / chunk size
            self.close_connection = True
            self._send_json(400, _error_body(400, "Malformed request body framing"))
            return
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        owner = self.server.owner
        owner._record(
            {
                "path": self.path,
                "method": method,
                "body": body,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        )
        route = self._route()
        if route == "/chat/completions" and method == "POST":
            self._chat(body, raw)
        elif route == "/models" and method == "GET":
            self._models()
        elif route in ("/chat/completions", "/models"):
            self._send_json(405, _error_body(405, f"Method {method} not allowed"))
        else:
            self._send_json(404, _error_body(404, f"Unknown path {self.path}"))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    # ---- endpoints ------------------------------------------------------
    def _models(self) -> None:
        names = self.server.owner._model_names()
        created = int(time.time())
        data = [{"id": n, "object": "model", "created": created, "owned_by": "model-server"} for n in names]
        self._send_json(200, {"object": "list", "data": data})

    def _chat(self, body: Any, raw: bytes) -> None:
        owner = self.server.owner
        if not isinstance(body, dict):
            self._send_json(400, _error_body(400, "Request body must be a JSON object" if raw else "Missing JSON body"))
            return
        model = body.get("model")
        model = model if isinstance(model, str) and model else DEFAULT_MODEL
        owner._saw_model(model)
        behavior = owner._choose(model)

        if behavior.first_token_delay > 0:
            owner._sleep(behavior.first_token_delay)
        if behavior.status != 200:
            self._send_json(behavior.status, _error_body(behavior.status))
            return

        if behavior.pieces is not None:
            pieces = list(behavior.pieces)
        elif behavior.reply is not None:
            pieces = split_pieces(behavior.reply)
        else:  # tool calls alone come without text; anything else is the echo
            pieces = [] if behavior.tool_calls else split_pieces(_default_reply(body))
        reply = "".join(pieces)
        calls = [(call.id or "call_" + uuid.uuid4().hex[:24], call) for call in behavior.tool_calls or ()]
        deltas = [{"content": piece} for piece in pieces] + _tool_call_deltas(calls)
        finish_reason = "tool_calls" if calls else "stop"
        prompt_tokens = behavior.prompt_tokens if behavior.prompt_tokens is not None else _count_prompt_tokens(body)
        completion_tokens = behavior.completion_tokens if behavior.completion_tokens is not None else len(deltas)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())

        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply if reply or not calls else None}
            if calls:
                message["tool_calls"] = [
                    {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json()}}
                    for call_id, call in calls
                ]
            self._send_json(
                200,
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_model_server",
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
                    "usage": usage,
                },
            )
            return

        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))

        def chunk(delta: dict, finish: str | None) -> dict:
            out = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_model_server",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                out["usage"] = None
            return out

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        # The first chunk names the role; with no text it says content null, as OpenAI does before tool calls.
        deltas = deltas or [{"content": ""}]
        deltas[0] = {"role": "assistant", "content": None, **deltas[0]}
        for i, delta in enumerate(deltas):
            if behavior.drop_after is not None and i >= behavior.drop_after:
                raise _Aborted()
            if behavior.stall_after is not None and i == behavior.stall_after:
                if not owner._stall():
                    raise _Aborted()
            if i > 0 and behavior.token_delay > 0:
                owner._sleep(behavior.token_delay)
            if owner._stopping.is_set():
                raise _Aborted()
            self._sse(chunk(delta, None))
        n = len(deltas)
        if behavior.drop_after is not None and n >= behavior.drop_after:
            raise _Aborted()
        if behavior.stall_after is not None and n == behavior.stall_after:
            if not owner._stall():
                raise _Aborted()
        if behavior.token_delay > 0:
            owner._sleep(behavior.token_delay)
        self._sse(chunk({}, finish_reason))
        if include_usage:
            self._sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_model_server",
                    "choices": [],
                    "usage": usage,
                }
            )
        self._sse("[DONE]")
        self._write_chunk(b"")  # terminating zero-length chunk


class ModelServer:
    """Scriptable OpenAI-compatible server running in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self._port = port
        self.requests: list[dict] = []
        self.default: Behavior = Behavior()
        self._lock = threading.Lock()
        self._queue: deque[Behavior] = deque()
        self._per_model: dict[str, Behavior] = {}
        self._models_seen: list[str] = []
        self._stall_cond = threading.Condition()
        self._release_gen = 0
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self.connections_opened = 0  # TCP connections accepted so far (keep-alive checks)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    # ---- lifecycle ------------------------------------------------------
    def start(self) -> "ModelServer":
        if self._httpd is not None:
            return self
        httpd = _Server((self.host, self._port), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"ModelServer:{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None or self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        with self._stall_cond:
            self._release_gen += 1
            self._stall_cond.notify_all()
        self._httpd.shutdown()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}/v1"

    # ---- scripting ------------------------------------------------------
    def for_model(self, name: str, behavior: Behavior) -> None:
        with self._lock:
            self._per_model[name] = behavior

    def enqueue(self, *behaviors: Behavior) -> None:
        with self._lock:
            self._queue.extend(behaviors)

    def release(self) -> None:
        with self._stall_cond:
            self._release_gen += 1
            self._stall_cond.notify_all()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._queue.clear()
            self._per_model.clear()
            self._models_seen.clear()
            self.connections_opened = 0
            self.default = Behavior()

    def chat_requests(self) -> list[dict]:
        with self._lock:
            recorded = list(self.requests)
        out = []
        for r in recorded:
            path = r["path"].split("?", 1)[0].rstrip("/")
            if r["method"] == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
                out.append(r["body"])
        return out

    # ---- used by the handler -------------------------------------------
    def _choose(self, model: str) -> Behavior:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            behavior = self._per_model.get(model)
            return behavior if behavior is not None else self.default

    def _record(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)

    def _saw_model(self, model: str) -> None:
        with self._lock:
            if model not in self._models_seen:
                self._models_seen.append(model)

    def _model_names(self) -> list[str]:
        with self._lock:
            names = list(self._models_seen)
        if DEFAULT_MODEL not in names:
            names.append(DEFAULT_MODEL)
        return names

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _stall(self) -> bool:
        """Block until release() or stop(); True if released, False if stopping."""
        with self._stall_cond:
            gen = self._release_gen
            while self._release_gen == gen and not self._stopping.is_set():
                self._stall_cond.wait()
        return not self._stopping.is_set()

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)
            self.connections_opened += 1

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible model server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reply", default=None, help="fixed reply (default: echo the last user message)")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--first-token-delay", type=float, default=0.0, help="seconds before the first chunk")
    args = parser.parse_args(argv)

    done = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    server = ModelServer(args.host, args.port)
    server.default = Behavior(reply=args.reply, token_delay=args.token_delay, first_token_delay=args.first_token_delay)
    server.start()
    print(server.url, flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
