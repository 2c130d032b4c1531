"""A TCP proxy of our own between a client and the test PostgreSQL server, that breaks connections when told to.

PostgreSQL's own means (``pg_terminate_backend``, stopping the server) cannot pick the
moment between a ``COMMIT`` arriving at the server and its reply reaching the client:
the one moment at which nobody can know whether a change was saved. The proxy can. It
listens on a loopback port and relays each connection to the server's Unix socket;
``cut_after(marker)`` lets the next client bytes holding ``marker`` through to the
server, then closes that connection both ways before any reply comes back, and
``refuse()`` turns new connections away (a database that is down) until ``accept()``.
"""

from __future__ import annotations

import socket
import threading

# A simple-protocol query message "COMMIT": what psycopg sends to end a transaction block.
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"


class FaultProxy:
    """``host``/``port`` to connect to instead of the server; ``dsn(role)``; ``cut_after``, ``refuse``, ``accept``, ``cut_all``, ``close``."""

    def __init__(self, socket_path: str) -> None:
        self._upstream = socket_path
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._marker: bytes | None = None
        self._refusing = False
        self._refuse_on_cut = False
        self.cuts = 0  # connections cut by ``cut_after`` so far
        self.cut = threading.Event()  # set when the armed cut happened
        threading.Thread(target=self._accepting, daemon=True, name="fault-proxy").start()

    def dsn(self, role: str, database: str) -> str:
        return f"host={self.host} port={self.port} dbname={database} user={role}"

    def cut_after(self, marker: bytes = COMMIT, then_refuse: bool = False) -> None:
        """Let the next client bytes holding ``marker`` reach the server, then cut that connection before any reply.

        ``then_refuse``: and turn new connections away from that moment (the database died with the commit).
        """
        with self._lock:
            self._marker = marker
            self._refuse_on_cut = then_refuse
            self.cut.clear()

    def refuse(self) -> None:
        """Turn every new connection away at once (and cut the open ones): the database is down."""
        with self._lock:
            self._refusing = True
        self.cut_all()

    def accept(self) -> None:
        """Relay new connections again: the database is back."""
        with self._lock:
            self._refusing = False

    def cut_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            _close(*pair)

    def close(self) -> None:
        self._listener.close()
        self.cut_all()

    def _accepting(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                refusing = self._refusing
            if refusing:
                client.close()
                continue
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                server.connect(self._upstream)
            except OSError:
                _close(client, server)
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                cutting = False
                if from_client:
                    with self._lock:
                        if self._marker is not None and self._marker in data:
                            self._marker, cutting = None, True
                            self._refusing = self._refusing or self._refuse_on_cut
                target.sendall(data)
                if cutting:  # the server has the bytes; the client hears nothing more
                    _close(source, target)
                    self.cuts += 1
                    self.cut.set()
                    return
        except OSError:
            pass
        _close(source, target)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
