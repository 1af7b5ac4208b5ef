"""The public API of ws4tx's Twisted side, in one place.

Embed ws4tx in a Twisted application::

    from ws4tx.server import PushService, ServerConfig, RedisAddress

    push = PushService(ServerConfig(redis=RedisAddress.from_url("redis://localhost:6379/0")),
                       listen=["tcp:9000"])
    push.setServiceParent(application_or_multiservice)

or mount ``push.websocket_resource`` at the WebSocket URL of an existing ``twisted.web``
Site (and add ``push`` to a service parent without ``listen`` so that it connects to Redis).
"""

from ws4tx.server.auth import AnonymousAuthenticator, HandshakeDenied, HandshakeRequest, IAuthenticator
from ws4tx.server.broker import BrokerUnavailable, IBroker, IBrokerListener
from ws4tx.server.config import ServerConfig
from ws4tx.server.handlers import Client, EventHandler, EventRefused, Server
from ws4tx.server.hub import Hub
from ws4tx.naming import Identity
from ws4tx.server.protocol import PushFactory, PushProtocol
from ws4tx.redis_address import RedisAddress
from ws4tx.server.redis_broker import RedisBroker
from ws4tx.server.router import Router
from ws4tx.server.service import PushService

__all__ = [
    "AnonymousAuthenticator",
    "BrokerUnavailable",
    "Client",
    "EventHandler",
    "EventRefused",
    "HandshakeDenied",
    "HandshakeRequest",
    "Hub",
    "IAuthenticator",
    "IBroker",
    "IBrokerListener",
    "Identity",
    "PushFactory",
    "PushProtocol",
    "PushService",
    "RedisAddress",
    "RedisBroker",
    "Router",
    "Server",
    "ServerConfig",
]
