"""``make demo``: a short scripted conversation, streamed to the terminal.

It goes through the same ``OblixClient`` a notebook uses, so what it shows (a session
stored on disk, history carried from turn to turn, the model recorded per answer) is
the product itself, not a mock-up.
"""

from __future__ import annotations

import sys

from .client import OblixClient
from .errors import OblixError

PROMPTS = (
    "In one sentence: what is a pandas DataFrame?",
    "And how do I count the missing values in each of its columns?",
)


def main() -> int:
    client = OblixClient()
    try:
        session_id = client.create_session_sync(title="oblix demo", initial_context={"audience": "data scientist"})
        for prompt in PROMPTS:
            print(f"\nYou: {prompt}\nAssistant: ", end="", flush=True)
            result = client.execute_sync(prompt, session_id, stream_to=sys.stdout)
            usage = result["usage"]
            print(f"\n  [{result['model']} · {usage['prompt_tokens']} tokens in, {usage['completion_tokens']} out]")
            if result["notice"]:
                print(f"  ({result['notice']})")
    except OblixError as error:
        print(f"\noblix demo: {error}", file=sys.stderr)
        return 1
    session = client.load_session(session_id)
    print(f"\nStored session {session_id} ({len(session['messages'])} messages) in {client.session_manager.base_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
