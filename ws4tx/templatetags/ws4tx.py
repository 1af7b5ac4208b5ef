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

``{% ws4tx_grant "notes" "broadcast" "user" %}`` prints a signed grant of those audiences of
the facility for the request's identity (:func:`ws4tx.grants.grant_for_request`;
``groups="staff,ops"`` narrows the group audience), for the ``grant`` of a ``subscribe``
frame, which the server then admits without asking the database::

    <div id="notes" data-grant="{% ws4tx_grant "notes" "broadcast" "user" %}">

The template needs ``request`` in its context (``django.template.context_processors.request``).
"""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.core.exceptions import ImproperlyConfigured

from ws4tx import grants, tokens

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
    return tokens.token_for_request(_request(context, "ws4tx_token"))


@register.simple_tag(takes_context=True)
def ws4tx_grant(context: Any, facility: str, *audiences: str, groups: str = "") -> str:
    """A signed, short-lived subscribe grant of ``facility``'s ``audiences`` for the
    request in ``context`` (its groups, or those of ``groups``, comma-separated)."""
    chosen = [g for g in groups.split(",") if g] or None
    return grants.grant_for_request(_request(context, "ws4tx_grant"), facility, audiences,
                                    groups=chosen)


def _request(context: Any, tag: str) -> Any:
    request = context.get("request")
    if request is None:
        raise ImproperlyConfigured(
            f"{{% {tag} %}} needs the request in the template context: add "
            "django.template.context_processors.request to the context processors"
        )
    return request
