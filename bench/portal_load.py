"""Load generator for ``bench/portal.py``: many WebSocket clients held on one portal.

A separate process from both the portal and the benchmark driver, so the
portal's RSS and CPU are its own.  asyncio with raw WebSocket connections
(the RFC 6455 framing of ``tests/lab/portal_process.py``, no client library):
each client connects from its own loopback address (``127.10.x.y``: the portal
admits one connect per second per remote IP and token, and every client here
presents the same service-account token), joins ``client``, keeps the frames
it needs and sends a Phoenix heartbeat every 10 s, as connlib does.

The driver talks to it through stdin/stdout, one JSON object per line:

``{"cmd": "setup"}``
    connect a scripted gateway and one extra client for authorizations;
``{"cmd": "connect", "n": N}``
    open N clients (at most 64 upgrades in flight) and wait for each ``init``;
``{"cmd": "watch", "resource_id": R, "timeout": s}``
    wait until every open client got ``resource_created_or_updated`` for R; answers
    each client's wall-clock arrival time (``time.time()`` when the frame was read);
``{"cmd": "authz", "resource_id": R, "count": k}``
    k sequential ``request_authorization`` round trips through the gateway, which
    answers each ``create_authorization`` at once; answers the round-trip times (a
    request unanswered after ``timeout`` s is a failure; its late answer is awaited
    before the next request; the phase stops after 10 such failures);
``{"cmd": "status"}``
    open clients and heartbeat counts;
``{"cmd": "quit"}``
    close everything and exit.

Every wait has a deadline and every loop a bound; on stdin EOF it exits.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.lab.portal_process import (  # noqa: E402
    CLIENT_UA,
    GATEWAY_UA,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    WebSocketError,
    accept_value,
    close_payload,
    encode_frame,
    handshake_request,
    parse_response_head,
)

HEARTBEAT_INTERVAL = 10.0
MAX_IN_FLIGHT = 64
CONNECT_TIMEOUT = 30.0
#: How long a timed-out authorization may still take to answer before the next is sent.
LATE_ANSWER = 30.0
#: The authorization phase stops after this many timeouts.
MAX_TIMEOUTS = 10


def log(message: str) -> None:
    print(f"portal_load: {message}", file=sys.stderr, flush=True)


def answer(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def source_address(i: int) -> str:
    """Client ``i``'s own loopback address (up to 62,500 of them)."""
    return f"127.10.{i // 250}.{i % 250 + 1}"


class Refused(Exception):
    """The upgrade got an HTTP error instead of 101."""


class Conn(asyncio.Protocol):
    """One raw WebSocket speaking Phoenix frames; frames go to ``on_frame``."""

    def __init__(self, request: bytes, key: str,
                 on_frame: Callable[[Conn, dict[str, Any], float], None]) -> None:
        self.request = request
        self.key = key
        self.on_frame = on_frame
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reader = FrameReader()
        self.head = b""
        self.open = False
        self.ref = 0
        self.next_heartbeat = 0.0
        self.heartbeats_sent = 0
        self.heartbeats_ok = 0
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.seen: dict[str, float] = {}
        self.events: asyncio.Queue[dict[str, Any]] | None = None

    # -- asyncio ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.open:
            self.head += data
            try:
                parsed = parse_response_head(self.head)
            except WebSocketError as e:
                self._fail(Refused(str(e)))
                return
            if parsed is None:
                return
            status, headers, length = parsed
            if status != 101 or headers.get("sec-websocket-accept") != accept_value(self.key):
                body = self.head[length:length + 300].decode(errors="replace")
                self._fail(Refused(f"{status} {body}"))
                return
            self.open = True
            data, self.head = self.head[length:], b""
            if not self.opened.done():
                self.opened.set_result(None)
        try:
            frames = self.reader.feed(data)
        except WebSocketError as e:
            log(f"bad frame from the portal: {e}")
            self.close()
            return
        for opcode, payload in frames:
            if opcode == OP_TEXT:
                self.on_frame(self, json.loads(payload), now)
            elif opcode == OP_PING:
                self._write(encode_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self._write(encode_frame(OP_CLOSE, payload[:2]))
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(ConnectionError(f"connection lost: {exc}"))
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("connection lost"))
        self.waiting.clear()

    # -- use ------------------------------------------------------------------------------
    def _fail(self, error: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
            self.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def push(self, topic: str, event: str, payload: Any) -> int:
        ref = self.ref
        self.ref += 1
        frame = {"topic": topic, "event": event, "payload": payload, "ref": ref}
        self._write(encode_frame(OP_TEXT, json.dumps(frame).encode()))
        return ref

    def call(self, topic: str, event: str, payload: Any) -> asyncio.Future[dict[str, Any]]:
        """Push and a future for its ``phx_reply`` payload."""
        ref = self.push(topic, event, payload)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[ref] = future
        return future

    def heartbeat(self) -> None:
        self.heartbeats_sent += 1
        self.call("phoenix", "heartbeat", {}).add_done_callback(self._heartbeat_answered)

    def _heartbeat_answered(self, future: asyncio.Future[dict[str, Any]]) -> None:
        if not future.cancelled() and future.exception() is None \
                and future.result().get("status") == "ok":
            self.heartbeats_ok += 1

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.open:
                self.transport.write(encode_frame(OP_CLOSE, close_payload(1000)))
            self.transport.close()


def dispatch(conn: Conn, frame: dict[str, Any], now: float) -> None:
    """Replies resolve their futures; pushes are noted (``seen``) or queued (``events``)."""
    event = frame.get("event")
    if event == "phx_reply":
        waiter = conn.waiting.pop(frame.get("ref"), None)  # type: ignore[arg-type]
        if waiter is not None and not waiter.done():
            waiter.set_result(frame.get("payload") or {})
        return
    payload = frame.get("payload")
    if event == "resource_created_or_updated" and isinstance(payload, dict):
        conn.seen.setdefault(str(payload.get("id")), now)
    if conn.events is not None:
        conn.events.put_nowait(frame)


class Load:
    def __init__(self, port: int, client_token: str, gateway_token: str) -> None:
        self.port = port
        self.client_token = client_token
        self.gateway_token = gateway_token
        self.clients: list[Conn] = []
        self.gateway: Conn | None = None
        self.requester: Conn | None = None
        self._heartbeats: asyncio.Task[None] | None = None

    async def dial(self, role: str, token: str, external_id: str, source: str,
                   events: bool = False) -> Conn:
        """Connect, join and wait for ``init``; events queued if ``events``."""
        loop = asyncio.get_running_loop()
        query = {"external_id": external_id, "name": external_id,
                 "public_key": base64.b64encode(os.urandom(32)).decode()}
        path = f"/{role}/v2/websocket?{urlencode(query)}"
        headers = {"User-Agent": GATEWAY_UA if role == "gateway" else CLIENT_UA,
                   "X-Authorization": f"Bearer {token}"}
        request, key = handshake_request("127.0.0.1", self.port, path, headers)
        conn = Conn(request, key, dispatch)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        conn.events = queue
        await loop.create_connection(lambda: conn, "127.0.0.1", self.port,
                                     local_addr=(source, 0))
        try:
            await asyncio.wait_for(conn.opened, CONNECT_TIMEOUT)
            reply = await asyncio.wait_for(conn.call(role, "phx_join", None), CONNECT_TIMEOUT)
            if reply.get("status") != "ok":
                raise Refused(f"join refused: {reply}")
            while True:
                frame = await asyncio.wait_for(queue.get(), CONNECT_TIMEOUT)
                if frame.get("event") == "init":
                    break
        except BaseException:
            conn.close()
            raise
        if not events:
            conn.events = None
        conn.next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
        return conn

    def start_heartbeats(self) -> None:
        if self._heartbeats is None:
            self._heartbeats = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        """Every client heartbeats 10 s after its last one (checked once a second)."""
        while True:
            now = time.monotonic()
            for conn in self.everyone():
                if conn.open and conn.next_heartbeat <= now:
                    conn.heartbeat()
                    conn.next_heartbeat = now + HEARTBEAT_INTERVAL
            await asyncio.sleep(1.0)

    def everyone(self) -> list[Conn]:
        extra = [c for c in (self.gateway, self.requester) if c is not None]
        return self.clients + extra

    # -- commands ---------------------------------------------------------------------------
    async def setup(self) -> dict[str, Any]:
        self.gateway = await self.dial("gateway", self.gateway_token, "bench-gateway",
                                       "127.9.0.1", events=True)
        self.requester = await self.dial("client", self.client_token, "bench-requester",
                                         "127.9.0.2", events=True)
        self.start_heartbeats()
        asyncio.get_running_loop().create_task(self._answer_as_gateway(self.gateway))
        return {"event": "setup", "ok": True}

    async def _answer_as_gateway(self, gateway: Conn) -> None:
        """Answer every ``create_authorization`` with its ref at once, as a gateway would."""
        assert gateway.events is not None
        while gateway.open:
            frame = await gateway.events.get()
            if frame.get("event") == "create_authorization":
                ref = frame["payload"]["ref"]
                gateway.push("gateway", "authorization_created", {"ref": ref})

    async def connect(self, n: int, deadline_s: float) -> dict[str, Any]:
        started = time.monotonic()
        gate = asyncio.Semaphore(MAX_IN_FLIGHT)
        failures: dict[str, int] = {}
        first = len(self.clients)

        async def one(i: int) -> None:
            async with gate:
                try:
                    conn = await self.dial("client", self.client_token, f"bench-{i}",
                                           source_address(i))
                except Exception as e:
                    reason = f"{type(e).__name__}: {str(e)[:80]}"
                    failures[reason] = failures.get(reason, 0) + 1
                    return
                self.clients.append(conn)

        tasks = [asyncio.ensure_future(one(first + i)) for i in range(n)]
        _done, pending = await asyncio.wait(tasks, timeout=deadline_s)
        for task in pending:
            task.cancel()
        if pending:
            failures["not done in time"] = len(pending)
        seconds = time.monotonic() - started
        log(f"{len(self.clients) - first} of {n} clients joined in {seconds:.1f} s")
        return {"event": "connected", "joined": len(self.clients) - first,
                "failures": failures, "seconds": round(seconds, 2)}

    async def watch(self, resource_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            open_clients = [c for c in self.clients if c.open]
            if all(resource_id in c.seen for c in open_clients):
                break
            await asyncio.sleep(0.01)
        open_clients = [c for c in self.clients if c.open]
        times = [c.seen[resource_id] for c in open_clients if resource_id in c.seen]
        return {"event": "arrivals", "times": times, "open": len(open_clients),
                "missing": len(open_clients) - len(times)}

    async def authz(self, resource_id: str, count: int, timeout: float) -> dict[str, Any]:
        requester = self.requester
        assert requester is not None and requester.events is not None
        rtts: list[float] = []
        failures: dict[str, int] = {}
        for _ in range(count):
            started = time.perf_counter()
            requester.push("client", "request_authorization",
                           {"resource_id": resource_id, "connected_gateway_ids": []})
            try:
                frame = await self._answer(requester, timeout)
            except TimeoutError:
                failures["timeout"] = failures.get("timeout", 0) + 1
                if failures["timeout"] >= MAX_TIMEOUTS:
                    failures["stopped after timeouts"] = 1
                    break
                # Let the late answer arrive now, so it is not taken for the next one's.
                try:
                    await self._answer(requester, LATE_ANSWER)
                except TimeoutError:
                    pass
                continue
            event = frame.get("event")
            if event == "authorization_created":
                rtts.append((time.perf_counter() - started) * 1000)
            else:
                reason = str(frame["payload"].get("reason"))
                failures[reason] = failures.get(reason, 0) + 1
        return {"event": "authz", "rtt_ms": rtts, "failures": failures}

    @staticmethod
    async def _answer(requester: Conn, timeout: float) -> dict[str, Any]:
        """The next ``authorization_created`` / ``authorization_creation_failed``."""
        assert requester.events is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            frame = await asyncio.wait_for(requester.events.get(), remaining)
            if frame.get("event") in ("authorization_created", "authorization_creation_failed"):
                return frame

    def status(self) -> dict[str, Any]:
        open_clients = [c for c in self.clients if c.open]
        return {
            "event": "status",
            "open": len(open_clients),
            "heartbeats_sent": sum(c.heartbeats_sent for c in self.clients),
            "heartbeats_ok": sum(c.heartbeats_ok for c in self.clients),
            "unanswered": sum(1 for c in open_clients if c.heartbeats_sent - c.heartbeats_ok > 1),
        }

    async def close(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.cancel()
        for conn in self.everyone():
            conn.close()
        await asyncio.sleep(0.2)


async def serve(load: Load) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    for _ in range(10_000):
        line = await stdin.readline()
        if not line:
            break
        command = json.loads(line)
        cmd = command.get("cmd")
        try:
            if cmd == "setup":
                answer(await load.setup())
            elif cmd == "connect":
                answer(await load.connect(int(command["n"]),
                                          float(command.get("deadline", 600))))
            elif cmd == "watch":
                answer(await load.watch(command["resource_id"],
                                        float(command.get("timeout", 60))))
            elif cmd == "authz":
                answer(await load.authz(command["resource_id"], int(command.get("count", 200)),
                                        float(command.get("timeout", 5))))
            elif cmd == "status":
                answer(load.status())
            elif cmd == "quit":
                break
            else:
                answer({"event": "error", "error": f"unknown command {cmd!r}"})
        except Exception as e:
            answer({"event": "error", "error": f"{type(e).__name__}: {e}"})
    await load.close()
    answer({"event": "bye"})


def raise_nofile() -> int:
    """Allow as many sockets as the hard limit permits; returns the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-token", required=True)
    parser.add_argument("--gateway-token", required=True)
    args = parser.parse_args()
    limit = raise_nofile()
    log(f"RLIMIT_NOFILE {limit}")
    asyncio.run(serve(Load(args.port, args.client_token, args.gateway_token)))


if __name__ == "__main__":
    main()
