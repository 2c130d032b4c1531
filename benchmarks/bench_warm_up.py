"""How long the warm-up that ``%load_ext`` starts keeps the kernel's own thread from running.

Each run is a fresh process: it starts ``OblixClient.warm_up`` as ``%load_ext`` does and,
on the main thread, sleeps 1 ms at a time while allocating a little, as code a person
runs meanwhile would; the longest wait between two wake-ups is the longest time the
kernel could not answer (a keypress in the chat panel, a cell). Then, the warm-up over,
it does the same for 5 s more, and times a full garbage collection. Runs alternate
between the product and the product with the warm-up's garbage-collection handling
(``turn._uncollected``) taken out, so that both meet the same machine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from common import report

RUNS = 5
PROBE = """
import contextlib, gc, json, os, sys, time
from oblix_jupyter import turn
if sys.argv[1] == "baseline":
    turn._uncollected = contextlib.nullcontext
from oblix_jupyter.client import OblixClient

def longest_wait(until):
    waits, last, kept = [], time.perf_counter(), []
    while not until():
        time.sleep(0.001)
        kept.append([{} for _ in range(50)])
        if len(kept) > 200:
            kept = []
        now = time.perf_counter()
        waits.append(now - last)
        last = now
    return 1000 * max(waits)

warming = OblixClient.warm_up("openai/test-model")
during = longest_wait(lambda: not warming.is_alive())
end = time.perf_counter() + 5
after = longest_wait(lambda: time.perf_counter() > end)
start = time.perf_counter()
gc.collect()
print(json.dumps({"during": during, "after": after, "collect": 1000 * (time.perf_counter() - start)}))
"""


def run(variant: str, home: str) -> dict[str, float]:
    env = {**os.environ, "OBLIX_HOME": home, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    output = subprocess.run([sys.executable, "-c", PROBE, variant], env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "product": []}
    with tempfile.TemporaryDirectory() as home:
        for _ in range(RUNS):
            for variant, results in runs.items():
                results.append(run(variant, home))
    for measure, label in (
        ("during", "longest wait of the kernel's thread, during the warm-up"),
        ("after", "longest wait in the 5 s after it"),
        ("collect", "a full garbage collection after it"),
    ):
        bare, ours = (statistics.median(result[measure] for result in runs[name]) for name in ("baseline", "product"))
        report(f"{label} (ms, median of {RUNS})", f"{bare:.0f} -> {ours:.0f}", f"ratio {ours / bare:.2f}")


if __name__ == "__main__":
    main()
