"""The kernel's side of the JupyterLab extension's comm (``oblix.session``; the contract is in ``labextension/src/session.ts``).

The page opens one comm per notebook. It reports the notebook's path (on open and
after a rename) and asks for the chat panel; the kernel answers with the panel's widget
id and may ask the page to insert a code cell, or to keep a static copy of what a
finished cell shows in widgets (an answer that went on below an approval box). When the page goes away the comm is
closed, and inserting a cell says it cannot instead of sending into nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

COMM_TARGET = "oblix.session"


class LabExtension:
    """The lab extension's comm in this kernel, once the page has opened one."""

    def __init__(self, follow_path: Callable[[str], None], chat_panel: Callable[[], Any]) -> None:
        """``follow_path`` takes a reported notebook path; ``chat_panel`` gives the panel to show."""
        self.follow_path = follow_path
        self.chat_panel = chat_panel
        self.channel: Any = None

    def listen(self) -> None:
        """Accept the page's comm from now on (in a kernel, where comms exist)."""
        import comm

        comm.get_comm_manager().register_target(COMM_TARGET, self._opened)

    @property
    def connected(self) -> bool:
        """Whether a page with the extension has this kernel open now: someone who can approve code, and boxes it can show."""
        return self.channel is not None

    def insert_cell(self, code: str) -> bool:
        """Ask the page to insert ``code`` as a new cell below the active one; False without the extension."""
        if self.channel is None:
            return False
        self.channel.send({"action": "insert_cell", "code": code})
        return True

    def keep_output(self, model_id: str, bundle: Mapping[str, str]) -> bool:
        """Ask the page to add ``bundle`` to the cell that shows widget ``model_id``: what its saved copy keeps once the widget is gone."""
        if self.channel is None:
            return False
        self.channel.send({"action": "keep_output", "model_id": model_id, "data": dict(bundle)})
        return True

    def _opened(self, channel: Any, message: dict[str, Any]) -> None:
        def receive(data: Mapping[str, Any]) -> None:
            try:
                if data.get("notebook_path"):
                    self.follow_path(str(data["notebook_path"]))
                if data.get("action") == "open_chat":
                    channel.send({"action": "chat_widget", "model_id": self.chat_panel().model_id})
            except Exception as error:  # a comm handler must never take the kernel down
                channel.send({"action": "error", "message": str(error)})

        def closed(_message: Any) -> None:
            if self.channel is channel:
                self.channel = None

        self.channel = channel
        receive(message["content"]["data"] or {})
        channel.send({"action": "ack"})
        channel.on_msg(lambda update: receive(update["content"]["data"] or {}))
        channel.on_close(closed)
