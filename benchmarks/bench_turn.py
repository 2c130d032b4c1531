"""A full ``execute`` turn against a bare ``litellm.completion`` with the same messages.

Both stream from the same loopback server, which runs in a process of its own as a
provider does, so the ratio is what the client adds (store reads and writes, context
selection) on a 1,000-message session: once with a 128k window, where the whole
conversation fits, and once with a 4k window, where the selector must choose (word
index, embeddings). Turns are 0.2 s apart (untimed), as a person's are: the embedding
of a finished turn runs in the background in that time. The server answers a short
echo instantly, the same after a hosted model's 300 ms first-token delay, and a typical
answer (150 words at 15 ms each after 300 ms). Each case also prints what the turn adds
in milliseconds. One more case asks, each turn, about a word the session never wrote,
which is embedded beside the prompt (``expansion``): the most a prompt's words add.

The model is named as a priced one (``openai/gpt-4o-mini``), as a user's usually is.
For a name litellm has no price for, its post-stream logging thread spends about 10 ms
of CPU failing to price the answer, competing with the answer's write for the
interpreter lock: the last lines measure that case.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from contextlib import ExitStack

from common import (
    Behavior,
    paired_medians,
    paired_runs,
    ratio_spread,
    report,
    server_process,
)

from oblix_jupyter import OblixClient, SessionManager
from oblix_jupyter.models import local_model
from oblix_jupyter.models.gateway import litellm_module

MODEL = "openai/gpt-4o-mini"
UNPRICED_MODEL = "openai/bench-model"
PAUSE = 0.2
ANSWER = " ".join(f"word{number}" for number in range(150))
SERVERS = (
    ("instant server", Behavior()),
    ("first token after 300 ms", Behavior(first_token_delay=0.3)),
    ("typical answer", Behavior(reply=ANSWER, first_token_delay=0.3, token_delay=0.015)),
)
WINDOWS = ((128_000, "fits a 128k window"), (4_096, "overflows a 4k window"))
NEW_WORDS = "latitude invoice warehouse pigment orchard glacier tariff voltage harbour mortgage satellite vaccine lantern turbine saffron meadow violin compass quarry ledger".split()


def main() -> None:
    litellm = litellm_module()
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    with ExitStack() as stack:
        base = stack.enter_context(tempfile.TemporaryDirectory())
        urls = [stack.enter_context(server_process(behavior)) for _, behavior in SERVERS]
        cases = [(MODEL, window, SERVERS, urls, False) for window in WINDOWS]
        cases += [(UNPRICED_MODEL, WINDOWS[0], SERVERS[:2], urls[:2], False), (MODEL, WINDOWS[1], SERVERS[1:2], urls[1:2], True)]
        for model, (window, label), servers, served, new_words in cases:
            store = SessionManager(os.path.join(base, f"{model}-{window}-{new_words}"))
            session_id = store.create_session(title="long", initial_context={"project": "bench"})
            for number in range(500):
                store.save_message(session_id, f"question {number} about the data frame", role="user")
                store.save_message(session_id, f"answer {number}: use groupby", role="assistant", model=model)
            prompt = "and what about the last column?"
            client = OblixClient(model=model, session_manager=store, model_options={model: {"api_base": served[0]}}, max_input_tokens=window)
            client.execute_sync(prompt, session_id)  # the first turn after a restart indexes and embeds the session
            client.wait_for_background()  # or its embedding would slow the bare calls, in our favour
            messages = client.plan(prompt, client.load_session(session_id), model).messages
            asked = iter(f"and what about the {word} column?" for word in NEW_WORDS)
            for (server_label, _), url in zip(servers, served):
                client.gateway.model_options = {model: {"api_base": url}}

                def bare() -> None:
                    stream = litellm.completion(
                        model=model, messages=messages, stream=True, stream_options={"include_usage": True},
                        api_base=url, num_retries=0, max_retries=0,
                    )
                    "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

                def turn() -> None:
                    client.execute_sync(next(asked) if new_words else prompt, session_id)

                bares, turns = paired_runs(bare, turn, repeat=15, pause=PAUSE)
                baseline, ours = statistics.median(bares), statistics.median(turns)
                case = f"{label}, {server_label}" + ("" if model == MODEL else ", unpriced model") + (", a new word each turn" if new_words else "")
                report(f"bare litellm.completion, {len(messages)} msgs, {case}", f"{baseline:.2f} ms")
                report("execute turn, 1,000-message session, same server", f"{ours:.2f} ms")
                report(f"  execute adds ({case})", f"{ours - baseline:.2f} ms")
                report(f"  ratio execute / bare ({case})", f"{ours / baseline:.3f}", "goal <= 1.05")
                report("    middle half of the 15 pairs' ratios", ratio_spread(bares, turns))
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

        baseline, ours = paired_medians(bare, turn, repeat=10)
    report("bare litellm.completion, offline model, 24 tokens", f"{baseline:.2f} ms")
    report("execute turn, offline model, same messages", f"{ours:.2f} ms")
    report("  ratio execute / bare (offline model)", f"{ours / baseline:.3f}", "goal <= 1.05")


if __name__ == "__main__":
    main()
