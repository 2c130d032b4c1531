"""``%load_ext`` in a fresh kernel, and a ``%%oblix`` turn against a bare ``litellm.completion``.

Both turns run inside the same real kernel against the same loopback server, with the
same messages, alternately and 0.2 s apart (as a person's turns are), so the ratio is
what the magic adds (store, context selection, display). The server streams a short
echo 2 ms a word, first at once and then after a hosted model's 300 ms first-token
delay, and then a typical answer (150 words at 15 ms each after 300 ms).
"""

from __future__ import annotations

import os
import tempfile

from common import Behavior, ModelServer, report
from jupyter_client.manager import start_new_kernel

MEASURE = """
import time
shell = get_ipython()
start = time.perf_counter()
shell.run_line_magic("load_ext", "oblix_jupyter")
print("LOAD", (time.perf_counter() - start) * 1000)
"""

TURNS = """
import litellm
from common import paired_medians  # the benchmarks' directory is on the kernel's PYTHONPATH
from oblix_jupyter.frontends.magics import active
magics = active()
magics.warming.join()
shell.run_cell_magic("oblix", "", "warm up")
client = magics.client
session = client.session_manager.get_session(magics.binding.session_id())
model = client.models_for(session)[0]
messages = client.plan("how do I pivot this table?", session, model).messages

def bare():
    stream = litellm.completion(model=model, messages=messages, stream=True,
                                stream_options={"include_usage": True}, num_retries=0, max_retries=0)
    "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

def turn():
    shell.run_cell_magic("oblix", "", "how do I pivot this table?")

bare_ms, turn_ms = paired_medians(bare, turn, repeat=15, pause=0.2)
print("BARE", bare_ms)
print("TURN", turn_ms)
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
        env = {**os.environ, "OBLIX_HOME": home, "OBLIX_MODEL": "openai/bench", "OPENAI_API_BASE": server.url,
               "OPENAI_API_KEY": "sk-bench", "JPY_SESSION_NAME": os.path.join(home, "bench.ipynb"),
               "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH")]))}
        manager, kernel = start_new_kernel(kernel_name="python3", env=env)
        try:
            load = run(kernel, MEASURE)["LOAD"]
            report("%load_ext oblix_jupyter in a fresh kernel", f"{load:.1f} ms", "goal <= 100 ms")
            answer = " ".join(f"word{number}" for number in range(150))
            for label, behavior in (
                ("first token at once", Behavior(token_delay=0.002)),
                ("first token after 300 ms", Behavior(token_delay=0.002, first_token_delay=0.3)),
                ("typical answer", Behavior(reply=answer, token_delay=0.015, first_token_delay=0.3)),
            ):
                server.default = behavior
                turns = run(kernel, TURNS)
                report(f"bare litellm.completion in the kernel, {label}", f"{turns['BARE']:.2f} ms")
                report("%%oblix turn in the kernel, same server and messages", f"{turns['TURN']:.2f} ms")
                report(f"  %%oblix adds ({label})", f"{turns['TURN'] - turns['BARE']:.2f} ms")
                report(f"  ratio %%oblix / bare ({label})", f"{turns['TURN'] / turns['BARE']:.3f}", "goal <= 1.05")
        finally:
            kernel.stop_channels()
            manager.shutdown_kernel(now=True)


if __name__ == "__main__":
    main()
