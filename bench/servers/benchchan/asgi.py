"""ASGI entry point of the Channels peer (``daphne benchchan.asgi:application``)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchchan.settings")

import django

django.setup()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from benchchan.consumers import GroupForwarder  # noqa: E402

application = ProtocolTypeRouter({
    "websocket": URLRouter([path("ws/<str:group>/", GroupForwarder.as_asgi())]),
})
