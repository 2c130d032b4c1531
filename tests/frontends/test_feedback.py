"""Feedback at once: a ``%%oblix`` cell shows which model it is waiting for, and a first turn costs what later ones do.

The kernel tests time what a person sees: from sending the execute request to the
first ``display_data`` (the waiting line) and to the first text of the answer, read on
iopub, against the loopback model holding its first token back.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import TEST_KEY, TEST_MODEL
from jupyter_client.manager import start_new_kernel
from model_server import Behavior

from oblix_jupyter.frontends.display import StreamingOutput, Waiting

pytestmark = pytest.mark.timeout(240)
HOLD = 2.0  # seconds the model holds its first token back


@dataclass
class Shown:
    """What one cell showed on iopub, with the seconds since its execute request was sent."""

    displays: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)  # (seconds, msg_type, content)
    stdout: str = ""

    def first(self, kind: str = "display_data") -> tuple[float, dict[str, Any]]:
        return next((seconds, content) for seconds, msg_type, content in self.displays if msg_type == kind)

    def first_text(self) -> float:
        """When the answer's first text replaced the waiting line."""
        return next(seconds for seconds, _, content in self.displays if not content["data"]["text/plain"].startswith("Waiting for"))


def run(kernel: Any, code: str) -> Shown:
    shown = Shown()
    start = time.perf_counter()
    msg_id = kernel.execute(code)
    while True:
        message = kernel.get_iopub_msg(timeout=120)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        seconds, kind = time.perf_counter() - start, message["msg_type"]
        if kind in ("display_data", "update_display_data"):
            shown.displays.append((seconds, kind, message["content"]))
        elif kind == "stream":
            shown.stdout += message["content"]["text"]
        elif kind == "error":
            raise AssertionError("\n".join(message["content"]["traceback"]))
        elif kind == "status" and message["content"]["execution_state"] == "idle":
            return shown


@pytest.fixture(scope="module")
def first_turns(model_server, tmp_path_factory):
    """A fresh kernel: ``%load_ext``, a person's pause (the warm-up's length), then two turns and a failed one."""
    home = tmp_path_factory.mktemp("feedback")
    env = {
        **os.environ,
        "OBLIX_HOME": str(home / "oblix-home"),
        "OBLIX_MODEL": TEST_MODEL,
        "OPENAI_API_BASE": model_server.url,
        "OPENAI_API_KEY": TEST_KEY,
        "JPY_SESSION_NAME": str(home / "feedback.ipynb"),
    }
    model_server.reset()
    model_server.default = Behavior(first_token_delay=HOLD)
    manager, kernel = start_new_kernel(kernel_name="python3", env=env, cwd=str(home))
    try:
        run(kernel, "%load_ext oblix_jupyter")
        run(kernel, "from oblix_jupyter.frontends.magics import active\nactive().warming.join()\nimport sys\nbefore = set(sys.modules)")
        shown = {"first": run(kernel, "%%oblix\nhello")}
        shown["imported"] = run(kernel, "print(sorted(m for m in set(sys.modules) - before if m.startswith(('oblix_jupyter', 'tiktoken'))))")
        shown["second"] = run(kernel, "%%oblix\nand again")
        model_server.enqueue(Behavior(status=500))
        shown["failed"] = run(kernel, "%%oblix\nthis one fails")
        yield shown
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel(now=True)
        model_server.reset()


def test_the_cell_shows_the_model_it_waits_for_at_once_then_the_answer_in_its_place(first_turns):
    for turn in ("first", "second"):
        seconds, waiting = first_turns[turn].first()
        assert seconds <= 0.2, f"{turn} turn: nothing shown for {seconds:.3f} s"
        # Shown before the session is read, then naming the model the turn asks.
        assert waiting["data"]["text/plain"] == "Waiting for the model…"
        assert "class='oblix-waiting'" in waiting["data"]["text/html"] and "<script" not in waiting["data"]["text/html"]
        display_id = waiting["transient"]["display_id"]
        updates = [content for _, kind, content in first_turns[turn].displays if kind == "update_display_data"]
        assert all(update["transient"]["display_id"] == display_id for update in updates), "everything replaces the waiting line"
        assert updates[0]["data"]["text/plain"] == f"Waiting for {TEST_MODEL}…"
        assert f"Waiting for {TEST_MODEL}… 1 s" in [update["data"]["text/plain"] for update in updates], "the seconds count while the model holds back"
        assert updates[-1]["data"]["text/plain"].startswith("Echo: ")
        assert [kind for _, kind, _ in first_turns[turn].displays].count("display_data") == 1


def test_the_first_turn_after_load_ext_costs_what_later_ones_do(first_turns):
    first, second = first_turns["first"].first_text(), first_turns["second"].first_text()
    assert first - HOLD <= 0.5, f"first text {first - HOLD:.3f} s after the model's first token"
    # What tells a warmed first turn from a cold one on a busy machine: its cost over a later turn's.
    assert first - second <= 0.15, f"the first turn cost {first - second:.3f} s more than the second"
    assert first_turns["imported"].stdout.strip() == "[]", "the warm-up left imports to the first turn"


def test_a_turn_that_fails_before_any_text_takes_its_waiting_line_away(first_turns):
    shown = first_turns["failed"]
    _, waiting = shown.first()
    line = [content for _, kind, content in shown.displays if content.get("transient", {}).get("display_id") == waiting["transient"]["display_id"]]
    assert line[-1]["data"] == {"text/plain": ""}
    assert any(content["data"]["text/plain"].startswith("Oblix error: ") for _, _, content in shown.displays)


def test_the_waiting_line_is_inert_and_plain():
    model = "<img src=x onerror=alert(1)>\x1b]52;c;cGF5bG9hZA==\x07"
    bundle = Waiting(model, 3.4)._repr_mimebundle_()
    assert "<img" not in bundle["text/html"] and "&lt;img src=x onerror=alert(1)&gt;" in bundle["text/html"]
    assert "\x1b" not in bundle["text/plain"] and bundle["text/plain"].endswith("… 3 s")


def test_in_a_terminal_the_waiting_line_is_one_line_before_the_answer(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    stream = StreamingOutput(rich=False)
    stream.waiting(TEST_MODEL)
    stream("Echo: hi")
    stream.close()
    assert out.getvalue() == f"[Waiting for {TEST_MODEL}…]\nEcho: hi"


LOAD_EXT = textwrap.dedent(
    """
    import importlib.abc, sys, threading

    importers = []

    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "litellm":
                importers.append(threading.current_thread().name)
            return None

    sys.meta_path.insert(0, Watch())
    import oblix_jupyter
    print("after import:", "litellm" in sys.modules, sorted(t.name for t in threading.enumerate() if t.name.startswith("oblix")))
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "oblix_jupyter")
    from oblix_jupyter.frontends.magics import active
    active().warming.join()
    print("imported by:", importers)
    """
)


def test_import_and_load_ext_leave_litellm_to_the_background(model_env):
    result = subprocess.run([sys.executable, "-c", LOAD_EXT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["after import: False []", "imported by: ['oblix-warm-up']"], result.stdout


WARM_UP_GC = textwrap.dedent(
    """
    import gc
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "oblix_jupyter")
    from oblix_jupyter.frontends.magics import active
    active().warming.join()
    print(gc.isenabled(), gc.get_freeze_count(), len(gc.get_objects()))
    """
)


def test_after_the_warm_up_a_full_collection_no_longer_scans_what_it_imported(model_env):
    # Scanned, litellm's ~400,000 objects held the kernel's thread 60-200 ms a collection (benchmarks/bench_warm_up.py).
    result = subprocess.run([sys.executable, "-c", WARM_UP_GC], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    enabled, frozen, scanned = result.stdout.split()
    assert enabled == "True", "garbage collection is on again once the warm-up is over"
    assert int(scanned) * 10 < int(frozen), f"a collection still scans {scanned} objects, {frozen} frozen"
