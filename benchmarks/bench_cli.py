"""Start-up of the ``oblix`` command: listing must answer in well under half a second.

Each run is a fresh process, as a user typing the command gets, so the figure
includes Python's start-up and every import (litellm must not be one of them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from common import median_ms, report

from oblix_jupyter.sessions import SessionManager

SESSIONS = 1_000


def run_oblix(*arguments: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "oblix_jupyter.frontends.cli", *arguments], env=env, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        store = SessionManager(os.path.join(home, "sessions"))
        for number in range(SESSIONS):
            session_id = store.create_session(title=f"session {number}")
            if number % 10 == 0:
                store.save_message(session_id, "How many rows have missing values?")
        env = {**os.environ, "OBLIX_HOME": home}
        listing = median_ms(lambda: run_oblix("sessions", env=env), repeat=9, warmup=1)
        version = median_ms(lambda: run_oblix("--version", env=env), repeat=9, warmup=1)
    report(f"oblix sessions, fresh process, {SESSIONS:,} sessions", f"{listing:.0f} ms", "goal < 500 ms")
    report("oblix --version, fresh process", f"{version:.0f} ms", "llm --version: 550 ms")


if __name__ == "__main__":
    main()
