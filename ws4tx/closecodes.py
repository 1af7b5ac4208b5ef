"""The WebSocket close codes ws4tx uses, in one place (see docs/protocol.md)."""

NORMAL = 1000
#: The server is shutting down or draining: reconnect, possibly to another node.
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
INVALID_PAYLOAD = 1007
#: The client broke a rule (a refused event, say); do not retry as is.
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
#: The site closed the connection (``ws4tx.api.disconnect``: a logout, a password change, a
#: deactivated user, or the site's own reason). ws4tx.js reconnects with backoff, and the
#: new connection is authenticated anew (after a logout: as anonymous).
CLOSED_BY_SITE = 4001
#: The connection's token expired and the client did not send a fresh one in time (see
#: ``ws4tx.refresh`` in docs/protocol.md). ws4tx.js reconnects, with a fresh token when the
#: page gave it a ``token`` function.
TOKEN_EXPIRED = 4002
#: The client did not read its messages fast enough (its send queue overflowed).
SLOW_CONSUMER = 4008
#: Redis refused to subscribe one of the client's channels (an ACL without it).
SUBSCRIPTION_REFUSED = 4503


def may_send(code: int) -> bool:
    """Whether the server may close a connection with ``code``: 1000, 1001, 1008, 1011 or
    an application code (3000-4999). The others are the protocol's own or reserved."""
    return (isinstance(code, int) and not isinstance(code, bool)
            and (code in (NORMAL, GOING_AWAY, POLICY_VIOLATION, INTERNAL_ERROR)
                 or 3000 <= code <= 4999))
