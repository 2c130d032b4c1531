"""An image made ready for a model: small and cheap, what it costs, and the note a model that cannot see reads instead.

A figure straight from a cell is often 1,600 px wide and a few hundred KB; a model reads
no more detail than its provider's own downscaling keeps, yet counts (and bills) by pixels.
So ``prepare`` shrinks it to ``max_px`` on its longest side, keeps whichever of PNG
(plots: flat colours, sharp lines) and JPEG (photographs) is smaller, and estimates its
input tokens by the provider's rule (``image_tokens``) for the turn's budget. Only a model
that can see (``gateway.supports_vision``) is sent it, as an OpenAI-style content part (litellm translates that
for every provider); any other gets one line of text saying what it was not shown.
Pillow is imported only when first needed.

Preparing a cell's figure (decoding, shrinking, encoding twice) takes most of 100 ms,
too much to add to a turn. ``prepare_ahead`` starts it in the background as soon as the
cell that showed it ends, while the user reads the plot; a turn that attaches it then
finds it ready (``prepare`` waits for one still under way rather than start again).
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

from ..errors import ImagesUnavailable, OblixError, UnreadableImage

DEFAULT_MAX_PX = 1024
JPEG_QUALITY = 85  # no visible loss on a photograph, and a plot's text and lines stay legible
_ENCODED = {"PNG": "image/png", "JPEG": "image/jpeg"}
READY_KEPT = 8  # images made ready and kept: the last cell's few, a retry's, the picker's choice


@dataclass(frozen=True)
class PreparedImage:
    """An image as it is sent: its encoding, bytes and pixel size, and the input tokens the provider will count for it."""

    mime: str
    data: bytes
    width: int
    height: int
    tokens: int

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    def content_part(self) -> dict[str, Any]:
        """The image as one part of a user message's content, in the OpenAI shape litellm takes for every provider."""
        return {"type": "image_url", "image_url": {"url": self.data_url}}


def prepare(data: bytes, mime: str, max_px: int = DEFAULT_MAX_PX, *, model: str | None = None, label: str = "image") -> PreparedImage:
    """``data`` (an image of type ``mime``) at most ``max_px`` on its longest side, as the smaller of PNG and JPEG, its tokens for ``model``.

    The original bytes are kept when they already fit and are smaller than either
    re-encoding. JPEG is tried only for an image without transparency. Raises
    ``UnreadableImage`` (naming ``label``) for bytes Pillow cannot decode, and
    ``ImagesUnavailable`` without Pillow. An image made ready ahead (or by an earlier
    turn) is taken as it is; one that failed there is prepared again, to fail here with
    its own label.
    """
    key = _key(data, mime, max_px)
    with _ready_lock:
        ahead = _ready.get(key)
        if ahead is not None:
            _ready.move_to_end(key)
    ready = None
    if ahead is not None:
        try:
            ready = ahead.result()
        except OblixError:
            pass
    if ready is None:
        ready = _shrunk(data, mime, max_px, label)
        done: Future[PreparedImage] = Future()
        done.set_result(ready)
        _keep(key, done)
    return replace(ready, tokens=image_tokens(ready.width, ready.height, model))


def prepare_ahead(images: Iterable[tuple[bytes, str]], max_px: int = DEFAULT_MAX_PX) -> None:
    """Start preparing each (bytes, type) of ``images`` in the background, for a turn that may attach it; never waits, never raises.

    Only where Pillow is loaded already (matplotlib loads it): a kernel that merely shows
    a PNG is not made to import it for a turn that may never come.
    """
    if "PIL.Image" not in sys.modules:
        return
    global _worker
    for data, mime in images:
        key = _key(data, mime, max_px)
        with _ready_lock:
            if key in _ready:
                continue
            if _worker is None:
                _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oblix-images")  # one core's worth, beside the user's cells
            future = _worker.submit(_shrunk, data, mime, max_px, "image")
        _keep(key, future)


_ready: OrderedDict[tuple[bytes, str, int], Future[PreparedImage]] = OrderedDict()
_ready_lock = threading.Lock()
_worker: ThreadPoolExecutor | None = None


def _key(data: bytes, mime: str, max_px: int) -> tuple[bytes, str, int]:
    """A digest, not the bytes: an image can be 20 MB, and the kept ones must not keep theirs alive."""
    return hashlib.blake2b(data, digest_size=16).digest(), mime, max_px


def _keep(key: tuple[bytes, str, int], future: Future[PreparedImage]) -> None:
    with _ready_lock:
        _ready[key] = future
        _ready.move_to_end(key)
        while len(_ready) > READY_KEPT:
            _ready.popitem(last=False)


def _shrunk(data: bytes, mime: str, max_px: int, label: str) -> PreparedImage:
    """The work of ``prepare``, for no model in particular (its tokens are set per model after)."""
    pillow = _pillow()
    image = _decoded(pillow, data, mime, max_px, label)
    candidates = [(data, mime)] if not image.resized and _ENCODED.get(image.source_format) == mime else []
    candidates.append((_encoded(image.pixels, "PNG"), "image/png"))
    if image.pixels.mode in ("RGB", "L"):
        candidates.append((_encoded(image.pixels, "JPEG"), "image/jpeg"))
    best, best_mime = min(candidates, key=lambda candidate: len(candidate[0]))
    width, height = image.pixels.size
    return PreparedImage(best_mime, best, width, height, image_tokens(width, height))


def image_tokens(width: int, height: int, model: str | None = None) -> int:
    """The input tokens a provider counts for a ``width``×``height`` image: Anthropic's rule for Claude models, else OpenAI's tiles.

    OpenAI (and the providers that copy it): the image is fit within 2048×2048, then its
    shortest side brought down to 768 px; each 512-px tile costs 170 tokens, plus 85.
    Anthropic: width × height / 750, after it scales an image down to at most 1,568 px
    on the long edge and about 1,600 tokens.
    """
    if model is not None and _is_anthropic(model):
        scale = min(1.0, 1568 / max(width, height))
        return min(1600, math.ceil(int(width * scale) * int(height * scale) / 750))
    scale = min(1.0, 2048 / max(width, height))
    fitted_width, fitted_height = width * scale, height * scale
    scale = min(1.0, 768 / min(fitted_width, fitted_height))
    tiles = math.ceil(int(fitted_width * scale) / 512) * math.ceil(int(fitted_height * scale) / 512)
    return 85 + 170 * tiles


def cannot_see_note(label: str, width: int | None = None, height: int | None = None) -> str:
    """The line a model that cannot see reads instead of the image: "[a 640×480 figure from cell 5: this model cannot see images]"."""
    size = f"{width}×{height} " if width and height else ""
    return f"[a {size}{label}: this model cannot see images]"


def _is_anthropic(model: str) -> bool:
    return model.startswith("anthropic/") or "claude" in model.lower()


# -- Pillow -----------------------------------------------------------------------------------

MAX_DECODED_PIXELS = 25_000_000  # a 5,000×5,000 image, 100 MB decoded as RGBA; a larger one is refused before decoding
_PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}


def _pillow() -> ModuleType:
    try:
        from PIL import Image
    except ImportError:
        raise ImagesUnavailable() from None
    return Image


@dataclass(frozen=True)
class _Decoded:
    pixels: Any  # a PIL Image in a mode PNG can store: RGB, RGBA, L or LA
    source_format: str | None  # Pillow's name for what the bytes were: "PNG", "JPEG", "GIF"...
    resized: bool  # when not, the original bytes show this image as well as any re-encoding would


def thumbnail(data: bytes, mime: str, size: int, label: str = "image") -> bytes | None:
    """A PNG of the image at most ``size`` px on its longest side (the chat panel's picker); None when it cannot be drawn.

    Drawn as a model's copy is, by ``_decoded``'s checks: the label then names the image alone.
    """
    try:
        return _encoded(_decoded(_pillow(), data, mime, size, label).pixels, "PNG")
    except OblixError:  # Pillow missing, or bytes it cannot (or will not) decode
        return None


def _decoded(pillow: ModuleType, data: bytes, mime: str, max_px: int, label: str) -> _Decoded:
    """``data`` decoded, in an encodable mode, at most ``max_px`` on its longest side; any failure to decode as ``UnreadableImage``.

    The bytes come from outputs and files: only the decoder of the type they claim
    (``mime``) reads them, and an image of more than ``MAX_DECODED_PIXELS`` is refused
    from its header, before any pixel is decoded.
    """
    claimed = _PILLOW_FORMATS.get(mime)
    if claimed is None:
        raise UnreadableImage(f"The {label} is {mime}, which is not sent to models (PNG, JPEG, GIF or WebP are).")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its two pixel limits; an image that large is refused as one past the second.
            warnings.simplefilter("error", pillow.DecompressionBombWarning)
            opened = pillow.open(io.BytesIO(data), formats=[claimed])
            source_format, size = opened.format, opened.size
            if size[0] * size[1] > MAX_DECODED_PIXELS:
                raise pillow.DecompressionBombError(f"{size[0]}×{size[1]}")
            if source_format == "JPEG":
                opened.draft("RGB", (max_px, max_px))  # decode at a reduced scale: far faster than full size then shrink
            opened.load()
            pixels = _encodable(opened)
            pixels.thumbnail((max_px, max_px), pillow.Resampling.BICUBIC)  # antialiased when shrinking, and faster than LANCZOS
    except (pillow.DecompressionBombError, pillow.DecompressionBombWarning):
        raise UnreadableImage(f"The {label} has too many pixels to be read safely.") from None
    except pillow.UnidentifiedImageError:
        raise UnreadableImage(f"The {label} is not the {claimed} image it claims to be.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # truncated or corrupt data, by the plugin's own words
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        raise UnreadableImage(f"The {label} cannot be decoded: {reason}.") from None
    return _Decoded(pixels, source_format, pixels.size != size)


def _encodable(image: Any) -> Any:
    """``image`` in RGB or L, or with an alpha channel (RGBA, LA) only when some pixel is actually transparent."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or image.mode == "P" and "transparency" in image.info
    if has_alpha:
        image = image.convert("LA" if image.mode == "LA" else "RGBA")
        if image.getchannel("A").getextrema()[0] == 255:  # matplotlib's figures: RGBA, every pixel opaque
            return image.convert("L" if image.mode == "LA" else "RGB")
        return image
    return image if image.mode in ("RGB", "L") else image.convert("RGB")


def _encoded(pixels: Any, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        pixels.save(buffer, "JPEG", quality=JPEG_QUALITY)
    else:
        pixels.save(buffer, "PNG")
    return buffer.getvalue()
