"""Nothing lost, nothing twice (#33): four kernels of one user, 50 turns each on one session, the database stopped twice.

Each kernel is a process with its own ``OblixClient`` on the tests' PostgreSQL server
(``tests/postgres_server.py``), all of one database user and one machine account, so
they share one spool. Their turns go to the tests' model server in a process of its
own, as a provider is. Meanwhile the server is stopped as a crash stops it
(``pg_ctl stop -m immediate``) twice, for ``OUTAGE`` seconds each: a turn that cannot
read its session is refused before the model is called and asked again after a pause,
as a person would; one whose answer cannot be stored keeps it in the spool. Once every
kernel is done and the spool empty, the session must hold each turn's question and
answer once, each kernel's in its order, at dense positions. Printed per run, not
asserted: runs, turns, outages, messages expected and found, doubles, out of order,
and the time a saved-locally turn took after its answer's last piece.
"""

from __future__ import annotations

import collections
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing import get_context

from common import Behavior, report, server_process
from postgres_server import running

from oblix_jupyter.errors import StoreUnavailable

KERNELS, TURNS, OUTAGES, OUTAGE, RUNS = 4, 50, 2, 2.0, 3
MODEL = "openai/soak-model"
# Each answer echoes its prompt, 23 pieces streamed over half a second: an outage often begins or ends during one.
WORDS = "asked at length so that the answer streams long enough for the database to stop or come back meanwhile"


def kernel(dsn: str, session_id: str, writer: int, url: str, results) -> None:
    """One kernel's turns; puts (refused turns, saved-locally turns, their time after the answer's last piece)."""
    os.environ.update(OPENAI_API_BASE=url, OPENAI_API_KEY="sk-soak")
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # each outage breaks every pooled connection, which it warns of
    from oblix_jupyter import OblixClient

    client = None
    refused, kept, after = 0, 0, []
    for turn in range(TURNS):
        while True:
            try:
                client = client or OblixClient(store=dsn, model=MODEL, semantic=False, tools=False)
                last: list[float] = []
                result = client.execute_sync(f"k{writer} t{turn} {WORDS}", session_id, stream_to=lambda _piece: last.__setitem__(slice(None), [time.monotonic()]))
                break
            except StoreUnavailable:
                refused += 1
                time.sleep(0.3)
        if result["message_id"] is None:
            kept += 1
            after.append(time.monotonic() - last[0])
    store = client.session_manager
    while store.spool.pending():  # this kernel's keeper writes what waits; the others' may have already
        time.sleep(0.1)
    store.close()
    results.put((refused, kept, after))


def outages(server, stop: threading.Event, count: int) -> int:
    made = 0
    for _ in range(count):
        if stop.wait(15):  # the kernels are turning by then (each imports litellm first)
            break
        server.stop(immediate=True)
        time.sleep(OUTAGE)
        server.start()
        made += 1
    return made


def soak(server, url: str, run: int) -> dict[str, object]:
    from oblix_jupyter.store.postgres import PostgresStore

    role = server.create_user(f"soak_{run}")
    dsn = server.dsn(role)
    store = PostgresStore(dsn)
    session_id = store.create_session(title=f"soak {run}")
    store.close()
    context = get_context("spawn")
    results = context.Queue()
    kernels = [context.Process(target=kernel, args=(dsn, session_id, writer, url, results)) for writer in range(KERNELS)]
    for process in kernels:
        process.start()
    stop, made = threading.Event(), []
    breaker = threading.Thread(target=lambda: made.append(outages(server, stop, OUTAGES)))
    breaker.start()
    outcomes = [results.get(timeout=600) for _ in kernels]
    for process in kernels:
        process.join(60)
    stop.set()
    breaker.join()
    rows = server.admin_query("SELECT position, content FROM oblix.messages WHERE session_id = %s ORDER BY position", (session_id,))
    contents = [content for _, content in rows]
    counts = collections.Counter(contents)
    out_of_order = 0
    for writer in range(KERNELS):
        expected = [text for turn in range(TURNS) for text in (f"k{writer} t{turn} {WORDS}", f"Echo: k{writer} t{turn} {WORDS}")]
        mine = [content for content in contents if content.removeprefix("Echo: ").split(" ")[0] == f"k{writer}"]
        out_of_order += mine != expected
    return {
        "turns": KERNELS * TURNS,
        "outages": made[0] if made else 0,
        "expected": KERNELS * TURNS * 2,
        "found": len(rows),
        "doubles": sum(count - 1 for count in counts.values() if count > 1),
        "dense": [position for position, _ in rows] == list(range(1, len(rows) + 1)),
        "writers out of order": out_of_order,
        "refused": sum(refused for refused, _, _ in outcomes),
        "kept": sum(kept for _, kept, _ in outcomes),
        "after": [seconds for _, _, after in outcomes for seconds in after],
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as home, server_process(Behavior(token_delay=0.02)) as url, running() as server:
        os.environ["OBLIX_HOME"] = home  # the kernels' shared spool, away from the user's own
        after: list[float] = []
        for run in range(1, RUNS + 1):
            started = time.monotonic()
            figures = soak(server, url, run)
            after += figures.pop("after")
            report(
                f"soak run {run}: {figures['turns']} turns, {figures['outages']} outages",
                f"{figures['found']}/{figures['expected']} msgs",
                f"doubles {figures['doubles']}, dense {figures['dense']}, writers out of order {figures['writers out of order']}, "
                f"turns refused before the model {figures['refused']}, answers saved locally {figures['kept']}, "
                f"{time.monotonic() - started:.0f} s",
            )
        if after:
            report(
                "saved-locally turn, after its answer's last piece",
                f"{statistics.median(after) * 1000:.0f} ms median",
                f"max {max(after) * 1000:.0f} ms over {len(after)} turns",
            )
        else:
            report("saved-locally turn, after its answer's last piece", "none happened", "")


if __name__ == "__main__":
    sys.exit(main())
