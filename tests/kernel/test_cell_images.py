"""The ``cell_images`` tool: a cell's remembered images, shown to a model that can see, a few at a time and within the turn's tokens.

Real PNGs in a real ``DisplayedImages``, made ready by the turn's own preparer
(``attachments.tool_images``, Pillow underneath).
"""

from __future__ import annotations

import base64
import io
import os

from PIL import Image

from oblix_jupyter.attachments import tool_images
from oblix_jupyter.kernel.images import DisplayedImages
from oblix_jupyter.kernel.tools import IMAGES_PER_ANSWER, IMAGES_PER_CALL, CellHistory, KernelTools

MODEL = "openai/gpt-4o-mini"


def png(width: int, height: int, shade: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 100, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def memory_with(cell: int, count: int) -> DisplayedImages:
    memory = DisplayedImages()
    for shade in range(count):
        memory.record(cell, {"image/png": base64.b64encode(png(1600, 1200, shade)).decode()})
    return memory


def tools_over(memory: DisplayedImages, image_tokens: int = 100_000, seeing: bool = True) -> KernelTools:
    cells = CellHistory(["", "x = 1", "x", "plot()"], {}, None, memory)
    return KernelTools({}, cells=cells, show=tool_images(MODEL, 512) if seeing else None, image_tokens=image_tokens)


def sizes(parts: tuple) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].partition(",")[2]))).size for part in parts]


def test_a_call_shows_a_few_images_and_an_answer_a_few_more():
    tools = tools_over(memory_with(3, 8))
    first = tools.run("cell_images", {"number": 3})
    assert first.ok and len(first.parts) == IMAGES_PER_CALL and sizes(first.parts) == [(512, 384)] * IMAGES_PER_CALL
    assert first.text.startswith("3 images of cell 3 follow: figure from cell 3, figure 2 from cell 3, figure 3 from cell 3.")
    assert f"figure 4 from cell 3 (at most {IMAGES_PER_CALL} images a call)" in first.text
    assert first.summary == "looked at 3 images of cell 3"
    second = tools.run("cell_images", {"number": 3, "which": [4, 5, 6]})
    third = tools.run("cell_images", {"number": 3, "which": [7, 8]})
    assert len(second.parts) == IMAGES_PER_ANSWER - IMAGES_PER_CALL and third.parts == ()
    assert f"figure 7 from cell 3 (at most {IMAGES_PER_ANSWER} images an answer)" in third.text
    assert first.parts[1]["oblix_image"] == {"label": "figure 2 from cell 3", "note": "[a 512×384 figure 2 from cell 3: this model cannot see images]"}


def test_images_are_shown_only_within_the_tokens_the_turn_has_left():
    tools = tools_over(memory_with(3, 2), image_tokens=300)  # one 512×384 image costs 255 tokens by OpenAI's rule
    result = tools.run("cell_images", {"number": 3})
    assert len(result.parts) == 1
    assert "figure 2 from cell 3 (its 255 tokens are more than the 45 this turn has left)" in result.text


def test_a_cell_without_images_or_with_names_only_sends_nothing():
    memory = memory_with(3, 1)
    memory.max_bytes = 100_000
    noise = io.BytesIO()
    Image.frombytes("RGB", (300, 300), os.urandom(300 * 300 * 3)).save(noise, "PNG")
    memory.record(2, {"image/png": noise.getvalue()})  # larger than the memory keeps: named only
    tools = tools_over(memory)
    nothing = tools.run("cell_images", {"number": 1})
    assert not nothing.ok and nothing.parts == () and "displayed no image" in nothing.text
    wrong = tools.run("cell_images", {"number": 3, "which": [2]})
    assert not wrong.ok and "`which` counts 1-1" in wrong.text
    named = tools.run("cell_images", {"number": 2})
    assert named.ok and named.parts == () and named.text.startswith("No image of cell 2 was sent.\nNot sent: figure from cell 2 (not kept: larger than")


def test_without_sight_the_tool_is_not_offered_and_cannot_be_called():
    tools = tools_over(memory_with(3, 1), seeing=False)
    assert "cell_images" not in [schema["function"]["name"] for schema in tools.schemas()]
    result = tools.run("cell_images", {"number": 3})
    assert not result.ok and result.parts == () and "Unknown tool 'cell_images'" in result.text
    assert "named, not shown" in str(tools.schemas())
    assert "cell_images" in [schema["function"]["name"] for schema in tools_over(memory_with(3, 1)).schemas()]
    assert "cell_images" not in str(tools_over(DisplayedImages()).schemas()), "offered only while the kernel keeps an image"
