"""The kernel remembers the images its cells displayed: in a real kernel, matplotlib's inline figures included, within its bounds."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import subprocess
import sys
import threading
import time

import pytest
from kernels import run_cells
from PIL import Image

from oblix_jupyter.errors import UnreadableImage
from oblix_jupyter.kernel.images import MAX_RASTER_PX, OWN_OUTPUT, DisplayedImages, NotebookImage, figure_image, pixel_size
from oblix_jupyter.kernel.tools import CellHistory, KernelTools

pytestmark = pytest.mark.timeout(180)

# Each cell's execution count is its position + 1: nbclient runs every cell with store_history.
CELLS = [
    # 1: installed twice, as a second %load_ext would, then an image shown in the same cell; helpers read the memory back
    """
import hashlib, io, json
from oblix_jupyter.kernel import images
from oblix_jupyter.kernel.tools import KernelTools
memory = images.install(get_ipython())
assert images.install(get_ipython()) is memory and images.memory_of(get_ipython()) is memory
from PIL import Image as Pixels
from IPython.display import SVG, Image, display
first = io.BytesIO()
Pixels.new("RGB", (7, 5)).save(first, "PNG")
display(Image(data=first.getvalue()))

def state(*cells):
    return json.dumps({
        "images": [[i.cell, i.label, i.mime, i.size, i.width, i.height, i.withheld,
                    hashlib.sha256(i.data).hexdigest() if i.data else None] for i in memory.recent()],
        "last": memory.last_cell(),
        "tools": {n: KernelTools.from_shell(get_ipython()).run("notebook_cell", {"number": n}).text for n in cells},
    })
""",
    # 2: a 1,600×1,200 figure, shown by the inline backend after the cell (post_execute)
    """
%matplotlib inline
%config InlineBackend.print_figure_kwargs = {"bbox_inches": None}
import matplotlib.pyplot as plt
fig = plt.figure(figsize=(16, 12), dpi=100)
plt.plot([0, 1, 4, 9]);
""",
    # 3: an image as the cell's value: execute_result
    """
def encoded(size, kind, noise=False):
    import numpy
    pixels = numpy.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=numpy.uint8) if noise else None
    picture = Pixels.fromarray(pixels) if noise else Pixels.new("RGB", size, "red")
    buffer = io.BytesIO()
    picture.save(buffer, kind, **({"compress_level": 1} if kind == "PNG" else {}))
    return buffer.getvalue()

Image(data=encoded((30, 20), "PNG"))
""",
    # 4: two displays in one cell, a JPEG then a PNG
    'display(Image(data=encoded((40, 30), "JPEG")))\ndisplay(Image(data=encoded((50, 10), "PNG")))',
    # 5: an SVG: its text kept, as CairoSVG is installed in the test environment
    """display(SVG('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'))""",
    # 6: Oblix's own output (a thumbnail in an answer) is not the user's figure
    f'display({{"image/png": encoded((8, 8), "PNG"), "text/plain": "thumbnail"}}, raw=True, metadata={{"{OWN_OUTPUT}": {{"thumbnail": True}}}})',
    # 7
    "print(state(2, 4, 5, 6))",
    # 8: 19 more images: 25 in all, the 5 oldest dropped
    'for n in range(19):\n    display(Image(data=encoded((2, 2), "PNG")))',
    # 9
    "print(state(2))",
    # 10: four noisy 1,400×1,400 PNGs of about 5.9 MB each: 23.5 MB, over the 20 MB bound
    'for n in range(4):\n    display(Image(data=encoded((1400, 1400), "PNG", noise=True)))',
    # 11
    "print(state())",
]


@pytest.fixture(scope="module")
def kernel_run(tmp_path_factory):
    client = run_cells(CELLS, str(tmp_path_factory.mktemp("images") / "images.ipynb"), timeout=120)
    cells = client.nb.cells
    errors = [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert not errors, "\n".join("\n".join(error.traceback) for error in errors)
    return cells


def printed(cell) -> dict:
    return json.loads("".join(output.text for output in cell.outputs if output.output_type == "stream"))


def shown_images(cell) -> list[bytes]:
    """The PNG or JPEG bytes of the images a cell's outputs carry, as the notebook received them."""
    found = []
    for output in cell.outputs:
        for mime in ("image/png", "image/jpeg"):
            if mime in output.get("data", {}):
                found.append(base64.b64decode(output.data[mime]))
    return found


def test_a_matplotlib_inline_figure_is_remembered_under_its_cell_with_its_png(kernel_run):
    state = printed(kernel_run[6])
    [figure_png] = shown_images(kernel_run[1])
    assert state["images"][0][:6] == [1, "figure from cell 1", "image/png", state["images"][0][3], 7, 5]  # the %load_ext cell's own
    first = state["images"][1]
    assert first[:6] == [2, "figure from cell 2", "image/png", len(figure_png), 1600, 1200]
    assert first[7] == hashlib.sha256(figure_png).hexdigest()  # the very bytes the notebook shows
    assert Image.open(io.BytesIO(figure_png)).size == (1600, 1200)
    kb = round(len(figure_png) / 1024)
    assert state["tools"]["2"].endswith(f"\nImages cell 2 displayed (1):\n- figure from cell 2: PNG, 1600×1200, {kb} KB")
    assert len(state["tools"]["2"]) < 1000  # named, never the bytes


def test_execute_results_and_several_displays_of_a_cell_are_remembered_in_order(kernel_run):
    images = printed(kernel_run[6])["images"]
    assert [image[:3] + image[4:6] for image in images[2:5]] == [
        [3, "figure from cell 3", "image/png", 30, 20],  # execute_result: counted by its own execution_count
        [4, "figure from cell 4", "image/jpeg", 40, 30],
        [4, "figure 2 from cell 4", "image/png", 50, 10],
    ]
    jpeg, png = shown_images(kernel_run[3])
    assert images[3][7] == hashlib.sha256(jpeg).hexdigest() and images[4][7] == hashlib.sha256(png).hexdigest()


def test_an_svg_is_kept_as_its_text_and_oblix_own_output_is_not_remembered(kernel_run):
    state = printed(kernel_run[6])
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    assert state["images"][5] == [5, "figure from cell 5", "image/svg+xml", len(svg), None, None, None, hashlib.sha256(svg.encode()).hexdigest()]
    assert len(state["images"]) == 6  # nothing of cell 6
    assert "figure from cell 5: SVG, 1 KB" in state["tools"]["5"]
    assert "Images" not in state["tools"]["6"]
    assert state["last"] == 5  # a kept SVG is an image --image may attach: rasterised when it is


def test_only_the_last_20_images_are_kept_oldest_dropped_first(kernel_run):
    state = printed(kernel_run[8])
    assert len(state["images"]) == 20
    assert [image[0] for image in state["images"]] == [5] + [8] * 19  # cells 1 to 4 were the oldest
    assert state["images"][-1][1] == "figure 19 from cell 8" and state["last"] == 8
    assert "Images" not in state["tools"]["2"]  # the tool says only what is still there


def test_the_byte_bound_drops_the_oldest_until_20_mb_fit(kernel_run):
    state = printed(kernel_run[10])
    sizes = [len(png) for png in shown_images(kernel_run[9])]
    assert sum(sizes) > 20 * 1024 * 1024 >= sum(sizes[1:])
    assert [image[1] for image in state["images"]] == [f"figure {n} from cell 10" for n in (2, 3, 4)]
    assert [image[3] for image in state["images"]] == sizes[1:]


# -- in this process: the record, the tool, a figure by name ---------------------------------


def png(size: tuple[int, int], colour: str = "blue") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_image_larger_than_the_byte_bound_is_named_with_the_reason_and_evicts_nothing():
    memory = DisplayedImages(max_bytes=len(png((300, 200))) + 10)
    memory.record(1, {"image/png": base64.b64encode(png((300, 200))).decode()})
    noisy = io.BytesIO()
    Image.effect_noise((400, 400), 100).save(noisy, "PNG")
    big = memory.record(2, {"image/png": noisy.getvalue()})
    assert big.data is None and big.withheld.startswith("larger than the") and (big.width, big.height) == (400, 400)
    assert [image.size > 0 for image in memory.recent()] == [True, False] and memory.last_cell() == 1


def test_a_bundle_prefers_png_and_bad_base64_is_named_not_raised():
    memory = DisplayedImages()
    both = {"image/jpeg": "not used", "image/png": base64.b64encode(png((3, 4))).decode(), "text/plain": "<Figure>"}
    assert memory.record(7, both).mime == "image/png"
    broken = memory.record(8, {"image/png": "@@@ not base64 @@@"})
    assert broken.data is None and broken.withheld == "its data is not base64"
    assert memory.record(9, {"text/plain": "no image"}) is None
    assert memory.observe({"header": {"msg_type": "stream"}, "content": {"text": "x"}}) == {"header": {"msg_type": "stream"}, "content": {"text": "x"}}


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_the_jpeg_header_gives_the_pixel_size_without_decoding(mode):
    buffer = io.BytesIO()
    Image.new(mode, (123, 45)).save(buffer, "JPEG", progressive=mode == "L", exif=Image.Exif())
    assert pixel_size(buffer.getvalue(), "image/jpeg") == (123, 45)
    assert pixel_size(buffer.getvalue()[:20], "image/jpeg") is None  # cut short before its frame header
    assert pixel_size(b"GIF89a....", "image/png") is None


def test_the_tool_names_each_image_a_cell_displayed():
    memory = DisplayedImages()
    memory.record(1, {"image/png": png((64, 48))})
    memory.record(1, {"image/svg+xml": "<svg/>"})
    tools = KernelTools({}, cells=CellHistory(["", "plot()"], {}, None, memory))
    text = tools.run("notebook_cell", {"number": 1}).text
    # CairoSVG is installed for the tests: the SVG's text is kept (test_without_a_rasteriser_an_svg_is_named_not_kept: without it).
    assert text.endswith("Images cell 1 displayed (2):\n- figure from cell 1: PNG, 64×48, 1 KB\n- figure 2 from cell 1: SVG, 1 KB")
    assert "displayed" in tools.schemas()[-2]["function"]["description"]


def test_a_kept_svg_is_rasterised_by_cairosvg_only_when_asked_at_its_own_size():
    """In a process of its own, so that whether displaying loaded CairoSVG can be seen in ``sys.modules``."""
    code = """
import base64, json, sys
from oblix_jupyter.kernel.images import DisplayedImages
svg = '<svg xmlns="http://www.w3.org/2000/svg" width="30" height="20"><rect width="15" height="20" fill="#ff0000"/></svg>'
kept = DisplayedImages().record(3, {"image/svg+xml": svg})
drawn_on_display = "cairosvg" in sys.modules
raster = kept.raster()
print(json.dumps([kept.data == svg.encode(), kept.withheld, drawn_on_display, raster.mime, raster.width, raster.height, raster.label,
                  base64.b64encode(raster.data).decode()]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    *facts, drawn = json.loads(done.stdout)
    assert facts == [True, None, False, "image/png", 30, 20, "figure from cell 3"]  # nothing drawn, nor loaded, when the cell displays it
    pixels = Image.open(io.BytesIO(base64.b64decode(drawn))).convert("RGBA")
    assert pixels.size == (30, 20) and pixels.getpixel((5, 10)) == (255, 0, 0, 255) and pixels.getpixel((25, 10))[3] == 0
    assert NotebookImage("x", "image/png", None).raster() is None


@pytest.mark.parametrize(
    ("size", "drawn"),
    [
        ('width="30000" height="20000"', (MAX_RASTER_PX, 1365)),  # drawn whole, at most MAX_RASTER_PX wide
        ('width="100" height="40000"', (5, MAX_RASTER_PX)),
        ('viewBox="0 0 50000 100" width="100%"', (MAX_RASTER_PX, 4)),  # its size from the viewBox, as CairoSVG reads it
        ('width="20em" height="10em"', (320, 160)),  # small: at its own size, in CairoSVG's units
    ],
)
def test_an_svg_that_says_it_is_huge_is_drawn_small_and_at_once(size, drawn):
    """A hostile or careless SVG (30,000 px wide) would make CairoSVG allocate gigabytes and draw for most of a minute."""
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" {size}><rect width="100%" height="100%" fill="#ff0000"/></svg>'.encode()
    started = time.monotonic()
    raster = NotebookImage("figure from cell 2", "image/svg+xml", svg, 2).raster()
    assert (raster.width, raster.height) == drawn == Image.open(io.BytesIO(raster.data)).size
    assert time.monotonic() - started < 5
    assert Image.open(io.BytesIO(raster.data)).convert("RGB").getpixel((drawn[0] // 2, drawn[1] // 2)) == (255, 0, 0)


class Recorder(http.server.BaseHTTPRequestHandler):
    """A loopback server of the test's own that answers any GET with a green PNG, and notes every request."""

    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        Recorder.requests.append(self.path)
        body = png((20, 20), "#00ff00")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def green_server():
    Recorder.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def green_in(drawn: bytes) -> int:
    """How many pixels of a PNG are the green the server and the local file hold."""
    return sum(1 for pixel in Image.open(io.BytesIO(drawn)).convert("RGB").getdata() if pixel == (0, 255, 0))


def test_a_hostile_svg_reads_no_local_file_requests_no_url_and_expands_no_entity(tmp_path, green_server):
    import cairosvg

    (tmp_path / "secret.png").write_bytes(png((20, 20), "#00ff00"))
    svg = f"""<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="60" height="20">
<image x="0" y="0" width="20" height="20" href="file://{tmp_path}/secret.png"/>
<image x="20" y="0" width="20" height="20" xlink:href="{green_server}/tracker.png"/>
<image x="40" y="0" width="20" height="20" href="{tmp_path}/secret.png"/>
</svg>""".encode()
    # The same SVG drawn with CairoSVG's unsafe=True shows the file and fetches the URL: the attack is real, and seen.
    assert green_in(cairosvg.svg2png(bytestring=svg, unsafe=True)) >= 2 * 20 * 20 and Recorder.requests == ["/tracker.png"]
    Recorder.requests = []

    drawn = NotebookImage("figure from cell 4", "image/svg+xml", svg, 4).raster()
    assert (drawn.mime, drawn.width, drawn.height) == ("image/png", 60, 20)
    assert green_in(drawn.data) == 0, "a local file was read into the picture"
    assert Recorder.requests == [], "the SVG made the kernel request a URL"

    entity = f"""<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY leak SYSTEM "file://{tmp_path}/secret.png">]>
<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text>&leak;</text></svg>""".encode()
    with pytest.raises(UnreadableImage, match=r"^figure from cell 4: the SVG cannot be drawn \(EntitiesForbidden\)\.$"):
        NotebookImage("figure from cell 4", "image/svg+xml", entity, 4).raster()
    with pytest.raises(UnreadableImage, match="cannot be drawn"):
        NotebookImage("figure from cell 4", "image/svg+xml", b"<svg", 4).raster()


def test_without_a_rasteriser_an_svg_is_named_not_kept():
    """CairoSVG is installed for the tests, so a process of its own is made without it: ``None`` in sys.modules fails its import."""
    code = """
import json, sys
sys.modules["cairosvg"] = None
from oblix_jupyter.kernel.images import DisplayedImages, svg_rasteriser_installed
named = DisplayedImages().record(2, {"image/svg+xml": '<svg width="10" height="20"/>'})
print(json.dumps([svg_rasteriser_installed(), named.data, named.raster(), named.summary()]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == [
        False, None, None, "figure from cell 2: SVG, not kept: an SVG, and no SVG rasteriser (CairoSVG) is installed",
    ]


def test_a_matplotlib_figure_by_name_renders_at_its_own_size_and_nothing_else_does():
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 3), dpi=100)
    figure.add_subplot().plot([1, 2, 3])
    image = figure_image(figure, "fig")
    assert (image.label, image.mime, image.cell, image.width, image.height) == ("figure `fig`", "image/png", None, 400, 300)
    assert Image.open(io.BytesIO(image.data)).size == (400, 300)
    assert figure_image([figure], "figs") is None and figure_image("fig", "name") is None


def test_importing_and_asking_import_neither_matplotlib_nor_pillow():
    code = """
import sys
from oblix_jupyter.kernel import images
assert images.figure_image(object(), "x") is None
images.DisplayedImages().record(1, {"image/png": base64.b64encode(bytes(40)).decode()})
print(sorted(m for m in ("matplotlib", "PIL", "numpy", "IPython", "litellm") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", "import base64" + code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


HEAD_START_CELLS = [
    # 1: a PNG shown before Pillow is loaded (IPython's Image needs none): no one is made to import it
    """
%load_ext oblix_jupyter
import base64, sys
from IPython.display import Image, display
tiny = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
display(Image(data=tiny))
""",
    # 2: Pillow not loaded by the cell that ended, nor by its head start
    """print("PIL.Image" in sys.modules)""",
    # 3: a 1,600×1,200 inline figure (matplotlib loads Pillow)
    """
%matplotlib inline
%config InlineBackend.print_figure_kwargs = {"bbox_inches": None}
import matplotlib.pyplot as plt
plt.figure(figsize=(16, 12), dpi=100)
plt.plot([0, 1, 4, 9]);
""",
    # 4: what the kernel started preparing as cell 3 ended, read from the models' cache the turn will look in
    """
import json
from oblix_jupyter.kernel import images
from oblix_jupyter.models import images as ready
[figure] = images.memory_of(get_ipython()).images_of(3)
started = ready._ready.get(ready._key(figure.data, figure.mime, 1024))
made = started.result(timeout=30) if started is not None else None
print(json.dumps([started is not None, made and [made.width, made.height, made.mime],
                  ready._key(tiny, "image/png", 1024) in ready._ready]))
""",
]


def test_a_cell_figure_is_made_ready_for_a_model_as_its_cell_ends_without_loading_pillow_for_it(tmp_path):
    """The head start that keeps attaching a figure under 50 ms (benchmarks/bench_images.py measures the turn)."""
    client = run_cells(HEAD_START_CELLS, str(tmp_path / "ahead.ipynb"), timeout=120)
    cells = client.nb.cells
    errors = [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert not errors, "\n".join("\n".join(error.traceback) for error in errors)
    assert cells[1].outputs[0].text.strip() == "False"
    started, made, tiny_started = printed(cells[3])
    assert started and made == [1024, 768, made[2]] and made[2] in ("image/png", "image/jpeg")
    assert not tiny_started  # shown while Pillow was not loaded: left to a turn, if one ever attaches it
