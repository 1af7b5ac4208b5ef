"""The ``twistd ws4tx`` plugin. Kept free of heavy imports: every twistd run reads it."""

from twisted.application.service import ServiceMaker

ws4tx = ServiceMaker(
    "ws4tx",
    "ws4tx.server._twistd",
    "WebSocket push server for Django, fed by Redis (django-websocket-redis compatible)",
    "ws4tx",
)
