"""The first ``%%oblix`` cell after ``%load_ext`` in a fresh kernel, against a later one.

Each run starts a kernel, loads the extension and times, from sending the execute
request to reading it on iopub, the waiting line and the answer's first text of the
first cell, then of a second one. The first cell runs either at once (Run All) or after
a person's pause, which the warm-up started by ``%load_ext`` fills (the cell waits for
it). Runs of the two kinds alternate, with the loopback model's first token at once,
then with the offline model (no model configured; its file on disk).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

from common import Behavior, ModelServer, report
from jupyter_client.manager import start_new_kernel

RUNS = 5
PAUSE = "from oblix_jupyter.frontends.magics import active\nactive().warming.join()"


def timed(kernel: Any, code: str) -> dict[str, float]:
    """Seconds from the execute request to the first display and to the first text, and the ``NAME value`` lines printed."""
    start = time.perf_counter()
    msg_id = kernel.execute(code)
    seen: dict[str, float] = {}
    while True:
        message = kernel.get_iopub_msg(timeout=300)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        now, kind = time.perf_counter() - start, message["msg_type"]
        if kind in ("display_data", "update_display_data"):
            seen.setdefault("display", now)
            if not message["content"]["data"].get("text/plain", "").startswith("Waiting for"):
                seen.setdefault("text", now)
        elif kind == "stream":
            for line in message["content"]["text"].splitlines():
                name, _, value = line.partition(" ")
                seen[name] = float(value)
        elif kind == "error":
            raise RuntimeError("\n".join(message["content"]["traceback"]))
        elif kind == "status" and message["content"]["execution_state"] == "idle":
            return seen


def first_turns(env: dict[str, str], pause: bool) -> dict[str, float]:
    """One fresh kernel: ``%load_ext``, maybe the pause, then the first and a second cell."""
    with tempfile.TemporaryDirectory() as home:
        manager, kernel = start_new_kernel(
            kernel_name="python3", env={**env, "OBLIX_HOME": home, "JPY_SESSION_NAME": os.path.join(home, "bench.ipynb")}, cwd=home
        )
        try:
            load = timed(kernel, "import time\nstart = time.perf_counter()\n%load_ext oblix_jupyter\nprint('LOAD', time.perf_counter() - start)")
            if pause:
                timed(kernel, PAUSE)
            ready = timed(kernel, "print('READY', time.perf_counter() - start)")["READY"]
            first = timed(kernel, "%%oblix\nhow do I pivot this table?")
            later = timed(kernel, "%%oblix\nand sort it by date?")
            return {"load": load["LOAD"], "ready": ready, "display": first["display"], "first": first["text"], "later": later["text"]}
        finally:
            kernel.stop_channels()
            manager.shutdown_kernel(now=True)


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def measure(label: str, env: dict[str, str], goal: str) -> None:
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(RUNS):
        for pause in (False, True):
            runs[pause].append(first_turns(env, pause))
    at_once, paused = runs[False], runs[True]
    report(f"{label}: %load_ext", f"{median(at_once + paused, 'load') * 1000:.1f} ms", "goal <= 100 ms")
    report(f"{label}: warm-up, from %load_ext to its end", f"{median(paused, 'ready'):.2f} s")
    report(f"{label}: waiting line, first cell at once", f"{median(at_once, 'display') * 1000:.0f} ms", "goal <= 200 ms")
    report(f"{label}: first text, a later cell", f"{median(at_once + paused, 'later'):.3f} s")
    report(f"{label}: first text, first cell at once (Run All)", f"{median(at_once, 'first'):.3f} s")
    report(f"{label}: first text, first cell after the warm-up", f"{median(paused, 'first'):.3f} s", goal)
    added = statistics.median(run["first"] - run["later"] for run in paused)
    report(f"{label}:   first cell after the warm-up adds", f"{added:.3f} s", "goal <= 0.5 s")


def main() -> None:
    with ModelServer() as server:
        server.default = Behavior(token_delay=0.002)  # the first token at once: what is measured is ours
        hosted = {**os.environ, "OBLIX_MODEL": "openai/bench", "OPENAI_API_BASE": server.url, "OPENAI_API_KEY": "sk-bench"}
        measure("instant model", hosted, "")
    offline = {name: value for name, value in os.environ.items() if name not in ("OBLIX_MODEL", "OBLIX_LOCAL_MODEL")}
    measure("offline model", offline, "goal <= 1.5 s")


if __name__ == "__main__":
    main()
