"""Helpers shared by the benchmarks: timing and the loopback model server."""

from __future__ import annotations

import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
TESTS = pathlib.Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from model_server import Behavior, ModelServer  # noqa: E402  (the tests' own server)

__all__ = ["Behavior", "CachedCount", "ModelServer", "median_ms", "paired_medians", "paired_runs", "ratio_spread", "report", "server_process"]


@contextmanager
def server_process(behavior: Behavior) -> Iterator[str]:
    """The tests' model server in a process of its own, as a provider is; yields its base URL.

    Served from a thread of the benchmark's process instead, its work (reading a
    1,000-message request, streaming) would compete for the interpreter lock with the
    client's background writes, a cost no remote provider imposes.
    """
    command = [sys.executable, str(TESTS / "model_server.py"), "--port", "0"]
    command += ["--token-delay", str(behavior.token_delay), "--first-token-delay", str(behavior.first_token_delay)]
    if behavior.reply is not None:
        command += ["--reply", behavior.reply]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        yield server.stdout.readline().strip()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
        server.stdout.close()


def median_ms(action: Callable[[], object], repeat: int = 30, warmup: int = 3) -> float:
    """Median wall time of ``action`` in milliseconds, after a few warm-up runs."""
    for _ in range(warmup):
        action()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def paired_runs(
    baseline: Callable[[], object],
    candidate: Callable[[], object],
    repeat: int = 20,
    warmup: int = 2,
    pause: float = 0.0,
    before: Callable[[], object] | None = None,
) -> tuple[list[float], list[float]]:
    """Milliseconds of ``baseline`` and ``candidate``, run alternately: the i-th of each ran side by side.

    Alternating cancels the drift of a shared machine (other work, clock speed) that
    would otherwise land on whichever of the two ran second. ``pause`` (untimed, after
    each run) stands for a person reading an answer before the next turn, so work a
    turn leaves to the background is not billed to the next one; ``before`` (untimed,
    before each pair) for what the notebook did before the turn.
    """
    times: tuple[list[float], list[float]] = ([], [])
    for number in range(warmup + repeat):
        if before is not None:
            before()
        for action, bucket in ((baseline, times[0]), (candidate, times[1])):
            start = time.perf_counter()
            action()
            if number >= warmup:
                bucket.append((time.perf_counter() - start) * 1000)
            time.sleep(pause)
    return times


def paired_medians(
    baseline: Callable[[], object], candidate: Callable[[], object], repeat: int = 20, warmup: int = 2, pause: float = 0.0
) -> tuple[float, float]:
    """Median milliseconds of ``baseline`` and ``candidate``, run alternately (``paired_runs``)."""
    times = paired_runs(baseline, candidate, repeat, warmup, pause)
    return statistics.median(times[0]), statistics.median(times[1])


def ratio_spread(baseline: list[float], candidate: list[float]) -> str:
    """The middle half of the pairs' ratios (candidate / baseline), as "low-high".

    On a shared machine a ratio of medians moves by a few hundredths from run to run;
    this range says how far one run's figure can be read.
    """
    quartiles = statistics.quantiles([ours / bare for bare, ours in zip(baseline, candidate)], n=4)
    return f"{quartiles[0]:.3f}-{quartiles[2]:.3f}"


def report(name: str, value: str, goal: str = "") -> None:
    print(f"{name:<58} {value:>16}   {goal}", flush=True)


class CachedCount:
    """The project's token counter for ``model`` behind a dict, as the client caches it: strategies compared share one measure."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.cache: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        tokens = self.cache.get(text)
        if tokens is None:
            from oblix_jupyter.models.gateway import count_tokens

            tokens = self.cache[text] = count_tokens(self.model, text)
        return tokens
