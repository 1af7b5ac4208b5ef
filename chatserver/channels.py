"""Which WebSocket flags a visitor may use (``WS4REDIS_ALLOWED_CHANNELS``).

ws4redis calls this hook during the handshake with the Django request (its ``user`` set from
the session cookie) and the flags of the WebSocket URL; it returns the flags to keep.

Deny by default: a connection keeps only the flags that one of the demo's pages asks for on
its facility, for a visitor in that state (anonymous or logged in); every other flag, and
every flag on another facility, is dropped. What the pages ask for:

- ``/chat/`` (``foobar``): ``subscribe-broadcast``; its messages go as events to the
  server-side handler (``chatserver.handlers``), which names the sender itself. A logged-in
  user may still publish raw frames there with ``publish-broadcast&echo`` (ws4redis's
  broadcast chat did, and ws4redis clients do): the pages show those as they are, never
  under a user's name, since a raw frame can name anybody.
- ``/userchat/`` and ``/groupchat/`` (``foobar``): ``subscribe-user``, ``subscribe-group``;
  they send with a form POST that Django publishes, never over the WebSocket. A WebSocket
  publishing to a group or user would let a client write any text, a forged sender name
  included, into those chats.
- ``/eventchat/`` (``eventchat``): ``subscribe-broadcast``; its events go to the server-side
  handler (``chatserver.handlers``), which needs no publish flag and names the sender itself.
"""

from __future__ import annotations

from typing import Any, Iterable

#: The facilities of the demo's pages (settings.CHAT_FACILITY and EVENT_FACILITY).
CHAT_FACILITY = "foobar"
EVENT_FACILITY = "eventchat"

#: facility -> (flags an anonymous visitor may use, flags a logged-in user may use)
PAGE_FLAGS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    CHAT_FACILITY: (
        frozenset({"subscribe-broadcast"}),
        frozenset({"subscribe-broadcast", "publish-broadcast", "echo",
                   "subscribe-user", "subscribe-group"}),
    ),
    EVENT_FACILITY: (
        frozenset({"subscribe-broadcast"}),
        frozenset({"subscribe-broadcast"}),
    ),
}


def allowed_flags(facility: str, authenticated: bool, requested: Iterable[str]) -> list[str]:
    """The flags of ``requested`` that the demo's pages use on ``facility`` for an
    anonymous (``authenticated`` false) or logged-in visitor, in their order."""
    anonymous, logged_in = PAGE_FLAGS.get(facility, (frozenset(), frozenset()))
    allowed = logged_in if authenticated else anonymous
    return [flag for flag in requested if flag.lower() in allowed]


def clients_publish(facility: str, audience: str) -> bool:
    """Whether a client may publish raw messages to the ``audience`` channels (``broadcast``,
    ``user``...) of ``facility``: then what is there may name any sender."""
    anonymous, logged_in = PAGE_FLAGS.get(facility, (frozenset(), frozenset()))
    return f"publish-{audience}" in anonymous | logged_in


def facility_of(request: Any) -> str:
    """The facility of a WebSocket request: its path after ``WEBSOCKET_URL``."""
    from django.conf import settings

    prefix = getattr(settings, "WEBSOCKET_URL", "/ws/")
    path = str(request.path_info)
    return path[len(prefix):] if path.startswith(prefix) else ""


def allowed_channels(request: Any, channels: list[str]) -> list[str]:
    """ws4redis's hook: keep the flags the demo's pages use (see :data:`PAGE_FLAGS`)."""
    user = getattr(request, "user", None)
    authenticated = bool(user is not None and user.is_authenticated)
    return allowed_flags(facility_of(request), authenticated, channels)
