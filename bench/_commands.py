"""The command loop of the suite's helper processes (the load generator, the publisher):
one JSON command per line on stdin, one JSON answer per line on stdout."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any, Awaitable, Callable


async def serve(handle: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
    """Answer each command with ``await handle(command)`` until ``{"cmd": "quit"}`` or
    the end of stdin; an exception becomes ``{"error": ...}`` for the suite to report."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    # A thread, so that a blocking read never stalls the clients on the event loop.
    threading.Thread(target=reader, daemon=True).start()
    while True:
        line = await queue.get()
        if line is None:
            break
        if not line.strip():
            continue
        command = json.loads(line)
        if command.get("cmd") == "quit":
            break
        try:
            answer = await handle(command)
        except Exception as e:  # noqa: BLE001 - reported to the suite
            answer = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
