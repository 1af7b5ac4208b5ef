"""Which WebSocket flags a visitor may use (``WS4REDIS_ALLOWED_CHANNELS``).

ws4redis calls this hook during the handshake with the Django request (its ``user`` set from
the session cookie) and the flags of the WebSocket URL; it returns the flags to keep.
"""

from __future__ import annotations

from typing import Any


def allowed_channels(request: Any, channels: list[str]) -> list[str]:
    """Keep every flag for a logged-in user; an anonymous visitor may only subscribe."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return channels
    return [flag for flag in channels if not flag.lower().startswith("publish-")]
