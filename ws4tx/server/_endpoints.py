"""The Twisted client endpoint that connects to a Redis address itself (TCP, TLS or a
unix socket): what the Sentinel endpoint uses to reach the master the Sentinels name, and
:func:`ws4tx.server.sentinel.client_endpoint` for every address that is not a Sentinel
one. Apart, so that neither the broker nor the Sentinel endpoint imports the other."""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IStreamClientEndpoint

from ws4tx.redis_address import RedisAddress


def direct_endpoint(reactor: Any, address: RedisAddress,
                    timeout: float) -> IStreamClientEndpoint:
    """The endpoint that connects to ``address`` itself: a unix socket, or TCP (IPv4,
    IPv6 or a host name), wrapped in TLS for ``rediss://``."""
    if address.unix_socket_path:
        return endpoints.UNIXClientEndpoint(reactor, address.unix_socket_path, timeout=timeout)
    endpoint: IStreamClientEndpoint
    if isIPAddress(address.host):
        endpoint = endpoints.TCP4ClientEndpoint(reactor, address.host, address.port, timeout)
    elif isIPv6Address(address.host):
        endpoint = endpoints.TCP6ClientEndpoint(reactor, address.host, address.port, timeout)
    else:
        endpoint = endpoints.HostnameEndpoint(reactor, address.host, address.port,
                                              timeout=timeout)
    if address.ssl:
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = endpoints.wrapClientTLS(optionsForClientTLS(address.host), endpoint)
    return endpoint

