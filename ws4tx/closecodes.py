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
#: The client did not read its messages fast enough (its send queue overflowed).
SLOW_CONSUMER = 4008
#: Redis refused to subscribe one of the client's channels (an ACL without it).
SUBSCRIPTION_REFUSED = 4503
