"""``{% load ws4tx %}``: ``{% ws4tx_token %}`` prints a connection token for the current
request (see :mod:`ws4tx.tokens`), to append to the WebSocket URL as ``?token=...``::

    new WS4Redis({uri: "{{ WEBSOCKET_URI }}foobar?subscribe-user&token={% ws4tx_token %}"});

``{% ws4tx_position "chat" broadcast=True %}`` prints where the channels of an audience of a
facility with history stand (:func:`ws4tx.api.position`), as the JSON object ws4tx.js takes
as its ``positions`` (``{"ws4tx:broadcast:chat": {"epoch": "...", "offset": 41}}``); put it
in an attribute (autoescaping keeps it intact) and hand it to the client, which then
recovers every message published after the page was rendered::

    <div id="chat" data-positions="{% ws4tx_position "chat" broadcast=True users=True %}">
    new WS4TX(url, {positions: JSON.parse(chat.dataset.positions)});

``users=True`` (or ``sessions=True``, ``groups=True``) is the request's own, as ``SELF``.

The template needs ``request`` in its context (``django.template.context_processors.request``).
"""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.core.exceptions import ImproperlyConfigured

from ws4tx import tokens

register = template.Library()


@register.simple_tag(takes_context=True)
def ws4tx_position(context: Any, facility: str, broadcast: bool = False, users: Any = (),
                   groups: Any = (), sessions: Any = ()) -> str:
    """Where the channels of an audience of ``facility`` stand, as ws4tx.js's
    ``positions`` (JSON): one Redis round trip."""
    from ws4tx import api

    positions = api.position(facility, broadcast=broadcast, users=users, groups=groups,
                             sessions=sessions, request=context.get("request"))
    return json.dumps({channel: {"epoch": p.epoch, "offset": p.offset}
                       for channel, p in positions.items()}, separators=(",", ":"))


@register.simple_tag(takes_context=True)
def ws4tx_token(context: Any) -> str:
    """A signed, short-lived connection token for the request in ``context``."""
    request = context.get("request")
    if request is None:
        raise ImproperlyConfigured(
            "{% ws4tx_token %} needs the request in the template context: add "
            "django.template.context_processors.request to the context processors"
        )
    return tokens.token_for_request(request)
