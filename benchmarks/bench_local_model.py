"""Latency and speed of the in-process local model, measured through litellm.

Run:  python benchmarks/bench_local_model.py

Prints one line each:
  cold start      first token of the first call in a fresh process (model load included)
  warm first token  median time to the first token once the model is loaded
  tokens/s        generation speed for a ~100-token answer
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHORT = [{"role": "user", "content": "Name one colour."}]
LONG = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]

_COLD_SCRIPT = r"""
import json, os, time
t_start = time.perf_counter()
import litellm
litellm.suppress_debug_info = True
from oblix_jupyter.models import local_model
local_model.register(litellm)
t_imported = time.perf_counter()
stream = litellm.completion(model=local_model.LOCAL_MODEL, messages=[{"role": "user", "content": "Name one colour."}],
                            max_tokens=16, stream=True)
first = None
for chunk in stream:
    if first is None and chunk.choices and chunk.choices[0].delta.content:
        first = time.perf_counter()
print(json.dumps({"import_s": t_imported - t_start, "first_token_s": first - t_imported,
                  "load_s": local_model.load()}))
"""


def cold_start() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", _COLD_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"cold-start subprocess failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def first_token_seconds(litellm, model: str, messages: list, max_tokens: int) -> float:
    start = time.perf_counter()
    first = None
    for chunk in litellm.completion(model=model, messages=messages, max_tokens=max_tokens, stream=True):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    return (first or time.perf_counter()) - start


def tokens_per_second(litellm, model: str) -> tuple[float, int]:
    stream = litellm.completion(
        model=model,
        messages=LONG,
        max_tokens=100,
        temperature=0.2,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    first = last = None
    tokens = 0
    for chunk in stream:
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or now
            last = now
        if getattr(chunk, "usage", None) is not None:
            tokens = chunk.usage.completion_tokens
    # the first token's time is latency, the rest is generation speed
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0, tokens


def main() -> None:
    from oblix_jupyter.models import local_model

    if not local_model.is_available():
        raise SystemExit(local_model.unavailable_reason())

    cold = cold_start()
    print(
        f"cold start: first token {cold['first_token_s'] * 1000:.0f} ms after the first call in a fresh process "
        f"(model load {cold['load_s'] * 1000:.0f} ms of it; litellm import {cold['import_s']:.1f} s before it)"
    )

    import litellm

    litellm.suppress_debug_info = True
    local_model.register(litellm)
    local_model.load()
    first_token_seconds(litellm, local_model.LOCAL_MODEL, SHORT, 4)  # warm-up
    warm = [first_token_seconds(litellm, local_model.LOCAL_MODEL, SHORT, 4) for _ in range(5)]
    print(f"warm first token: {statistics.median(warm) * 1000:.0f} ms median of 5 (min {min(warm) * 1000:.0f} ms)")

    runs = [tokens_per_second(litellm, local_model.LOCAL_MODEL) for _ in range(3)]
    rate = statistics.median(r for r, _ in runs)
    print(f"tokens/s: {rate:.1f} (median of 3 answers of ~{max(n for _, n in runs)} tokens)")


if __name__ == "__main__":
    main()
