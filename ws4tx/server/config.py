"""The server's configuration: one immutable value, validated once at startup.

Values come from, in rising order of precedence: the defaults, the Django settings
(``WS4TX_*`` then ``WS4REDIS_*``), the command line. Every field is declared in
:mod:`ws4tx.schema` (its kind, default, meaning, option and setting); :func:`check` checks
each value with it and raises ``ValueError`` naming the option of a bad value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ws4tx import schema
from ws4tx.history import Retention, Rule, history_for
from ws4tx.presence import has_presence
from ws4tx.redis_address import RedisAddress


def _default(key: str) -> Any:
    return schema.get(key).default


@dataclass(frozen=True)
class ServerConfig:
    """Everything the WebSocket server needs to know. Each field is declared (default,
    meaning, option, setting) in :mod:`ws4tx.schema`; see the README's configuration table."""

    #: Where Redis is (with several servers: the first).
    redis: RedisAddress = field(default_factory=RedisAddress)
    #: With several Redis servers: all of them, in order (``redis`` is the first);
    #: channels are sharded over them (:mod:`ws4tx.sharding`). Empty: ``redis`` alone.
    redis_shards: tuple[RedisAddress, ...] = ()
    #: The URL path under which WebSocket clients connect; the facility follows it.
    websocket_url: str = _default("websocket_url")
    #: Prefix of channel names (None or "" for none).
    prefix: Optional[str] = _default("prefix")
    #: Whether clients may publish at all; off: every client's publish flags are dropped.
    client_publish: bool = _default("client_publish")
    #: Whether clients may publish although the prefix is empty (else the server refuses
    #: to start with an empty prefix and client publishing on).
    unprefixed_publish: bool = _default("unprefixed_publish")
    #: Whether clients without a user may publish (publish-* flags, raw events); off by
    #: default: an anonymous client's publish flags are dropped.
    anonymous_publish: bool = _default("anonymous_publish")
    #: Whether clients may publish raw messages on facilities with a server-side handler.
    handler_facility_publish: bool = _default("handler_facility_publish")
    #: Facilities (globs) whose client-published messages are stored for replay.
    stored_facilities: tuple[str, ...] = _default("stored_facilities")
    #: Facilities (globs, first match wins) that keep a history, with its size and ttl.
    history: tuple[Rule, ...] = _default("history")
    #: Facilities (globs) whose connected clients are kept in Redis (presence).
    presence: tuple[str, ...] = _default("presence")
    #: Seconds within which a dead node's clients leave the presence (a node refreshes
    #: its own every third of it).
    presence_ttl: float = _default("presence_ttl")
    #: Bytes of client-published messages a user (or an anonymous address) may store per
    #: minute on this node, for replay and in histories; past it messages are delivered
    #: but not stored, and on a facility with history not published (0: no limit).
    store_budget: int = _default("store_budget")
    #: Seconds a client-published message is stored for replay (0: not stored).
    expire: int = _default("expire")
    #: The heartbeat string of ws4redis clients (answered, never published), or None.
    heartbeat: Optional[str] = _default("heartbeat")
    #: Whether clients that offer permessage-deflate get it (deflated once per message).
    compression: bool = _default("compression")
    #: Whether plain-TCP listening ports send after each reactor turn and wait for
    #: writability only when the kernel's buffer is full (ws4tx.server.directwrite).
    direct_writes: bool = _default("direct_writes")
    #: Largest message a client may send, in bytes (close 1009 past it).
    max_message_size: int = _default("max_message_size")
    #: Most frames one client message may arrive in (close 1008 past it).
    max_fragments: int = _default("max_fragments")
    #: Largest message the server forwards to clients, in bytes; a larger one published
    #: to Redis is dropped (logged, counted) instead of being sent to every client.
    max_outgoing_size: int = _default("max_outgoing_size")
    #: Largest frame a client may send, in bytes.
    max_frame_size: int = _default("max_frame_size")
    #: Seconds between WebSocket pings to each client (0: none).
    ping_interval: float = _default("ping_interval")
    #: Seconds a client has to answer a ping before it is dropped.
    ping_timeout: float = _default("ping_timeout")
    #: A client whose socket stops draining is dropped once this many bytes wait for it...
    max_queue_bytes: int = _default("max_queue_bytes")
    #: ... or this many messages ...
    max_queue_messages: int = _default("max_queue_messages")
    max_recovery: int = _default("max_recovery")
    #: ... or it has not drained for this many seconds while messages wait.
    slow_timeout: float = _default("slow_timeout")
    #: A message that waited this many seconds in the server's fan-out backlog (the
    #: server could not keep up) is dropped, counted and reported, not sent late...
    max_lag: float = _default("max_lag")
    #: ... and so is the oldest one once this many messages wait.
    max_backlog: int = _default("max_backlog")
    #: Seconds a connection has to send its whole request (head and body) and to finish
    #: its opening handshake (0: no bound).
    handshake_timeout: float = _default("handshake_timeout")
    #: Handshakes authenticated from Django at once, each in a thread of the reactor's
    #: pool (a thread keeps its slot until it finishes, even if its client went away)...
    auth_concurrency: int = _default("auth_concurrency")
    #: ... and handshakes that may wait for a slot; past it 503 with Retry-After.
    auth_queue: int = _default("auth_queue")
    #: Most WebSocket connections at once in this process (0: no limit); 503 past it.
    max_connections: int = _default("max_connections")
    #: Most connections at once from one client address (0: no limit); 429 past it:
    #: WebSockets, and HTTP connections that have not upgraded. The address is the
    #: peer's, or what a trusted proxy's Forwarded or X-Forwarded-For names; a trusted
    #: proxy that names no client is not capped.
    max_connections_per_ip: int = _default("max_connections_per_ip")
    #: Addresses or networks of reverse proxies whose Forwarded or X-Forwarded-For names
    #: the client.
    trusted_proxies: tuple[str, ...] = _default("trusted_proxies")
    #: An IPv6 client counts as its network of this many bits for the per-address cap.
    ipv6_prefix: int = _default("ipv6_prefix")
    #: Seconds an HTTP keep-alive connection (not a WebSocket) may wait for its next request.
    http_idle_timeout: float = _default("http_idle_timeout")
    #: Messages and events a client may send per second (0: no limit), ...
    rate_limit: float = _default("rate_limit")
    #: ... with bursts up to this many; a client over the limit is told (event clients)
    #: and its message dropped; past three times the burst it is closed with 1008.
    rate_burst: int = _default("rate_burst")
    #: Channels one event connection may add by subscribe frames.
    max_subscriptions: int = _default("max_subscriptions")
    #: Longest facility name.
    max_facility_length: int = _default("max_facility_length")
    #: Longest query string, in bytes (414 past it).
    max_query_length: int = _default("max_query_length")
    #: Allowed Origin values (``scheme://host[:port]``, ``*`` wildcards); empty: any.
    allowed_origins: tuple[str, ...] = _default("allowed_origins")
    #: Seconds between PINGs on the Redis subscriber connection.
    redis_ping_interval: float = _default("redis_ping_interval")
    #: Seconds Redis has to answer a command or PING before its connection is replaced.
    redis_timeout: float = _default("redis_timeout")
    #: Path of the health endpoint (empty: none).
    health_url: str = _default("health_url")
    #: With it, the health URL's counters need ``Authorization: Bearer <token>``.
    health_token: Optional[str] = field(default=_default("health_token"), repr=False)
    #: Path of the Prometheus metrics (empty: none), behind the health token if any.
    metrics_url: str = _default("metrics_url")

    def history_for(self, facility: str) -> Optional[Retention]:
        """The history ``facility`` keeps (:func:`ws4tx.history.history_for`), or None."""
        return history_for(self.history, facility)

    def has_presence(self, facility: str) -> bool:
        """Whether ``facility`` keeps a presence (setting ``PRESENCE``)."""
        return has_presence(self.presence, facility)

    @property
    def shards(self) -> tuple[RedisAddress, ...]:
        """Every Redis server, in the shards' order (one: not sharded)."""
        return self.redis_shards or (self.redis,)

    def replace(self, **changes: object) -> ServerConfig:
        """A copy with ``changes`` applied (and checked)."""
        return check(dataclasses.replace(self, **changes))  # type: ignore[arg-type]


#: The schema's settings that are fields of ServerConfig.
FIELDS: tuple[schema.Setting, ...] = tuple(
    s for s in schema.SETTINGS if s.where in (schema.SERVER, schema.SHARED))


def check(config: ServerConfig) -> ServerConfig:
    """``config`` with every value checked against the schema and in its canonical form
    (``""`` for none becomes None, lists become tuples); ``ValueError`` naming the option
    of a bad value."""
    changes = {}
    for setting in FIELDS:
        value = getattr(config, setting.key)
        converted = setting.convert(value)
        if converted is not value:
            changes[setting.key] = converted
    if (changes.get("prefix", config.prefix) is None
            and changes.get("client_publish", config.client_publish)
            and not changes.get("unprefixed_publish", config.unprefixed_publish)):
        raise ValueError(UNPREFIXED)
    if config.redis_shards and config.redis_shards[0] != config.redis:
        changes["redis"] = config.redis_shards[0]
    if changes:
        config = dataclasses.replace(config, **changes)
    return config


#: Why a configuration with an empty prefix and client publishing does not start.
UNPREFIXED = (
    "PREFIX is empty and clients may publish: they could overwrite any other application's "
    "keys in the same Redis database (user:<name>:<facility>, broadcast:<facility>); set "
    "PREFIX (--prefix), or CLIENT_PUBLISH = False (--no-client-publish), or accept it with "
    "UNPREFIXED_PUBLISH = True (--unprefixed-publish)")


def risks(config: ServerConfig) -> list[str]:
    """Warnings about a usable but risky configuration, for the startup log."""
    found = []
    if config.prefix is None and config.client_publish:
        found.append(
            "the channel prefix is empty and clients may publish (UNPREFIXED_PUBLISH): a "
            "client with publish flags can overwrite keys of other applications in the "
            "same Redis database (e.g. user:<name>:<facility>, broadcast:<facility>)")
    return found
