"""WSGI entry point of the demo: ``twistd ws4tx --wsgi chatserver.wsgi.application``.

With DEBUG on, Django's own static files handler serves ``/static/`` (the chat pages' CSS and
JavaScript, and ws4tx's browser clients), since the demo runs without a separate web server.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatserver.settings")

application = get_wsgi_application()

if settings.DEBUG:
    from django.contrib.staticfiles.handlers import StaticFilesHandler

    application = StaticFilesHandler(application)
