"""What background embedding costs a turn that starts while it runs.

A message is embedded in the background as soon as it is stored, and a session that
nothing was computed for is embedded there in batches of a few messages, each batch
waiting while a turn is under way. A turn that starts meanwhile still shares the two
cores with the batch already running. Measured here: a turn on a 1,000-message session
that overflows a 4k window (first token after 300 ms), alternately with the background
held still and with it embedding another, 3,000-message session. Before each timed turn
an untimed wait lets the state settle: the batch in flight finishes (held still), or
the next batch starts (running). Goal: the running case adds at most 50 ms.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack

from common import Behavior, paired_medians, report, server_process

from oblix_jupyter import OblixClient, SessionManager
from oblix_jupyter.context.embedder import digest
from oblix_jupyter.context.selector import conversation_messages

MODEL = "openai/gpt-4o-mini"
SETTLE = 0.15  # seconds: longer than one background batch


def fill(store: SessionManager, title: str, exchanges: int, words: str) -> str:
    session_id = store.create_session(title=title)
    for number in range(exchanges):
        store.save_message(session_id, f"question {number} about {words}", role="user")
        store.save_message(session_id, f"answer {number}: for {words}, use groupby and then plot it", role="assistant", model=MODEL)
    return session_id


def main() -> None:
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    with ExitStack() as stack:
        base = stack.enter_context(tempfile.TemporaryDirectory())
        url = stack.enter_context(server_process(Behavior(first_token_delay=0.3)))
        store = SessionManager(base)
        session_id = fill(store, "the turns", 500, "the data frame")
        backlog = fill(store, "the backlog", 1500, "the quarterly churn figures")
        client = OblixClient(model=MODEL, session_manager=store, model_options={MODEL: {"api_base": url}}, max_input_tokens=4096)
        prompt = "and what about the last column?"
        client.execute_sync(prompt, session_id)
        client.wait_for_background()
        cache = client._turns.vector_cache()
        assert cache is not None and cache.embedder is not None, "this benchmark needs the embedding model"
        backlog_messages = conversation_messages(store.get_session(backlog))
        cache.update_later(backlog, backlog_messages)

        def still() -> None:
            with cache.during_turn():
                time.sleep(SETTLE)
                started = time.perf_counter()
                client.execute_sync(prompt, session_id)
                still.seconds.append(time.perf_counter() - started)

        def running() -> None:
            time.sleep(SETTLE)
            started = time.perf_counter()
            client.execute_sync(prompt, session_id)
            running.seconds.append(time.perf_counter() - started)

        still.seconds, running.seconds = [], []
        paired_medians(still, running, repeat=15)
        quiet = sorted(still.seconds)[len(still.seconds) // 2] * 1000
        busy = sorted(running.seconds)[len(running.seconds) // 2] * 1000
        done = store.read_vectors(cache.embedder.name, [digest(m["content"]) for m in backlog_messages])
        left = len({digest(m["content"]) for m in backlog_messages}) - len(done)
    report("turn, background held still", f"{quiet:.1f} ms")
    report("turn, background embedding another session", f"{busy:.1f} ms")
    report("  background adds", f"{busy - quiet:.1f} ms", "goal <= 50 ms")
    report("  backlog messages still unembedded at the end", f"{left}", "> 0: it ran throughout")


if __name__ == "__main__":
    main()
