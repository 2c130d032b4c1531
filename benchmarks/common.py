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

__all__ = ["Behavior", "ModelServer", "median_ms", "report"]


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


def report(name: str, value: str, goal: str = "") -> None:
    print(f"{name:<58} {value:>16}   {goal}", flush=True)
