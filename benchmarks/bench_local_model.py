"""Load time, first word and speed of every local model: the bundled one and each GGUF file registered.

Run:  python benchmarks/bench_local_model.py [--with-copy]

Each model is measured in a fresh process of its own, as a kernel meets it:
  load            loading the file into llama.cpp
  first word      seconds from the request to the first text, after a warm-up, with a
                  conversation of about 200 and about 2,000 tokens (as the model counts them)
  reading         tokens/s at which the 2,000-token conversation was read
  writing         tokens/s of a ~100-token answer (its first token excluded)
  budget          the input budget oblix gives the model from that reading speed
                  (what it reads in about local_model.FIRST_WORD_SECONDS)
  peak memory     the measuring process's peak resident memory (Python, litellm-free)

The speeds measured are kept in the registry ($OBLIX_HOME/local_models.json), where
``oblix doctor`` and the input budget find them. ``--with-copy`` also measures a copy of
the bundled file registered under another name, in a temporary OBLIX_HOME (the user's
registry is then left alone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_MEASURE = r"""
import json, random, resource, sys, time
from oblix_jupyter.models import local_engine, local_model

model = sys.argv[1]
started = time.perf_counter()
local_model.load(model)
load_s = time.perf_counter() - started
local_model.warm_up(model)
nonce = random.Random(int(time.time())).randrange(10**9)  # no prompt cache from an earlier run

def conversation(facts):
    lines = [f"Note {i}: table t{i} has {i * 37 % 101} rows; its key column is k{i}." for i in range(facts)]
    return [{"role": "user", "content": f"Run {nonce}. " + " ".join(lines) + " Which table has the most rows?"}]

def ask(messages, max_tokens):
    request = local_model.build_request(messages, {"max_tokens": max_tokens, "temperature": 0.2, "seed": 7}, model)
    start = time.perf_counter()
    first = None
    usage = {}
    for text, finish, last in local_model.stream_sync(request, model):
        if text and first is None:
            first = time.perf_counter() - start
        if finish is not None:
            usage = last
    return first, usage

short = ask(conversation(8), 4)
long = ask(conversation(90), 4)
reading = local_model.reading_speed(model)
_, written = ask([{"role": "user", "content": "Write a long story about a lighthouse keeper."}], 100)
print(json.dumps({
    "load_s": load_s,
    "first_200": short, "first_2000": long,
    "reading": reading, "writing": local_model.writing_speed(model),
    "budget": local_model.input_budget(model),
    "threads": local_engine.default_threads(),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def measure(model: str, env: dict[str, str]) -> dict:
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, model], capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"measuring {model} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(model: str, figures: dict) -> None:
    (first_200, short), (first_2000, long) = figures["first_200"], figures["first_2000"]
    print(
        f"{model}: load {figures['load_s']:.2f} s; first word {first_200:.2f} s at {short['prompt_tokens']} tokens, "
        f"{first_2000:.2f} s at {long['prompt_tokens']} tokens; reading {figures['reading'] or 0:.0f} tokens/s, "
        f"writing {figures['writing'] or 0:.1f} tokens/s ({figures['threads']} thread(s)); "
        f"input budget {figures['budget']} tokens; peak memory {figures['peak_rss_mb']:.0f} MB"
    )


def main() -> None:
    from oblix_jupyter.models import local_model

    if not local_model.is_available():
        raise SystemExit(local_model.unavailable_reason())
    env = dict(os.environ)
    scratch = None
    if "--with-copy" in sys.argv[1:]:
        scratch = tempfile.mkdtemp(prefix="oblix-bench-")
        env["OBLIX_HOME"] = os.environ["OBLIX_HOME"] = scratch
        copy = Path(scratch, "models", "bundled-copy.gguf")
        copy.parent.mkdir()
        shutil.copyfile(local_model.gguf_path(), copy)
        local_model.add(copy, "bundled-copy")
    try:
        for model, _ in local_model.local_models():
            if local_model.problem(model) is None:
                report(model, measure(model, env))
            else:
                print(f"{model}: not measured: {local_model.problem(model)}")
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
