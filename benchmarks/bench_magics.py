"""``%load_ext`` in a fresh kernel, and a ``%%oblix`` turn against a bare ``litellm.completion``.

Both turns run inside the same real kernel against the same loopback server, with the
same messages, so the ratio is what the magic adds (store, context selection, display).
"""

from __future__ import annotations

import os
import tempfile

from common import Behavior, ModelServer, report
from jupyter_client.manager import start_new_kernel

MEASURE = """
import time, statistics
shell = get_ipython()
start = time.perf_counter()
shell.run_line_magic("load_ext", "oblix_jupyter")
print("LOAD", (time.perf_counter() - start) * 1000)
"""

TURNS = """
import litellm, time, statistics
from oblix_jupyter.magics import active
magics = active()
magics.litellm_import.join()
shell.run_cell_magic("oblix", "", "warm up")
client = magics.client
session = client.session_manager.get_session(magics.binding.session_id())

def bare():
    messages = client.plan("how do I pivot this table?", session, client.models_for(session)[0]).messages
    stream = litellm.completion(model=client.models_for(session)[0], messages=messages, stream=True,
                                stream_options={"include_usage": True}, num_retries=0, max_retries=0)
    "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

def turn():
    shell.run_cell_magic("oblix", "", "how do I pivot this table?")

def median(action, n=15):
    times = []
    for _ in range(n):
        start = time.perf_counter(); action(); times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000

print("BARE", median(bare))
print("TURN", median(turn))
"""


def run(kernel, code: str) -> dict[str, float]:
    values: dict[str, float] = {}

    def collect(message):
        if message["msg_type"] == "stream":
            for line in message["content"]["text"].splitlines():
                key, _, value = line.partition(" ")
                if key in ("LOAD", "BARE", "TURN"):
                    values[key] = float(value)

    kernel.execute_interactive(code, timeout=300, output_hook=collect)
    return values


def main() -> None:
    with ModelServer() as server, tempfile.TemporaryDirectory() as home:
        server.default = Behavior(token_delay=0.002)
        env = {**os.environ, "OBLIX_HOME": home, "OBLIX_MODEL": "openai/bench", "OPENAI_API_BASE": server.url,
               "OPENAI_API_KEY": "sk-bench", "JPY_SESSION_NAME": os.path.join(home, "bench.ipynb")}
        manager, kernel = start_new_kernel(kernel_name="python3", env=env)
        try:
            load = run(kernel, MEASURE)["LOAD"]
            turns = run(kernel, TURNS)
        finally:
            kernel.stop_channels()
            manager.shutdown_kernel(now=True)
    report("%load_ext oblix_jupyter in a fresh kernel", f"{load:.1f} ms", "goal <= 100 ms")
    report("bare litellm.completion in the kernel (stream, ~10 tokens)", f"{turns['BARE']:.2f} ms")
    report("%%oblix turn in the kernel, same server and messages", f"{turns['TURN']:.2f} ms")
    report("  ratio %%oblix / bare", f"{turns['TURN'] / turns['BARE']:.3f}", "goal <= 1.05")


if __name__ == "__main__":
    main()
