"""Store speed with many sessions: an append must not grow with the store, nor listing with it."""

from __future__ import annotations

import tempfile

from common import median_ms, report

from oblix_jupyter.sessions import SessionManager


def fill(store: SessionManager, sessions: int) -> str:
    ids = [store.create_session(title=f"session {n}") for n in range(sessions)]
    return ids[len(ids) // 2]


def append_exchange(store: SessionManager, session_id: str) -> None:
    store.save_message(session_id, "How many rows have missing values?")
    store.save_message(session_id, "Use df.isna().any(axis=1).sum().", role="assistant", model="openai/x")


def main() -> None:
    results = {}
    for sessions in (10, 10_000):
        with tempfile.TemporaryDirectory() as base:
            store = SessionManager(base)
            target = fill(store, sessions)
            store.list_sessions()  # headers settled
            results[sessions] = median_ms(lambda: append_exchange(store, target), repeat=50)
            if sessions == 10_000:
                listing = median_ms(lambda: store.list_sessions(limit=20), repeat=20)
    report("append one exchange, 10 sessions in store", f"{results[10]:.2f} ms")
    report("append one exchange, 10,000 sessions in store", f"{results[10_000]:.2f} ms", "goal <= 5 ms")
    report("  ratio 10,000 / 10 sessions", f"{results[10_000] / results[10]:.2f}", "goal <= 1.0 (noise aside)")
    report("list_sessions(limit=20), 10,000 sessions", f"{listing:.2f} ms", "goal <= 50 ms")


if __name__ == "__main__":
    main()
