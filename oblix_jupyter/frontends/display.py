"""What the magics and the chat panel show: rich outputs with a readable plain-text twin.

Every object here has ``_repr_mimebundle_`` giving ``text/plain`` next to HTML, so the
same magic reads well in JupyterLab and in terminal IPython. Text that came from a
model or a session file reaches the HTML only through ``render`` (inert) or
``html.escape``; never as Markdown, which JupyterLab would render with raw HTML live.
Its plain twin, which terminal IPython prints as it is, goes through ``terminal_text``,
so no escape sequence in it can write the clipboard, set a title or recolour the terminal.
"""

from __future__ import annotations

import base64
import contextvars
import html
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..errors import OblixError
from ..render import ROLE_NAMES, local_time, markdown_html, sent_line, terminal_text

if TYPE_CHECKING:
    from ..client import TurnResult


class Explained(Protocol):
    """A turn's plan (``TurnResult.plan``), as far as showing it goes."""

    def explain(self, texts: bool = False) -> str: ...
    def explain_html(self) -> str: ...


UPDATE_INTERVAL = 0.1  # seconds between display updates while an answer streams (10 a second read as smooth)
WAITING_TICK = 1.0  # seconds between updates of the waiting line, which counts whole seconds
_CODE_BLOCK = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks of an answer, for "insert into a new cell" actions."""
    return [match.group(1).rstrip("\n") for match in _CODE_BLOCK.finditer(text)]


# How our outputs look, in JupyterLab's theme variables and scoped to our own classes. It
# travels with the output (a <style> of ours, never text from a model), so it applies
# wherever the HTML is shown, with or without the lab extension. JupyterLab spaces only
# the top-level code blocks of an output, and ours sit inside the Markdown's root: without
# this the next paragraph ran into the block. The tool icon is drawn (a magnifier), as an
# emoji showed as an empty box where the font lacks it.
OUTPUT_CSS = """
.oblix-tool { margin: 2px 0; color: var(--jp-ui-font-color2, #616161); }
.oblix-tool > summary { cursor: pointer; }
.oblix-tool > summary > .oblix-markdown, .oblix-tool > summary > .oblix-markdown > p { display: inline; margin: 0; }
.oblix-tool-icon { display: inline-block; box-sizing: border-box; position: relative; width: 0.75em; height: 0.75em;
  margin: 0 0.55em 0 0.2em; border: 0.13em solid currentColor; border-radius: 50%; vertical-align: -0.05em; }
.oblix-tool-icon::after { content: ""; position: absolute; left: 80%; top: 80%; width: 0.38em; height: 0.13em;
  background: currentColor; transform: rotate(45deg); transform-origin: 0 50%; }
.jp-RenderedHTMLCommon .oblix-tool > pre, .oblix-tool > pre { max-height: 20em; overflow: auto; white-space: pre-wrap; margin: 2px 0 6px 1.2em; }
.jp-RenderedHTMLCommon .oblix-markdown pre, .oblix-markdown pre { background: var(--jp-layout-color2, #eee);
  border: var(--jp-border-width, 1px) solid var(--jp-border-color2, #e0e0e0); border-radius: 3px;
  padding: 6px 10px; margin: 0.75em 0 1em; overflow-x: auto; line-height: var(--jp-code-line-height, 1.3); }
.jp-RenderedHTMLCommon .oblix-markdown pre > code, .oblix-markdown pre > code { background: none; padding: 0; }
.oblix-thumbs { display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0; }
.oblix-thumb { margin: 0; max-width: 100%; font-size: var(--jp-ui-font-size0, 11px); color: var(--jp-ui-font-color2, #616161); }
.oblix-thumb > img { display: block; box-sizing: border-box; max-width: min(240px, 100%); max-height: 160px; height: auto;
  border: var(--jp-border-width, 1px) solid var(--jp-border-color2, #e0e0e0); border-radius: 3px; }
.oblix-approval-kept { border-left: 4px solid var(--jp-warn-color1, #f57c00); padding-left: 8px; margin: 6px 0; }
.oblix-sent { margin: 2px 0 4px; font-size: var(--jp-ui-font-size0, 11px); color: var(--jp-ui-font-color2, #616161); overflow-wrap: anywhere; }
.oblix-sent > summary { cursor: pointer; }
.oblix-plan { margin: 4px 0; font-size: var(--jp-ui-font-size1, 13px); }
.oblix-plan-head, .oblix-plan-row > summary { display: flex; flex-wrap: wrap; column-gap: 8px; padding: 2px 4px; }
.oblix-plan-head { font-weight: bold; border-bottom: var(--jp-border-width, 1px) solid var(--jp-border-color1, #bdbdbd); }
.oblix-plan-head::before, .oblix-plan-row > summary::before { content: "▸"; flex: 0 0 1em; color: var(--jp-ui-font-color2, #616161); }
.oblix-plan-head::before { content: ""; }
.oblix-plan-row[open] > summary::before { content: "▾"; }
.oblix-plan-row > summary { cursor: pointer; list-style: none; }
.oblix-plan-row > summary::-webkit-details-marker { display: none; }
.oblix-plan-row > summary:hover { background: var(--jp-layout-color2, #eee); }
.oblix-plan-number { flex: 0 0 1.6em; text-align: right; }
.oblix-plan-role { flex: 0 0 5em; }
.oblix-plan-why { flex: 0 0 8em; }
.oblix-plan-what { flex: 1 1 5em; min-width: 0; overflow-wrap: anywhere; }
.oblix-plan-tokens { flex: 0 0 3.5em; text-align: right; }
.oblix-plan-note { flex: 1 0 100%; padding-left: 3em; color: var(--jp-ui-font-color2, #616161); }
.jp-RenderedHTMLCommon .oblix-plan-row > pre, .oblix-plan-row > pre { max-height: 24em; overflow: auto; margin: 2px 0 6px 3em;
  padding: 4px 6px; white-space: pre-wrap; overflow-wrap: anywhere; background: var(--jp-layout-color2, #eee);
  border: var(--jp-border-width, 1px) solid var(--jp-border-color2, #e0e0e0); border-radius: 3px; }
"""
OUTPUT_STYLE = f"<style>{OUTPUT_CSS}</style>"


def display_outputs(bundle: Mapping[str, str]) -> tuple[dict[str, Any], ...]:
    """An ``Output`` widget's outputs showing ``bundle``; set directly, this works from any thread.

    JupyterLab trusts outputs made while the notebook runs and does not sanitise them:
    ``bundle``'s HTML must be inert already (``markdown_html``, ``html.escape``).
    """
    return ({"output_type": "display_data", "data": dict(bundle), "metadata": {}},)


def html_outputs(rich: str, plain: str) -> tuple[dict[str, Any], ...]:
    """``display_outputs`` of our HTML and its plain twin."""
    return display_outputs({"text/html": rich, "text/plain": plain})


def tools_html(calls: Sequence[Mapping[str, Any]] | None) -> str:
    """What the model looked at for an answer: one collapsed line per tool call, opening on the exact result it was sent.

    Summaries and results hold text the model asked for and the user's data: the summary
    goes through the inert Markdown renderer (our summaries quote names in backticks), the
    result is escaped as it is.
    """
    lines = []
    for call in calls or ():
        failed = "" if call.get("ok", True) else " <em>(failed)</em>"
        summary = markdown_html(str(call.get("summary") or call.get("name") or "tool"))
        result = html.escape(str(call.get("result") or ""))
        lines.append(
            f"<details class='oblix-tool'><summary><span class='oblix-tool-icon' aria-hidden='true'></span>{summary}{failed}</summary>"
            f"<pre>{result}</pre></details>"
        )
    return "".join(lines)


def tools_plain(calls: Sequence[Mapping[str, Any]] | None) -> str:
    """The tool calls of an answer as plain lines, for terminals and ``text/plain``."""
    return "".join(f"[{call.get('summary') or call.get('name')}{'' if call.get('ok', True) else ' (failed)'}]\n" for call in calls or ())


class AnswerView:
    """An answer (possibly still arriving) with the tools it used and its footer."""

    def __init__(self, text: str, footer: str = "", as_text: bool = False, tools: Sequence[Mapping[str, Any]] = ()) -> None:
        self.text = text
        self.footer = footer
        self.as_text = as_text
        self.tools = tools

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        plain = terminal_text(tools_plain(self.tools) + self.text + (f"\n\n[{self.footer}]" if self.footer else ""))
        if self.as_text:
            return {"text/plain": plain}
        footer = f"<p><sub>{html.escape(self.footer)}</sub></p>" if self.footer else ""
        return {"text/html": OUTPUT_STYLE + tools_html(self.tools) + markdown_html(self.text) + footer, "text/plain": plain}


class Message:
    """A short notice or error: red for errors, never a traceback; its lines (a usage line, JSON) kept as written."""

    def __init__(self, text: str, error: bool = True, detail: str = "") -> None:
        self.text = text
        self.error = error
        self.detail = detail

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        colour = "var(--jp-error-color1, #c62828)" if self.error else "var(--jp-ui-font-color1, #333)"  # readable in any theme
        prefix = "Oblix error: " if self.error else ""
        detail = f"<pre style='margin:4px 0 0 0'>{html.escape(self.detail)}</pre>" if self.detail else ""
        return {
            "text/html": f"<div style='color:{colour};white-space:pre-wrap'><b>{prefix}</b>{html.escape(self.text)}{detail}</div>",
            "text/plain": terminal_text(f"{prefix}{self.text}" + (f"\n{self.detail}" if self.detail else "")),
        }


class Table:
    """A small table: HTML in Jupyter, aligned columns in a terminal."""

    def __init__(self, headers: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "") -> None:
        self.headers = [terminal_text(header) for header in headers]
        self.rows = [[terminal_text(str(cell)) for cell in row] for row in rows]
        self.caption = terminal_text(caption)

    def plain(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h) for i, h in enumerate(self.headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(self.headers, widths)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in self.rows]
        return "\n".join(([self.caption] if self.caption else []) + lines)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows
        )
        caption = f"<caption style='text-align:left'>{html.escape(self.caption)}</caption>" if self.caption else ""
        return {"text/html": f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>", "text/plain": self.plain()}


ImageReader = Callable[[str], bytes]  # an attachment's id -> its bytes (``OblixClient.read_attachment`` for one session)


def thumbnails_html(entries: Any, read: ImageReader | None) -> str:
    """A message's attached images as small inline pictures, their labels under them.

    The entries come from a session file: only PNG and JPEG become pictures, as ``data:``
    addresses (nothing is fetched, and an image element runs no script); the label is
    escaped; an image whose bytes cannot be read is named, not shown.
    """
    if not isinstance(entries, list) or read is None:
        return ""
    shown = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        label = html.escape(str(entry.get("label") or "image"))
        mime = entry.get("mime")
        data = None
        if mime in ("image/png", "image/jpeg"):  # no other type becomes a picture: its bytes are not even read
            try:
                data = read(str(entry.get("id")))
            except OblixError:
                pass
        picture = (
            f"<img src='data:{mime};base64,{base64.b64encode(data).decode('ascii')}' alt='{label}'>"
            if data is not None
            else "<span class='oblix-thumb-missing'>(not available)</span>"
        )
        shown.append(f"<figure class='oblix-thumb'>{picture}<figcaption>{label}</figcaption></figure>")
    return f"<div class='oblix-thumbs'>{''.join(shown)}</div>" if shown else ""


def message_html(
    message: Mapping[str, Any], details: Sequence[str] = (), note: str = "", sent: Literal["", "shut", "open"] = "", read: ImageReader | None = None
) -> str:
    """One message as ``%oblix show`` and the chat panel present it: who spoke (model, status), then the text.

    ``details`` (an id, a time) are added to the header line as plain text; ``note`` is
    a sentence of ours shown under the text, in italics. ``sent``: an answer that kept a
    record of its turn ends with a line saying what its model was sent, shut (one click
    opens it) or open; the record came from a session file, so its words are escaped.
    ``read`` gives the bytes of the images the message carries, shown as thumbnails.
    """
    who = [f"<b>{ROLE_NAMES.get(str(message.get('role')), 'Message')}</b>"]
    who += [html.escape(str(message[field])) for field in ("model", "status") if message.get(field)]
    who += [f"<small>{html.escape(detail)}</small>" for detail in details if detail]
    after = f"<p><em>{html.escape(note)}</em></p>" if note else ""
    if sent and "sent" in message:
        state = " open" if sent == "open" else ""
        after += f"<details class='oblix-sent'{state}><summary>what it was sent</summary>{html.escape(sent_line(message['sent']))}</details>"
    text = markdown_html(str(message.get("content", "")))
    thumbnails = thumbnails_html(message.get("attachments"), read)
    return f"<div class='oblix-who'>{' · '.join(who)}</div>{tools_html(message.get('tools'))}{text}{thumbnails}{after}"


class Attached:
    """The images a cell's question carried, as kept with it: thumbnails under the answer."""

    def __init__(self, entries: Sequence[Mapping[str, Any]], read: ImageReader) -> None:
        self.entries = list(entries)
        self.read = read

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        labels = ", ".join(str(entry.get("label") or "image") for entry in self.entries)
        return {"text/html": OUTPUT_STYLE + thumbnails_html(self.entries, self.read), "text/plain": terminal_text(f"attached: {labels}")}


class Conversation:
    """A session's messages, roles clear and the model on each answer; ``explain``: and what each answer's model was sent."""

    def __init__(self, session: dict[str, Any], last: int | None = None, explain: bool = False, read: ImageReader | None = None) -> None:
        self.session = session
        self.messages = session["messages"][-last:] if last else session["messages"]
        self.explain = explain
        self.read = read  # the session's attachments, shown as thumbnails

    def _sent(self, message: Mapping[str, Any]) -> str:
        return sent_line(message["sent"]) if self.explain and "sent" in message else ""

    def _html(self, message: Mapping[str, Any]) -> str:
        return message_html(message, self._details(message), sent="open" if self.explain else "", read=self.read)

    @staticmethod
    def _details(message: Mapping[str, Any]) -> list[str]:
        return [str(message.get("id") or ""), local_time(message["timestamp"], brief=True) if message.get("timestamp") else ""]

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        title = f"{self.session['title']} ({self.session['id'][:8]}, {len(self.session['messages'])} messages)"
        rich = [f"{OUTPUT_STYLE}<h3>{html.escape(title)}</h3>"] + [self._html(m) for m in self.messages]
        plain = [title]
        for message in self.messages:
            notes = [n for n in (message.get("model"), message.get("status"), *self._details(message)) if n]
            who = ROLE_NAMES.get(str(message.get("role")), "Message")
            sent = self._sent(message)
            text = tools_plain(message.get("tools")) + message["content"] + (f"\n({sent})" if sent else "")
            plain.append(f"--- {who} · {' · '.join(notes)}\n{text}" if notes else f"--- {who}\n{text}")
        return {"text/html": "\n".join(rich), "text/plain": terminal_text("\n\n".join(plain))}


class PlanView:
    """The context selector's plan: what was sent, and why; each row opens on the exact text it sent.

    A terminal cannot open a row, so the plain twin prints every text after the table.
    """

    def __init__(self, plan: Explained) -> None:
        self.plan = plan

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {
            "text/html": f"{OUTPUT_STYLE}<h4>Context sent</h4>{self.plan.explain_html()}",
            "text/plain": terminal_text("Context sent\n\n" + self.plan.explain(texts=True)),
        }


def footer(result: TurnResult) -> str:
    """One line under an answer: model, session, tokens and, when litellm knows the price, the cost."""
    parts = [result.model]
    if result.session_id:
        parts.append(f"session {result.session_title or ''} ({result.session_id[:8]})".replace("  ", " "))
    if result.usage.get("prompt_tokens") is not None:
        parts.append(f"{result.usage['prompt_tokens']} tokens in, {result.usage.get('completion_tokens') or 0} out")
    if result.cost:
        parts.append(f"${result.cost:.4f}")
    if result.failed_models:
        parts.append("fallback after " + ", ".join(model for model, _ in result.failed_models) + " failed")
    line = " · ".join(parts)
    return f"{line} · {result.notice}" if result.notice else line


class Waiting:
    """What a cell shows until its answer's first text: the model asked, and the seconds since."""

    def __init__(self, model: str, seconds: float = 0.0) -> None:
        self.model = model
        self.seconds = seconds

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        line = f"Waiting for {self.model}…" + (f" {self.seconds:.0f} s" if self.seconds >= 1 else "")
        style = "color:var(--jp-ui-font-color2, #616161)"
        return {"text/html": f"<div class='oblix-waiting' style='{style}'>{html.escape(line)}</div>", "text/plain": terminal_text(line)}


class StreamingOutput:
    """Shows an answer as it arrives: an updated display in Jupyter, plain writes in a terminal."""

    def __init__(self, rich: bool, as_text: bool = False) -> None:
        self.rich = rich
        self.as_text = as_text
        self.text = ""
        self.tools: list[Mapping[str, Any]] = []
        self._handle: Any = None
        self._last_update = 0.0
        self._lock = threading.Lock()  # the waiting line's clock and the answer update the same display
        self._waiting: threading.Event | None = None  # set once something else has replaced the waiting line
        self._waiting_for = "the model"
        self._waiting_since = 0.0
        self._continued: Any = None  # the Output widget that shows the rest, once the cell has ended (``continue_in``)
        self._from = (0, 0)  # where the rest starts: the text's length and the tools' count then

    def waiting(self, model: str | None = None) -> None:
        """Show that a model is being asked, counting the seconds until the answer's first text or tool line.

        Called at once without a model, before the turn's slower preparations (the session
        is read, maybe created, the variables summarised), and again with the model the
        turn asks, which the line then names. In a terminal: one line, once the model is known.
        """
        if not self.rich:
            if model is not None:
                sys.stdout.write(terminal_text(f"[Waiting for {model}…]\n"))
                sys.stdout.flush()
            return
        self._waiting_for = model or "the model"
        if self._waiting is not None:  # already counting: name the model now
            with self._lock:
                if not self._waiting.is_set():
                    self._handle.update(Waiting(self._waiting_for, time.monotonic() - self._waiting_since))
            return
        self._waiting_since = time.monotonic()
        self._show(Waiting(self._waiting_for))
        done = self._waiting = threading.Event()

        def count() -> None:
            while not done.wait(WAITING_TICK):
                with self._lock:
                    if not done.is_set():
                        self._handle.update(Waiting(self._waiting_for, time.monotonic() - self._waiting_since))

        # Run in the cell's context, so that the kernel sends the updates as this cell's output.
        threading.Thread(target=contextvars.copy_context().run, args=(count,), name="oblix-waiting", daemon=True).start()

    def continue_in(self, output: Any) -> None:
        """Show the rest of the answer in ``output`` (an ``Output`` widget), from here on: its cell has ended.

        A display cannot be updated once its cell is over (JupyterLab drops the update),
        while a widget's outputs can be set from any thread at any time.
        """
        if self._handle is not None:
            self._show(self._view(self.text))  # the cell's display keeps all that arrived before, without the cursor
        with self._lock:
            if self._waiting is not None:
                self._waiting.set()
            self._continued = output
            self._from = (len(self.text), len(self.tools))

    def close(self) -> None:
        """Stop the waiting line's clock; take the line away if nothing replaced it (the turn failed first)."""
        with self._lock:
            if self._waiting is not None and not self._waiting.is_set():
                self._waiting.set()
                self._handle.update({"text/plain": ""}, raw=True)

    def __call__(self, piece: str) -> None:
        self.text += piece
        if not self.rich:
            sys.stdout.write(terminal_text(piece))
            sys.stdout.flush()
            return
        now = time.monotonic()
        if self._handle is None or now - self._last_update >= UPDATE_INTERVAL:
            self._show(self._view(self.text + " ▌"))
            self._last_update = now

    def tool(self, call: Mapping[str, Any]) -> None:
        """Show a tool call the model made, as soon as it has run."""
        self.tools.append(call)
        if not self.rich:
            sys.stdout.write(terminal_text(tools_plain([call])))
            sys.stdout.flush()
            return
        self._show(self._view(self.text + " ▌"))

    def _view(self, text: str, footer_line: str = "") -> AnswerView:
        """The answer as shown: after ``continue_in``, only what came since."""
        text_from, tools_from = self._from
        return AnswerView(text[text_from:], footer_line, as_text=self.as_text, tools=self.tools[tools_from:])

    def _show(self, view: Any) -> None:
        from IPython.display import display

        if self._continued is not None:
            self._continued.outputs = display_outputs(view._repr_mimebundle_())
            return
        with self._lock:
            if self._waiting is not None:
                self._waiting.set()
            if self._handle is None:
                self._handle = display(view, display_id=True)
            else:
                self._handle.update(view)

    def finish(self, text: str, footer_line: str) -> None:
        """Replace the streamed text by the final answer and its footer."""
        if not self.rich:
            print(terminal_text(f"\n\n[{footer_line}]") if footer_line else "")
            return
        self._show(self._view(text, footer_line))
