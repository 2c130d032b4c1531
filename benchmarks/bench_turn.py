"""A full ``execute`` turn against a bare ``litellm.completion`` with the same messages.

Both stream from the same loopback server in this process, so the ratio is what the
client adds (store reads and writes, context selection) on a 1,000-message session.
"""

from __future__ import annotations

import os
import tempfile

from common import ModelServer, median_ms, report

from oblix_jupyter import OblixClient, SessionManager, local_model
from oblix_jupyter.models import litellm_module

MODEL = "openai/bench-model"


def main() -> None:
    litellm = litellm_module()
    with ModelServer() as server, tempfile.TemporaryDirectory() as base:
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        options = {MODEL: {"api_base": server.url}}
        client = OblixClient(model=MODEL, session_manager=SessionManager(base), model_options=options)
        session_id = client.create_session_sync(title="long", initial_context={"project": "bench"})
        for number in range(500):
            client.session_manager.save_message(session_id, f"question {number} about the data frame", role="user")
            client.session_manager.save_message(session_id, f"answer {number}: use groupby", role="assistant", model=MODEL)
        prompt = "and what about the last column?"
        session = client.load_session(session_id)
        messages = client.plan(prompt, session, MODEL).messages

        def bare() -> None:
            stream = litellm.completion(
                model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True},
                api_base=server.url, num_retries=0, max_retries=0,
            )
            "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

        def turn() -> None:
            client.execute_sync(prompt, session_id)

        # A hosted model's first token typically takes a few hundred milliseconds.
        for label, first_token in (("instant server", 0.0), ("first token after 300 ms", 0.3)):
            server.default.first_token_delay = first_token
            baseline = median_ms(bare, repeat=10)
            ours = median_ms(turn, repeat=10)
            report(f"bare litellm.completion, {len(messages)} msgs, {label}", f"{baseline:.2f} ms")
            report(f"execute turn, 1,000-message session, {label}", f"{ours:.2f} ms")
            report(f"  ratio execute / bare ({label})", f"{ours / baseline:.3f}", "goal <= 1.05")
    if local_model.is_available():
        local_turn_ratio(litellm)


def local_turn_ratio(litellm) -> None:
    """The same comparison against the in-process offline model (greedy, 24 tokens, so both do equal work)."""
    model = local_model.LOCAL_MODEL
    with tempfile.TemporaryDirectory() as base:
        client = OblixClient(model=model, session_manager=SessionManager(base))
        session_id = client.create_session_sync(title="local")
        prompt = "Name three colours."
        messages = client.plan(prompt, client.load_session(session_id), model).messages
        settings = {"temperature": 0.0, "max_tokens": 24}

        def bare() -> None:
            stream = litellm.completion(model=model, messages=messages, stream=True, stream_options={"include_usage": True}, **settings)
            "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

        def turn() -> None:
            client.execute_sync(prompt, session_id, history=False, **settings)

        baseline = median_ms(bare, repeat=10)
        ours = median_ms(turn, repeat=10)
    report("bare litellm.completion, offline model, 24 tokens", f"{baseline:.2f} ms")
    report("execute turn, offline model, same messages", f"{ours:.2f} ms")
    report("  ratio execute / bare (offline model)", f"{ours / baseline:.3f}", "goal <= 1.05")


if __name__ == "__main__":
    main()
