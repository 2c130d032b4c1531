"""Tests for tests/model_server.py: real HTTP over loopback, no mocks."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_server import LOOK, Behavior, ModelServer, ToolCall, split_pieces  # noqa: E402
from waiting import running_in, wait_until  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "hello there world"},
]


@pytest.fixture(scope="module")
def litellm():
    import litellm as _litellm

    _litellm.suppress_debug_info = True
    return _litellm


@pytest.fixture
def server():
    srv = ModelServer().start()
    try:
        yield srv
    finally:
        srv.stop()


def _kw(server, **extra):
    kw = dict(model="openai/test-model", api_base=server.url, api_key="sk-test", messages=MESSAGES)
    kw.update(extra)
    return kw


def _content(chunk) -> str:
    if not chunk.choices:
        return ""
    return chunk.choices[0].delta.content or ""




def _raw_sse(server, body: dict) -> tuple[httpx.Response, list[str]]:
    """POST a streaming request with plain httpx; return response and `data:` payloads."""
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", server.url + "/chat/completions", json=body) as resp:
            text = "".join(resp.iter_text())
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return resp, [e[len("data: "):] for e in events]


# --------------------------------------------------------------------------- litellm


@pytest.mark.timeout(30)
def test_non_streaming_echo_and_usage(server, litellm):
    resp = litellm.completion(**_kw(server))
    assert resp.choices[0].message.content == "Echo: hello there world"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    # prompt: "You are terse." (3 words) + "hello there world" (3 words)
    assert resp.usage.prompt_tokens == 6
    # completion: "Echo: " "hello " "there " "world"
    assert resp.usage.completion_tokens == 4
    assert resp.usage.total_tokens == 10


@pytest.mark.timeout(30)
def test_streaming_via_litellm_joins_to_reply_with_usage(server, litellm):
    chunks = list(litellm.completion(**_kw(server, stream=True, stream_options={"include_usage": True})))
    contents = [_content(c) for c in chunks if _content(c)]
    assert len(contents) >= 4
    assert "".join(contents) == "Echo: hello there world"
    usage = getattr(chunks[-1], "usage", None)
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (6, 4, 10)


@pytest.mark.timeout(30)
def test_request_body_is_recorded(server, litellm):
    litellm.completion(**_kw(server, temperature=0.5))
    list(litellm.completion(**_kw(server, stream=True)))
    bodies = server.chat_requests()
    assert len(bodies) == 2
    assert bodies[0]["messages"] == MESSAGES
    assert bodies[0]["model"] == "test-model"  # litellm strips the "openai/" prefix
    assert bodies[0]["temperature"] == 0.5
    assert not bodies[0].get("stream")
    assert bodies[1]["stream"] is True
    assert bodies[1]["messages"] == MESSAGES
    req = server.requests[0]
    assert req["method"] == "POST"
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == "Bearer sk-test"
    assert req["headers"]["content-type"].startswith("application/json")


@pytest.mark.timeout(30)
def test_status_500_raises_internal_server_error(server, litellm):
    server.default = Behavior(status=500)
    with pytest.raises(litellm.InternalServerError) as info:
        litellm.completion(**_kw(server, num_retries=0, max_retries=0))
    assert "Scripted error (HTTP 500)" in str(info.value)
    assert len(server.chat_requests()) == 1

    # With default settings the OpenAI SDK underneath retries 5xx twice (3 hits).
    server.reset()
    server.default = Behavior(status=500)
    with pytest.raises(litellm.InternalServerError):
        litellm.completion(**_kw(server))
    assert len(server.chat_requests()) == 3


@pytest.mark.timeout(30)
def test_status_500_streaming_raises_too(server, litellm):
    server.default = Behavior(status=500)
    with pytest.raises(litellm.InternalServerError):
        list(litellm.completion(**_kw(server, stream=True, max_retries=0)))
    assert len(server.chat_requests()) == 1


@pytest.mark.timeout(30)
def test_status_401_raises_authentication_error(server, litellm):
    server.default = Behavior(status=401)
    with pytest.raises(litellm.AuthenticationError) as info:
        litellm.completion(**_kw(server))
    assert "Scripted error (HTTP 401)" in str(info.value)
    assert len(server.chat_requests()) == 1  # 4xx is never retried
    with pytest.raises(litellm.AuthenticationError):
        list(litellm.completion(**_kw(server, stream=True)))
    assert len(server.chat_requests()) == 2


@pytest.mark.timeout(30)
def test_drop_after_raises_mid_stream(server, litellm):
    server.default = Behavior(reply="one two three four five", drop_after=2)
    got = []
    with pytest.raises(litellm.exceptions.MidStreamFallbackError) as info:
        for chunk in litellm.completion(**_kw(server, stream=True)):
            got.append(_content(chunk))
    assert [g for g in got if g] == ["one ", "two "]
    err = info.value
    # MidStreamFallbackError subclasses ServiceUnavailableError (status 500 attribute).
    assert isinstance(err, litellm.ServiceUnavailableError)
    assert "Connection error" in str(err)
    assert isinstance(err.original_exception, litellm.APIConnectionError)
    chain, exc = [], err
    while exc is not None:
        chain.append(type(exc))
        exc = exc.__cause__ or exc.__context__
    assert httpx.RemoteProtocolError in chain  # "incomplete chunked read"
    assert len(server.chat_requests()) == 1  # no silent retry of the stream


@pytest.mark.timeout(30)
def test_drop_after_raw_is_incomplete_chunked_read(server):
    server.default = Behavior(reply="a b c d", drop_after=1)
    with httpx.Client(timeout=5) as client:
        with client.stream("POST", server.url + "/chat/completions", json={"model": "m", "stream": True}) as resp:
            assert resp.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                for _ in resp.iter_raw():
                    pass


@pytest.mark.timeout(30)
def test_stall_blocks_until_release(server, litellm):
    server.default = Behavior(reply="one two three four five", stall_after=2)
    got: list[str] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def consume():
        try:
            for chunk in litellm.completion(**_kw(server, stream=True)):
                if _content(chunk):
                    got.append(_content(chunk))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    wait_until(lambda: running_in(ModelServer._stall, threading.Condition.wait), 10, "the server to hold the stream back")
    wait_until(lambda: len(got) == 2, 10, "the pieces sent before the stall")
    assert not done.is_set(), "stream should be stalled"
    assert got == ["one ", "two "]
    server.release()
    assert done.wait(10)
    assert not errors
    assert "".join(got) == "one two three four five"


@pytest.mark.timeout(30)
def test_stall_with_litellm_timeout_raises_timeout(server, litellm):
    server.default = Behavior(reply="one two three", stall_after=1)
    start = time.monotonic()
    got = []
    with pytest.raises(litellm.Timeout):
        for chunk in litellm.completion(**_kw(server, stream=True, timeout=0.5)):
            got.append(_content(chunk))
    elapsed = time.monotonic() - start
    assert [g for g in got if g] == ["one "]
    assert 0.4 < elapsed < 5


@pytest.mark.timeout(30)
def test_stop_releases_stall_and_is_idempotent():
    srv = ModelServer().start()
    srv.default = Behavior(reply="a b c", stall_after=1)
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", srv.url + "/chat/completions", json={"model": "m", "stream": True}) as resp:
            it = resp.iter_text()
            assert "data: " in next(it)
            start = time.monotonic()
            srv.stop()
            assert time.monotonic() - start < 3
            with pytest.raises(httpx.HTTPError):
                for _ in it:
                    pass
    srv.stop()  # second stop is a no-op


@pytest.mark.timeout(30)
def test_token_delay_spreads_chunks(server, litellm):
    server.default = Behavior(reply="a b c d e f", token_delay=0.1)
    arrivals = []
    start = time.monotonic()
    for chunk in litellm.completion(**_kw(server, stream=True)):
        if _content(chunk):
            arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 6
    spread = arrivals[-1] - arrivals[0]
    assert 0.4 <= spread < 3.0, arrivals
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) >= 0.05, gaps


@pytest.mark.timeout(30)
def test_first_token_delay(server, litellm):
    server.default = Behavior(reply="quick", first_token_delay=0.3)
    start = time.monotonic()
    resp = litellm.completion(**_kw(server))
    assert resp.choices[0].message.content == "quick"
    assert 0.3 <= time.monotonic() - start < 3


@pytest.mark.timeout(30)
def test_for_model_and_enqueue_priority(server, litellm):
    server.default = Behavior(reply="from default")
    server.for_model("special", Behavior(reply="from for_model"))
    server.enqueue(Behavior(reply="queued 1"), Behavior(reply="queued 2"))

    def ask(model):
        return litellm.completion(**_kw(server, model=model)).choices[0].message.content

    assert ask("openai/special") == "queued 1"
    assert ask("openai/test-model") == "queued 2"
    assert ask("openai/special") == "from for_model"
    assert ask("openai/test-model") == "from default"
    assert [b["model"] for b in server.chat_requests()] == ["special", "test-model", "special", "test-model"]


@pytest.mark.timeout(30)
def test_enqueued_error_then_normal(server, litellm):
    server.enqueue(Behavior(status=401))
    with pytest.raises(litellm.AuthenticationError):
        litellm.completion(**_kw(server))
    assert litellm.completion(**_kw(server)).choices[0].message.content == "Echo: hello there world"
    assert len(server.chat_requests()) == 2


@pytest.mark.timeout(30)
def test_usage_overrides(server, litellm):
    server.default = Behavior(reply="x y", prompt_tokens=100, completion_tokens=7)
    resp = litellm.completion(**_kw(server))
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (100, 7, 107)


@pytest.mark.timeout(30)
def test_keep_alive_many_litellm_calls_share_one_connection(server, litellm):
    litellm.completion(**_kw(server))  # warm-up (client creation)
    server.reset()
    for i in range(20):
        kw = _kw(server, messages=[{"role": "user", "content": f"n{i}"}])
        assert litellm.completion(**kw).choices[0].message.content == f"Echo: n{i}"
    assert len(server.chat_requests()) == 20
    # all 20 non-streaming calls reuse the warm-up connection
    assert server.connections_opened == 0, server.connections_opened


@pytest.mark.timeout(30)
def test_many_sync_streams_each_answered_in_full(server, litellm):
    for i in range(20):
        kw = _kw(server, messages=[{"role": "user", "content": f"s{i}"}], stream=True)
        assert "".join(_content(c) for c in litellm.completion(**kw)) == f"Echo: s{i}"
    assert len(server.chat_requests()) == 20
    # NB: the *sync* OpenAI SDK stream closes the response right after "data: [DONE]"
    # without reading the terminating chunk, so httpcore discards that connection:
    # each sync stream costs a fresh TCP connection (client-side behaviour).
    assert server.connections_opened >= 19


@pytest.mark.timeout(30)
def test_async_streams_reuse_connection(server, litellm):
    async def run():
        for i in range(10):
            kw = _kw(server, messages=[{"role": "user", "content": f"a{i}"}])
            if i % 2:
                text = "".join([_content(c) async for c in await litellm.acompletion(**kw, stream=True)])
            else:
                text = (await litellm.acompletion(**kw)).choices[0].message.content
            assert text == f"Echo: a{i}"

    asyncio.run(run())
    assert len(server.chat_requests()) == 10
    # the async SDK drains the body after [DONE] on HTTP/1.1, so keep-alive works
    assert server.connections_opened == 1, server.connections_opened


# --------------------------------------------------------------------------- tool calls


@pytest.mark.timeout(30)
def test_a_streamed_tool_call_is_reassembled_by_litellm(server, litellm):
    arguments = {"name": "df", "rows": 3, "columns": ["a", "b"]}
    server.enqueue(Behavior(reply="Let me look.", tool_calls=[ToolCall("look", arguments, id="call_1")]))
    chunks = list(litellm.completion(**_kw(server, stream=True, tools=[LOOK])))
    fragments = [
        call.function.arguments
        for chunk in chunks
        if chunk.choices
        for call in chunk.choices[0].delta.tool_calls or ()
        if call.function.arguments
    ]
    assert len(fragments) > 1  # the arguments arrive in pieces, as real providers send them
    message = litellm.stream_chunk_builder(chunks).choices[0]
    assert message.finish_reason == "tool_calls"
    assert message.message.content == "Let me look."
    (call,) = message.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("call_1", "function", "look")
    assert json.loads(call.function.arguments) == arguments


@pytest.mark.timeout(30)
def test_parallel_tool_calls_keep_their_order_and_ids(server, litellm):
    server.enqueue(Behavior(tool_calls=[ToolCall("look", {"name": "df"}), ToolCall("look", '{"name": "x"}')]))
    response = litellm.stream_chunk_builder(list(litellm.completion(**_kw(server, stream=True, tools=[LOOK]))))
    message = response.choices[0].message
    assert not message.content  # tool calls alone: no text, not the echo
    first, second = message.tool_calls
    assert [json.loads(c.function.arguments) for c in (first, second)] == [{"name": "df"}, {"name": "x"}]
    assert first.id.startswith("call_") and second.id.startswith("call_") and first.id != second.id


@pytest.mark.timeout(30)
def test_tool_calls_without_streaming(server, litellm):
    server.enqueue(Behavior(tool_calls=[ToolCall("look", {"name": "df"}, id="call_9")]))
    choice = litellm.completion(**_kw(server, tools=[LOOK])).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == ("call_9", "look", '{"name": "df"}')


@pytest.mark.timeout(30)
def test_raw_tool_call_wire_format(server):
    server.enqueue(Behavior(tool_calls=[ToolCall("look", {"name": "dataframe"}, id="call_a"), ToolCall("look", "{}", id="call_b")]))
    _, payloads = _raw_sse(server, {"model": "m", "stream": True, "messages": [{"role": "user", "content": "q"}]})
    assert payloads[-1] == "[DONE]"
    choices = [json.loads(p)["choices"][0] for p in payloads[:-1]]
    first = choices[0]["delta"]
    assert first == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "look", "arguments": ""}}],
    }
    calls = [c["delta"]["tool_calls"][0] for c in choices if c["delta"].get("tool_calls")]
    fragments = [c for c in calls if "id" not in c]
    assert all(set(c) == {"index", "function"} and set(c["function"]) == {"arguments"} for c in fragments)
    joined = {0: "", 1: ""}
    for call in calls:
        joined[call["index"]] += call["function"]["arguments"]
    assert joined == {0: '{"name": "dataframe"}', 1: "{}"}
    assert [c["id"] for c in calls if "id" in c] == ["call_a", "call_b"]
    assert [c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + ["tool_calls"]


@pytest.mark.timeout(30)
def test_a_tool_round_is_scripted_and_recorded(server, litellm):
    server.enqueue(Behavior(tool_calls=[ToolCall("look", {"name": "df"}, id="call_1")]), Behavior(reply="df has 3 rows"))
    first = litellm.stream_chunk_builder(list(litellm.completion(**_kw(server, stream=True, tools=[LOOK]))))
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "DataFrame, 3 rows"},
    ]
    second = litellm.completion(**_kw(server, messages=messages, stream=True, tools=[LOOK]))
    assert "".join(_content(c) for c in second) == "df has 3 rows"
    offered, answered = server.chat_requests()
    assert offered["tools"] == [LOOK] and answered["tools"] == [LOOK]
    assert answered["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "DataFrame, 3 rows"}
    assert answered["messages"][-2]["tool_calls"][0]["function"] == {"name": "look", "arguments": '{"name": "df"}'}


@pytest.mark.timeout(30)
def test_drop_after_counts_tool_call_fragments(server, litellm):
    server.enqueue(Behavior(reply="Looking", tool_calls=[ToolCall("look", {"name": "a long variable name"})], drop_after=3))
    with pytest.raises(litellm.exceptions.MidStreamFallbackError):
        list(litellm.completion(**_kw(server, stream=True, max_retries=0)))


# --------------------------------------------------------------------------- raw HTTP


@pytest.mark.timeout(30)
def test_raw_keep_alive_survives_streams():
    with ModelServer() as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        try:
            for i in range(6):
                body = json.dumps({"model": "m", "stream": bool(i % 2), "messages": [{"role": "user", "content": "hi"}]})
                conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                assert resp.status == 200
                assert not resp.will_close
                if i % 2:
                    assert resp.getheader("Transfer-Encoding") == "chunked"
                    assert data.endswith(b"data: [DONE]\n\n")
                else:
                    assert json.loads(data)["choices"][0]["message"]["content"] == "Echo: hi"
            conn.request("GET", "/v1/models")
            assert conn.getresponse().read()
        finally:
            conn.close()
        assert srv.connections_opened == 1


@pytest.mark.timeout(30)
def test_raw_sse_wire_format(server):
    body = {
        "model": "wire",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "alpha  beta\ngamma"}],
    }
    resp, payloads = _raw_sse(server, body)
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "wire" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    content_chunks = chunks[:-2]
    assert content_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"]["content"] for c in content_chunks]
    assert pieces == ["Echo: ", "alpha  ", "beta\n", "gamma"]
    final = chunks[-2]
    assert final["choices"][0]["delta"] == {} and final["choices"][0]["finish_reason"] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


@pytest.mark.timeout(30)
def test_raw_sse_without_usage(server):
    _, payloads = _raw_sse(server, {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"] for c in chunks)


@pytest.mark.timeout(30)
def test_non_stream_json_shape_and_paths_without_v1(server):
    base = server.url[: -len("/v1")]
    with httpx.Client(timeout=5) as client:
        r = client.post(base + "/chat/completions", json={"model": "plain", "messages": [{"role": "user", "content": "q"}]})
        assert r.status_code == 200
        data = r.json()
        assert data["object"] == "chat.completion"
        assert data["id"].startswith("chatcmpl-")
        assert isinstance(data["created"], int)
        assert data["model"] == "plain"
        assert data["choices"][0]["message"] == {"role": "assistant", "content": "Echo: q"}
        assert data["choices"][0]["finish_reason"] == "stop"

        for url in (server.url + "/models", base + "/models"):
            models = client.get(url).json()
            ids = [m["id"] for m in models["data"]]
            assert "plain" in ids and "test-model" in ids

        r = client.get(server.url + "/nope")
        assert r.status_code == 404
        assert set(r.json()["error"]) == {"message", "type", "code"}

        r = client.post(server.url + "/chat/completions", content=b"{not json")
        assert r.status_code == 400
    paths = [r["path"] for r in server.requests]
    assert paths == ["/chat/completions", "/v1/models", "/models", "/v1/nope", "/v1/chat/completions"]
    assert server.chat_requests()[0]["model"] == "plain"
    assert server.chat_requests()[1] is None  # unparsable body recorded as None


@pytest.mark.timeout(30)
def test_error_body_and_recording(server):
    server.default = Behavior(status=429)
    with httpx.Client(timeout=5) as client:
        r = client.post(server.url + "/chat/completions", json={"model": "m", "stream": True, "messages": []})
    assert r.status_code == 429
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code"}
    assert "429" in err["message"]
    assert server.chat_requests() == [{"model": "m", "stream": True, "messages": []}]


@pytest.mark.timeout(30)
def test_client_disconnect_mid_stream_is_quiet(server, capfd):
    server.default = Behavior(reply=" ".join(["w"] * 50), token_delay=0.01)
    handlers: set[threading.Thread] = set()  # the server's threads of these connections
    for _ in range(3):
        before = set(threading.enumerate())
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        body = json.dumps({"model": "m", "stream": True}).encode()
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        handlers |= {thread for thread in set(threading.enumerate()) - before if "process_request_thread" in thread.name}
        # RST instead of FIN so the server's next write fails immediately
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    assert len(handlers) == 3
    for thread in handlers:  # each hit the broken pipe and ended, error handling included
        thread.join(10)
        assert not thread.is_alive()
    with httpx.Client(timeout=5) as client:  # still serving
        assert client.get(server.url + "/models").status_code == 200
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    assert err == ""


@pytest.mark.timeout(30)
def test_concurrent_requests_thread_safe(server):
    server.default = Behavior(token_delay=0.001)
    failures: list[str] = []

    def worker(n: int) -> None:
        with httpx.Client(timeout=10) as client:
            for i in range(10):
                msg = f"w{n}-{i}"
                body = {"model": "m", "stream": bool(i % 2), "messages": [{"role": "user", "content": msg}]}
                if i % 2:
                    with client.stream("POST", server.url + "/chat/completions", json=body) as resp:
                        text = "".join(resp.iter_text())
                    if "[DONE]" not in text:
                        failures.append(msg)
                else:
                    r = client.post(server.url + "/chat/completions", json=body)
                    if r.json()["choices"][0]["message"]["content"] != "Echo: " + msg:
                        failures.append(msg)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not failures
    assert len(server.chat_requests()) == 120


@pytest.mark.timeout(30)
def test_reset_clears_everything(server):
    server.default = Behavior(reply="x")
    server.for_model("a", Behavior(reply="y"))
    server.enqueue(Behavior(reply="z"))
    with httpx.Client(timeout=5) as client:
        client.post(server.url + "/chat/completions", json={"model": "a"})
        server.reset()
        assert server.requests == [] and server.chat_requests() == []
        assert server.default == Behavior()
        r = client.post(server.url + "/chat/completions", json={"model": "a", "messages": [{"role": "user", "content": "k"}]})
    assert r.json()["choices"][0]["message"]["content"] == "Echo: k"


def test_split_pieces_roundtrip():
    for text in ["", "   ", "a", " lead", "trail ", "a  b\n\nc\t", "Echo: hello there world"]:
        assert "".join(split_pieces(text)) == text
    assert split_pieces("one two three") == ["one ", "two ", "three"]


@pytest.mark.timeout(30)
def test_command_line_server(tmp_path):
    script = Path(__file__).resolve().parents[1] / "model_server.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--reply", "fixed answer", "--token-delay", "0", "--first-token-delay", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        with httpx.Client(timeout=5) as client:
            started = time.monotonic()
            r = client.post(url + "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "q"}]})
        assert time.monotonic() - started >= 0.3
        assert r.json()["choices"][0]["message"]["content"] == "fixed answer"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            raise
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert rc == 0, err
    assert err == ""
