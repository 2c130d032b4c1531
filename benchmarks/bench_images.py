"""A turn that attaches a figure, against a bare ``litellm.completion`` sending the same image.

The figure is a real matplotlib one, 1,600×1,200 px as a cell shows it. The bare call
sends the prompt with the image already prepared (shrunk, re-encoded): the upload itself
costs both sides the same, so what the turn adds beyond it is preparing the image,
storing it with the prompt and the rest of a turn. The same pair without an image says
what a turn adds anyway; the difference between the two is what attaching costs (goal:
at most 50 ms), and a turn without images must cost what it did. Both stream from the
loopback server in a process of its own, first token after 300 ms as a hosted model's.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile

from common import Behavior, median_ms, paired_runs, ratio_spread, report, server_process

from oblix_jupyter import OblixClient, SessionManager
from oblix_jupyter.kernel.images import NotebookImage
from oblix_jupyter.models.gateway import litellm_module
from oblix_jupyter.models.images import prepare

MODEL = "openai/gpt-4o-mini"  # priced and able to see, as litellm's model map says
PAUSE = 0.2
PROMPT = "Why does this curve bend at 2019?"


def figure_png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(16, 12), dpi=100)
    axes = figure.add_subplot()
    axes.plot(range(2010, 2024), [1, 2, 2, 3, 5, 8, 9, 12, 15, 14, 11, 12, 16, 19], marker="o")
    axes.set_title("revenue by year")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def main() -> None:
    litellm = litellm_module()
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    png = figure_png()
    image = NotebookImage("figure from cell 5", "image/png", png, 5, 1600, 1200)
    report("prepare a 1,600×1,200 figure (shrink, smaller of PNG/JPEG)", f"{median_ms(lambda: prepare(png, 'image/png'), repeat=15):.1f} ms")
    prepared = prepare(png, "image/png", model=MODEL)
    with tempfile.TemporaryDirectory() as base, server_process(Behavior(first_token_delay=0.3)) as url:
        store = SessionManager(base)
        session_id = store.create_session(title="plots")
        for number in range(10):
            store.save_message(session_id, f"question {number} about the plot", role="user")
            store.save_message(session_id, f"answer {number}: look at the axis", role="assistant", model=MODEL)
        client = OblixClient(model=MODEL, session_manager=store, model_options={MODEL: {"api_base": url}})
        client.execute_sync(PROMPT, session_id)
        client.wait_for_background()
        results = {}
        for label, images in (("without an image", []), ("with a figure", [image])):
            messages = client.plan(PROMPT, client.load_session(session_id), MODEL).messages
            if images:
                messages[-1] = {"role": "user", "content": [{"type": "text", "text": PROMPT}, prepared.content_part()]}

            def bare(messages: list = messages) -> None:
                stream = litellm.completion(
                    model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True},
                    api_base=url, num_retries=0, max_retries=0,
                )
                "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

            def turn(images: list = images) -> None:
                client.turn(PROMPT, session_id, images=images)

            bares, turns = paired_runs(bare, turn, repeat=15, pause=PAUSE)
            baseline, ours = statistics.median(bares), statistics.median(turns)
            results[label] = ours - baseline
            report(f"bare litellm.completion, {label}", f"{baseline:.2f} ms")
            report(f"turn, {label}", f"{ours:.2f} ms")
            report(f"  turn adds ({label})", f"{ours - baseline:.2f} ms")
            report(f"  ratio turn / bare ({label})", f"{ours / baseline:.3f}", "goal <= 1.05")
            report("    middle half of the 15 pairs' ratios", ratio_spread(bares, turns))
        report("attaching the figure adds, beyond its upload", f"{results['with a figure'] - results['without an image']:.1f} ms", "goal <= 50 ms")


if __name__ == "__main__":
    main()
