"""The event chat's server side (``twistd ws4tx --handlers chatserver.handlers.EventChat``).

The browser's ``request('message', {text})`` reaches :meth:`EventChat.on_message`, which
broadcasts the message with the sender's user name and the time (Unix ms), and answers
the acknowledgement with ``{"delivered": true}``; ``emit('typing')`` is broadcast as who
is typing. Anonymous visitors may watch but not send: their pages have no working message
box, and their events are refused.
"""

from __future__ import annotations

import time
from typing import Any

from ws4tx.server import Client, EventHandler, EventRefused

from chatserver.channels import EVENT_FACILITY

FACILITY = EVENT_FACILITY
MAX_TEXT_LENGTH = 1000
MAX_CLIENT_ID_LENGTH = 64
LOGIN_REQUIRED = "log in to send messages"


def _sender(client: Client) -> str:
    """The user name behind ``client``; refuse anonymous clients."""
    user = client.identity.user
    if not user:
        raise EventRefused(LOGIN_REQUIRED)
    return user


class EventChat(EventHandler):
    """Handles the events of the ``eventchat`` facility."""

    facility = FACILITY

    async def on_message(self, client: Client, data: Any) -> dict[str, bool]:
        """Broadcast ``data['text']`` with the sender's name; ``data['cid']`` (the page's own
        id of the message) comes back so that the sender can match its acknowledgement."""
        user = _sender(client)
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise EventRefused("a message needs a text")
        text = data["text"].strip()
        if not text:
            raise EventRefused("the message is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise EventRefused(f"the message is longer than {MAX_TEXT_LENGTH} characters")
        message: dict[str, Any] = {"user": user, "text": text, "time": int(time.time() * 1000)}
        cid = data.get("cid")
        if isinstance(cid, str) and len(cid) <= MAX_CLIENT_ID_LENGTH:
            message["cid"] = cid
        await self.server.emit("message", message, facility=FACILITY, broadcast=True)
        return {"delivered": True}

    async def on_typing(self, client: Client, data: Any = None) -> None:
        """Tell everybody that the sender is typing."""
        user = _sender(client)
        await self.server.emit("typing", {"user": user}, facility=FACILITY, broadcast=True)
