"""A turn that attaches a figure, against a bare ``litellm.completion`` sending the same image.

The figure is a real matplotlib one, 1,600×1,200 px as a cell shows it. The bare call
sends the prompt with the image already prepared (shrunk, re-encoded): the upload itself
costs both sides the same, so what the turn adds beyond it is preparing the image (if
not ready), storing it with the prompt and the rest of a turn. The same pair without an
image says what a turn adds anyway; the difference is what attaching costs (goal: at
most 50 ms), and a turn without images must cost what it did.

Two ways to attach are measured, each with a new figure every turn (so no turn finds
another's work): as in a notebook, where the kernel starts preparing a cell's figures as
the cell ends (``OblixClient.prepare_images``, untimed, as the user reads the plot), and
cold, a figure never seen before (``{fig}``, or the kernel's head start not finished).
Both stream from the loopback server in a process of its own, first token after 300 ms.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
from collections.abc import Iterator

from common import Behavior, median_ms, paired_runs, ratio_spread, report, server_process

from oblix_jupyter import OblixClient, SessionManager
from oblix_jupyter.kernel.images import NotebookImage
from oblix_jupyter.models.gateway import litellm_module
from oblix_jupyter.models.images import prepare

REPEAT = 15
WARMUP = 2

MODEL = "openai/gpt-4o-mini"  # priced and able to see, as litellm's model map says
PAUSE = 0.2
PROMPT = "Why does this curve bend at 2019?"


def figure_png(bend: int = 0) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(16, 12), dpi=100)
    axes = figure.add_subplot()
    axes.plot(range(2010, 2024), [1, 2, 2, 3, 5, 8, 9, 12, 15, 14, 11, 12, 16, 19 + bend], marker="o")
    axes.set_title("revenue by year")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def figures(count: int, first: int) -> Iterator[NotebookImage]:
    """``count`` figures that differ in one point, each a turn's own: none of them is ready before its turn asks."""
    for bend in range(first, first + count):
        yield NotebookImage("figure from cell 5", "image/png", figure_png(bend), 5, 1600, 1200)


def main() -> None:
    litellm = litellm_module()
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    png = figure_png()
    unseen = iter([image.data for image in figures(12, -12)])  # prepare keeps what it made: each timing needs a new figure
    report("prepare a 1,600×1,200 figure (shrink, smaller of PNG/JPEG)", f"{median_ms(lambda: prepare(next(unseen), 'image/png'), repeat=9):.1f} ms")
    prepared = prepare(png, "image/png", model=MODEL)
    runs = REPEAT + WARMUP
    ahead, cold = list(figures(runs, 1)), list(figures(runs, 1 + runs))
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
        cases = (
            ("without an image", None, None),
            ("with a figure prepared ahead", iter(ahead), True),
            ("with a figure not prepared (cold)", iter(cold), False),
        )
        for label, images, head_start in cases:
            messages = client.plan(PROMPT, client.load_session(session_id), MODEL).messages
            if images is not None:
                messages[-1] = {"role": "user", "content": [{"type": "text", "text": PROMPT}, prepared.content_part()]}
            chosen: list[NotebookImage] = []

            def bare(messages: list = messages) -> None:
                stream = litellm.completion(
                    model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True},
                    api_base=url, num_retries=0, max_retries=0,
                )
                "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

            def next_figure(images: Iterator[NotebookImage] | None = images, head_start: bool | None = head_start) -> None:
                chosen[:] = [next(images)] if images is not None else []
                if head_start:  # the cell that drew it ended; the user reads the plot while the kernel prepares it
                    OblixClient.prepare_images(chosen)
                    prepare(chosen[0].data, chosen[0].mime)  # waits for that head start (a reader takes longer)

            def turn() -> None:
                client.turn(PROMPT, session_id, images=list(chosen))

            bares, turns = paired_runs(bare, turn, repeat=REPEAT, warmup=WARMUP, pause=PAUSE, before=next_figure)
            baseline, ours = statistics.median(bares), statistics.median(turns)
            results[label] = ours - baseline
            report(f"bare litellm.completion, {label}", f"{baseline:.2f} ms")
            report(f"turn, {label}", f"{ours:.2f} ms")
            report(f"  turn adds ({label})", f"{ours - baseline:.2f} ms")
            report(f"  ratio turn / bare ({label})", f"{ours / baseline:.3f}", "goal <= 1.05")
            report(f"    middle half of the {REPEAT} pairs' ratios", ratio_spread(bares, turns))
        for label, _, _ in cases[1:]:
            report(f"attaching adds, beyond its upload: {label}", f"{results[label] - results['without an image']:.1f} ms", "goal <= 50 ms")


if __name__ == "__main__":
    main()
