"""What the kernel remembers of the images its cells displayed, by execution count, for a prompt to attach.

A prompt about a plot ("why does this curve bend?") needs the picture the cell showed,
and IPython keeps none: ``Out`` holds a cell's last value, never what ``display`` or
matplotlib's inline backend sent. So ``install`` registers an observer on ipykernel's
two output paths, ``ZMQDisplayPublisher`` (``display_data``; matplotlib_inline's figures
are displayed from the ``post_execute`` event, still within their cell) and the shell's
displayhook (``execute_result``), through the transform hooks both offer
(``register_hook``), which see every message before it is sent and pass it on unchanged.

Only what a model could be sent is kept: PNG and JPEG bytes, the newest ``MAX_IMAGES``
images within ``MAX_BYTES``, oldest dropped first. An SVG-only output is remembered by
name only (a note can say a cell showed one), unless an SVG rasteriser (CairoSVG) is
already installed, in which case its text is kept and turned into a PNG when asked
(``NotebookImage.raster``), so that displaying an SVG costs no rasterising. The observer
runs on every display, so it decodes base64 and reads a PNG or JPEG header, nothing more:
Pillow and matplotlib are never imported here, except to render a matplotlib ``Figure``
the user names in a prompt (``figure_image``), when matplotlib is loaded already.
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib.util
import io
import struct
import sys
import threading
import types
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..errors import UnreadableImage

MAX_IMAGES = 20
MAX_BYTES = 20 * 1024 * 1024
AHEAD = 4  # a cell's images made ready for a model as it ends: the last few it showed
# An SVG is drawn at most this large on its longest side: a model is sent at most
# ``image_max_px`` anyway, and an SVG that says it is 30,000 px wide would otherwise take
# CairoSVG most of a minute and gigabytes to draw.
MAX_RASTER_PX = 2048
KEPT_TYPES = ("image/png", "image/jpeg")  # in the order preferred when a bundle has both
SVG = "image/svg+xml"
# A display whose metadata has this key is Oblix's own (an attachment's thumbnail in an
# answer), not a figure of the user's: remembering it would make `--image` attach it again.
OWN_OUTPUT = "oblix_jupyter"
_OBSERVED = frozenset({"display_data", "execute_result"})


@dataclass(frozen=True)
class NotebookImage:
    """One image a cell displayed (or a figure the user named): its bytes when kept, its pixel size when its header says.

    ``data`` is None when only the name is kept, and ``withheld`` says why (an SVG with no
    rasteriser installed, an image larger than the memory's byte bound). ``label`` is how
    a note or the history names it: "figure from cell 5", "figure 2 from cell 5", "figure `fig`".
    """

    label: str
    mime: str
    data: bytes | None
    cell: int | None = None  # None for a figure rendered from a variable
    width: int | None = None
    height: int | None = None
    withheld: str | None = None

    @property
    def size(self) -> int:
        """Bytes kept (0 for a name only)."""
        return len(self.data) if self.data is not None else 0

    def summary(self) -> str:
        """One line naming it without its bytes, for the ``notebook_cell`` tool: "figure from cell 5: PNG, 1600×1200, 84 KB"."""
        kind = {"image/png": "PNG", "image/jpeg": "JPEG", SVG: "SVG"}.get(self.mime, self.mime)
        parts = [kind]
        if self.width and self.height:
            parts.append(f"{self.width}×{self.height}")
        if self.data is not None:
            parts.append(_kilobytes(self.size))
        if self.withheld:
            parts.append(f"not kept: {self.withheld}")
        return f"{self.label}: {', '.join(parts)}"

    def raster(self) -> NotebookImage | None:
        """This image as PNG or JPEG bytes a model can be sent: itself, a kept SVG rasterised now, or None when no bytes are kept.

        ``UnreadableImage`` for an SVG that CairoSVG refuses or cannot draw.
        """
        if self.data is None:
            return None
        if self.mime != SVG:
            return self
        # unsafe=False (its default, said aloud): the SVG came from a notebook, and must not
        # make CairoSVG read local files, expand entities or fetch the URLs it names.
        try:
            import cairosvg  # found when the cell ran; its import still fails where the system's libcairo2 is missing

            png = cairosvg.svg2png(bytestring=self.data, unsafe=False, scale=_svg_scale(cairosvg, self.data, MAX_RASTER_PX))
        except Exception as error:  # noqa: BLE001 - XML, entity, cairo and size errors alike: the user's SVG or system, not our bug
            raise UnreadableImage(f"{self.label}: the SVG cannot be drawn ({type(error).__name__}).") from None
        width, height = pixel_size(png, "image/png") or (None, None)
        return replace(self, mime="image/png", data=png, width=width, height=height)


class DisplayedImages:
    """The images recent cells displayed, newest last, within ``max_images`` and ``max_bytes``; safe to read from any thread."""

    def __init__(self, max_images: int = MAX_IMAGES, max_bytes: int = MAX_BYTES) -> None:
        self.max_images = max_images
        self.max_bytes = max_bytes
        self._images: deque[NotebookImage] = deque()
        self._bytes = 0
        self._lock = threading.Lock()  # the shell's thread records while a turn or the panel reads
        self.cell: int | None = None  # the cell running now, which a display_data belongs to
        # Told the kept PNG and JPEG images of each cell that showed some, as it ends (at
        # most ``AHEAD`` of them, the last shown): the magics start preparing them then.
        self.on_cell_end: Callable[[list[NotebookImage]], None] | None = None

    def record(self, cell: int, bundle: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> NotebookImage | None:
        """Remember the image of one displayed mime ``bundle`` (values as displayed: base64 text or bytes) under ``cell``.

        A bundle is one output, so it gives at most one image: PNG, else JPEG, else an SVG's
        name. Nothing is remembered of a bundle without an image, or of Oblix's own output.
        """
        if metadata is not None and OWN_OUTPUT in metadata:
            return None
        mime = next((kind for kind in (*KEPT_TYPES, SVG) if bundle.get(kind)), None)
        if mime is None:
            return None
        data, withheld = _bytes_of(bundle[mime], mime)
        width, height = (pixel_size(data, mime) if data is not None else None) or (None, None)
        if data is not None and len(data) > self.max_bytes:
            data, withheld = None, f"larger than the {_kilobytes(self.max_bytes)} kept"
        with self._lock:
            earlier = sum(1 for image in self._images if image.cell == cell)
            label = f"figure {earlier + 1} from cell {cell}" if earlier else f"figure from cell {cell}"
            image = NotebookImage(label, mime, data, cell, width, height, withheld)
            self._images.append(image)
            self._bytes += image.size
            while len(self._images) > self.max_images or self._bytes > self.max_bytes:
                self._bytes -= self._images.popleft().size
        return image

    def images_of(self, cell: int) -> list[NotebookImage]:
        """The images cell ``cell`` displayed that are still remembered, in the order shown."""
        with self._lock:
            return [image for image in self._images if image.cell == cell]

    def last_cell(self) -> int | None:
        """The latest cell whose displayed image bytes are still kept (what ``--image`` alone attaches), or None."""
        with self._lock:
            return next((image.cell for image in reversed(self._images) if image.data is not None), None)

    def recent(self) -> list[NotebookImage]:
        """Every image remembered, oldest first (for a picker)."""
        with self._lock:
            return list(self._images)

    def cell_ended(self) -> None:
        """Tell ``on_cell_end`` the images the cell that just ended displayed; a failure there never reaches the user's cell."""
        listener, cell = self.on_cell_end, self.cell
        if listener is None or cell is None:
            return
        shown = [image for image in self.images_of(cell) if image.data is not None and image.mime in KEPT_TYPES]
        if shown:
            try:
                listener(shown[-AHEAD:])
            except Exception:  # noqa: BLE001 - a head start lost costs the turn its time, never the cell its result
                pass

    # -- observing ipykernel's messages ---------------------------------------------------

    def observe(self, message: dict[str, Any]) -> dict[str, Any]:
        """A transform hook of ipykernel's publishers: remember the image an output message carries, and pass it on as it is."""
        try:
            kind = message.get("msg_type") or message.get("header", {}).get("msg_type")
            if kind in _OBSERVED:
                content = message.get("content", {})
                cell = content.get("execution_count") if kind == "execute_result" else self.cell
                if isinstance(cell, int) and cell > 0:
                    self.record(cell, content.get("data") or {}, content.get("metadata") or {})
        except Exception:  # noqa: BLE001 - an output we cannot read must still reach the user, unharmed
            pass
        return message


_memories: weakref.WeakKeyDictionary[Any, DisplayedImages] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()


def install(shell: Any) -> DisplayedImages | None:
    """Start remembering the images ``shell``'s cells display; idempotent. None where they cannot be observed.

    Called from ``%load_ext``, on the thread that runs cells: ipykernel keeps its
    transform hooks per thread, and cells display from that one (displays from other
    threads are not remembered). Outside ipykernel (terminal IPython) outputs have no
    hooks, and nothing is remembered. ``update_display_data`` (a display replaced in
    place, as progress bars do) is not an image a cell showed anew, and is left out.
    """
    with _install_lock:
        if shell in _memories:
            return _memories[shell]
        publisher = getattr(shell, "display_pub", None)
        displayhook = getattr(shell, "displayhook", None)
        if not hasattr(publisher, "register_hook"):
            return None
        memory = DisplayedImages()
        memory.cell = shell.execution_count - 1  # the cell running %load_ext: its later displays are its own

        def before_any_execution() -> None:
            memory.cell = None  # a silent execution runs no pre_run_cell: its displays belong to no cell

        def before_a_cell(info: Any) -> None:
            # IPython has counted the cell before this event: during it, execution_count is its number + 1.
            memory.cell = shell.execution_count - 1 if info.store_history else None

        shell.events.register("pre_execute", before_any_execution)
        shell.events.register("pre_run_cell", before_a_cell)
        shell.events.register("post_run_cell", lambda _result: memory.cell_ended())  # after post_execute, where inline figures show
        publisher.register_hook(memory.observe)
        if hasattr(displayhook, "register_hook"):  # from ipykernel 7.4; before it, a cell's image value is not seen
            displayhook.register_hook(memory.observe)
        _memories[shell] = memory
        return memory


def memory_of(shell: Any) -> DisplayedImages | None:
    """The images ``shell``'s cells displayed since ``install``, or None if it was never installed there."""
    return _memories.get(shell) if shell is not None else None


def figure_image(value: Any, name: str) -> NotebookImage | None:
    """Variable ``name``'s matplotlib ``Figure`` as PNG at its own size and resolution (for ``{fig}`` in a prompt); None for anything else.

    A Figure can only exist once matplotlib is imported, so nothing is imported to find out.
    """
    figure_module = sys.modules.get("matplotlib.figure")
    if figure_module is None or not isinstance(value, figure_module.Figure):
        return None
    buffer = io.BytesIO()
    value.savefig(buffer, format="png")
    png = buffer.getvalue()
    width, height = pixel_size(png, "image/png") or (None, None)
    return NotebookImage(f"figure `{name}`", "image/png", png, None, width, height)


# -- bytes and headers -----------------------------------------------------------------------


@functools.cache  # asked on every SVG a cell displays; an install made later counts from the next kernel
def svg_rasteriser_installed() -> bool:
    """Whether CairoSVG can be imported (it is never installed by us): only then is an SVG's text worth keeping."""
    return importlib.util.find_spec("cairosvg") is not None


def _svg_scale(cairosvg: Any, svg: bytes, max_px: int) -> float:
    """The scale that draws ``svg`` at most ``max_px`` on its longest side (1 when it is smaller), read as CairoSVG reads its size.

    The size is read before drawing, from the parsed tree, because CairoSVG allocates its
    whole canvas first: capping the PNG afterwards would be too late.
    """
    from cairosvg.helpers import node_format, size

    tree = cairosvg.parser.Tree(bytestring=svg, unsafe=False)
    units = types.SimpleNamespace(dpi=96, context_width=None, context_height=None, font_size=0.0)
    units.font_size = size(units, "12pt")  # CairoSVG's default, for sizes given in em
    width, height, _ = node_format(units, tree)
    longest = max(width or 0, height or 0)
    return min(1.0, max_px / longest) if longest > 0 else 1.0


def _bytes_of(value: Any, mime: str) -> tuple[bytes | None, str | None]:
    """The bytes of a displayed value (base64 text for PNG/JPEG, text for SVG), or None and why they are not kept."""
    if mime == SVG:
        if not svg_rasteriser_installed():
            return None, "an SVG, and no SVG rasteriser (CairoSVG) is installed"
        text = "".join(value) if isinstance(value, list) else value
        return (text.encode() if isinstance(text, str) else bytes(text)), None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    try:
        return base64.b64decode(value), None
    except (binascii.Error, TypeError, ValueError):
        return None, "its data is not base64"


def pixel_size(data: bytes, mime: str) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's frame header, without decoding it; None when the header says nothing."""
    if mime == "image/png" and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if mime == "image/jpeg" and data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk a JPEG's marker segments to its start-of-frame, which holds the size."""
    position = 2
    while position + 9 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # padding before a marker
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame (not DHT, JPG, DAC)
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return (width, height) if width and height else None
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        position += 2 + length
    return None


def _kilobytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{max(1, round(size / 1024))} KB"
