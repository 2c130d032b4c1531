"""``ChatPanel``: the chat front end in ipywidgets, over ``OblixClient``.

It shows one session's conversation (rendered inertly, see ``render``), sends what is typed through
``OblixClient.turn`` on a background thread (the kernel stays free, Stop works, the answer
streams in), and manages sessions and models through the client. The
notebook's ``%%oblix`` cells use the same session: the magics call ``refresh`` after
each cell, and while a front end shows the panel a ``SessionFollower`` watches the
session, so turns from anywhere else appear too. A turn the panel sent is a
``PendingTurn`` until the store holds its exchange.
"""

from __future__ import annotations

import functools
import html
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..errors import AnswerInterrupted, ModelError, OblixError
from ..kernel.binding import NotebookBinding
from ..kernel.images import DisplayedImages, NotebookImage, memory_of
from ..kernel.variables import is_hidden_name, summarize_variables
from ..render import local_time, prepare
from .display import OUTPUT_CSS, UPDATE_INTERVAL, WAITING_TICK, ImageReader, PlanView, Waiting, code_blocks, html_outputs, message_html
from .image_picker import PICKER_CSS, ImagePicker
from .session_follower import SessionFollower

if TYPE_CHECKING:
    from ..kernel.code_tool import PendingRun
    from ..kernel.runs import RunOutcome
    from ..client import OblixClient

RECENT_SESSIONS = 20
APPROVAL_WAIT = "Waiting for your answer to the code below."
KEPT_RUN_ANSWERS = 20  # ended answers whose approval boxes (and the runs' outputs) the panel keeps showing
NO_SESSION = ""  # the picker's value while the notebook has no session yet
INCOMPLETE = {
    "interrupted": "Interrupted: the part of the answer that arrived was kept.",
    "error": "The model failed while answering: the part that arrived was kept.",
}

# Outside JupyterLab's sidebar (a cell output, VS Code) the panel keeps a bounded height;
# in the sidebar (.jp-OblixChat, from the lab extension) it fills the height it is given.
# ipywidgets' boxes are flex columns whose children shrink (and scroll) by default, which
# crushed every message into its own little scroll box: here every control and message
# keeps its natural height and only the list flexes and scrolls.
# The list is a column-reverse box: it opens at the newest message, stays pinned to the
# bottom while an answer grows there, and, once the user has scrolled up, the browser's
# scroll anchoring keeps what they read in place. None of this needs JavaScript. The
# "jump to latest" button shows only once the list is scrolled away from its newest
# message (a scroll-driven animation: hidden while the list does not scroll, which leaves
# its timeline inactive; a browser without them runs the animation to its end and always
# shows the button).
STYLE = "<style>" + OUTPUT_CSS + PICKER_CSS + """
.oblix-chat { gap: 4px; min-width: 0; overflow: visible; timeline-scope: --oblix-list; }
.oblix-chat > *, .oblix-chat .oblix-messages > * { flex: 0 0 auto; }
.oblix-chat .oblix-row { flex-flow: row wrap; gap: 4px; align-items: center; overflow: visible; }
.oblix-chat .oblix-row > .widget-inline-hbox, .oblix-chat .oblix-row > .jupyter-widgets { margin: 0; }
.oblix-chat > .oblix-scroll { flex: 1 1 auto; flex-direction: column-reverse; overflow-y: auto; overflow-x: hidden;
  min-height: 120px; max-height: 60vh; scroll-timeline: --oblix-list block; }
.jp-OblixChat .oblix-chat > .oblix-scroll { max-height: none; }
.oblix-chat .oblix-messages { overflow: visible; }
.oblix-chat .oblix-jump-row { height: 0; overflow: visible; position: relative; z-index: 1; }
.oblix-chat .oblix-jump { position: absolute; right: 16px; bottom: 8px; margin: 0; box-shadow: var(--jp-elevation-z4);
  visibility: hidden; animation: oblix-away linear both; animation-timeline: --oblix-list; animation-range: 0px 48px; }
@keyframes oblix-away { from { visibility: hidden; opacity: 0; } to { visibility: visible; opacity: 1; } }
.oblix-chat .oblix-message .jp-OutputPrompt, .oblix-chat .oblix-explain .jp-OutputPrompt { display: none; }
.oblix-chat > .oblix-explain { max-height: 40vh; overflow-y: auto; }
.oblix-chat .oblix-message { margin: 3px 0; padding: 0 6px; border-left: 4px solid; border-radius: 3px; overflow: visible; }
.oblix-chat .oblix-message .jp-RenderedHTMLCommon { padding-right: 4px; overflow-x: auto; }
.oblix-chat .oblix-message pre { white-space: pre-wrap; word-break: break-word; }
.oblix-chat .oblix-message :not(pre) > code { overflow-wrap: anywhere; }  /* inline code in a narrow sidebar wraps, never clips */
.oblix-chat .oblix-user { border-color: var(--jp-brand-color1, #1976d2); background: var(--jp-layout-color2, #eee); }
.oblix-chat .oblix-assistant { border-color: var(--jp-success-color1, #388e3c); }
.oblix-chat .oblix-system { border-color: var(--jp-border-color1, #999); }
.oblix-chat .oblix-incomplete { border-color: var(--jp-warn-color1, #f57c00); }
.oblix-chat .oblix-failed { border-color: var(--jp-error-color1, #c62828); color: var(--jp-error-color1, #c62828); }
.oblix-chat .oblix-waiting { margin: 4px 0 8px; display: flex; align-items: center; gap: 6px; }
.oblix-chat .oblix-waiting::before { content: ""; width: 10px; height: 10px; border-radius: 50%;
  border: 2px solid var(--jp-brand-color1); border-right-color: transparent; animation: oblix-spin 1s linear infinite; }
@keyframes oblix-spin { to { transform: rotate(360deg); } }
.oblix-chat .oblix-error { color: var(--jp-error-color1, #c62828); }
.oblix-chat .oblix-notice { color: var(--jp-ui-font-color2, #555); }
.oblix-chat .oblix-input textarea { min-height: 4em; resize: vertical; }
</style>"""


def _when(message: Mapping[str, Any]) -> str:
    return local_time(message["timestamp"], brief=True) if message.get("timestamp") else ""


def message_view(role: str) -> widgets.Output:
    """An empty message of ``role``; the CSS classes set users and assistants apart."""
    view = widgets.Output()
    view.add_class("oblix-message")
    view.add_class(f"oblix-{role}")
    return view


def message_outputs(message: Mapping[str, Any], read: ImageReader | None = None) -> tuple[dict[str, Any], ...]:
    """One stored message as the panel shows it: who (model, status) and when, then the text (``read``: its images' bytes)."""
    note = INCOMPLETE.get(str(message.get("status")), "")
    if message.get("status") == "interrupted" and not message.get("content"):
        note = "Stopped before any of the answer arrived."
    rich = message_html(message, [_when(message)], note=note, sent="shut", read=read)
    return html_outputs(rich, f"{message.get('role')}: {message.get('content', '')}")


def notebook_variables(namespace: Mapping[str, Any]) -> list[str]:
    """The names a user may add as context: their own variables, not IPython's or private ones."""
    for _ in range(3):  # the kernel may be adding names while this runs on another thread
        try:
            names = list(namespace)
            break
        except RuntimeError:
            continue
    else:
        return []
    return sorted(name for name in names if not is_hidden_name(name))


def last_activity(timestamp: str, now: datetime | None = None) -> str:
    """When a session was last written, as people say it: "just now", "5 min ago", "2 h ago", then the date."""
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    seconds = (now - moment).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    local = moment.astimezone()
    return f"{local.day} {local:%b}" + ("" if local.year == now.astimezone().year else f" {local.year}")


def running_kernel_images() -> DisplayedImages | None:
    """The images the running IPython's cells displayed, if Oblix is loaded in it (IPython is asked only when already imported)."""
    ipython = sys.modules.get("IPython")
    return memory_of(ipython.get_ipython()) if ipython is not None else None


def _messages(count: int) -> str:
    return "1 message" if count == 1 else f"{count} messages"


def _picker_label(summary: Mapping[str, Any]) -> str:
    """A session in the picker: its title, when it was last active and its size, who shared it, and for a search hit the matching words."""
    parts = [str(summary["title"]), last_activity(str(summary["updated_at"])), _messages(summary["message_count"])]
    if summary.get("shared_by"):
        parts.append(f"shared by {summary['shared_by']}")
    if summary.get("snippet"):
        snippet = " ".join(str(summary["snippet"]).split())
        parts.append(snippet if len(snippet) <= 60 else snippet[:59] + "…")
    return " · ".join(parts)


@dataclass
class PendingTurn:
    """A turn the panel sent, shown by placeholders until the store holds its prompt and answer."""

    session_id: str | None
    before: int  # the messages the session held before this turn's prompt
    sent: str  # the box's text as sent: given back if the turn fails before any answer arrived
    model: str  # the model asked first, named in the answer's place at once
    prompt_view: widgets.Output
    answer_view: widgets.Output
    images: Sequence[NotebookImage] = ()  # what the prompt carries: given back with it, and sent again by a retry
    started: float = field(default_factory=time.monotonic)
    text: str = ""  # the answer streamed so far
    tools: list[dict[str, Any]] = field(default_factory=list)  # the tools the model called, as they were called
    shown_at: float = 0.0
    shown: threading.Lock = field(default_factory=threading.Lock)  # the waiting line's clock and the stream both redraw the answer
    ended: threading.Event = field(default_factory=threading.Event)
    boxes: list[widgets.Widget] = field(default_factory=list)  # the approval boxes of the code the model asked to run
    asking: bool = False  # an approval box waits: the model is not what the answer waits for

    def show_answer(self, now: float) -> None:
        """The answer so far with a cursor or, before any text, which model is working and for how long."""
        with self.shown:
            self.shown_at = now
            if self.text:
                message = {"role": "assistant", "model": self.model, "content": self.text + " ▌", "tools": self.tools}
                self.answer_view.outputs = message_outputs(message)
                return
            waiting = Waiting(self.model, now - self.started)._repr_mimebundle_()  # the line a %%oblix cell shows
            if self.asking:
                waiting = {"text/html": f"<p><em>{APPROVAL_WAIT}</em></p>", "text/plain": APPROVAL_WAIT}
            rich = message_html({"role": "assistant", "content": "", "tools": self.tools}) + waiting["text/html"]
            self.answer_view.outputs = html_outputs(rich, waiting["text/plain"])

    def count_seconds(self) -> None:
        """Count the seconds in the answer's place until its first text arrives or the turn ends (not while a box waits for the user)."""
        while not self.ended.wait(WAITING_TICK) and not self.text:
            if not self.asking:
                self.show_answer(time.monotonic())


class ChatPanel(widgets.VBox):
    """The conversation of one session, with input, session and model pickers, and context chips."""

    def __init__(
        self,
        client: OblixClient | None = None,
        session_id: str | None = None,
        namespace: Mapping[str, Any] | None = None,
        binding: NotebookBinding | None = None,
        insert_code: Callable[[str], bool] | None = None,
        displayed: DisplayedImages | None = None,
        can_approve: Callable[[], bool] | None = None,
    ) -> None:
        """``insert_code`` puts code into a new notebook cell (the magics pass the lab extension's).

        ``can_approve`` says, at each turn, whether a person can approve code the model
        proposes here (the lab extension is connected); without it code is never proposed.

        ``displayed``: the images the kernel's cells displayed, which the picker offers; by
        default those of the IPython running the panel, when Oblix is loaded there.
        """
        if client is None:
            from ..client import OblixClient

            client = OblixClient()
        self.client = client
        self.namespace: Mapping[str, Any] = namespace if namespace is not None else {}
        self.binding = binding
        self.insert_code = insert_code
        self.can_approve = can_approve
        self.displayed = displayed if displayed is not None else running_kernel_images()
        if session_id is not None:
            session_id = client.resolve_session_id(session_id)
            if binding is not None:
                binding.use(session_id)
        elif binding is not None:
            session_id = binding.session_id(create=False)
        else:
            session_id = client.current_session_id
        self._session_id: str | None = session_id

        self.worker: threading.Thread | None = None  # the running turn; ``wait`` joins it
        self._render_lock = threading.RLock()
        self._closed = threading.Event()
        self._stop = threading.Event()
        self._turn: PendingTurn | None = None
        self._views: dict[tuple[str, str], tuple[widgets.Output, Any, widgets.HBox | None]] = {}
        # The approval boxes of ended answers, shown under them (with the runs' outputs) while the panel lives.
        self._boxes: OrderedDict[tuple[str, str], list[widgets.Widget]] = OrderedDict()
        self._settings_for: str | None = None
        self._syncing_picker = False
        self._confirming_delete = False
        self._last_plan: Any = None
        self._notice_at: int | None = None  # the messages the session held when the notice shown was rendered
        # Turns from a %%oblix cell, another kernel or a colleague appear while a front end shows the panel.
        self.follower = SessionFollower(
            signature=lambda: self._signature(self._bound()),
            wait=self._wait_for_change,
            on_change=self.refresh,
            on_same=self._update_notebook,
        )
        self._model = ""  # the model the shown session's next turn asks first
        self._stored_count = 0  # the messages the shown session held when last rendered
        self._failed_prompt: str | None = None  # the prompt of the shown session's last turn, if that turn failed: Retry asks it
        # The first answer renders Markdown; the parser is built now, while the user types.
        threading.Thread(target=prepare, name="oblix-render-prepare", daemon=True).start()

        self._build()
        super().__init__(children=self._layout())
        self.add_class("oblix-chat")
        self._view_count = 0  # front ends report their views, so polling runs only while one shows the panel
        self.observe(self._views_changed, names="_view_count")
        self.refresh()

    # -- widgets --------------------------------------------------------------------

    def _build(self) -> None:
        W, Layout = widgets, widgets.Layout
        self.style_html = W.HTML(STYLE, layout=Layout(display="none"))
        self.session_picker = W.Dropdown(layout=Layout(flex="1 1 140px", width="auto", min_width="0"))
        self.session_picker.observe(self._session_chosen, names="value")
        self.search_field = W.Text(placeholder="search sessions (titles and messages)", continuous_update=False, layout=Layout(width="auto"))
        self.search_field.add_class("oblix-search")
        self.search_field.observe(lambda _change: self.refresh(), names="value")
        self.new_button = W.Button(description="New", tooltip="Start a new session", layout=Layout(width="auto"))
        self.delete_button = W.Button(description="Delete", tooltip="Delete this session", layout=Layout(width="auto"))
        self.cancel_delete_button = W.Button(description="Cancel", tooltip="Keep this session", layout=Layout(width="auto", display="none"))
        self.title_field = W.Text(placeholder="session title", layout=Layout(flex="1 1 120px", width="auto"))
        self.rename_button = W.Button(description="Rename", layout=Layout(width="auto"))
        self.model_field = W.Combobox(placeholder="model", ensure_option=False, layout=Layout(flex="1 1 120px", width="auto"))
        self.fallbacks_field = W.Text(placeholder="fallback models, comma-separated", layout=Layout(flex="1 1 120px", width="auto"))
        self.apply_model_button = W.Button(description="Apply", tooltip="Use this model for the session", layout=Layout(width="auto"))
        self.share_user = W.Text(placeholder="share with (a database user)", layout=Layout(flex="1 1 120px", width="auto"))
        self.share_write = W.Checkbox(description="may add", indent=False, layout=Layout(width="auto"))
        self.share_button = W.Button(description="Share", tooltip="Let this user read the session (and add to it)", layout=Layout(width="auto"))
        self.access_note = W.HTML("")
        self.messages = W.VBox()
        self.messages.add_class("oblix-messages")
        self.empty_note = W.HTML("<small>No messages yet: ask something below, or run a <code>%%oblix</code> cell.</small>")
        self.conversation = self._scroll_box()
        self.jump_button = W.Button(description="Latest", icon="arrow-down", tooltip="Jump to the newest message", layout=Layout(width="auto"))
        self.jump_button.add_class("oblix-jump")
        self.jump_button.on_click(self._jump_to_latest)
        self.notice = W.HTML("", layout=Layout(display="none"))
        self.explain_output = W.Output(layout=Layout(display="none", overflow_x="auto"))
        self.explain_output.add_class("oblix-explain")
        self.variables_input = W.TagsInput(allow_duplicates=False, placeholder="add a variable", layout=Layout(flex="1 1 100px", width="auto"))
        self.variables_input.add_class("oblix-context")
        # Synced when it changes (blur, or Enter through the lab extension), not on each keystroke: ipywidgets holds
        # back a keystroke's sync while the previous one is answered, and a Send click overtaking it sent half the text.
        self.textarea = W.Textarea(placeholder="Ask about this notebook…", rows=3, continuous_update=False, layout=Layout(width="100%"))
        self.textarea.add_class("oblix-input")
        self.send_button = W.Button(description="Send", button_style="primary", icon="paper-plane", layout=Layout(width="auto"))
        self.send_button.add_class("oblix-send")
        self.stop_button = W.Button(description="Stop", button_style="warning", icon="stop", layout=Layout(width="auto", display="none"))
        self.retry_button = W.Button(
            description="Retry", icon="redo", tooltip="Ask the prompt that failed again", layout=Layout(width="auto", display="none")
        )
        self.retry_button.add_class("oblix-retry")
        self.explain_toggle = W.ToggleButton(description="Explain", tooltip="Show what context the last turn sent", layout=Layout(width="auto"))
        self.explain_toggle.add_class("oblix-explain-toggle")
        self.image_picker = ImagePicker(self.displayed)
        self.new_button.on_click(self._new_session)
        self.delete_button.on_click(self._delete_clicked)
        self.cancel_delete_button.on_click(lambda _button: (self._reset_delete(), self._show_notice("")))
        self.rename_button.on_click(self._rename)
        self.apply_model_button.on_click(self._apply_model)
        self.share_button.on_click(self._share)
        self.send_button.on_click(self.send)
        self.stop_button.on_click(self.stop)
        self.stop_button.add_class("oblix-stop")
        self.retry_button.on_click(self.retry)
        self.explain_toggle.observe(lambda _change: self._show_plan(), names="value")

    def _layout(self) -> list[widgets.Widget]:
        W = widgets

        def row(*children: widgets.Widget) -> widgets.HBox:
            box = W.HBox(list(children))
            box.add_class("oblix-row")
            return box

        sharing = W.VBox([row(self.share_user, self.share_write, self.share_button), self.access_note])
        if not self.client.can_share():
            sharing.layout.display = "none"  # session files have no other users to share with
        settings = W.VBox(
            [
                row(self.title_field, self.rename_button),
                row(self.model_field, self.apply_model_button),
                row(self.fallbacks_field),
                sharing,
            ]
        )
        self.settings = W.Accordion([settings], titles=("Session settings",))
        jump_row = row(self.jump_button)
        jump_row.add_class("oblix-jump-row")
        return [
            self.style_html,
            row(self.session_picker, self.new_button, self.delete_button, self.cancel_delete_button),
            row(self.search_field),
            self.settings,
            self.conversation,
            jump_row,
            self.notice,
            self.explain_output,
            row(W.HTML("<small>Context:</small>"), self.variables_input, self.image_picker.button),
            self.image_picker.gallery,
            self.image_picker.chips,
            self.textarea,
            row(self.send_button, self.stop_button, self.retry_button, self.explain_toggle),
        ]

    def _scroll_box(self) -> widgets.Box:
        box = widgets.Box([self.messages], layout=widgets.Layout(display="flex"))
        box.add_class("oblix-scroll")
        return box

    def _jump_to_latest(self, _button: Any = None) -> None:
        """Show the newest message: a new view of the list opens there, where a column-reverse box starts.

        Only the front end knows how far the user scrolled, and the panel sends it no
        script; replacing the list's box makes every front end draw a fresh one.
        """
        old, self.conversation = self.conversation, self._scroll_box()
        self.children = tuple(self.conversation if child is old else child for child in self.children)
        old.children = ()
        old.close()

    def close(self) -> None:
        self._closed.set()
        self.follower.close()
        self.image_picker.close()
        self._stop.set()
        for widget in self._owned_widgets():
            widget.close()
        super().close()

    def _owned_widgets(self) -> list[widgets.Widget]:
        owned = [self.empty_note, *(view for view, _, _ in self._views.values())]
        pending = list(self.children)
        while pending:
            widget = pending.pop()
            owned.append(widget)
            pending.extend(getattr(widget, "children", ()))
        return owned

    # -- the session shown ----------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        """The session the panel shows; None until the first message creates one."""
        return self._session_id

    def _ensure_session(self) -> str:
        if self._session_id is None:
            if self.binding is not None:
                self._session_id = self.binding.session_id(create=True)
            else:
                self._session_id = self.client.create_session_sync(title_from_prompt=True)
        assert self._session_id is not None
        return self._session_id

    def _bound(self) -> str | None:
        """The session the notebook is bound to now (``%oblix use``, ``--new`` or a deletion may move it)."""
        return self.binding.session_id(create=False) if self.binding is not None else None

    def _session(self) -> dict[str, Any] | None:
        if self._session_id is None:
            return None
        try:
            session = self.client.load_session(self._session_id)
        except OblixError as error:
            self._show_notice(str(error), error=True)
            return None
        if session is None:  # deleted elsewhere
            self._session_id = None
        return session

    def use_client(self, client: OblixClient, binding: NotebookBinding | None) -> None:
        """Carry on with another client: the magics' configuration (model, store) changed."""
        with self._render_lock:
            self.client = client
            self.binding = binding
            self._session_id = None  # found again through the binding, in the new store
        self.refresh()

    def refresh(self) -> None:
        """Re-render everything from the store (the magics call this after each ``%%oblix`` turn)."""
        if self._closed.is_set():
            return
        with self._render_lock:
            bound = self._bound()
            if self.binding is not None:
                self._session_id = bound
            self.follower.mark(self._signature(bound))
            session = self._session()
            query = self.search_field.value.strip()
            recent = self.client.search_sessions(query, RECENT_SESSIONS) if query else self.client.list_sessions(limit=RECENT_SESSIONS)
            self._render_picker(session, recent)
            self._render_settings(session, recent)
            self._render_messages(session)
            self._update_notebook()

    def _render_picker(self, session: dict[str, Any] | None, recent: list[dict[str, Any]]) -> None:
        listed = [s for s in recent if s["id"] != self._session_id]
        first: list[tuple[str, str]]
        if session is None:
            first = [("New session (starts with your first message)", NO_SESSION)]
        else:
            summary = {**session, "message_count": len(session["messages"]), "snippet": ""}
            first = [(_picker_label(summary), session["id"])]
        options = first + [(_picker_label(s), s["id"]) for s in listed]
        self._syncing_picker = True
        try:
            if tuple(options) != tuple(self.session_picker.options):
                self.session_picker.options = options
            self.session_picker.value = self._session_id or NO_SESSION
        finally:
            self._syncing_picker = False

    def _render_settings(self, session: dict[str, Any] | None, recent: list[dict[str, Any]]) -> None:
        """Fill the title and model fields, only when the session changes (never under the user's typing)."""
        shown = session["id"] if session else None
        try:
            chain = self.client.models_for(session)
        except OblixError:
            chain = []
        known = [*chain, *(s.get("model") for s in recent)]
        self.model_field.options = tuple(dict.fromkeys(m for m in known if m))
        self.model_field.placeholder = chain[0] if chain else "model (litellm name)"
        self._model = chain[0] if chain else ""  # named at once when the next prompt is sent
        if shown == self._settings_for:
            return
        self._settings_for = shown
        self._reset_delete()
        self.title_field.value = session["title"] if session else ""
        self.model_field.value = (session or {}).get("model") or ""
        self.fallbacks_field.value = ", ".join((session or {}).get("fallback_models") or [])
        self._render_access()

    def _render_access(self) -> None:
        """Who else may read the session, for its owner (a database user's name is text: escaped)."""
        if not self.client.can_share() or self._session_id is None:
            return
        try:
            shares = self.client.shares(self._session_id)
        except OblixError:
            shares = []
        listed = ", ".join(f"{share['user']} ({'reads and adds' if share['write'] else 'reads'})" for share in shares)
        self.access_note.value = f"<small>Shared with: {html.escape(listed)}</small>" if listed else "<small>Not shared.</small>"

    def _render_messages(self, session: dict[str, Any] | None) -> None:
        stored = session["messages"] if session else []
        self._stored_count = len(stored)
        self._expire_notice(len(stored))
        self._failed_prompt = self.client.failed_prompt(session=session) if session else None
        self.retry_button.layout.display = None if self._failed_prompt is not None and self._turn is None else "none"
        shown: list[widgets.Widget] = []
        keep: set[tuple[str, str]] = set()
        for number, message in enumerate(stored):
            key = (session["id"], str(message.get("id") or number))  # type: ignore[index]  # no session: no messages
            # What the view shows depends on these alone; rendering is skipped while they stay the same.
            shown_as = (*(message.get(field) for field in ("role", "content", "model", "status")), _when(message))
            keep.add(key)
            view, rendered, actions = self._views.get(key, (None, None, None))
            if view is None:
                view = message_view(str(message.get("role", "user")))
            if message.get("status") in INCOMPLETE:
                view.add_class("oblix-incomplete")
            elif message.get("status") == "failed":  # the record of a turn that failed: its one-line error
                view.add_class("oblix-failed")
            if rendered != shown_as:
                view.outputs = message_outputs(message, functools.partial(self.client.read_attachment, session["id"]))  # type: ignore[index]
                if actions is not None:
                    actions.close()
                actions = self._code_actions(message)
            self._views[key] = (view, shown_as, actions)
            shown.append(view)
            if actions is not None:
                shown.append(actions)
            shown += self._boxes.get(key, ())
        turn = self._turn
        if turn is not None and turn.session_id == self._session_id:
            if len(stored) <= turn.before:  # the prompt is not stored yet
                shown.append(turn.prompt_view)
            if len(stored) < turn.before + 2:  # nor the answer
                shown.append(turn.answer_view)
                shown += turn.boxes
        for key in [k for k in self._views if k not in keep]:
            view, _, actions = self._views.pop(key)
            view.close()
            if actions is not None:
                actions.close()
        self.messages.children = tuple(shown or [self.empty_note])

    def _code_actions(self, message: Mapping[str, Any]) -> widgets.HBox | None:
        """"Insert" buttons under an answer's code blocks, when cells can be inserted."""
        if self.insert_code is None or message.get("role") != "assistant":
            return None
        blocks = code_blocks(str(message.get("content", "")))
        if not blocks:
            return None
        buttons = []
        for number, code in enumerate(blocks, start=1):
            label = "Insert code" if len(blocks) == 1 else f"Insert code {number}"
            button = widgets.Button(description=label, icon="plus", tooltip="Insert as a new cell below the active cell")
            button.layout.width = "auto"
            button.add_class("oblix-insert")
            button.on_click(lambda _button, code=code: self._insert(code))
            buttons.append(button)
        return widgets.HBox(buttons)

    def _insert(self, code: str) -> None:
        if self.insert_code is None or not self.insert_code(code):
            self._show_notice("Inserting cells needs the oblix JupyterLab extension.", error=True)

    def _update_notebook(self) -> None:
        """What the notebook offers as context: its variables, and the images its cells displayed."""
        self._update_variables()
        self.image_picker.update()

    def _update_variables(self) -> None:
        names = notebook_variables(self.namespace)
        if names != list(self.variables_input.allowed_tags):
            self.variables_input.allowed_tags = names
            kept = [name for name in self.variables_input.value if name in names]
            if kept != list(self.variables_input.value):
                self.variables_input.value = kept

    # -- sending --------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    def send(self, _button: Any = None, images: Sequence[NotebookImage] | None = None) -> None:
        """Send what is typed, with the images chosen in the picker; the answer streams in from a background thread.

        The prompt leaves the box (and its images the picker) and the answer's place shows
        which model is working at once, before the store is read; both come back if the
        turn fails before any of the answer arrived. ``images``: sent instead of the
        picker's choice, which stays as it is (a retry's, as the session kept them).
        """
        prompt = self.textarea.value.strip()
        if not prompt or self.busy:
            return
        self._show_notice("")
        with self._render_lock:
            images = self.image_picker.take() if images is None else images
            prompt_view = message_view("user")
            entries, read = self.image_picker.pending(images)
            prompt_view.outputs = message_outputs({"role": "user", "content": prompt, "attachments": entries}, read)
            turn = PendingTurn(
                self._session_id, self._stored_count, self.textarea.value, self._model, prompt_view, message_view("assistant"), images
            )
            turn.show_answer(turn.started)
            self._turn = turn
            self.textarea.value = ""
            self._set_busy(True)
            shown = [view for view in self.messages.children if view is not self.empty_note]
            self.messages.children = (*shown, prompt_view, turn.answer_view)
            try:
                turn.session_id = self._ensure_session()
                session = self.client.get_session(turn.session_id)
                turn.before = len(session["messages"])
                if self.client.failed_prompt(session=session) == prompt:
                    turn.before -= 1  # a retry: its prompt is stored already, and only the answer will be
            except OblixError as error:
                self._end_turn(turn)
                self._restore_prompt(turn)
                self._show_notice(str(error), error=True)
                return
        self._stop.clear()
        self.worker = threading.Thread(target=self._run_turn, args=(prompt, turn.session_id), name="oblix-chat-turn", daemon=True)
        self.worker.start()
        threading.Thread(target=turn.count_seconds, name="oblix-chat-progress", daemon=True).start()
        self.refresh()

    def retry(self, _button: Any = None) -> None:
        """Ask the prompt of the turn that failed again: the session keeps it once, and gets the answer after it."""
        if self._failed_prompt is not None and not self.busy:
            try:
                images = self._failed_images()
            except OblixError as error:  # the store cannot be read now: nothing is asked, the box keeps what was typed
                self._show_notice(str(error), error=True)
                return
            typed = self.textarea.value
            self.textarea.value = self._failed_prompt
            self.send(images=images)
            self.textarea.value = typed  # what the user was writing meanwhile stays in the box

    def _failed_images(self) -> list[NotebookImage]:
        """The images the failed prompt carried, as the session keeps them: shown in the retried prompt's place (the turn sends them)."""
        session = self._session()
        return self.client.failed_images(session=session) if session is not None else []

    def stop(self, _button: Any = None) -> None:
        """Stop the answer that is streaming; the part that arrived is kept."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running turn to end; False if it is still running after ``timeout``."""
        worker = self.worker
        if worker is not None:
            worker.join(timeout)
            return not worker.is_alive()
        return True

    def _variables(self, prompt: str) -> list[Any]:
        """Summaries of the chips' variables and of those the prompt mentions, as ``%%oblix`` sends them."""
        return summarize_variables(self.namespace, prompt, named=list(self.variables_input.value))

    def _run_turn(self, prompt: str, session_id: str) -> None:
        turn = self._turn
        assert turn is not None
        try:
            result = self.client.turn(
                prompt,
                session_id,
                stream_to=self._on_text,
                should_stop=self._stop.is_set,
                variables=self._variables(prompt),
                on_tool=self._on_tool,
                images=turn.images,
                ask=self._ask if self.can_approve is not None and self.can_approve() else None,
            )
        except AnswerInterrupted:
            pass  # the stored answer says it was interrupted; a notice would say it twice
        except OblixError as error:
            self._restore_prompt(turn)
            if not (isinstance(error, ModelError) and self.client.failed_prompt(session_id) is not None):
                self._show_notice(str(error), error=True)  # else the session's failure record says it, once
        except Exception as error:  # a bug must show, not vanish with the thread
            self._restore_prompt(turn)
            self._show_notice(f"Unexpected {type(error).__name__}: {error}", error=True)
        else:
            self._last_plan = result.plan
            self._show_plan()
            if result.notice:
                self._show_notice(result.notice)
        finally:
            self._end_turn(turn)

    def _ask(self, pending: PendingRun) -> RunOutcome:
        """The turn's ``Ask``, on its thread: an approval box under the answer, waited for (Stop gives up on it)."""
        from .approval import ApprovalBox

        turn = self._turn
        assert turn is not None
        box = ApprovalBox(pending, self.insert_code, on_running=self._code_running)
        turn.boxes.append(box)
        turn.asking = True
        turn.show_answer(time.monotonic())
        with self._render_lock:
            self._render_messages(self._session())
        try:
            return box.wait(self._stop.is_set)
        finally:
            turn.asking = False
            turn.started = time.monotonic()  # the model is waited for again, from now

    def _code_running(self, running: bool) -> None:
        """While approved code runs the kernel takes no click: Stop becomes the page's own interrupt (the lab extension's)."""
        if running:
            self.stop_button.add_class("oblix-interrupt")
        else:
            self.stop_button.remove_class("oblix-interrupt")

    def _end_turn(self, turn: PendingTurn) -> None:
        """The turn's placeholders give way to what the store holds."""
        turn.ended.set()
        if turn.boxes and turn.session_id is not None:  # under this turn's answer (or the record of its failure), after its prompt
            stored = self.client.get_session(turn.session_id)["messages"]
            answer = turn.before + 1 if len(stored) > turn.before + 1 else len(stored) - 1
            if answer >= 0:
                self._boxes[(turn.session_id, str(stored[answer].get("id") or answer))] = turn.boxes
                while len(self._boxes) > KEPT_RUN_ANSWERS:
                    self._boxes.popitem(last=False)
        self._turn = None
        self._set_busy(False)
        self.refresh()
        for view in (turn.prompt_view, turn.answer_view):
            view.close()

    def _on_text(self, piece: str) -> None:
        turn = self._turn
        if turn is None:
            return
        first = not turn.text
        turn.text += piece
        now = time.monotonic()
        if first or now - turn.shown_at >= UPDATE_INTERVAL:
            turn.show_answer(now)
        if first:
            with self._render_lock:  # the stored prompt replaces its placeholder
                self._render_messages(self._session())

    def _on_tool(self, call: dict[str, Any]) -> None:
        """A tool the model called: shown at once, one collapsed line above the answer."""
        turn = self._turn
        if turn is not None:
            turn.tools.append(call)
            turn.show_answer(time.monotonic())

    def _restore_prompt(self, turn: PendingTurn) -> None:
        """A turn that failed before any answer arrived gives its prompt (and its images) back, unless the user typed another."""
        if not turn.text and not self.textarea.value:
            self.textarea.value = turn.sent
            self.image_picker.give_back(turn.images)

    def _set_busy(self, busy: bool) -> None:
        self.stop_button.layout.display = None if busy else "none"
        self.send_button.disabled = busy
        self.retry_button.layout.display = None if not busy and self._failed_prompt is not None else "none"

    def _show_notice(self, text: str, error: bool = False) -> None:
        """One notice at a time, about the latest event; the next turn, here or anywhere else, takes it away."""
        self._notice_at = None  # set by the next render, which shows the state the notice is about
        if not text:
            self.notice.layout.display = "none"
            self.notice.value = ""
            return
        css = "oblix-error" if error else "oblix-notice"
        prefix = "<b>Oblix error:</b> " if error else ""
        self.notice.value = f"<div class='{css}'>{prefix}{html.escape(text)}</div>"
        self.notice.layout.display = None

    def _expire_notice(self, stored: int) -> None:
        """Take the notice away once the session has moved on from it (a turn from a cell, another kernel)."""
        if not self.notice.value or self._turn is not None or self._confirming_delete:
            return
        if self._notice_at is None:
            self._notice_at = stored
        elif stored > self._notice_at:
            self._show_notice("")

    def _show_plan(self) -> None:
        if not self.explain_toggle.value:
            self.explain_output.layout.display = "none"
            return
        if self._last_plan is None:
            waiting = "The context sent is shown here after your next message; under each earlier answer, \"what it was sent\" says what its model saw."
            self.explain_output.outputs = html_outputs(f"<p><em>{waiting}</em></p>", waiting)
        else:
            data = PlanView(self._last_plan)._repr_mimebundle_()
            self.explain_output.outputs = html_outputs(data["text/html"], data["text/plain"])
        self.explain_output.layout.display = None

    # -- session and model management -----------------------------------------------

    def _session_chosen(self, change: dict[str, Any]) -> None:
        if self._syncing_picker or not change["new"] or change["new"] == self._session_id:
            return
        self._session_id = change["new"]
        if self.binding is not None:
            self.binding.use(change["new"])
        self._last_plan = None
        self._show_notice("")
        self.refresh()

    def _new_session(self, _button: Any = None) -> None:
        """A session named after its first prompt: titled after the notebook, as its first one is, two could not be told apart."""
        metadata = {"notebook": self.binding.key} if self.binding is not None else None
        self._session_id = self.client.create_session_sync(metadata=metadata, title_from_prompt=True)
        if self.binding is not None:
            self.binding.use(self._session_id)
        self._last_plan = None
        self._show_notice("")
        self.refresh()

    def _rename(self, _button: Any = None) -> None:
        title = self.title_field.value.strip()
        if not title:
            self._show_notice("Type the new title first.", error=True)
            return
        self._act(lambda: self.client.rename_session(self._ensure_session(), title), f"Renamed to {title!r}.")

    def _apply_model(self, _button: Any = None) -> None:
        model = self.model_field.value.strip() or None
        fallbacks = self.fallbacks_field.value

        def apply() -> None:
            chain = self.client.set_model(self._ensure_session(), model, fallbacks)
            self._show_notice(f"Model: {chain[0]}; fallbacks: {', '.join(chain[1:]) or 'none'}.")

        self._act(apply)

    def _share(self, _button: Any = None) -> None:
        user, write = self.share_user.value.strip(), self.share_write.value
        if not user:
            self._show_notice("Type the database user to share with.", error=True)
            return

        def share() -> None:
            self.client.share(self._ensure_session(), user, write=write)
            self.share_user.value = ""
            self._render_access()

        self._act(share, f"{user} may now read this session" + (" and add to it." if write else "."))

    def _delete_clicked(self, _button: Any = None) -> None:
        if self._session_id is None:
            return
        session_id = self._session_id
        session = self._session()
        described = f"'{session['title']}' ({session_id[:8]}, {len(session['messages'])} messages)" if session else session_id[:8]
        if not self._confirming_delete:  # say what would go, and offer a way back, before anything is deleted
            self._confirming_delete = True
            self.delete_button.description = "Confirm delete"
            self.delete_button.button_style = "danger"
            self.cancel_delete_button.layout.display = None
            self._show_notice(f"Delete session {described} for good, everywhere it is kept?")
            return
        self._reset_delete()
        self._act(lambda: self.client.delete_session(session_id), f"Deleted session {described}.")

    def _reset_delete(self) -> None:
        self._confirming_delete = False
        self.delete_button.description = "Delete"
        self.delete_button.button_style = ""
        self.cancel_delete_button.layout.display = "none"

    def _act(self, action: Any, done: str = "") -> None:
        """Run a store action for a button: its error is shown inline, then everything is re-read."""
        try:
            action()
        except OblixError as error:
            self._show_notice(str(error), error=True)
        else:
            if done:
                self._show_notice(done)
        self.refresh()

    # -- following changes made elsewhere ---------------------------------------------

    @property
    def poll_interval(self) -> float:
        """Seconds between checks of a session file while a front end shows the panel (a database announces changes at once)."""
        return self.follower.interval

    @poll_interval.setter
    def poll_interval(self, seconds: float) -> None:
        self.follower.interval = seconds

    def _signature(self, bound: str | None) -> tuple[Any, ...]:
        session_id = bound or self._session_id
        return (bound, session_id, self.client.session_version(session_id) if session_id else None)

    def _wait_for_change(self, timeout: float) -> None:
        session_id = self._session_id
        if session_id is not None:
            self.client.wait_for_change(session_id, timeout)  # at once on a database, which announces
        else:
            self._closed.wait(timeout)

    def _views_changed(self, change: dict[str, Any]) -> None:
        self.follower.shown((change["new"] or 0) > 0)
