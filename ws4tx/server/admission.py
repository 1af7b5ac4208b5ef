"""Handshake admission: from a WebSocket request to a decision. No I/O.

Two steps, on either side of the authenticator:

1. :func:`check_request`: the limits, the URL and the Origin; what passes becomes the
   :class:`~ws4tx.server.auth.HandshakeRequest` the authenticator gets.
2. :func:`admit`: the identity (or :class:`~ws4tx.server.auth.Grant`) the authenticator
   gave, and the site's publishing rules, become an :class:`Admission`: the channels the
   client listens to and publishes to, and the subprotocol to answer.

An event client's ``subscribe`` frame on an open connection goes through the same two
steps (:func:`subscription_request` makes the request the same channels in a URL would
be, :func:`authenticate` asks the authenticator, :func:`admit` decides, and
:func:`subscription_channels` checks that every audience asked is allowed): a subscribe is
allowed exactly when the URL would be.

A refusal is a :class:`~ws4tx.server.auth.HandshakeDenied` with the HTTP status and the
reason. :class:`AddressCounts` keeps the per-address connection count the cap needs, for
WebSocket connections and for the HTTP connections they arrive on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Coroutine, Mapping, Optional, Sequence
from urllib.parse import parse_qs, urlencode

from twisted.internet import defer
from twisted.logger import Logger

from ws4tx import envelope, schema
from ws4tx.naming import (
    GROUP,
    Flags,
    Identity,
    InvalidFacility,
    audience_channels,
    channels_for,
    check_facility,
    flag_names,
    parse_flags,
)
from ws4tx.server._forwarded import client_address, counted_as
from ws4tx.server._log import observer
from ws4tx.server._origin import origin_allowed
from ws4tx.server.auth import Grant, HandshakeDenied, HandshakeRequest, IAuthenticator
from ws4tx.server.config import ServerConfig

_log = Logger(observer=observer)


def check_request(
    config: ServerConfig,
    *,
    peer: str,
    host: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    secure: bool = False,
    protocols: Sequence[str] = (),
) -> HandshakeRequest:
    """The request the authenticator gets, once the query length, the path, the facility
    and the Origin passed; else :class:`HandshakeDenied` (414, 404, 400, 403). An event
    client (subprotocol ``ws4tx.v1`` among ``protocols``) may open the WebSocket URL
    itself, without a facility: it starts with no channel and subscribes by frames."""
    if len(query) > config.max_query_length:
        raise HandshakeDenied("the query string is too long", 414)
    if not path.startswith(config.websocket_url):
        raise HandshakeDenied(f"WebSocket URLs start with {config.websocket_url}", 404)
    rest = path[len(config.websocket_url):]
    if not rest and envelope.SUBPROTOCOL in protocols:
        facility = ""
    else:
        try:
            facility = check_facility(rest, config.max_facility_length)
        except InvalidFacility as e:
            raise HandshakeDenied(str(e), 400) from None
    origin = headers.get("origin")
    if origin and config.allowed_origins and not origin_allowed(
            origin, config.allowed_origins):
        raise HandshakeDenied("this Origin is not allowed", 403)
    return HandshakeRequest(
        peer=peer, host=host, path=path, query=query,
        params=parse_qs(query, keep_blank_values=True), headers=headers,
        facility=facility, flags=parse_flags(query), secure=secure,
    )


@dataclass(frozen=True)
class Admission:
    """What a client admitted to the server gets."""

    identity: Identity
    facility: str
    #: The channels it listens to, and those its messages are published to.
    channels: tuple[str, ...]
    publish_to: tuple[str, ...]
    #: Whether its own messages come back to it.
    echo: bool
    #: Whether its messages are stored for replay.
    stores: bool
    #: Whether it speaks the event envelope (subprotocol ``ws4tx.v1``).
    speaks_events: bool
    #: The subprotocol to answer (None: none).
    subprotocol: Optional[str]
    #: When its credential (a token) expires, Unix seconds (None: never).
    expires: Optional[float] = None


def admit(
    config: ServerConfig,
    handshake: HandshakeRequest,
    answer: Identity | Grant,
    *,
    handled: bool,
    protocols: Sequence[str] = (),
) -> Admission:
    """What the authenticator's ``answer`` for ``handshake`` admits the client to.

    ``handled``: whether a server-side event handler speaks for the facility (clients then
    publish nothing unless ``handler_facility_publish``); ``protocols``: the subprotocols
    the client asked for.
    """
    flags = handshake.flags
    expires: Optional[float] = None
    if isinstance(answer, Grant):
        if answer.flags is not None:
            flags = answer.flags
        identity, expires = answer.identity, answer.expires
    else:
        identity = answer
    if not may_publish(config, identity, handled):
        flags = Flags(flags.subscribe, frozenset(), flags.echo)
    facility, prefix = handshake.facility, config.prefix
    if not facility:  # the WebSocket URL itself: channels come by subscribe frames
        flags = Flags()
    publish_to = tuple(audience_channels(prefix, facility, flags.publish, identity))
    if envelope.SUBPROTOCOL in protocols:
        subprotocol: Optional[str] = envelope.SUBPROTOCOL
    else:  # ws4redis answers any requested subprotocol by echoing it
        subprotocol = protocols[0] if protocols else None
    return Admission(
        identity=identity,
        facility=facility,
        channels=tuple(audience_channels(prefix, facility, flags.subscribe, identity)),
        publish_to=publish_to,
        echo=flags.echo,
        stores=bool(publish_to) and config.expire > 0 and any(
            fnmatchcase(facility, pattern) for pattern in config.stored_facilities),
        speaks_events=subprotocol == envelope.SUBPROTOCOL,
        subprotocol=subprotocol,
        expires=expires,
    )


def authenticate(authenticator: IAuthenticator, request: HandshakeRequest) -> Any:
    """What ``authenticator`` answers for ``request``: an identity or a grant now, or a
    Deferred of one (a coroutine becomes one); it may raise :class:`HandshakeDenied`."""
    answer = authenticator.authenticate(request)
    if isinstance(answer, Coroutine):
        return defer.Deferred.fromCoroutine(answer)
    return answer


def subscription_request(config: ServerConfig, handshake: HandshakeRequest,
                         facility: str, audiences: frozenset[str]) -> HandshakeRequest:
    """The request a URL for ``facility`` with the ``subscribe-*`` flags of ``audiences``
    would have made on the connection opened by ``handshake`` (its headers, cookies and
    token): what an event client's ``subscribe`` is authorized as. HandshakeDenied (400)
    for a bad facility."""
    try:
        facility = check_facility(facility, config.max_facility_length)
    except InvalidFacility as e:
        raise HandshakeDenied(str(e), 400) from None
    flags = Flags(subscribe=audiences)
    names = flag_names(flags)
    params: dict[str, list[str]] = {name: [""] for name in names}
    token = handshake.params.get("token")
    if token:
        params["token"] = token[:1]
        names.append(urlencode({"token": token[0]}))
    query = "&".join(names)
    return HandshakeRequest(
        peer=handshake.peer, host=handshake.host,
        path=config.websocket_url + facility, query=query, params=params,
        headers=handshake.headers, facility=facility, flags=flags,
        secure=handshake.secure)


def subscription_channels(config: ServerConfig, admitted: Admission, identity: Identity,
                          audiences: frozenset[str],
                          groups: Optional[Sequence[str]]) -> tuple[str, ...]:
    """The channels a subscribe gets once :func:`admit` decided (``admitted``) on the
    connection of ``identity``: those of ``audiences`` (and of ``groups`` only, when it
    names some). HandshakeDenied when the authentication gave another identity, or an
    audience asked gives no channel (the site's ``ALLOWED_CHANNELS`` dropped it, or the
    identity has no name in it: an anonymous client's ``user``, a group not its own)."""
    if admitted.identity != identity:
        raise HandshakeDenied("the connection's identity changed since it opened: "
                              "reconnect")
    prefix, facility = config.prefix, admitted.facility
    allowed = frozenset(admitted.channels)
    for audience in sorted(audiences):
        if not allowed & frozenset(audience_channels(prefix, facility, (audience,),
                                                     identity)):
            raise HandshakeDenied(f"not allowed: the {audience} audience of {facility}")
    if groups is None:
        return admitted.channels
    foreign = [g for g in groups if g not in identity.groups]
    if foreign:
        raise HandshakeDenied(f"not allowed: {foreign[0]!r} is not one of your groups")
    every = frozenset(audience_channels(prefix, facility, (GROUP,), identity))
    chosen = frozenset(channels_for(prefix, facility, groups=tuple(groups)))
    return tuple(c for c in admitted.channels if c not in every or c in chosen)


def may_publish(config: ServerConfig, identity: Identity, handled: bool) -> bool:
    """Whether the site lets a client keep its publish flags: not when client publishing
    is off, for anonymous clients (unless allowed), nor on a facility a server handler
    speaks for (unless allowed)."""
    if not config.client_publish:
        return False
    if identity.user is None and not config.anonymous_publish:
        return False
    return not handled or config.handler_facility_publish


class AddressCounts:
    """Open connections per client, for the per-address cap (``max_connections_per_ip``).

    A connection counts under its client's address (:meth:`client`), an IPv6 one under
    its network of ``ipv6_prefix`` bits. A connection from a trusted proxy that names no
    client counts under None: never capped (every user behind such a proxy would share
    one address), only ``max_connections`` bounds it; the first time there are more of
    them than the cap, one warning says how to fix the proxy.
    """

    def __init__(self, config: ServerConfig) -> None:
        self._cap = config.max_connections_per_ip
        self._prefix = config.ipv6_prefix
        self._trusted: tuple[Any, ...] = schema.trusted_networks(config.trusted_proxies)
        self._open: Counter[Optional[str]] = Counter()
        self._warned_proxy = False

    def client(self, peer: str, headers: Mapping[str, str]) -> Optional[str]:
        """What a connection from ``peer`` with these request ``headers`` (lower-case
        names; none for a connection whose request has not come yet) counts under: its
        client's address, or None for a trusted proxy that names no client."""
        address = client_address(peer, headers, self._trusted)
        return None if address is None else counted_as(address, self._prefix)

    def add(self, client: Optional[str], peer: str) -> None:
        """Count a connection under ``client``. Past the cap it stays counted (release it
        as any other) and :class:`HandshakeDenied` (429) is raised."""
        self._open[client] += 1
        count = self._open[client]
        if not self._cap or count <= self._cap:
            return
        if client is not None:
            raise HandshakeDenied("too many connections from your address", 429)
        if not self._warned_proxy:
            self._warned_proxy = True
            _log.warn(
                "{n} connections from trusted proxies (last {peer}) name no client (no "
                "Forwarded or X-Forwarded-For header): the per-address cap of {cap} does "
                "not apply to them, only --max-connections. Have the proxy name the "
                "client (nginx: proxy_set_header X-Forwarded-For "
                "$proxy_add_x_forwarded_for;)", n=count, peer=peer, cap=self._cap)

    def release(self, client: Optional[str]) -> None:
        """A connection counted under ``client`` is gone."""
        self._open[client] -= 1
        if not self._open[client]:
            del self._open[client]

    def total(self) -> int:
        """How many connections are counted."""
        return sum(self._open.values())

    def __getitem__(self, client: Optional[str]) -> int:
        return self._open[client]
