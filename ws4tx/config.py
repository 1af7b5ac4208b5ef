"""The server's configuration: one immutable value, validated once at startup.

Values come from, in rising order of precedence: the defaults here, the Django settings
(``WS4TX_*`` then ``WS4REDIS_*``), the command line. :func:`check` raises ``ValueError``
naming the option of a bad value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from ws4tx.naming import DEFAULT_MAX_FACILITY_LENGTH, DEFAULT_PREFIX
from ws4tx.redis_address import RedisAddress


@dataclass(frozen=True)
class ServerConfig:
    """Everything the WebSocket server needs to know; see the README's configuration table."""

    #: Where Redis is.
    redis: RedisAddress = field(default_factory=RedisAddress)
    #: The URL path under which WebSocket clients connect; the facility follows it.
    websocket_url: str = "/ws/"
    #: Prefix of channel names (None or "" for none).
    prefix: Optional[str] = DEFAULT_PREFIX
    #: Whether clients without a user may publish (publish-* flags, raw events); off by
    #: default: an anonymous client's publish flags are dropped.
    anonymous_publish: bool = False
    #: Whether clients may publish raw messages (publish-* flags) on a facility that has
    #: a server-side event handler; off: their publish flags are dropped (the handler
    #: speaks for the facility).
    handler_facility_publish: bool = False
    #: Seconds a client-published message is stored for replay (0: not stored).
    expire: int = 3600
    #: The heartbeat string of ws4redis clients (answered, never published), or None.
    heartbeat: Optional[str] = None
    #: Largest message a client may send, in bytes (close 1009 past it).
    max_message_size: int = 64 * 1024
    #: Largest message the server forwards to clients, in bytes; a larger one published
    #: to Redis is dropped (logged, counted) instead of being sent to every client.
    max_outgoing_size: int = 1024 * 1024
    #: Largest frame a client may send, in bytes.
    max_frame_size: int = 64 * 1024
    #: Most frames (fragments) one client message may arrive in; more close with 1008.
    max_fragments: int = 128
    #: Seconds between WebSocket pings to each client (0: none).
    ping_interval: float = 25.0
    #: Seconds a client has to answer a ping before it is dropped.
    ping_timeout: float = 10.0
    #: A client whose socket stops draining is dropped once this many bytes wait for it...
    max_queue_bytes: int = 1024 * 1024
    #: ... or this many messages ...
    max_queue_messages: int = 1000
    #: ... or it has not drained for this many seconds while messages wait.
    slow_timeout: float = 10.0
    #: A message that waited this many seconds in the server's fan-out backlog (the
    #: server could not keep up) is dropped, counted and reported, not sent late...
    max_lag: float = 10.0
    #: ... and so is the oldest one once this many messages wait.
    max_backlog: int = 10_000
    #: Seconds a client has to finish its opening handshake.
    handshake_timeout: float = 5.0
    #: Most WebSocket connections at once in this process (0: no limit); 503 past it.
    max_connections: int = 0
    #: Most WebSocket connections at once from one IP address (0: no limit); 429 past it.
    max_connections_per_ip: int = 0
    #: Messages and events a client may send per second (0: no limit), ...
    rate_limit: float = 20.0
    #: ... with bursts up to this many; a client over the limit is told (event clients)
    #: and its message dropped; past three times the burst it is closed with 1008.
    rate_burst: int = 40
    #: Longest facility name.
    max_facility_length: int = DEFAULT_MAX_FACILITY_LENGTH
    #: Longest query string, in bytes (414 past it).
    max_query_length: int = 2048
    #: Allowed Origin values (``scheme://host[:port]``, ``*`` wildcards); empty: any.
    allowed_origins: tuple[str, ...] = ()
    #: Seconds between PINGs on the Redis subscriber connection.
    redis_ping_interval: float = 5.0
    #: Seconds Redis has to answer a command or PING before its connection is replaced.
    redis_timeout: float = 5.0
    #: Path of the health endpoint (empty: none).
    health_url: str = "/ws4tx/health"

    def replace(self, **changes: object) -> "ServerConfig":
        """A copy with ``changes`` applied (and checked)."""
        return check(dataclasses.replace(self, **changes))  # type: ignore[arg-type]


def check(config: ServerConfig) -> ServerConfig:
    """Return ``config`` if every value is usable, else raise ``ValueError`` naming it."""
    url = config.websocket_url
    if not (url.startswith("/") and url.endswith("/")):
        raise ValueError(f"websocket-url must start and end with '/', not {url!r}")
    if config.expire < 0:
        raise ValueError("expire must be >= 0")
    for name in ("max_message_size", "max_frame_size", "max_fragments", "max_facility_length",
                 "max_outgoing_size",
                 "max_query_length", "max_queue_bytes", "max_queue_messages",
                 "slow_timeout", "max_lag", "max_backlog"):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name.replace('_', '-')} must be > 0")
    for name in ("ping_interval", "ping_timeout", "handshake_timeout", "max_connections",
                 "redis_ping_interval", "max_connections_per_ip", "rate_limit"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name.replace('_', '-')} must be >= 0")
    if config.redis_timeout <= 0:
        raise ValueError("redis-timeout must be > 0")
    if config.rate_limit and config.rate_burst < 1:
        raise ValueError("rate-burst must be >= 1")
    if config.heartbeat == "":
        raise ValueError("heartbeat must not be empty (leave it unset for none)")
    return config
