"""The fan-out floor of the ws4tx benchmark suite in Python: picows on uvloop, no Redis.

The least work a Python push server can do per message: clients connect to
``ws://HOST:PORT/<channel path>``; a local trigger (the ceiling's: a TCP port taking lines
``<channel path> <payload>\\n``, written by ``bench/publisher.py``) hands it payloads; it
builds the WebSocket frame once (server frames are unmasked, so the same bytes go to every
client) and writes those bytes to every client's socket (the asyncio transport under
picows), with no per-client framing, no queue, no backpressure and no slow-client policy.
The messages that arrive in one read of the trigger are written together: one write per
client per read, as ws4tx writes the messages of one Redis read.
It takes the ``fanout`` and ``maxrate`` scenarios only.

Usage: python floor_picows.py WS_PORT TRIGGER_PORT  (in the load generator's venv, which
has picows and uvloop)
"""

from __future__ import annotations

import asyncio
import struct
import sys
from typing import Any

import uvloop
from picows import WSListener, WSMsgType, ws_create_server

#: path -> the asyncio transports of its open clients
CHANNELS: dict[str, set[Any]] = {}


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unfragmented, unmasked server frame (RFC 6455, 5.2)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class Client(WSListener):  # type: ignore[misc]
    def __init__(self, path: str) -> None:
        self.path = path
        self.raw: Any = None

    def on_ws_connected(self, transport: Any) -> None:
        self.raw = transport.underlying_transport
        CHANNELS.setdefault(self.path, set()).add(self.raw)

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: Any) -> None:
        members = CHANNELS.get(self.path)
        if members is not None:
            members.discard(self.raw)
            if not members:
                del CHANNELS[self.path]


def broadcast(path: str, data: bytes) -> None:
    """The same bytes (one frame, or the frames of several messages) to every client."""
    members = CHANNELS.get(path)
    if members:
        for raw in members:
            raw.write(data)


class Trigger(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        # The messages of one read, framed once each and written together: one write per
        # client per read (as ws4tx writes the messages of one Redis read), one frame per
        # write whenever messages come one at a time.
        frames: dict[str, list[bytes]] = {}
        for line in lines:
            path, _, payload = line.partition(b" ")
            frames.setdefault(path.decode(), []).append(frame(payload))
        for path, batch in frames.items():
            broadcast(path, batch[0] if len(batch) == 1 else b"".join(batch))


async def main() -> None:
    ws_port, trigger_port = int(sys.argv[1]), int(sys.argv[2])
    loop = asyncio.get_running_loop()
    await ws_create_server(lambda request: Client(request.path.decode()), "127.0.0.1", ws_port,
                           backlog=4096)
    await loop.create_server(Trigger, "127.0.0.1", trigger_port)
    print(f"floor-picows: WebSocket on {ws_port}, trigger on {trigger_port} "
          f"(loop {type(loop).__module__})", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
