"""WSGI entry point of the demo: ``twistd ws4tx --wsgi chatserver.wsgi.application``.

The site serves ``/static/`` itself (the chat pages' CSS and JavaScript, and ws4tx's browser
clients) through a URL pattern, DEBUG on or off: see ``chatserver.views.static_file``.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatserver.settings")

application = get_wsgi_application()
