"""Tools stay bounded against heavy and hostile data: a 100 MB bytes, a 10,000,000-row frame, a sleeping ``__str__``, a shelve.

Each case runs in a fresh Python process beside an IPython shell, as in a kernel, so
that the data's own memory does not blur the measure: ``tracemalloc`` (which NumPy and
pandas report their arrays to) gives the most each tool call allocated at once, and the
wall clock how long it took, against the limits the tools promise.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from oblix_jupyter.kernel.tools import FILTER_SECONDS, MAX_CONDITIONS
from oblix_jupyter.kernel.text import TEXT_SECONDS

pytestmark = pytest.mark.timeout(300)

PROBE = """
import json, os, shelve, sys, threading, time, tracemalloc
import numpy as np, pandas as pd
from IPython.core.interactiveshell import InteractiveShell
from oblix_jupyter.kernel.tools import KernelTools, MAX_CONDITIONS

marker, shelf_path = sys.argv[1], sys.argv[2]

class Payload:
    def __reduce__(self):  # unpickling it runs a command
        return (os.system, (f"touch {marker}",))

class Sleepy:
    def __repr__(self):
        time.sleep(60)
        return "late"
    __str__ = __repr__

shelf = shelve.open(shelf_path)
shelf["payload"] = Payload()
shell = InteractiveShell.instance()
shell.user_ns.update(
    blob=b"ab" * 50_000_000,
    frame=pd.DataFrame({"a": np.arange(10_000_000, dtype=np.int32), "b": (np.arange(10_000_000) % 1000).astype(np.int32)}),
    sleepy=Sleepy(),
    shelf=shelf,
    nested={"x": [Sleepy(), 1], "y": Sleepy()},
    odd=pd.DataFrame({"o": [Sleepy()] * 10, "n": range(10)}),
)
shell.run_cell("held = sleepy", store_history=True)
shell.user_ns["Out"][1] = shell.user_ns["sleepy"]  # as `sleepy` alone would keep it, without its display sleeping here
tools = KernelTools.from_shell(shell)
many = [{"column": "b", "op": ">", "value": n} for n in range(MAX_CONDITIONS)]
calls = [
    ("list_variables", {}),
    ("describe_variable", {"name": "blob"}),
    ("describe_variable", {"name": "frame", "column": "b"}),
    ("dataframe_rows", {"name": "frame", "where": many, "mode": "sample"}),
    ("dataframe_rows", {"name": "frame", "where": many, "combine": "or", "mode": "tail"}),
    ("dataframe_rows", {"name": "frame", "where": many * 2}),
    ("describe_variable", {"name": "sleepy"}),
    ("describe_variable", {"name": "nested"}),
    ("describe_variable", {"name": "odd"}),
    ("dataframe_rows", {"name": "odd"}),
    ("notebook_cell", {"number": 1}),
    ("describe_variable", {"name": "shelf"}),
]
tracemalloc.start()
for name, arguments in calls:
    tracemalloc.reset_peak()
    start = time.monotonic()
    result = tools.run(name, arguments)
    seconds = time.monotonic() - start
    peak = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"name": name, "arguments": arguments, "seconds": seconds, "peak": peak, "ok": result.ok, "text": result.text}))
# OblixClient.execute runs the tools on a worker thread: the same limit holds there
done = []
start = time.monotonic()
worker = threading.Thread(target=lambda: done.append(tools.run("describe_variable", {"name": "nested"})))
worker.start()
worker.join()
print(json.dumps({"name": "in a thread", "arguments": {}, "seconds": time.monotonic() - start, "peak": 0, "ok": done[0].ok, "text": done[0].text}))
"""


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    folder = tmp_path_factory.mktemp("limits")
    marker = folder / "payload-ran"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(marker), str(folder / "shelf")],
        capture_output=True, text=True, timeout=240, check=True, env={"IPYTHONDIR": str(folder), "PATH": ""},
    )
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {(r["name"], json.dumps(r["arguments"], sort_keys=True)): r for r in results}, marker


def test_every_call_returns_within_its_limit(calls):
    results, _ = calls
    for result in results.values():
        limit = FILTER_SECONDS + TEXT_SECONDS if result["name"] == "dataframe_rows" else TEXT_SECONDS
        assert result["seconds"] < limit + 1.0, result


def test_memory_stays_near_the_slice_shown(calls):
    """100 MB of bytes and an 80 MB frame: a call holds its text, or one block of a filter's rows, never a copy of the data."""
    results, _ = calls
    for result in results.values():
        frame = result["arguments"].get("name") == "frame"
        assert result["peak"] < (16 if frame else 1) * 2**20, result


def test_heavy_data_is_sliced_and_filters_are_bounded(calls):
    results, _ = calls
    blob = results[("describe_variable", '{"name": "blob"}')]
    assert blob["ok"] and "bytes of length 100,000,000: b'abab" in blob["text"] and len(blob["text"]) < 8000
    (sampled,) = [r for (name, _), r in results.items() if name == "dataframe_rows" and '"sample"' in _]
    assert sampled["ok"] and "rows match" in sampled["text"] or "match in the first" in sampled["text"]
    refused = results[("dataframe_rows", json.dumps({"name": "frame", "where": [{"column": "b", "op": ">", "value": n} for n in range(MAX_CONDITIONS)] * 2}, sort_keys=True))]
    assert not refused["ok"] and f"At most {MAX_CONDITIONS} conditions" in refused["text"]
    counts = results[("describe_variable", '{"column": "b", "name": "frame"}')]
    assert "value counts of `b` (of a seeded random sample of 100,000 rows" in counts["text"]


def test_a_sleeping_str_costs_one_time_limit_and_a_shelve_is_never_opened(calls):
    results, marker = calls
    assert "`sleepy`: Sleepy: (its repr failed or took too long)" in results[("describe_variable", '{"name": "sleepy"}')]["text"]
    assert "<Sleepy>" in results[("dataframe_rows", '{"name": "odd"}')]["text"]
    assert "its repr failed or took too long" in results[("notebook_cell", '{"number": 1}')]["text"]
    assert results[("in a thread", "{}")]["ok"] and results[("in a thread", "{}")]["seconds"] < TEXT_SECONDS + 1.0
    listing = results[("list_variables", "{}")]["text"]
    assert "- `shelf`: shelve.DbfilenameShelf: <shelve.DbfilenameShelf object at" in listing
    assert "shelve.DbfilenameShelf object at" in results[("describe_variable", '{"name": "shelf"}')]["text"]
    assert not marker.exists(), "an entry of the shelve was unpickled"
