"""The server side of the pages that send events (``twistd ws4tx --handlers
chatserver.handlers.EventChat --handlers chatserver.handlers.BroadcastChat``): the event
chat and the broadcast chat.

The browser's ``request('message', {text, cid, as})`` reaches
:meth:`ChatHandler.on_message`, which broadcasts the message with the sender's user name, as
the server knows it, and the time (Unix ms), and answers the acknowledgement with
``{"delivered": true}``; ``emit('typing')`` on the event chat is broadcast as who is typing.
A line names its sender only because the server said so: the pages attribute a line to a
user only when it came as an event (which no client can publish). ``as`` is the user the
page's outbox wrote the message as: when the browser is logged in as somebody else by the
time it is sent (another tab logged in), the message is refused (:data:`WRONG_IDENTITY`),
never sent under the other name. Anonymous visitors may watch but not send: their pages have
no working message box, and their events are refused.
"""

from __future__ import annotations

import re
import time
from typing import Any

from ws4tx.server import Client, EventHandler, EventRefused

from chatserver.channels import CHAT_FACILITY, EVENT_FACILITY

FACILITY = EVENT_FACILITY
MAX_TEXT_LENGTH = 1000
MAX_CLIENT_ID_LENGTH = 64
#: What a page's own id of a message looks like (``chat.js``'s ``newCid``).
CLIENT_ID = re.compile(r"c[0-9a-z]{1,63}")
LOGIN_REQUIRED = "log in to send messages"
#: The refusal of a message written as another user than the connection's (``{as}``,
#: ``{user}``): the page says so and keeps it from going out.
WRONG_IDENTITY = "written as {as_}, but this browser is now logged in as {user}"


def _sender(client: Client) -> str:
    """The user name behind ``client``; refuse anonymous clients."""
    user = client.identity.user
    if not user:
        raise EventRefused(LOGIN_REQUIRED)
    return user


def client_id(value: Any) -> str:
    """``value`` if it is a page's id of a message, else empty."""
    return value if isinstance(value, str) and CLIENT_ID.fullmatch(value) else ""


class ChatHandler(EventHandler):
    """A chat page's events on ``facility``: messages and typing."""

    async def on_message(self, client: Client, data: Any) -> dict[str, bool]:
        """Broadcast ``data['text']`` with the sender's name; ``data['cid']`` (the page's own
        id of the message) comes back so that the sender can match its acknowledgement."""
        user = _sender(client)
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise EventRefused("a message needs a text")
        written_as = data.get("as")
        if written_as is not None and written_as != user:
            raise EventRefused(WRONG_IDENTITY.format(as_=written_as or "nobody", user=user))
        text = data["text"].strip()
        if not text:
            raise EventRefused("the message is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise EventRefused(f"the message is longer than {MAX_TEXT_LENGTH} characters")
        message: dict[str, Any] = {"user": user, "text": text, "time": int(time.time() * 1000)}
        cid = client_id(data.get("cid"))
        if cid:
            message["cid"] = cid
        await self.server.emit("message", message, facility=self.facility, broadcast=True)
        return {"delivered": True}



class EventChat(ChatHandler):
    """The event chat (``/eventchat/``), which shows who is typing too."""

    facility = EVENT_FACILITY

    async def on_typing(self, client: Client, data: Any = None) -> None:
        """Tell everybody that the sender is typing."""
        user = _sender(client)
        await self.server.emit("typing", {"user": user}, facility=self.facility,
                               broadcast=True)


class BroadcastChat(ChatHandler):
    """The broadcast chat (``/chat/``): its page sends events rather than publishing raw
    frames (which could name anybody as their sender)."""

    facility = CHAT_FACILITY
