"""The client's address behind trusted reverse proxies. Pure: no Twisted, no Django.

A proxy appends the address it got a request from to ``X-Forwarded-For``; everything to the
left of what the trusted proxies appended was written by the client and proves nothing. So
the client is the rightmost address that is not itself a trusted proxy, and only when the
connection comes from a trusted proxy at all.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional, Sequence


def _ip(text: str) -> Optional[Any]:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def is_trusted(address: str, trusted: Sequence[Any]) -> bool:
    """Whether ``address`` is in one of the ``trusted`` networks (``ipaddress`` objects)."""
    ip = _ip(address)
    return ip is not None and any(ip in network for network in trusted)


def client_address(peer: str, forwarded_for: Optional[str], trusted: Sequence[Any]) -> str:
    """The address a connection from ``peer`` counts under.

    ``peer`` itself unless it is a trusted proxy that sent ``X-Forwarded-For``; then the
    rightmost address of that header that is not a trusted proxy (the leftmost one if all
    are). An entry that is not an IP address ends the walk: the last good one counts.
    """
    if not forwarded_for or not trusted or not is_trusted(peer, trusted):
        return peer
    client = peer
    for entry in reversed(forwarded_for.split(",")):
        ip = _ip(entry)
        if ip is None:
            break
        client = str(ip)
        if not any(ip in network for network in trusted):
            break
    return client
