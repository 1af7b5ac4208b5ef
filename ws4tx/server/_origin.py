"""Matching an Origin header against allowed origins. Pure.

Patterns are ``scheme://host[:port]`` with ``*`` wildcards in the host
(``https://*.example.com``). The default port of the scheme may be left out on either side:
``https://app.example.com`` matches ``https://app.example.com:443`` and the other way round
(Autobahn's own check does not, which is a trap).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Optional
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _split(origin: str) -> Optional[tuple[str, str, int]]:
    try:
        parts = urlsplit(origin.strip().lower())
        scheme, host, port = parts.scheme, parts.hostname, parts.port
    except ValueError:
        return None
    if not scheme or not host:
        return None
    port = port or _DEFAULT_PORTS.get(scheme)
    if port is None:
        return None
    return scheme, host, port


#: The only schemes a site's own origin can have (a browser page's Origin when it is on the
#: site); ``ws``, ``ftp``, ``file``, ``null`` ... never match it.
WEB_SCHEMES = ("http", "https")


def same_origin(origin: str, site: str) -> bool:
    """Whether ``origin`` is exactly ``site`` (both ``scheme://host[:port]``): same http(s)
    scheme, same host, same port (a default port may be left out)."""
    actual, wanted = _split(origin), _split(site)
    return actual is not None and actual == wanted and actual[0] in WEB_SCHEMES


def origin_allowed(origin: str, patterns: Iterable[str]) -> bool:
    """Whether ``origin`` matches one of ``patterns`` (``*`` alone matches anything)."""
    actual = _split(origin)
    for pattern in patterns:
        if pattern == "*":
            return True
        wanted = _split(pattern.replace("*", "wildcard-"))
        if actual is None or wanted is None:
            continue
        scheme, host, port = wanted
        if scheme == actual[0] and port == actual[2] and fnmatchcase(
            actual[1], host.replace("wildcard-", "*")
        ):
            return True
    return False
