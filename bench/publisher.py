#!/usr/bin/env python3
"""The publisher of the ws4tx benchmark suite: publishes the way an application does.

Runs in the virtualenv of the system under test, driven by ``bench/run.py`` through JSON
lines on stdin (one JSON answer per command on stdout):

- ws4tx: ``ws4tx.publisher.RedisPublisher(facility=..., broadcast=True)`` (or
  ``users=[name]``) ``.publish_message(...)``, its Django side configured by
  ``bench/servers/ws4tx_settings.py`` and ``$WS4TX_REDIS_URL``;
- Channels: ``await channel_layer.group_send(group, {"type": "bench.message", ...})`` on
  one event loop (as an async view or worker does);
- python-socketio: a write-only ``socketio.RedisManager`` and its ``emit``;
- the ceiling: a line ``<path> <payload>`` on its local trigger port.

A message is ``B|<tag>|<seq:8>|<time_ns:19>|`` padded with ``x`` to ``--size`` bytes; the
time is taken just before the publishing call. ``run`` publishes ``rate`` rounds per
second for ``duration`` seconds; a round is one message to each target (the broadcast
channel, or every user channel), with the round number as sequence number.

Usage: publisher.py SYSTEM --redis URL [--trigger PORT] [--size 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from typing import Any, Awaitable, Callable, Optional

from _commands import serve

HERE = os.path.dirname(os.path.abspath(__file__))


def message(tag: str, seq: int, size: int) -> str:
    """The mark, padded to ``size``: with ``x`` up to 100 bytes, past that with JSON-like
    text that compresses as application events do (about a third with deflate)."""
    head = f"B|{tag}|{seq:08d}|{time.time_ns():019d}|"
    if size <= 100:
        return head + "x" * (size - len(head)) if size > len(head) else head
    return (head + _filler(seq, size))[:size]


def _filler(seq: int, size: int) -> str:
    lines, k = [], 0
    while sum(map(len, lines)) < size:
        n = (seq * 7 + k * 13) % 900
        price = f"{(seq + k * 37) % 1000}.{(seq + k) % 100:02d}"
        lines.append(f'{{"sku":"SKU-{n:04d}","qty":{1 + k % 5},"title":"Product number {n}",'
                     f'"price":"{price}"}},')
        k += 1
    return f'{{"type":"order.updated","id":{1_000_000 + seq},"lines":[' + "".join(lines)


PublishFn = Callable[[str, str], Optional[Awaitable[None]]]


def ws4tx_adapter(args: argparse.Namespace) -> tuple[PublishFn, dict[str, Any]]:
    sys.path.insert(0, os.path.join(HERE, "servers"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "ws4tx_settings"
    # The settings name no Redis: the documented variable says where it is.
    os.environ["WS4TX_REDIS_URL"] = args.redis
    import django

    django.setup()
    from ws4tx.publisher import RedisPublisher

    publishers: dict[str, RedisPublisher] = {}
    facility = args.facility

    def publish(target: str, payload: str) -> None:
        pub = publishers.get(target)
        if pub is None:
            if target == "*":
                pub = RedisPublisher(facility=facility, broadcast=True)
            else:
                pub = RedisPublisher(facility=facility, users=[target])
            publishers[target] = pub
        pub.publish_message(payload)

    import ws4tx

    return publish, {"ws4tx": getattr(ws4tx, "__version__", "?"), "django": django.__version__}


def ws4tx_tokens(users: list[str]) -> list[str]:
    from ws4tx.tokens import make_token

    return [make_token(u) for u in users]


def ws4tx_position(facility: str) -> dict[str, Any]:
    """Where the facility's broadcast channel stands (a facility with history): what a
    ws4tx.js client that got every message so far would send as recover=."""
    from ws4tx import api

    read = api.history(facility, broadcast=True, limit=1)
    return {"epoch": read.epoch, "offset": read.offset}


def channels_adapter(args: argparse.Namespace) -> tuple[PublishFn, dict[str, Any]]:
    sys.path.insert(0, os.path.join(HERE, "servers"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchchan.settings"
    import django

    django.setup()
    import channels
    from channels.layers import get_channel_layer

    layer = get_channel_layer()

    async def publish(target: str, payload: str) -> None:
        await layer.group_send(target, {"type": "bench.message", "text": payload})

    from importlib.metadata import version

    return publish, {"channels": channels.__version__,
                     "channels_redis": version("channels_redis"),
                     "layer": type(layer).__module__ + "." + type(layer).__name__}


def socketio_adapter(args: argparse.Namespace) -> tuple[PublishFn, dict[str, Any]]:
    import socketio

    manager = socketio.RedisManager(args.redis, write_only=True)

    def publish(target: str, payload: str) -> None:
        manager.emit("m", payload, room=target, namespace="/")

    from importlib.metadata import version

    return publish, {"python-socketio": version("python-socketio"),
                     "python-engineio": version("python-engineio")}


def ceiling_adapter(args: argparse.Namespace) -> tuple[PublishFn, dict[str, Any]]:
    sock = socket.create_connection(("127.0.0.1", args.trigger))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def publish(target: str, payload: str) -> None:
        sock.sendall(target.encode() + b" " + payload.encode() + b"\n")

    return publish, {}


ADAPTERS = {
    "ws4tx": ws4tx_adapter,
    "channels": channels_adapter,
    "socketio": socketio_adapter,
    "ceiling": ceiling_adapter,
}


class Publisher:
    def __init__(self, publish: PublishFn, size: int) -> None:
        self.publish = publish
        self.size = size
        self.is_async = asyncio.iscoroutinefunction(publish)

    async def _one(self, target: str, payload: str) -> None:
        if self.is_async:
            await self.publish(target, payload)  # type: ignore[misc]
        else:
            self.publish(target, payload)

    async def round(self, tag: str, seq: int, targets: list[str]) -> None:
        for target in targets:
            await self._one(target, message(tag, seq, self.size))

    async def run(self, tag: str, rate: float, duration: float, targets: list[str],
                  start_seq: int = 0) -> dict[str, Any]:
        """``rate`` rounds per second for ``duration`` seconds (bounded by count and time)."""
        rounds = max(1, round(rate * duration))
        t0 = time.monotonic()
        hard_stop = t0 + duration * 3 + 5
        max_lag = 0.0
        sent = 0
        for k in range(rounds):
            due = t0 + k / rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                max_lag = max(max_lag, now - due)
                if now > hard_stop:
                    break
            await self.round(tag, start_seq + k, targets)
            sent += 1
        end = t0 + rounds / rate  # the last round's slot ends here
        if time.monotonic() < end:
            await asyncio.sleep(end - time.monotonic())
        seconds = time.monotonic() - t0
        return {"rounds": sent, "messages": sent * len(targets), "seconds": round(seconds, 4),
                "rate": round(sent / seconds, 2) if seconds else None,
                "max_lag_ms": round(max_lag * 1000, 2)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=sorted(ADAPTERS))
    parser.add_argument("--redis", default="")
    parser.add_argument("--trigger", type=int, default=0)
    parser.add_argument("--facility", default="bench")
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    publish, versions = ADAPTERS[args.system](args)
    pub = Publisher(publish, args.size)

    async def handle(c: dict[str, Any]) -> dict[str, Any]:
        name = c.get("cmd")
        if name == "hello":
            return {"ok": True, "pid": os.getpid(), "versions": versions}
        if name == "once":
            await pub.round(c["tag"], int(c.get("seq", 0)), c["targets"])
            return {"ok": True}
        if name == "run":
            return await pub.run(c["tag"], float(c["rate"]), float(c["duration"]),
                                 c["targets"], int(c.get("start_seq", 0)))
        if name == "tokens":
            return {"tokens": ws4tx_tokens(c["users"])}
        if name == "position":
            return ws4tx_position(args.facility)
        return {"error": f"unknown command {name!r}"}

    await serve(handle)


if __name__ == "__main__":
    asyncio.run(main())
