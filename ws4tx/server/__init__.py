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
``tap``); only the names below are the public API. They are imported when first used
(PEP 562), so that importing one part (``ws4tx.server.hub``, the ``reuseport:`` endpoint)
does not load Autobahn, txredisapi and the rest of the node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ws4tx import _lazy

if TYPE_CHECKING:
    from ws4tx.history import NotStored
    from ws4tx.naming import Identity
    from ws4tx.redis_address import RedisAddress
    from ws4tx.server.auth import (
        AnonymousAuthenticator,
        Grant,
        HandshakeDenied,
        HandshakeRequest,
        IAuthenticator,
    )
    from ws4tx.server.broker import BrokerUnavailable, IBroker, SubscriptionRefused
    from ws4tx.server.config import ServerConfig
    from ws4tx.server.handlers import Client, EventHandler, EventRefused, ServerAPI
    from ws4tx.server.service import PushService

#: Where each public name is defined: the one list of the public API.
_WHERE = {
    "AnonymousAuthenticator": "ws4tx.server.auth",
    "BrokerUnavailable": "ws4tx.server.broker",
    "Client": "ws4tx.server.handlers",
    "EventHandler": "ws4tx.server.handlers",
    "EventRefused": "ws4tx.server.handlers",
    "Grant": "ws4tx.server.auth",
    "HandshakeDenied": "ws4tx.server.auth",
    "HandshakeRequest": "ws4tx.server.auth",
    "IAuthenticator": "ws4tx.server.auth",
    "IBroker": "ws4tx.server.broker",
    "Identity": "ws4tx.naming",
    "NotStored": "ws4tx.history",
    "PushService": "ws4tx.server.service",
    "RedisAddress": "ws4tx.redis_address",
    "ServerAPI": "ws4tx.server.handlers",
    "ServerConfig": "ws4tx.server.config",
    "SubscriptionRefused": "ws4tx.server.broker",
}

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


def __getattr__(name: str) -> Any:
    """A public name, imported from where it is defined on first use (then kept here)."""
    return _lazy.attribute(__name__, _WHERE, globals(), name)


def __dir__() -> list[str]:
    return _lazy.names(globals(), __all__)
