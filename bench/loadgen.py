#!/usr/bin/env python3
"""The load generator of the ws4tx benchmark suite: many WebSocket clients in one process.

It is driven by ``bench/run.py`` through JSON lines on stdin and answers with one JSON line
on stdout per command. The clients use picows on uvloop when they are installed (the
``loadgen`` virtualenv of the suite); otherwise a small asyncio WebSocket client of this file
(used by the smoke mode, which installs nothing).

Every benchmark message carries ``B|<tag:4>|<seq:8>|<send time ns:19>|padding`` somewhere
in its text (raw for ws4tx, the ceiling and Channels; inside ``42["m","..."]`` for
Socket.IO). A client counts, per phase tag, the messages it got, duplicates and
out-of-order ones, and the latency (receive time - send time, one clock, one machine).

The process exits when stdin closes, so it never outlives the suite.
"""

from __future__ import annotations

import array
import asyncio
import base64
import collections
import functools
import os
import sys
import time
import zlib
from typing import Any, Optional
from urllib.parse import urlsplit

from _commands import serve

try:  # pragma: no cover - depends on the virtualenv
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None
try:  # pragma: no cover
    import picows
    from picows import WSListener, WSMsgType
except ImportError:  # pragma: no cover
    picows = None
    WSListener = object  # type: ignore[misc,assignment]

MARK = b"B|"
_now_ns = time.time_ns

#: Latency samples kept per phase (beyond that only counts go on).
LATENCY_CAP = 4_000_000


class Phase:
    """What all clients share: the current tag and the latency samples of the phase."""

    tag = b"----"
    lat = array.array("q")  # microseconds
    capped = 0


P = Phase()
CLIENTS: list[Core] = []
CLOSE_CODES: collections.Counter = collections.Counter()
#: Bytes the asyncio clients read from their sockets in the current phase.
WIRE = [0]


class Core:
    """Per-client counting, shared by both transports (the hot path is :meth:`handle`)."""

    def init_core(self, sio: bool) -> None:
        self.sio = sio
        self.off = -1
        self.ready: Optional[asyncio.Future] = None
        self.nsp_ok = False
        self.is_open = False
        self.reset()

    def reset(self) -> None:
        self.in_phase = self.is_open
        self.n = 0
        self.last = -1
        self.dup = 0
        self.ooo = 0
        self.stale = 0
        self.other = 0
        self.first_ns = 0
        self.closed_in_phase = None
        self.recovered_ns = 0
        self.recovered_ok = False

    def handle(self, p: bytes) -> None:
        o = self.off
        if o < 0 or p[o:o + 2] != MARK:
            o = p.find(MARK)
            if o < 0:
                self.control(p)
                return
            self.off = o
        if p[o + 2:o + 6] != P.tag:
            self.stale += 1
            return
        now = _now_ns()
        seq = int(p[o + 7:o + 15])
        if seq > self.last:
            self.n += 1
            self.last = seq
        elif seq == self.last:
            self.dup += 1
        else:
            self.ooo += 1
        if not self.first_ns:
            self.first_ns = now
        lat = P.lat
        if len(lat) < LATENCY_CAP:
            lat.append((now - int(p[o + 16:o + 35])) // 1000)
        else:
            P.capped += 1

    def control(self, p: bytes) -> None:
        """A message that is not a benchmark message (Socket.IO's own packets; ws4tx's
        events, of which ws4tx.recovered is noted)."""
        if b'"event":"ws4tx.recovered"' in p:
            self.recovered_ns = _now_ns()
            self.recovered_ok = b'"data":{"recovered":true' in p
            return
        if self.sio:
            if p == b"2":  # Engine.IO ping
                self.send_text(b"3")
                return
            if p[:1] == b"0":  # Engine.IO open: connect to the default namespace
                self.send_text(b"40")
                return
            if p[:2] == b"40":
                self.nsp_ok = True
                if self.ready is not None and not self.ready.done():
                    self.ready.set_result(True)
                return
            if p[:2] in (b"44", b"41"):
                if self.ready is not None and not self.ready.done():
                    self.ready.set_exception(ConnectionError("socket.io refused: " + p[:80].decode("latin-1")))
                return
        self.other += 1

    def closed(self, code: Optional[int]) -> None:
        if self.is_open:
            self.is_open = False
            CLOSE_CODES[str(code)] += 1
            self.closed_in_phase = code
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during handshake ({code})"))

    # transport-specific
    def send_text(self, data: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


# picows transport ---------------------------------------------------------------------

if picows is not None:
    _TEXT, _BINARY, _CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE

    class PicowsClient(WSListener, Core):  # type: ignore[misc]
        def __init__(self, sio: bool) -> None:
            super().__init__()
            self.init_core(sio)
            self.t = None

        def on_ws_connected(self, transport: Any) -> None:
            self.t = transport
            self.is_open = True

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            mt = frame.msg_type
            if mt is _TEXT or mt is _BINARY:
                self.handle(frame.get_payload_as_bytes())
            elif mt is _CLOSE:
                code = frame.get_close_code()
                self.closed(int(getattr(code, "value", code)))
                transport.send_close(code)
                transport.disconnect()

        def on_ws_disconnected(self, transport: Any) -> None:
            self.closed(1006)

        def send_text(self, data: bytes) -> None:
            if self.t is not None and not self.t.is_disconnected:
                self.t.send(_TEXT, data)

        def close(self) -> None:
            if self.t is not None and not self.t.is_disconnected:
                self.is_open = False
                self.t.send_close(picows.WSCloseCode.OK)
                self.t.disconnect()

    async def _connect_picows(url: str, sio: bool, timeout: float,
                              protocols: tuple[str, ...] = ()) -> Core:
        _transport, client = await picows.ws_connect(
            lambda: PicowsClient(sio), url,
            websocket_handshake_timeout=timeout,
            read_buffer_init_size=4096,
            enable_auto_pong=True,
            extra_headers={"Sec-WebSocket-Protocol": ", ".join(protocols)}
            if protocols else None,
        )
        return client


# plain asyncio transport ----------------------------------------------------------------

class AsyncioClient(asyncio.Protocol, Core):
    """A minimal RFC 6455 client: enough for this suite (no TLS). With ``deflate`` it
    offers permessage-deflate and needs the server to answer without server context
    takeover (each compressed message then inflates on its own)."""

    def __init__(self, url: str, sio: bool, upgraded: asyncio.Future,
                 deflate: bool = False, protocols: tuple[str, ...] = ()) -> None:
        self.init_core(sio)
        self.deflate = deflate
        self.protocols = protocols
        parts = urlsplit(url)
        self.path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        self.host = parts.netloc
        self.upgraded = upgraded
        self.buf = bytearray()
        self.head_done = False
        self.frag: Optional[bytearray] = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n"
            + ("Sec-WebSocket-Extensions: permessage-deflate\r\n" if self.deflate else "")
            + (f"Sec-WebSocket-Protocol: {', '.join(self.protocols)}\r\n"
               if self.protocols else "")
            + "\r\n").encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        WIRE[0] += len(data)
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self._fail(ConnectionError("oversized handshake response"))
                return
            status = bytes(buf[:buf.find(b"\r\n")])
            if b" 101 " not in status + b" ":
                self._fail(ConnectionError(status.decode("latin-1")))
                return
            if self.deflate and b"server_no_context_takeover" not in bytes(buf[:end]):
                self._fail(ConnectionError("permessage-deflate without server context "
                                           "takeover was not negotiated"))
                return
            del buf[:end + 4]
            self.head_done = True
            self.is_open = True
            if not self.upgraded.done():
                self.upgraded.set_result(self)
        i, n = 0, len(buf)
        while n - i >= 2:
            b0, b1 = buf[i], buf[i + 1]
            ln, h = b1 & 0x7F, 2
            if ln == 126:
                if n - i < 4:
                    break
                ln, h = int.from_bytes(buf[i + 2:i + 4], "big"), 4
            elif ln == 127:
                if n - i < 10:
                    break
                ln, h = int.from_bytes(buf[i + 2:i + 10], "big"), 10
            if n - i < h + ln:
                break
            payload = bytes(buf[i + h:i + h + ln])
            i += h + ln
            op = b0 & 0x0F
            if b0 & 0x40:  # compressed (whole messages only: ws4tx does not fragment)
                payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
            if op == 0:
                if self.frag is not None:
                    self.frag += payload
                    if b0 & 0x80:
                        payload, self.frag = bytes(self.frag), None
                        self.handle(payload)
            elif op in (1, 2):
                if b0 & 0x80:
                    self.handle(payload)
                else:
                    self.frag = bytearray(payload)
            elif op == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.closed(code)
                self._send(0x8, payload[:2])
                self.transport.close()
                return
            elif op == 9:
                self._send(0xA, payload)
        if i:
            del buf[:i]

    def _fail(self, error: Exception) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(error)
        self.transport.abort()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed(1006)
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("connection lost in handshake"))

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, 0x80 | n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 0xFE]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 0xFF]) + n.to_bytes(8, "big")
        masked = bytes(b ^ mask[k & 3] for k, b in enumerate(payload))
        self.transport.write(head + mask + masked)

    def send_text(self, data: bytes) -> None:
        self._send(0x1, data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.is_open = False
            self._send(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()


async def _connect_asyncio(url: str, sio: bool, timeout: float,
                           deflate: bool = False, protocols: tuple[str, ...] = ()) -> Core:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    upgraded: asyncio.Future = loop.create_future()
    transport, client = await loop.create_connection(
        lambda: AsyncioClient(url, sio, upgraded, deflate, protocols), parts.hostname,
        parts.port or 80)
    try:
        await asyncio.wait_for(asyncio.shield(upgraded), timeout)
    except BaseException:
        transport.abort()
        raise
    return client


# commands -------------------------------------------------------------------------------

class Generator:
    def __init__(self) -> None:
        self.connect_start_ns = 0
        self.phase_started_ns = 0
        self.phase_clients = 0

    def describe(self) -> str:
        parts = []
        if picows is not None:
            parts.append(f"picows {getattr(picows, '__version__', '?')}")
        else:
            parts.append("asyncio client of bench/loadgen.py")
        loop = asyncio.get_running_loop()
        if uvloop is not None and isinstance(loop, uvloop.Loop):
            parts.append(f"on uvloop {uvloop.__version__}")
        else:
            parts.append("on the asyncio loop")
        return " ".join(parts)

    async def cmd_hello(self, c: dict) -> dict:
        return {"ok": True, "client": self.describe(), "pid": os.getpid(),
                "python": sys.version.split()[0]}

    async def cmd_connect(self, c: dict) -> dict:
        urls: list[str] = c["urls"]
        sio = c.get("kind") == "sio"
        timeout = float(c.get("timeout", 20.0))
        deadline = float(c.get("deadline", 120.0))
        sem = asyncio.Semaphore(int(c.get("concurrency", 200)))
        connect = _connect_picows if picows is not None and not c.get("asyncio") else _connect_asyncio
        protocols = tuple(c.get("protocols") or ())
        if protocols:
            connect = functools.partial(connect, protocols=protocols)
        if c.get("deflate"):  # picows has no permessage-deflate
            connect = functools.partial(_connect_asyncio, deflate=True, protocols=protocols)
        errors: collections.Counter = collections.Counter()
        done_ns: list[int] = []
        self.connect_start_ns = start = _now_ns()
        loop = asyncio.get_running_loop()

        async def one(url: str) -> None:
            async with sem:
                client = None
                try:
                    client = await asyncio.wait_for(connect(url, sio, timeout), timeout)
                    if sio and not client.nsp_ok:
                        client.ready = loop.create_future()
                        await asyncio.wait_for(client.ready, timeout)
                    CLIENTS.append(client)
                    done_ns.append(_now_ns())
                except Exception as e:  # noqa: BLE001 - counted and reported
                    errors[type(e).__name__ + ": " + str(e)[:60]] += 1
                    if client is not None:
                        client.close()

        tasks = [asyncio.ensure_future(one(u)) for u in urls]
        _finished, pending = await asyncio.wait(tasks, timeout=deadline)
        for t in pending:
            t.cancel()
        if pending:
            errors["deadline"] += len(pending)
        seconds = ((max(done_ns) if done_ns else _now_ns()) - start) / 1e9
        return {"connected": len(done_ns), "failed": len(urls) - len(done_ns),
                "seconds": round(seconds, 4), "errors": dict(errors.most_common(5)),
                "open": sum(1 for k in CLIENTS if k.is_open)}

    async def cmd_phase(self, c: dict) -> dict:
        P.tag = c["tag"].encode()
        P.lat = array.array("q")
        P.capped = 0
        CLOSE_CODES.clear()
        WIRE[0] = 0
        for k in CLIENTS:
            k.reset()
        self.phase_started_ns = _now_ns()
        self.phase_clients = sum(1 for k in CLIENTS if k.is_open)
        return {"ok": True, "clients": self.phase_clients}

    async def cmd_progress(self, c: dict) -> dict:
        return {"received": sum(k.n for k in CLIENTS),
                "with_any": sum(1 for k in CLIENTS if k.n),
                "open": sum(1 for k in CLIENTS if k.is_open)}

    async def cmd_stats(self, c: dict) -> dict:
        expected = int(c.get("expected", 0))
        group = list(CLIENTS) if c.get("recount") else [k for k in CLIENTS if k.in_phase]
        clients = len(group)
        received = sum(k.n for k in group)
        lat = sorted(P.lat)
        n = len(lat)

        def q(f: float) -> Optional[float]:
            return round(lat[min(n - 1, int(f * n))] / 1000.0, 3) if n else None

        firsts = [k.first_ns for k in group if k.first_ns]
        expected_total = expected * clients
        lost_open = sum(max(0, expected - k.n) for k in group if k.is_open)
        lost_closed = sum(max(0, expected - k.n) for k in group if not k.is_open)
        return {
            "clients": clients,
            "open": sum(1 for k in group if k.is_open),
            "expected_per_client": expected,
            "expected_total": expected_total,
            "received": received,
            "lost": max(0, expected_total - received),
            "loss": round(1 - received / expected_total, 6) if expected_total else None,
            "lost_open": lost_open,
            "lost_closed": lost_closed,
            "complete_clients": sum(1 for k in group if expected and k.n >= expected),
            "duplicates": sum(k.dup for k in group),
            "out_of_order": sum(k.ooo for k in group),
            "stale": sum(k.stale for k in group),
            "other": sum(k.other for k in group),
            "closed_by_server": dict(CLOSE_CODES),
            "wire_bytes": WIRE[0],
            "latency_samples": n,
            "latency_capped": P.capped,
            "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99),
            "max_ms": round(lat[-1] / 1000.0, 3) if n else None,
            "mean_ms": round(sum(lat) / n / 1000.0, 3) if n else None,
            "with_first": len(firsts),
            # ws4tx.recovered: clients told, told true, and when the last was told.
            "recovered_told": sum(1 for k in group if k.recovered_ns),
            "recovered_true": sum(1 for k in group if k.recovered_ok),
            "recovered_after_connect_start_s": round(
                (max(k.recovered_ns for k in group) - self.connect_start_ns) / 1e9, 4)
            if any(k.recovered_ns for k in group) else None,
            "first_after_connect_start_s": round((max(firsts) - self.connect_start_ns) / 1e9, 4)
            if firsts else None,
        }

    async def cmd_close(self, c: dict) -> dict:
        count = len(CLIENTS)
        for k in CLIENTS:
            try:
                k.close()
            except Exception:  # noqa: BLE001
                pass
        deadline = time.monotonic() + float(c.get("timeout", 5.0))
        while time.monotonic() < deadline and any(k.is_open for k in CLIENTS):
            await asyncio.sleep(0.05)
        CLIENTS.clear()
        await asyncio.sleep(0.2)
        return {"closed": count}


async def main() -> None:
    gen = Generator()
    await serve(lambda command: getattr(gen, "cmd_" + command.get("cmd", ""))(command))
    for k in CLIENTS:
        try:
            k.close()
        except Exception:  # noqa: BLE001
            pass


if __name__ == "__main__":
    if uvloop is not None and "--no-uvloop" not in sys.argv:
        uvloop.run(main())
    else:
        asyncio.run(main())
