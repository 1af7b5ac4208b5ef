"""The template context processor of ws4redis: ``ws4tx.context_processors.default``.

Add it to ``TEMPLATES[...]["OPTIONS"]["context_processors"]``; templates then get
``WEBSOCKET_URI`` (``ws://`` or ``wss://`` + host + ``WEBSOCKET_URL``) and the heartbeat as a
JavaScript literal (``"--heartbeat--"`` or ``null``) as ``WS4TX_HEARTBEAT`` and under
ws4redis's name ``WS4REDIS_HEARTBEAT``::

    WS4Redis({uri: "{{ WEBSOCKET_URI }}foobar?subscribe-broadcast",
              heartbeat_msg: {{ WS4REDIS_HEARTBEAT }}});
"""

from __future__ import annotations

import json
from typing import Any, Optional

from django.utils.safestring import SafeString, mark_safe

from ws4tx import _django_settings

# Escaped so that the literal cannot end a <script> element or open a comment in it.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def js_literal(value: Optional[str]) -> SafeString:
    """``value`` as a JavaScript literal safe inside a ``<script>`` element (``null`` for
    None)."""
    if value is None:
        return mark_safe("null")
    return mark_safe(json.dumps(value).translate(_SCRIPT_SAFE))


def default(request: Any) -> dict[str, Any]:
    """``WEBSOCKET_URI``, ``WS4TX_HEARTBEAT`` and ``WS4REDIS_HEARTBEAT`` for templates."""
    scheme = "wss://" if request.is_secure() else "ws://"
    heartbeat = js_literal(_django_settings.heartbeat())
    return {
        "WEBSOCKET_URI": scheme + request.get_host() + _django_settings.websocket_url(),
        "WS4TX_HEARTBEAT": heartbeat,
        "WS4REDIS_HEARTBEAT": heartbeat,
    }
