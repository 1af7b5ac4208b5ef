"""The client's address behind trusted reverse proxies. Pure: no Twisted, no Django.

A proxy appends the address it got a request from to ``X-Forwarded-For``, or a
``for=`` element to ``Forwarded`` (RFC 7239); everything to the left of what the trusted
proxies appended was written by the client and proves nothing. So the client is the
rightmost address that is not itself a trusted proxy, and only when the connection comes
from a trusted proxy at all. A trusted proxy that names nobody (no header, or ``unknown``,
an obfuscated identifier or garbage where the walk reaches it) names no client: the
answer is None, and the caller decides what such a connection counts under.

:func:`client_address` is the one place that decides; :func:`counted_as` groups an
address with its neighbours (an IPv6 client owns a whole /64, usually).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Mapping, Optional, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> Optional[IPAddress]:
    """``text`` as an address (an IPv4-mapped IPv6 address as the IPv4 one), else None."""
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _node(text: str) -> Optional[IPAddress]:
    """The address of a node as proxies write it: ``192.0.2.1``, ``192.0.2.1:4711``,
    ``[2001:db8::1]``, ``[2001:db8::1]:4711`` or a bare ``2001:db8::1``; None for
    ``unknown``, an obfuscated identifier (``_hidden``) or anything else."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        return _ip(text[1:end]) if end > 0 else None
    if text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    return _ip(text)


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in value:
            if char == "\\" and not escaped:
                escaped = True
                continue
            escaped = False
            out.append(char)
        value = "".join(out)
    return value


def forwarded_hops(header: str) -> list[Optional[IPAddress]]:
    """The ``for=`` address of each element of a ``Forwarded`` header (RFC 7239), the
    client's first; None for an element without a usable one."""
    hops: list[Optional[IPAddress]] = []
    for element in _split(header, ","):
        node: Optional[IPAddress] = None
        for pair in _split(element, ";"):
            name, equals, value = pair.partition("=")
            if equals and name.strip().lower() == "for":
                node = _node(_unquote(value))
        hops.append(node)
    return hops


def x_forwarded_hops(header: str) -> list[Optional[IPAddress]]:
    """The addresses of an ``X-Forwarded-For`` header, the client's first; None for an
    entry that is not one."""
    return [_node(entry) for entry in header.split(",")]


def _walk(hops: list[Optional[IPAddress]], trusted: Sequence[Any]) -> Optional[str]:
    """The rightmost hop that is not a trusted proxy (the leftmost if all are); None when
    the walk meets a hop that names nobody first, or there is no hop."""
    client: Optional[str] = None
    for ip in reversed(hops):
        if ip is None:
            return None
        client = str(ip)
        if not any(ip in network for network in trusted):
            break
    return client


def is_trusted(address: str, trusted: Sequence[Any]) -> bool:
    """Whether ``address`` is in one of the ``trusted`` networks (``ipaddress`` objects)."""
    ip = _ip(address)
    return ip is not None and any(ip in network for network in trusted)


def client_address(peer: str, headers: Mapping[str, str],
                   trusted: Sequence[Any]) -> Optional[str]:
    """The client a connection from ``peer`` with these request ``headers`` (lower-case
    names) is for.

    ``peer`` itself unless it is a trusted proxy. From a trusted proxy: what its
    ``Forwarded`` or ``X-Forwarded-For`` names (see :func:`_walk`); None if it names no
    client. When both headers are there and name different clients, one of them was
    written by the client, and nothing tells which: the connection counts as the proxy's
    own (``peer``).
    """
    ip = _ip(peer)
    if ip is None or not any(ip in network for network in trusted):
        return str(ip) if ip is not None else peer
    named = [_walk(parse(headers[name]), trusted)
             for name, parse in (("forwarded", forwarded_hops),
                                 ("x-forwarded-for", x_forwarded_hops))
             if headers.get(name)]
    if not named:
        return None
    if len(set(named)) > 1:
        return str(ip)
    return named[0]


def counted_as(address: str, ipv6_prefix: int) -> str:
    """What ``address`` counts under: an IPv4 address as itself, an IPv6 address as its
    network of ``ipv6_prefix`` bits (``2001:db8:0:1::/64``): one client is given a whole
    /64 (or more) and could otherwise count as billions."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address) and ipv6_prefix < 128:
        return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
    return str(ip) if ip is not None else address
