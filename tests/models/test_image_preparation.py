"""An image made ready for a model: downscaled, the smaller encoding, its tokens by the provider's rule, and who can see it."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import pytest
from conftest import TEST_KEY, TEST_MODEL
from PIL import Image

from oblix_jupyter.errors import ImagesUnavailable, UnreadableImage
from oblix_jupyter.models import local_model
from oblix_jupyter.models.gateway import ModelGateway, supports_vision
from oblix_jupyter.models.images import DEFAULT_MAX_PX, cannot_see_note, image_tokens, prepare


def encoded(picture: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, kind)
    return buffer.getvalue()


def plot(size: tuple[int, int] = (1600, 1200)) -> Image.Image:
    """A plot as matplotlib draws one: RGBA, every pixel opaque, flat colours and thin lines."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    axes = figure.add_subplot()
    axes.plot(range(50), [n * n % 17 for n in range(50)])
    axes.set_title("residuals")
    return Image.open(io.BytesIO(_saved(figure)))


def _saved(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def photograph(size: tuple[int, int] = (1600, 1200)) -> Image.Image:
    """Noise, smoothed: many colours and no flat areas, which JPEG stores far smaller than PNG."""
    return Image.effect_noise(size, 60).convert("RGB").resize((size[0] // 4, size[1] // 4)).resize(size, Image.Resampling.BICUBIC)


def test_a_1600_by_1200_figure_is_downscaled_to_1024_on_its_longest_side():
    figure = encoded(plot(), "PNG")
    prepared = prepare(figure, "image/png")
    decoded = Image.open(io.BytesIO(prepared.data))
    assert (prepared.width, prepared.height) == decoded.size == (1024, 768)
    assert decoded.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[prepared.mime]
    assert len(prepared.data) < len(figure)
    assert prepare(figure, "image/png", max_px=400).width == 400
    tall = prepare(encoded(plot((600, 1500)), "PNG"), "image/png")
    assert (tall.width, tall.height) == (410, 1024)


def test_the_smaller_of_png_and_jpeg_is_kept():
    made = {}
    for name, picture in (("plot", plot()), ("photograph", photograph())):
        prepared = prepare(encoded(picture, "PNG"), "image/png")
        small = picture.convert("RGB")
        small.thumbnail((DEFAULT_MAX_PX, DEFAULT_MAX_PX), Image.Resampling.BICUBIC)
        png, jpeg = encoded(small, "PNG"), _jpeg(small)
        assert len(prepared.data) == min(len(png), len(jpeg)), name
        made[name] = prepared.mime
    assert made["photograph"] == "image/jpeg"


def _jpeg(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def test_a_small_image_is_sent_as_it_came_when_no_encoding_is_smaller():
    flat = encoded(Image.new("RGB", (300, 200), "white"), "PNG")  # tiny already: no re-encoding beats it
    prepared = prepare(flat, "image/png")
    assert (prepared.mime, prepared.data, prepared.width, prepared.height) == ("image/png", flat, 300, 200)


def test_transparency_is_kept_so_such_an_image_stays_png():
    clear = Image.new("RGBA", (1200, 600), (0, 0, 0, 0))
    clear.paste((200, 30, 30, 255), (100, 100, 500, 300))
    prepared = prepare(encoded(clear, "PNG"), "image/png")
    decoded = Image.open(io.BytesIO(prepared.data))
    assert prepared.mime == "image/png" and decoded.mode == "RGBA" and decoded.getpixel((0, 0))[3] == 0


def test_token_estimates_follow_each_providers_rule():
    # OpenAI: 1024×768 fits 2048 and its short side is 768 already: 2×2 tiles.
    assert image_tokens(1024, 768) == image_tokens(1024, 768, "openai/gpt-4o") == 85 + 170 * 4
    assert image_tokens(4096, 2048, "gpt-4o") == 85 + 170 * 6  # → 2048×1024 → 1536×768: 3×2 tiles
    assert image_tokens(300, 200, "openai/gpt-4o-mini") == 85 + 170  # one tile, never enlarged
    # Anthropic: width × height / 750, after its own scaling to at most 1,568 px and about 1,600 tokens.
    assert image_tokens(1024, 768, "anthropic/claude-sonnet-4-20250514") == 1049  # 786,432 / 750 = 1048.6
    assert image_tokens(200, 200, "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0") == 54
    assert image_tokens(3000, 3000, "claude-3-haiku-20240307") == 1600
    prepared = prepare(encoded(plot(), "PNG"), "image/png", model="anthropic/claude-sonnet-4-20250514")
    assert prepared.tokens == 1049


@pytest.mark.parametrize(
    ("data", "mime", "said"),
    [
        (b"", "image/png", "is not the PNG image it claims to be"),
        (b"%PDF-1.7 not a picture", "image/png", "is not the PNG image it claims to be"),
        (encoded(Image.new("RGB", (80, 60), "red"), "PNG"), "image/jpeg", "is not the JPEG image it claims to be"),  # no other decoder
        (encoded(Image.new("RGB", (80, 60), "red"), "GIF"), "image/svg+xml", "is image/svg+xml, which is not sent to models"),
        (encoded(Image.new("RGB", (800, 600), "red"), "PNG")[:300], "image/png", "cannot be decoded"),  # cut short
        (encoded(Image.effect_noise((400, 300), 50), "JPEG")[:600], "image/jpeg", "cannot be decoded"),
    ],
)
def test_bytes_that_are_not_a_whole_image_of_their_type_are_a_clear_error(data, mime, said):
    with pytest.raises(UnreadableImage) as raised:
        prepare(data, mime, label="figure from cell 5")
    message = str(raised.value)
    assert message.startswith("The figure from cell 5 ") and said in message and "\n" not in message
    assert "BytesIO" not in message  # Pillow's own words name its buffer object


def test_an_image_claiming_a_billion_pixels_is_refused_before_it_is_decoded():
    header = encoded(Image.new("L", (1, 1)), "PNG")
    # The same tiny file, its header rewritten to say 40,000×40,000 (CRC fixed): a decompression bomb's shape.
    import struct
    import zlib

    ihdr = struct.pack(">II", 40_000, 40_000) + header[24:29]
    bomb = header[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + header[33:]
    with pytest.raises(UnreadableImage, match="too many pixels"):
        prepare(bomb, "image/png")


def test_the_content_part_and_the_note():
    prepared = prepare(encoded(plot((640, 480)), "PNG"), "image/png")
    part = prepared.content_part()
    assert part["type"] == "image_url" and set(part) == {"type", "image_url"}
    head, _, payload = part["image_url"]["url"].partition(",")
    assert head == f"data:{prepared.mime};base64" and base64.b64decode(payload) == prepared.data
    assert cannot_see_note("figure from cell 5", 640, 480) == "[a 640×480 figure from cell 5: this model cannot see images]"
    assert cannot_see_note("figure from cell 5") == "[a figure from cell 5: this model cannot see images]"


def test_which_models_supports_vision(monkeypatch):
    assert supports_vision("openai/gpt-4o-mini") and supports_vision("anthropic/claude-sonnet-4-20250514")  # litellm's model map says so
    assert not supports_vision("openai/gpt-3.5-turbo")  # litellm knows it reads text only
    assert not supports_vision("openai/gpt-4o-mini", {"supports_vision": False})
    assert not supports_vision(TEST_MODEL)  # an endpoint litellm has no entry for
    assert supports_vision(TEST_MODEL, {"supports_vision": True, "api_base": "http://127.0.0.1:1/v1"})
    monkeypatch.setenv("OBLIX_VISION_MODELS", f"ollama/llava, {TEST_MODEL}")
    assert supports_vision(TEST_MODEL) and supports_vision("ollama/llava") and not supports_vision("ollama/llama3")
    assert not supports_vision(local_model.LOCAL_MODEL, {"supports_vision": True})  # the offline model reads text only


def test_the_image_part_reaches_the_server_whole_and_the_vision_setting_stays_with_oblix(server):
    prepared = prepare(encoded(plot(), "PNG"), "image/png")
    options = {"api_base": server.url, "api_key": TEST_KEY, "supports_vision": True}
    message = {"role": "user", "content": [{"type": "text", "text": "Is this residual plot OK?"}, prepared.content_part()]}
    ModelGateway(model_options={TEST_MODEL: options}).complete([TEST_MODEL], [message])
    [asked] = server.chat_requests()
    assert "supports_vision" not in asked
    [text, image] = asked["messages"][-1]["content"]
    assert text == {"type": "text", "text": "Is this residual plot OK?"}
    received = base64.b64decode(image["image_url"]["url"].partition(",")[2])
    assert received == prepared.data and max(Image.open(io.BytesIO(received)).size) == 1024


def test_without_pillow_preparing_says_how_to_install_it_and_importing_loads_nothing_heavy():
    code = (
        "import sys\nsys.modules['PIL'] = None  # as if Pillow were not installed\n"
        "from oblix_jupyter.models import images\n"
        "print(sorted(m for m in ('litellm', 'numpy', 'matplotlib') if m in sys.modules))\n"
        "try:\n    images.prepare(b'...', 'image/png')\nexcept images.ImagesUnavailable as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.splitlines() == ["[]", str(ImagesUnavailable())]
    assert "pip install 'oblix-jupyter[images]'" in str(ImagesUnavailable())
