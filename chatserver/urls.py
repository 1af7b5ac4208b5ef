"""URLs of the demo chat (ws4redis's demo URLs, plus /eventchat/ and /static/); /admin/
only with ``CHATSERVER_ADMIN`` (``python -m chatserver --admin``)."""

from __future__ import annotations

import re

from django.conf import settings
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from chatserver import views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chat", permanent=False)),
    path("chat/", views.BroadcastChatView.as_view(), name="chat"),
    path("userchat/", views.UserChatView.as_view(), name="userchat"),
    path("groupchat/", views.GroupChatView.as_view(), name="groupchat"),
    path("eventchat/", views.EventChatView.as_view(), name="eventchat"),
    # Before Django's own: a GET shows a logout button instead of a blank 405.
    path("accounts/logout/", views.LogoutView.as_view(), name="logout"),
    path("accounts/", include("django.contrib.auth.urls")),
    re_path(rf"^{re.escape(settings.STATIC_URL.lstrip('/'))}(?P<path>.*)$", views.static_file),
]

if settings.CHATSERVER_ADMIN:
    from django.contrib import admin

    urlpatterns.append(path("admin/", admin.site.urls))
