"""URLs of the demo chat (ws4redis's demo URLs, plus /eventchat/ and /static/); /admin/
only with ``CHATSERVER_ADMIN`` (``python -m chatserver --admin``)."""

from __future__ import annotations

import re

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.urls import path, re_path
from django.views.generic import RedirectView

from chatserver import views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chat", permanent=False)),
    path("chat/", views.BroadcastChatView.as_view(), name="chat"),
    path("userchat/", views.UserChatView.as_view(), name="userchat"),
    path("groupchat/", views.GroupChatView.as_view(), name="groupchat"),
    path("eventchat/", views.EventChatView.as_view(), name="eventchat"),
    # Log in and out only: the demo sends no mail (no password reset), and its users share
    # one password (no password change); Django's other account pages would need templates
    # the demo does not have. A GET of the logout URL shows a button, not a blank 405.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", views.LogoutView.as_view(), name="logout"),
    re_path(rf"^{re.escape(settings.STATIC_URL.lstrip('/'))}(?P<path>.*)$", views.static_file),
]

if settings.CHATSERVER_ADMIN:
    from django.contrib import admin

    urlpatterns.append(path("admin/", admin.site.urls))
