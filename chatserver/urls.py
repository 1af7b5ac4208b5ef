"""URLs of the demo chat (ws4redis's demo URLs, plus /eventchat/)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from chatserver import views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chat", permanent=False)),
    path("chat/", views.BroadcastChatView.as_view(), name="chat"),
    path("userchat/", views.UserChatView.as_view(), name="userchat"),
    path("groupchat/", views.GroupChatView.as_view(), name="groupchat"),
    path("eventchat/", views.EventChatView.as_view(), name="eventchat"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
