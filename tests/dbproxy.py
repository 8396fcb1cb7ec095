"""A TCP proxy in front of the real MariaDB that fails the way networks and hosts do, at the
moment a test picks: a connection cut during a COMMIT, a server that stops answering."""

from __future__ import annotations

import contextlib
import socket
import threading

from .conftest import MYSQL_HOST, MYSQL_PORT


class MariaDBProxy:
    """Passes MySQL protocol traffic between clients and MariaDB, one pair of threads per
    connection. cut_next_commit(): the connection that sends the next COMMIT is cut, after
    passing it on and before passing the answer back (carried_out: the server commits, the
    client only sees its connection lost) or before passing it on. freeze(): the connections
    open now pass nothing more either way and stay open, as with a server that hangs or a
    cable pulled; new connections work, unless new_too."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()  # a COMMIT or its answer was swallowed
        self._commit: bool | None = None  # armed: whether the next COMMIT is carried out
        self._lock = threading.Lock()
        self._frozen: list[threading.Event] = []
        self._freeze_new = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, mysql_url: str) -> str:
        """The same database, reached through the proxy."""
        return mysql_url.replace(f"@{MYSQL_HOST}:{MYSQL_PORT}/", f"@127.0.0.1:{self.port}/")

    def cut_next_commit(self, carried_out: bool) -> None:
        self._commit = carried_out

    def freeze(self, new_too: bool = False) -> None:
        """new_too: connections made from now on hang as well, as with a server that hangs
        as a whole rather than on some connections."""
        with self._lock:
            self._freeze_new = new_too
            for frozen in self._frozen:
                frozen.set()

    def thaw(self) -> None:
        """Connections made from now on work again (the frozen ones stay so)."""
        with self._lock:
            self._freeze_new = False

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            _shut(*self._sockets)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection((MYSQL_HOST, MYSQL_PORT))
            swallow, frozen = threading.Event(), threading.Event()
            with self._lock:
                if self._freeze_new:
                    frozen.set()
                self._frozen.append(frozen)
                self._sockets += (client, server)
            for target in (self._up, self._down):
                threading.Thread(
                    target=target, args=(client, server, swallow, frozen), daemon=True
                ).start()

    def _up(self, client: socket.socket, server: socket.socket, swallow, frozen) -> None:
        """Client to server; whole packets (3-byte length, sequence id, payload) are looked
        at before they are passed on, so a cut is set up before the COMMIT leaves."""
        pending = b""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if frozen.is_set():
                    frozen.wait()
                    continue  # swallowed; the socket stays open
                pending += data
                while len(pending) >= 4 and len(pending) >= 4 + (
                    size := int.from_bytes(pending[:3], "little")
                ):
                    if pending[4 : 4 + size] == b"\x03COMMIT" and self._commit is not None:
                        carried_out, self._commit = self._commit, None
                        swallow.set()
                        if not carried_out:
                            self.cut.set()
                            _shut(client, server)
                            return
                    pending = pending[4 + size :]
                server.sendall(data)
        _shut(client, server)

    def _down(self, client: socket.socket, server: socket.socket, swallow, frozen) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if swallow.is_set():
                    self.cut.set()
                    break
                if frozen.is_set():
                    continue
                client.sendall(data)
        _shut(client, server)


def _shut(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
