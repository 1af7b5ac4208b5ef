#!/usr/bin/env python3
"""The load generator of the ws4tx benchmark suite: many WebSocket clients in one process.

It is driven by ``bench/run.py`` through JSON lines on stdin and answers with one JSON line
on stdout per command. Its client is chosen with ``--client``:

- ``stream`` (the suite's default in its virtualenvs): an asyncio protocol (on uvloop when
  installed) that counts frames in the byte stream of each socket instead of handing each
  one to Python: once it has seen a benchmark frame of the current phase it knows the
  frame's length and header, and for every chunk read from a socket it checks, with a few
  C-level operations whatever the number of frames in it (strided slices of the header
  bytes, ``bytes.count`` of the phase's mark, the sequence numbers of the first and last
  frame), that the chunk holds k whole frames of that shape, in order and contiguous; then
  it counts k. Latency is taken on a sample: the frames whose sequence number is congruent
  to the client's number modulo ``--sample-every`` (so every message is sampled on a share
  of the clients, whatever its place in a chunk). Anything else (a partial or different
  frame, a control frame, a gap, a duplicate, compression) goes through the per-frame path
  below, frame by frame.
- ``picows``: picows on uvloop, one Python call per frame (when picows is installed);
- ``asyncio``: a small asyncio WebSocket client of this file, one Python call per frame
  (the default without picows; the smoke mode, which installs nothing).

Every benchmark message carries ``B|<tag:4>|<seq:8>|<send time ns:19>|padding`` somewhere
in its text (raw for ws4tx, the ceiling and Channels; inside ``42["m","..."]`` for
Socket.IO). A client counts, per phase tag, the messages it got, duplicates and
out-of-order ones, and the latency (receive time - send time, one clock, one machine).

The process exits when stdin closes, so it never outlives the suite.
"""

from __future__ import annotations

import argparse
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
    mark = b"B|----|"
    lat = array.array("q")  # microseconds
    capped = 0
    #: Latency is taken on the frames whose sequence number is congruent to the client's
    #: number modulo ``stride`` (1: every frame).
    stride = 1


P = Phase()


def _keep_latency(now: int, data: bytes, at: int) -> None:
    """The latency in µs of the frame whose mark is at ``data[at]`` (its send time in ns
    follows the mark), read at ``now``; counted as capped past LATENCY_CAP samples."""
    lat = P.lat
    if len(lat) < LATENCY_CAP:
        lat.append((now - int(data[at + 16:at + 35])) // 1000)
    else:
        P.capped += 1


CLIENTS: list[Core] = []
CLOSE_CODES: collections.Counter = collections.Counter()
#: The number the next client gets (it picks the frames whose latency that client samples).
_CLIENT_IDS = 0
#: Bytes the asyncio clients read from their sockets in the current phase.
WIRE = [0]


class Core:
    """Per-client counting, shared by both transports (the hot path is :meth:`handle`)."""

    def init_core(self, sio: bool) -> None:
        global _CLIENT_IDS
        self.cid = _CLIENT_IDS
        _CLIENT_IDS += 1
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
        if (seq - self.cid) % P.stride:
            return
        lat = P.lat
        if len(lat) < LATENCY_CAP:
            lat.append((now - int(p[o + 16:o + 35])) // 1000)
        else:
            P.capped += 1

    def sampled(self, first: int, last: int) -> tuple[int, range]:
        """Frames ``first`` to ``last``, in order, just read: the time now (this client's
        first frame's, if none came before) and which of their sequence numbers this
        client samples (its own modulo the stride)."""
        now = _now_ns()
        if not self.first_ns:
            self.first_ns = now
        stride = P.stride
        return now, range(first + (self.cid - first) % stride, last + 1, stride)

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


_INCOMPLETE, _CLOSED = -1, -2
#: The ones and tens digits of 0, 1, 2, ... (period 100), _RUN of them: what the sequence
#: numbers of a contiguous run of frames show in those places.
_RUN = 10_000
_ONES = bytes(48 + t % 10 for t in range(_RUN))
_TENS = bytes(48 + t // 10 % 10 for t in range(_RUN))


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
        if not self.head_done and not self._handshake(buf):
            return
        i, n = 0, len(buf)
        while n - i >= 2:
            j = self._frame(buf, i, n)
            if j < 0:
                if j == _CLOSED:
                    return
                break
            i = j
        if i:
            del buf[:i]

    def _handshake(self, buf: bytearray) -> bool:
        """Whether the 101 answer is complete and good (then it is taken off ``buf``)."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 65536:
                self._fail(ConnectionError("oversized handshake response"))
            return False
        status = bytes(buf[:buf.find(b"\r\n")])
        if b" 101 " not in status + b" ":
            self._fail(ConnectionError(status.decode("latin-1")))
            return False
        if self.deflate and b"server_no_context_takeover" not in bytes(buf[:end]):
            self._fail(ConnectionError("permessage-deflate without server context "
                                       "takeover was not negotiated"))
            return False
        del buf[:end + 4]
        self.head_done = True
        self.is_open = True
        if not self.upgraded.done():
            self.upgraded.set_result(self)
        return True

    def _frame(self, buf: bytes | bytearray, i: int, n: int) -> int:
        """Take the frame at ``buf[i:n]``: the index after it, or ``_INCOMPLETE``, or
        ``_CLOSED`` (a close frame: answered, the connection closed)."""
        b0, b1 = buf[i], buf[i + 1]
        ln, h = b1 & 0x7F, 2
        if ln == 126:
            if n - i < 4:
                return _INCOMPLETE
            ln, h = int.from_bytes(buf[i + 2:i + 4], "big"), 4
        elif ln == 127:
            if n - i < 10:
                return _INCOMPLETE
            ln, h = int.from_bytes(buf[i + 2:i + 10], "big"), 10
        if n - i < h + ln:
            return _INCOMPLETE
        payload = bytes(buf[i + h:i + h + ln])
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
            return _CLOSED
        elif op == 9:
            self._send(0xA, payload)
        return i + h + ln

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


class StreamClient(AsyncioClient):
    """The asyncio client that counts frames in its socket's byte stream (``--client
    stream``): see the module's docstring. Its shape of a benchmark frame (length, header
    bytes, where the mark is) is learnt from the last one that took the per-frame path."""

    #: Length, header bytes (2 or 4) and mark offset of the benchmark frames (0: not learnt).
    fl = 0
    fh = b""
    mo = 0

    def data_received(self, data: bytes) -> None:
        WIRE[0] += len(data)
        pending = self.buf
        if pending or not self.head_done:
            pending += data
            if not self.head_done and not self._handshake(pending):
                return
            data = bytes(pending)
            pending.clear()
        mark = P.mark
        i, n = 0, len(data)
        while n - i >= 2:
            fl = self.fl
            if fl and n - i >= fl and data.startswith(self.fh, i):
                k = (n - i) // fl
                end = i + k * fl
                o = i + self.mo
                if k == 1:
                    # One frame of the learnt shape (its header) with this phase's mark
                    # where the mark goes: counted if it follows what this client had.
                    if data.startswith(mark, o):
                        try:
                            seq = int(data[o + 7:o + 15])
                        except ValueError:
                            seq = -1
                        if seq > self.last:
                            self.n += 1
                            self.last = seq
                            if not (seq - self.cid) % P.stride or not self.first_ns:
                                self._sample(data, o, seq, seq, fl)
                            i = end
                            continue
                else:
                    fh = self.fh
                    # k whole frames of the learnt shape: every frame's header bytes
                    # (strided slices), one mark of this phase in each (a C-level count),
                    # and ...
                    if (data[i:end:fl] == fh[:1] * k and data[i + 1:end:fl] == fh[1:2] * k
                            and (len(fh) == 2 or (data[i + 2:end:fl] == fh[2:3] * k
                                                  and data[i + 3:end:fl] == fh[3:4] * k))
                            and data.count(mark, i, end) == k):
                        q = o + (k - 1) * fl
                        try:
                            first = int(data[o + 7:o + 15])
                            last = int(data[q + 7:q + 15])
                        except ValueError:
                            first = last = -1
                        # ... the first follows what this client had, the last is k - 1
                        # on, and the last two digits of every sequence number go up by
                        # one from frame to frame: in order, contiguous, none twice (what
                        # is not goes frame by frame below).
                        r = first % 100
                        if (first > self.last and last - first == k - 1 and k + r <= _RUN
                                and data[o + 14:end:fl] == _ONES[r:r + k]
                                and data[o + 13:end:fl] == _TENS[r:r + k]):
                            self.n += k
                            self.last = last
                            self._sample(data, o, first, last, fl)
                            i = end
                            continue
            j = self._frame(data, i, n)
            if j < 0:
                if j == _CLOSED:
                    return
                break
            b0, b1 = data[i], data[i + 1]
            if (b0 == 0x81 or b0 == 0x82) and b1 < 127:
                h = 2 if b1 < 126 else 4
                m = data.find(mark, i + h, j)
                if m >= 0:
                    self.fl, self.fh, self.mo = j - i, data[i:i + h], m - i
            i = j
        if i < n:
            pending += memoryview(data)[i:]

    def _sample(self, data: bytes, o: int, first: int, last: int, fl: int) -> None:
        """The latency of the frames from sequence number ``first`` to ``last`` (the
        first's mark at ``data[o]``) whose number is this client's modulo the stride."""
        now, due = self.sampled(first, last)
        for seq in due:
            _keep_latency(now, data, o + (seq - first) * fl)


class StormClient(AsyncioClient):
    """The asyncio client with headers of its own (a session cookie), that says the
    ``Retry-After`` of a refused handshake in its error and notes the resume token of
    ws4tx's ``ws4tx.session`` event (the ``storm`` command)."""

    def __init__(self, url: str, sio: bool, upgraded: asyncio.Future,
                 deflate: bool = False, protocols: tuple[str, ...] = (),
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(url, sio, upgraded, deflate, protocols)
        self.headers = headers or {}
        self.session: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        transport.write((
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}"
            + (f"Sec-WebSocket-Protocol: {', '.join(self.protocols)}\r\n"
               if self.protocols else "")
            + "\r\n").encode())

    def _handshake(self, buf: bytearray) -> bool:
        end = buf.find(b"\r\n\r\n")
        status = bytes(buf[:buf.find(b"\r\n")]) if end >= 0 else b""
        if end >= 0 and b" 101 " not in status + b" ":
            retry = ""
            for line in bytes(buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"retry-after":
                    retry = f" retry-after={value.strip().decode('latin-1')}"
            self._fail(ConnectionError(status.decode("latin-1") + retry))
            return False
        return super()._handshake(buf)

    def control(self, p: bytes) -> None:
        if b'"event":"ws4tx.session"' in p and not self.session.done():
            import json

            try:
                self.session.set_result(json.loads(p)["data"]["resume"])
            except (ValueError, KeyError, TypeError) as e:
                self.session.set_exception(e)
            return
        super().control(p)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        super().connection_lost(exc)
        if not self.session.done():
            self.session.set_exception(ConnectionError("closed before its session event"))


class SSEClient(asyncio.Protocol, Core):
    """A Server-Sent Events client (``kind: sse``): a ``GET`` of the channel's URL with
    ``Accept: text/event-stream``, then the stream counted in its bytes, never event by
    event. Each benchmark message is one event whose data is the message, so one mark of
    the phase (``B|tag|``) per event: a chunk read from the socket is counted with one
    C-level ``bytes.count`` of the mark, checked in order by the sequence numbers of its
    first and last mark (``k`` marks from ``first`` to ``first + k - 1``); a chunk that is
    not (a gap, a duplicate, an event cut between two reads) goes event by event through
    :meth:`Core.handle`. Latency is taken on the events whose sequence number is the
    client's modulo ``--sample-every``, each found with one ``bytes.find``. The HTTP/1.1
    chunked framing around the events is left in the bytes: it holds no mark."""

    def __init__(self, url: str, sio: bool, upgraded: asyncio.Future,
                 deflate: bool = False, protocols: tuple[str, ...] = ()) -> None:
        self.init_core(False)
        parts = urlsplit(url)
        self.path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        self.host = parts.netloc
        self.upgraded = upgraded
        self.head = bytearray()
        #: The bytes after the last whole event of the previous read (an event cut in two).
        self.tail = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write((f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
                         "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")
                        .encode())

    def data_received(self, data: bytes) -> None:
        WIRE[0] += len(data)
        if self.head is not None:
            head = self.head
            head += data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(head) > 65536:
                    self._fail(ConnectionError("oversized response head"))
                return
            status = bytes(head[:head.find(b"\r\n")])
            if b" 200 " not in status + b" ":
                self._fail(ConnectionError(status[:80].decode("latin-1")))
                return
            data = bytes(head[end + 4:])
            self.head = None  # type: ignore[assignment]
            self.is_open = True
            if not self.upgraded.done():
                self.upgraded.set_result(True)
        if self.tail:
            data = self.tail + data
            self.tail = b""
        # Only whole events: what follows the last blank line waits for the next read.
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self.tail = data
            return
        if cut + 2 < len(data):
            self.tail = data[cut + 2:]
            data = data[:cut + 2]
        mark = P.mark
        k = data.count(mark)
        if not k:  # comments and events of the server: not counted
            return
        o = data.find(mark)
        q = data.rfind(mark)
        try:
            first = int(data[o + 7:o + 15])
            last = int(data[q + 7:q + 15])
        except ValueError:
            first = last = -1
        if first > self.last and last - first == k - 1:
            self.n += k
            self.last = last
            now, due = self.sampled(first, last)
            for seq in due:
                at = o if seq == first else data.find(mark + b"%08d" % seq, o)
                if at >= 0:
                    _keep_latency(now, data, at)
            return
        for event in data.split(b"\n\n"):
            if mark in event or MARK in event:
                self.handle(event)

    def _fail(self, error: Exception) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed(1006 if self.is_open else None)
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the stream began"))

    def send_text(self, data: bytes) -> None:
        pass  # a stream is one way

    def close(self) -> None:
        if self.transport is not None:
            self.is_open = False
            self.transport.close()


async def _connect_asyncio(url: str, sio: bool, timeout: float,
                           deflate: bool = False, protocols: tuple[str, ...] = (),
                           cls: type[AsyncioClient] = AsyncioClient) -> Core:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    upgraded: asyncio.Future = loop.create_future()
    transport, client = await loop.create_connection(
        lambda: cls(url, sio, upgraded, deflate, protocols), parts.hostname,
        parts.port or 80)
    try:
        await asyncio.wait_for(asyncio.shield(upgraded), timeout)
    except BaseException:
        transport.abort()
        raise
    return client


# commands -------------------------------------------------------------------------------

#: The clients ``--client`` chooses from.
CLIENT_KINDS = ("stream", "picows", "asyncio")


class Generator:
    def __init__(self, client: str, sample_every: int) -> None:
        self.client = client
        self.sample_every = sample_every
        self.connect_start_ns = 0
        self.phase_started_ns = 0
        self.phase_clients = 0

    def describe(self) -> str:
        parts = []
        if self.client == "picows":
            parts.append(f"picows {getattr(picows, '__version__', '?')}")
        elif self.client == "stream":
            parts.append(f"stream counter of bench/loadgen.py (frames counted in each "
                         f"socket's byte stream; latency sampled on 1 frame in "
                         f"{self.sample_every})")
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
        cls = StreamClient if self.client == "stream" else AsyncioClient
        connect = (_connect_picows if self.client == "picows"
                   else functools.partial(_connect_asyncio, cls=cls))
        protocols = tuple(c.get("protocols") or ())
        if protocols:
            connect = functools.partial(connect, protocols=protocols)
        if c.get("kind") == "sse":  # every client of this process counts bytes
            connect = functools.partial(_connect_asyncio, cls=SSEClient)
        if c.get("deflate"):  # picows has no permessage-deflate
            connect = functools.partial(_connect_asyncio, deflate=True, protocols=protocols,
                                        cls=cls)
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

    async def cmd_storm(self, c: dict) -> dict:
        """Connect ``clients`` (each ``{"url", "headers"}``), ``concurrency`` handshakes
        in flight, a refused one (503) tried again after its ``Retry-After`` as ws4tx.js
        does; with ``session`` wait for each client's ``ws4tx.session`` event and give its
        resume token. Connect time: from a client's first attempt to its 101, or from
        ``since_ns`` (wall clock) when given (a node's kill: the time to be back); ``within``
        counts the clients whose connect time is at most ``within_ms``."""
        entries: list[dict] = c["clients"]
        timeout = float(c.get("timeout", 30.0))
        deadline = float(c.get("deadline", 120.0))
        want_session = bool(c.get("session"))
        since_ns = int(c.get("since_ns", 0))
        within_ms = float(c.get("within_ms", 0))
        protocols = tuple(c.get("protocols") or ())
        sem = asyncio.Semaphore(int(c.get("concurrency", 200)))
        errors: collections.Counter = collections.Counter()
        times_ms: list[float] = []
        done_ns: list[int] = []
        tokens: list[Optional[str]] = [None] * len(entries)
        refused = [0]
        self.connect_start_ns = start = _now_ns()
        stop_at = time.monotonic() + deadline

        async def one(i: int, entry: dict) -> None:
            first = 0
            while time.monotonic() < stop_at:
                client: Any = None
                wait = 0.0
                async with sem:
                    first = first or _now_ns()
                    try:
                        client = await asyncio.wait_for(_connect_asyncio(
                            entry["url"], False, timeout, protocols=protocols,
                            cls=functools.partial(  # type: ignore[arg-type]
                                StormClient, headers=entry.get("headers"))), timeout)
                    except Exception as e:  # noqa: BLE001 - counted and reported
                        text = str(e)
                        if " 503 " not in text:
                            errors[type(e).__name__ + ": " + text[:60]] += 1
                            return
                        refused[0] += 1
                        after = text.partition("retry-after=")[2]
                        wait = float(after) if after.isdigit() else 1.0
                if wait:  # out of the handshakes in flight while it waits
                    await asyncio.sleep(wait)
                    continue
                opened = _now_ns()
                CLIENTS.append(client)
                if want_session:
                    try:
                        tokens[i] = await asyncio.wait_for(client.session, timeout)
                    except Exception as e:  # noqa: BLE001
                        errors["no session event: " + type(e).__name__] += 1
                        return
                times_ms.append((opened - (since_ns or first)) / 1e6)
                done_ns.append(opened)
                return
            errors["deadline"] += 1

        await asyncio.gather(*(one(i, e) for i, e in enumerate(entries)))
        seconds = ((max(done_ns) if done_ns else _now_ns()) - start) / 1e9
        times_ms.sort()
        n = len(times_ms)

        def q(f: float) -> Optional[float]:
            return round(times_ms[min(n - 1, int(f * n))], 2) if n else None

        return {"connected": n, "failed": len(entries) - n, "seconds": round(seconds, 4),
                "connects_per_s": round(n / seconds, 1) if seconds > 0 else None,
                "refused_503": refused[0], "p50_ms": q(0.5), "p99_ms": q(0.99),
                "max_ms": round(times_ms[-1], 2) if n else None,
                "within": sum(1 for t in times_ms if t <= within_ms) if within_ms else None,
                "errors": dict(errors.most_common(5)),
                "tokens": tokens if want_session else None}

    async def cmd_phase(self, c: dict) -> dict:
        P.tag = c["tag"].encode()
        P.mark = MARK + P.tag + b"|"
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
        by_ns = int(c.get("recovered_by_ns", 0))
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
            "latency_sampled_every": P.stride,
            "latency_capped": P.capped,
            "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99),
            "max_ms": round(lat[-1] / 1000.0, 3) if n else None,
            "mean_ms": round(sum(lat) / n / 1000.0, 3) if n else None,
            "with_first": len(firsts),
            # ws4tx.recovered: clients told, told true, and when the last was told.
            "recovered_told": sum(1 for k in group if k.recovered_ns),
            "recovered_true": sum(1 for k in group if k.recovered_ok),
            # told true by a time (wall clock, ns) given as recovered_by_ns
            "recovered_true_by": sum(1 for k in group if k.recovered_ok
                                     and k.recovered_ns <= by_ns) if by_ns else None,
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


async def main(client: str, sample_every: int) -> None:
    gen = Generator(client, sample_every)
    P.stride = sample_every if client == "stream" else 1
    await serve(lambda command: getattr(gen, "cmd_" + command.get("cmd", ""))(command))
    for k in CLIENTS:
        try:
            k.close()
        except Exception:  # noqa: BLE001
            pass


def _options(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="the load generator of bench/run.py")
    p.add_argument("--client", choices=CLIENT_KINDS,
                   default="picows" if picows is not None else "asyncio",
                   help="stream: frames counted in the byte stream; picows / asyncio: one "
                        "Python call per frame [default: picows if installed, else asyncio]")
    p.add_argument("--sample-every", type=int, default=10,
                   help="stream: latency of 1 frame in N (by sequence number) [default: 10]")
    p.add_argument("--no-uvloop", action="store_true")
    a = p.parse_args(argv)
    if a.client == "picows" and picows is None:
        p.error("--client picows: picows is not installed here")
    if a.sample_every < 1:
        p.error("--sample-every must be at least 1")
    return a


if __name__ == "__main__":
    options = _options(sys.argv[1:])
    run = main(options.client, options.sample_every)
    if uvloop is not None and not options.no_uvloop:
        uvloop.run(run)
    else:
        asyncio.run(run)
