"""Lab helper: a stand-in for the portal's signalling, as a Unix-socket hub in the test process.

Node processes (``tests/lab/node_runner.py``) connect to the hub's Unix socket
(a filesystem path, so it reaches into every network namespace) and exchange
JSON lines.  The hub forwards each node's ``candidate`` / ``remove_candidate``
to the node named by its ``peer_id`` (rewriting ``peer_id`` to the sender), as
the portal relays candidates between a client and a gateway; everything else a
node says is kept for the test to wait on.  Bounded: every wait has a timeout,
and ``close`` ends every connection (the nodes then exit).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Message = dict[str, Any]


class HubError(RuntimeError):
    pass


class SignallingHub:
    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            path.unlink()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(16)
        # Wake up now and then to notice close(): closing a socket under a thread blocked
        # in accept() does not wake it, and the fd number may then be reused by another
        # hub's socket, whose connections the stale thread would steal.
        self._server.settimeout(0.2)
        self._cond = threading.Condition()
        self._inbox: dict[str, list[Message]] = {}
        self._sockets: dict[str, socket.socket] = {}
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.forward = True
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- threads (each closes the socket it owns) ------------------------------------------

    def _accept(self) -> None:
        try:
            while not self._closed:
                try:
                    conn, _ = self._server.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                conn.settimeout(None)
                self._connections.append(conn)
                self._start(self._read, conn)
        finally:
            self._server.close()

    def _read(self, conn: socket.socket) -> None:
        try:
            self._read_lines(conn)
        finally:
            with self._cond:  # nobody may send on it once closed (its fd may be reused)
                for name in [n for n, c in self._sockets.items() if c is conn]:
                    del self._sockets[name]
                conn.close()

    def _read_lines(self, conn: socket.socket) -> None:
        name: str | None = None
        buffer = b""
        while not self._closed:
            try:
                chunk = conn.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if name is None and message.get("type") == "hello":
                    name = str(message["name"])
                    with self._cond:
                        self._sockets[name] = conn
                if name is not None:
                    self._deliver(name, message)
        if name is not None:
            self._deliver(name, {"type": "gone", "t": time.time()})

    def _deliver(self, sender: str, message: Message) -> None:
        if self.forward and message.get("type") in ("candidate", "remove_candidate"):
            try:
                self.send(str(message.get("peer_id")), {**message, "peer_id": sender})
            except (HubError, OSError):
                pass  # the peer is not (or no longer) connected: the portal would drop it too
        with self._cond:
            self._inbox.setdefault(sender, []).append(message)
            self._cond.notify_all()

    # -- the test's side -----------------------------------------------------------------

    def send(self, name: str, message: Message) -> None:
        with self._cond:
            conn = self._sockets.get(name)
            if conn is None:
                raise HubError(f"{name} is not connected")
            conn.sendall(json.dumps(message).encode() + b"\n")

    def mark(self, name: str) -> int:
        """The number of messages from ``name`` so far: pass as ``after`` to wait for new ones."""
        with self._cond:
            return len(self._inbox.get(name, []))

    def messages(self, name: str, kind: str | None = None) -> list[Message]:
        with self._cond:
            found = list(self._inbox.get(name, []))
        return [m for m in found if kind is None or m.get("type") == kind]

    def wait_for(self, name: str, predicate: Callable[[Message], bool], timeout: float,
                 what: str = "message", after: int = 0) -> Message:
        """The first message from ``name`` (from index ``after`` on) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self._inbox.get(name, [])[after:]:
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HubError(f"timed out after {timeout}s waiting for {what} from {name}")
                self._cond.wait(min(left, 0.5))

    def wait_type(self, name: str, kind: str, timeout: float, after: int = 0,
                  **fields: Any) -> Message:
        return self.wait_for(
            name, lambda m: m.get("type") == kind and all(m.get(k) == v
                                                           for k, v in fields.items()),
            timeout, what=kind, after=after)

    def request(self, name: str, message: Message, reply: str, timeout: float = 10.0
                ) -> Message:
        """Send ``message`` and wait for the next ``reply``-typed answer."""
        after = self.mark(name)
        self.send(name, message)
        return self.wait_type(name, reply, timeout, after=after)

    def close(self) -> None:
        """End every connection (the nodes then exit) and every thread of the hub."""
        self._closed = True
        for conn in list(self._connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the reader, which closes it
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
