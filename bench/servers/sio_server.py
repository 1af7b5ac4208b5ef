"""The python-socketio peer: ``socketio.AsyncServer`` with ``AsyncRedisManager`` under
aiohttp. A client joins the room named by its ``room`` query parameter when it connects;
publishers elsewhere emit to rooms through a write-only ``socketio.RedisManager``.

Usage: python sio_server.py PORT REDIS_URL
"""

import sys
from urllib.parse import parse_qs

import socketio
from aiohttp import web


def main() -> None:
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    manager = socketio.AsyncRedisManager(redis_url)
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager)

    @sio.event
    async def connect(sid, environ, auth=None):
        room = parse_qs(environ.get("QUERY_STRING", "")).get("room", ["bench"])[0]
        await sio.enter_room(sid, room)

    app = web.Application()
    sio.attach(app)
    print(f"socketio: listening on {port}, Redis {redis_url}", file=sys.stderr, flush=True)
    web.run_app(app, host="127.0.0.1", port=port, backlog=4096, access_log=None, print=None)


if __name__ == "__main__":
    main()
