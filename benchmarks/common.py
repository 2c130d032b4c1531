"""Helpers shared by the benchmarks: timing and the loopback model server."""

from __future__ import annotations

import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

from model_server import Behavior, ModelServer  # noqa: E402  (the tests' own server)

__all__ = ["Behavior", "ModelServer", "median_ms", "paired_medians", "report"]


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


def paired_medians(
    baseline: Callable[[], object], candidate: Callable[[], object], repeat: int = 20, warmup: int = 2, pause: float = 0.0
) -> tuple[float, float]:
    """Median milliseconds of ``baseline`` and ``candidate``, run alternately.

    Alternating cancels the drift of a shared machine (other work, clock speed) that
    would otherwise land on whichever of the two ran second. ``pause`` (untimed, after
    each run) stands for a person reading an answer before the next turn, so work a
    turn leaves to the background is not billed to the next one.
    """
    times: tuple[list[float], list[float]] = ([], [])
    for number in range(warmup + repeat):
        for action, bucket in ((baseline, times[0]), (candidate, times[1])):
            start = time.perf_counter()
            action()
            if number >= warmup:
                bucket.append(time.perf_counter() - start)
            time.sleep(pause)
    return statistics.median(times[0]) * 1000, statistics.median(times[1]) * 1000


def report(name: str, value: str, goal: str = "") -> None:
    print(f"{name:<58} {value:>16}   {goal}", flush=True)
