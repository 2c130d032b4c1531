"""How stored and untrusted text is shown to people: inert HTML, inert Markdown, terminal text, times.

This module imports nothing of the package, so every layer may use it (the store
writes transcripts with it, the front ends display with it).

Untrusted Markdown (a model's answer, a stored session) becomes HTML that can run and fetch nothing.

JupyterLab trusts the outputs of the running session: Markdown or HTML it is handed
is rendered without sanitising, and a ``<script>`` in trusted HTML is even executed
on purpose. A model's answer is attacker-controlled text as soon as the conversation
has read something an attacker wrote, so it is rendered here, in the kernel, by
markdown-it-py with raw HTML switched off, and handed to the front end as HTML that
holds only what this module wrote:

- raw HTML in the text shows as the literal text the model wrote;
- a link is clickable only to http(s), mailto or a relative address;
- no image is fetched, from another host or from the Jupyter server itself (where
  ``![x](/logout)`` would log the user out, and on a hub could stop their server): an
  image is a link showing its alt text, so nothing is requested without a click. Only
  an image carried in the text itself, a ``data:`` PNG, JPEG, GIF or WebP (never SVG),
  is shown as one, as showing it requests nothing;
- maths reaches MathJax only inside the spans marked for it (``mathjax_process`` under
  a ``mathjax_ignore`` root), with the TeX commands that make links, load extensions
  or set styles disabled;
- code blocks are highlighted here, coloured with JupyterLab's theme variables.

Files we write for people (the ``.md`` transcript, an exported notebook's cells) must
stay Markdown, so ``inert_markdown`` escapes the same things in the text instead: the
programs that open those files sanitise what they render, and this keeps raw HTML
visible as text there too.

Rendering the HTML here, instead of escaping the Markdown and letting the front end's
own parser (marked) render it, leaves no room for two parsers to disagree about, say,
where a code block ends: what the browser gets is exactly what was checked.
"""

from __future__ import annotations

import functools
import html
import io
import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.token import Token

ROOT_CLASS = "oblix-markdown mathjax_ignore"  # MathJax looks only inside our maths spans
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*:", re.IGNORECASE)
_LINK_SCHEMES = ("http:", "https:", "mailto:")
_BROWSER_DROPS = re.compile(r"[\x00-\x20\x7f]")  # URL parsers strip these around and tab/newline inside
# MathJax's html and require packages: links (javascript: included), CSS, loading extensions.
_UNSAFE_TEX = re.compile(r"\\(href|class|cssId|style|data|require)(?![A-Za-z])")
_INLINE_RASTER = re.compile(r"data:image/(png|jpeg|gif|webp)[;,]", re.IGNORECASE)  # SVG can refer to other files


def _plain(url: str) -> str:
    return _BROWSER_DROPS.sub("", html.unescape(url))


def link_allowed(url: str) -> bool:
    """Whether a link to ``url`` may be clickable: a web or mail address, or a relative one."""
    scheme = _SCHEME.match(_plain(url))
    return scheme is None or scheme.group(0).lower() in _LINK_SCHEMES


def image_is_inline(url: str) -> bool:
    """Whether an image at ``url`` is carried in the address itself (a ``data:`` raster image), so showing it requests nothing."""
    return _INLINE_RASTER.match(_plain(url)) is not None


def _destination_allowed(url: str) -> bool:
    """What markdown-it may read as a link's or an image's address (``_unlink_data`` then unlinks a link to a ``data:`` image)."""
    return link_allowed(url) or image_is_inline(url)


# One rendering at a time. The first builds the parser and imports markdown-it's plugins and Pygments'
# lexers and formatter, none of which is safe to do on two threads at once (the load's background
# preparation and a first %oblix show got an ImportError, then an IndexError, from a half-made one).
_RENDERING = threading.Lock()


def markdown_html(text: str) -> str:
    """``text`` rendered as Markdown into inert HTML (a ``div`` of class ``oblix-markdown``)."""
    with _RENDERING:
        return f'<div class="{ROOT_CLASS}">{_parser().render(text)}</div>'


def inert_markdown(text: str) -> str:
    """``text`` as Markdown for a file: the same formatting, with raw HTML as visible text.

    Every ``<`` outside code is written ``&lt;`` (code blocks and code spans are left as
    written, so code still reads the same), every image becomes a link showing its alt
    text (an inline ``data:`` image, whose address may not be a link, becomes plain
    text), and a link to a script address loses its link syntax.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")  # as markdown-it reads it
    env: dict[str, Any] = {_SPANS: []}
    with _RENDERING:
        tokens = _parser().parse(text, env)
    starts = [0]
    for line in text.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    code: list[tuple[int, int]] = []
    images: set[int] = set()  # where the "!" of each image stands
    for token in tokens:
        if token.type in ("fence", "code_block") and token.map:
            code.append((starts[token.map[0]], starts[token.map[1]] - 1))
        elif token.type == "inline" and token.map:
            for kind, start, end in _spans_in(env[_SPANS], token, text, starts):
                if kind == "code":
                    code.append((start, end))
                else:
                    images.add(start)
    return _escape_outside(text, sorted(code), images)


_SPANS = "oblix_inline_spans"  # env key: where code spans and images stand in each inline source
_SCRIPT_LINK = re.compile(r"\]\(")


def _spans_in(spans: list[tuple[str, str, int, int]], token: Token, text: str, starts: list[int]) -> list[tuple[str, int, int]]:
    """The code spans and images of one inline token, as offsets in the whole text.

    An inline source is its lines with the block's indentation and markers cut off, so
    each of its lines is the tail of a line of the text (a table cell: a part of one).
    A span that cannot be placed exactly is left out, which only escapes more.
    """
    content, first = token.content, token.map[0]  # type: ignore[index]  # callers check map
    line_offsets = [0] + [i + 1 for i, c in enumerate(content) if c == "\n"]
    placed = []
    for kind, source, start, end in spans:
        if source is not content:
            continue
        number = content.count("\n", 0, start)
        part = content[line_offsets[number] :].split("\n", 1)[0]
        line = text[starts[first + number] : starts[first + number + 1] - 1]
        at = len(line) - len(part) if line.endswith(part) else line.find(part)
        begin = starts[first + number] + at + start - line_offsets[number]
        if at >= 0 and text[begin : begin + end - start] == content[start:end]:
            placed.append((kind, begin, begin + end - start))
    return placed


def _escape_outside(text: str, code: list[tuple[int, int]], images: set[int]) -> str:
    out: list[str] = []
    position = 0
    for start, end in [*code, (len(text), len(text))]:
        if start < position:
            continue
        out.append(_escape_text(text[position:start], position, images))
        out.append(text[start:end])
        position = end
    return "".join(out)


def _escape_text(part: str, offset: int, images: set[int]) -> str:
    """Escape one stretch of text outside code; ``images`` are offsets in the whole text.

    An image markdown-it read becomes a link, and any other ``![`` (one these edits could
    turn into an image) keeps its "!" as an entity, which no Markdown reads as syntax.
    """
    pieces = re.split(r"(!\[)", part)
    position = offset
    for number, piece in enumerate(pieces):
        if piece == "![":
            image = position in images
            # Of an image, a link (a "!" written before it must not make it one again).
            if image and pieces[number - 1].endswith("!"):
                pieces[number - 1] = pieces[number - 1][:-1] + "&#33;"
            empty = image and pieces[number + 1].startswith("]")
            pieces[number] = "[image" if empty else "[" if image else "&#33;["
        position += len(piece)
    part = "".join(pieces)

    def link(match: re.Match[str]) -> str:
        destination = part[match.end() : match.end() + 200].split(")", 1)[0].strip().removeprefix("<")
        return match.group(0) if link_allowed(destination) else "]&#40;"

    return _SCRIPT_LINK.sub(link, part).replace("<", "&lt;")


def terminal_text(text: str) -> str:
    """``text`` without the characters a terminal would obey (colours, titles, the clipboard, moving the cursor).

    Every C0 and C1 control character and DEL goes (ESC and the one-character CSI
    ``\\x9b`` that start a sequence, BEL and ST that end one, carriage return that would
    let a line overwrite what came before), except newline and tab. The printable rest
    of a sequence stays as text: nothing a model or a colleague wrote is hidden, and a
    sequence split across two pieces of a streamed answer is defused all the same.
    """
    return _TERMINAL_CONTROLS.sub("", text)


_TERMINAL_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class TerminalWriter(io.TextIOBase):
    """A text stream that passes everything written to it through ``terminal_text``: the one way to a terminal.

    The ``oblix`` command puts one over its stdout and stderr, and the terminal chat
    over its output, so that no path (a table, an error, a streamed answer, a warning)
    can print stored or model text raw. Writes go straight through, so streaming stays
    streaming.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(terminal_text(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding


ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}


def message_header(message: Mapping[str, Any], escape: Callable[[str], str] = inert_markdown) -> str:
    """The line that says who spoke (and which model, and whether it was cut short), as Markdown."""
    parts = [f"**{ROLE_NAMES.get(str(message.get('role')), 'Message')}**"]
    parts += [escape(str(message[field])) for field in ("model", "status") if message.get(field)]
    return " · ".join(parts)


def local_time(timestamp: str, brief: bool = False) -> str:
    """A stored timestamp in the reader's local time, to the minute; ``brief``: only the time of day if it is today."""
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    moment = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone()
    return moment.strftime("%H:%M" if brief and moment.date() == datetime.now().date() else "%Y-%m-%d %H:%M")


def transcript(
    session: Mapping[str, Any],
    escape: Callable[[str], str] = inert_markdown,
    sent: bool = True,
    after: Callable[[Mapping[str, Any]], str] | None = None,
) -> str:
    """The conversation as Markdown: the ``.md`` export and what ``oblix show`` prints.

    Everything that came from the session goes through ``escape``: by default
    ``inert_markdown``, so the programs that open the file show raw HTML in it as text
    (``oblix show`` passes ``terminal_text`` instead). ``sent``: under each answer that
    kept a record of its turn, a line saying what its model was sent. ``after``: the
    caller's own Markdown for a message (the export's image links), put after its text
    as it is, so it must make whatever it takes from the session inert itself.
    """
    title = " ".join(str(session.get("title") or "Untitled session").split())
    lines = [
        f"# {escape(title)}",
        "",
        f"Session `{session['id']}` · model {escape(str(session.get('model') or 'not yet chosen'))} · "
        f"created {local_time(session['created_at'])} · updated {local_time(session['updated_at'])}",
    ]
    if session.get("context"):
        lines += ["", "Context:", "", "```json", terminal_text(json.dumps(session["context"], ensure_ascii=False, indent=1)), "```"]
    for message in session["messages"]:
        lines += ["", message_header(message, escape), "", escape(message["content"])]
        if after is not None and (extra := after(message)):
            lines += ["", extra]
        if sent and "sent" in message:
            lines += ["", f"*{escape(sent_line(message['sent']))}*"]
    return "\n".join(lines) + "\n"


_SENT_REASONS = ("pinned", "recent", "relevant", "neighbour")  # in the order a reader asks about them


def sent_line(record: Any) -> str:
    """A turn's record (``context.record.record_of``, kept on its answer) as one line of plain words: what its model was sent.

    The record comes from a session file, so it is read defensively: a damaged one, or
    one a newer version wrote, gives what can be read of it. The line is plain text; a
    caller escapes it for where it shows it.
    """
    if not isinstance(record, Mapping) or not isinstance(record.get("messages", {}), Mapping):
        return "sent: (a record this version cannot read)"
    sent = record.get("messages") or {}
    reasons = [*_SENT_REASONS, *sorted(map(str, set(sent) - set(_SENT_REASONS)))]
    earlier = [f"{_names(sent[reason])} ({reason})" for reason in reasons if _names(sent.get(reason))]
    parts = ["sent " + ", ".join(earlier) if earlier else "no earlier message sent"]
    if _names(record.get("cut")):
        parts.append(f"cut: {_names(record['cut'])}")
    if _number(record.get("left_out")):
        parts.append(f"{_number(record['left_out']):,} earlier left out")
    variables = [f"{name} ({_number(tokens):,} tokens)" for name, tokens in _pairs(record.get("variables"))]
    if variables:
        parts.append("variables " + ", ".join(variables))
    if _number(record.get("error")):
        parts.append(f"the last error ({_number(record['error']):,} tokens)")
    cells = record.get("cells")
    if isinstance(cells, list) and len(cells) == 2 and _number(cells[0]):
        parts.append(f"{_number(cells[0])} cell{'s' if _number(cells[0]) != 1 else ''} ({_number(cells[1]):,} tokens)")
    attached = [f"{label} ({how})" for label, how in _pairs(record.get("images"))]
    if attached:
        parts.append("images " + ", ".join(attached))
    if _names(record.get("tools")):
        parts.append("tools offered: " + _names(record["tools"]))
    if _number(record.get("budget")):
        parts.append(f"{_number(record.get('used')):,} of {_number(record['budget']):,} tokens")
    if _number(record.get("input")):
        parts.append(f"{_number(record['input']):,} tokens in")
    return " · ".join(parts)


def _names(value: Any) -> str:
    """A record's list of ids or names, joined; empty for anything else."""
    return ", ".join(map(str, value)) if isinstance(value, list) else ""


def _pairs(value: Any) -> list[tuple[Any, Any]]:
    """A record's list of [name, value] pairs: the well-formed ones."""
    return [(pair[0], pair[1]) for pair in value if isinstance(pair, list) and len(pair) == 2] if isinstance(value, list) else []


def _number(value: Any) -> int:
    """A record's count; 0 for anything that is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def prepare() -> None:
    """Import and build the parser and the Python highlighter now, e.g. in the background at load, so a first answer need not."""
    markdown_html("```python\npass\n```")


@functools.cache
def _parser() -> MarkdownIt:
    """markdown-it-py as CommonMark with GFM's tables, strikethrough and bare links, plus dollar maths."""
    from markdown_it import MarkdownIt
    from mdit_py_plugins.amsmath import amsmath_plugin
    from mdit_py_plugins.dollarmath import dollarmath_plugin

    parser = MarkdownIt("commonmark", {"html": False, "linkify": True, "highlight": _highlight})
    parser.enable(["table", "strikethrough", "linkify"])
    parser.validateLink = _destination_allowed  # type: ignore[method-assign]
    # "$5 and $10" stays text: maths needs no space inside its dollars and no digit after.
    dollarmath_plugin(parser, allow_space=False, allow_digits=False, renderer=_dollar_maths)
    amsmath_plugin(parser, renderer=lambda tex: _maths(tex, "", block=True))
    parser.add_render_rule("image", _image)
    parser.core.ruler.push("oblix_unlink_data", _unlink_data)
    for rule in parser.inline.ruler.__rules__:
        if rule.name in ("backticks", "image"):
            rule.fn = _recording(rule.name, rule.fn)
    return parser


def _recording(name: str, parse: Any) -> Any:
    """An inline rule that also notes, for ``inert_markdown``, where its code span or image stood."""

    def rule(state: Any, silent: bool) -> bool:
        start = state.pos
        if not parse(state, silent):
            return False
        spans = state.env.get(_SPANS) if isinstance(state.env, dict) else None
        if spans is not None and not silent:
            spans.append(("code" if name == "backticks" else "image", state.src, start, state.pos))
        return True

    return rule


def _unlink_data(state: Any) -> None:
    """A link (not an image) to a ``data:`` address, let through by ``_destination_allowed``, shows as its text."""
    for block in state.tokens:
        hiding = False
        for token in block.children or ():
            if token.type == "link_open":
                hiding = token.hidden = not link_allowed(str(token.attrGet("href") or ""))
            elif token.type == "link_close":
                token.hidden, hiding = hiding, False


def _image(renderer: Any, tokens: Sequence[Token], index: int, options: Any, env: Any) -> str:
    """An image as a link showing its alt text (its address in the tooltip), or, for an inline raster, as itself."""
    token = tokens[index]
    source = str(token.attrGet("src") or "")
    if image_is_inline(source):
        return renderer.image(tokens, index, options, env)
    alt = html.escape(renderer.renderInlineAsText(token.children or [], options, env) or "image")
    if link_allowed(source):
        return f'<a href="{html.escape(source)}" title="image not loaded: {html.escape(source)}">{alt}</a>'
    return alt


def _dollar_maths(tex: str, options: dict[str, Any]) -> str:
    display = bool(options.get("display_mode"))
    return _maths(tex, "$$" if display else "$", block=display)


def _maths(tex: str, delimiter: str, block: bool) -> str:
    tag = "div" if block else "span"
    safe = _UNSAFE_TEX.sub(r"\1", tex)  # without its backslash a command is plain letters
    return f'<{tag} class="mathjax_process">{delimiter}{html.escape(safe)}{delimiter}</{tag}>'


def _highlight(code: str, language: str, _attributes: str) -> str:
    """Pygments' HTML for a fenced code block, or "" (markdown-it then escapes it plainly)."""
    if not language:
        return ""
    from pygments import highlight
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(language)
    except ClassNotFound:
        return ""
    return highlight(code, lexer, _formatter())


@functools.cache
def _formatter() -> Any:
    """Inline styles made of JupyterLab's editor colours, so a theme change recolours the code."""
    from pygments.formatters.html import HtmlFormatter
    from pygments.style import Style
    from pygments.token import Comment, Error, Keyword, Name, Number, Operator, String

    def colour(name: str, extra: str = "") -> str:
        return f"{extra} var(--jp-mirror-editor-{name}-color)".strip()

    class JupyterLabColours(Style):
        background_color = ""
        styles = {
            Comment: colour("comment", "italic"),
            Keyword: colour("keyword", "bold"),
            Operator: colour("operator"),
            Operator.Word: colour("keyword", "bold"),
            Name.Builtin: colour("builtin"),
            Name.Function: colour("def"),
            Name.Class: colour("def"),
            Name.Decorator: colour("meta"),
            Name.Tag: colour("tag"),
            Name.Attribute: colour("attribute"),
            String: colour("string"),
            Number: colour("number"),
            Error: colour("error"),
        }

    return HtmlFormatter(style=JupyterLabColours, noclasses=True, nowrap=True)
