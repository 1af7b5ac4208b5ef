"""The public API of ws4tx's Twisted side: the node that serves WebSockets from Redis.

Embed ws4tx in a Twisted application::

    from ws4tx.server import PushService, ServerConfig, RedisAddress

    push = PushService(ServerConfig(redis=RedisAddress.from_url("redis://localhost:6379/0")),
                       listen=["tcp:9000"])
    push.setServiceParent(application_or_multiservice)

or mount ``push.websocket_resource`` at the WebSocket URL of an existing ``twisted.web``
Site (and add ``push`` to a service parent without ``listen`` so that it connects to Redis).
Server-side event handlers subclass :class:`EventHandler`; authenticators provide
:class:`IAuthenticator`; :mod:`ws4tx.testing` has in-memory doubles for tests.

The modules under this package are the node's parts (``node``, ``hub``, ``router``,
``broker``/``redis_broker``, ``admission``, ``protocol``, ``events``, ``web``, ``service``,
``tap``); only the names below are the public API.
"""

from ws4tx.naming import Identity
from ws4tx.redis_address import RedisAddress
from ws4tx.server.auth import (
    AnonymousAuthenticator,
    Grant,
    HandshakeDenied,
    HandshakeRequest,
    IAuthenticator,
)
from ws4tx.server.broker import BrokerUnavailable, IBroker, NotStored, SubscriptionRefused
from ws4tx.server.config import ServerConfig
from ws4tx.server.handlers import Client, EventHandler, EventRefused, ServerAPI
from ws4tx.server.service import PushService

__all__ = [
    "AnonymousAuthenticator",
    "BrokerUnavailable",
    "Client",
    "EventHandler",
    "EventRefused",
    "Grant",
    "HandshakeDenied",
    "HandshakeRequest",
    "IAuthenticator",
    "IBroker",
    "Identity",
    "NotStored",
    "PushService",
    "RedisAddress",
    "ServerAPI",
    "ServerConfig",
    "SubscriptionRefused",
]
