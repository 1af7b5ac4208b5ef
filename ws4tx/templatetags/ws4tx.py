"""``{% load ws4tx %}``: ``{% ws4tx_token %}`` prints a connection token for the current
request (see :mod:`ws4tx.tokens`), to append to the WebSocket URL as ``?token=...``::

    new WS4Redis({uri: "{{ WEBSOCKET_URI }}foobar?subscribe-user&token={% ws4tx_token %}"});

The template needs ``request`` in its context (``django.template.context_processors.request``).
"""

from __future__ import annotations

from typing import Any

from django import template
from django.core.exceptions import ImproperlyConfigured

from ws4tx import tokens

register = template.Library()


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
