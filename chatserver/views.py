"""The demo's pages.

``/chat/`` sends over the WebSocket itself (ws4redis's ``publish-broadcast``); ``/userchat/``
and ``/groupchat/`` send with a form POST that Django publishes with ws4redis's
``RedisPublisher``; ``/eventchat/`` uses only ws4tx's event API (``chatserver.handlers``).
Sending requires a logged-in user; the POST views keep CSRF protection, and answer 503 with
a message (JSON ``{"error": ...}`` to the page's script) when Redis cannot take the
message. :func:`static_file` serves ``/static/`` whether DEBUG is on or not, since the
demo runs without a web server.
"""

from __future__ import annotations

import logging
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.staticfiles import views as staticfiles_views
from django.core.exceptions import SuspiciousFileOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils.decorators import method_decorator
from django.views.generic import TemplateView

from ws4tx.publisher import RedisPublisher
from ws4tx.redis_store import NotStored, PublishError, RedisMessage

from chatserver.forms import GroupMessageForm, UserMessageForm

log = logging.getLogger("chatserver")

#: What a sender is told when Redis cannot take the message (never where Redis is).
NOT_SENT = ("Not sent: the chat server cannot reach its message broker right now. "
            "Try again in a moment.")


def chat_line(sender: str, text: str) -> str:
    """A message as the receivers see it: who sent it, and what."""
    return f"{sender}: {text}"


def static_file(request: HttpRequest, path: str) -> HttpResponse:
    """A file of an app's ``static/`` directory (what ``collectstatic`` would gather), found
    as ``staticfiles`` finds it; 404 for anything else: a path with a ``.`` or ``..``
    segment, a backslash or a NUL, a directory, a missing file."""
    parts = path.split("/")
    if any(part in (".", "..") for part in parts) or "\\" in path or "\0" in path:
        raise Http404("not a static file")
    try:
        return staticfiles_views.serve(request, path, insecure=True)
    except SuspiciousFileOperation:  # outside every static directory
        raise Http404("not a static file") from None


def wants_json(request: HttpRequest) -> bool:
    """Whether the POST came from the page's script (which asks for JSON), not a plain form."""
    return "application/json" in request.headers.get("Accept", "")


class BroadcastChatView(TemplateView):
    """Everybody's chat: the page publishes over its WebSocket (old ws4redis.js API)."""

    template_name = "chatserver/broadcast_chat.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_context_data(facility=settings.CHAT_FACILITY, **kwargs)


class _PublishingChatView(TemplateView):
    """A page subscribed to one audience, with a form that publishes to a chosen member of
    it. GET is open to anybody; POST needs a logged-in user and a CSRF token."""

    template_name = "chatserver/audience_chat.html"
    form_class: type[forms.Form]
    #: The form field that names the receiver (``user`` or ``group``).
    target_field: str
    #: The page's texts, and the flag its WebSocket subscribes with.
    heading: str
    hint: str
    placeholder: str
    subscribe_flag: str

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        form = kwargs.setdefault("form", self.form_class())
        return super().get_context_data(
            facility=settings.CHAT_FACILITY, heading=self.heading, hint=self.hint,
            placeholder=self.placeholder, subscribe_flag=self.subscribe_flag,
            form_id=f"{self.target_field}chat-form", target=form[self.target_field], **kwargs)

    def publisher(self, target: str) -> RedisPublisher:
        """The publisher of a message to ``target``."""
        raise NotImplementedError

    @method_decorator(login_required)
    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        form = self.form_class(request.POST)
        if not form.is_valid():
            if wants_json(request):
                return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
            return self.render_to_response(self.get_context_data(form=form), status=400)
        target = str(form.cleaned_data[self.target_field])
        text = chat_line(request.user.get_username(), form.cleaned_data["message"])
        try:
            self.publisher(target).publish_message(RedisMessage(text))
        except NotStored as e:  # delivered, not kept for replay: sent all the same
            log.warning("a message to %s was delivered but not stored: %s", target, e.reason)
        except PublishError as e:  # nobody got it
            log.warning("a message to %s was not sent: %s", target, e)
            if wants_json(request):
                return JsonResponse({"error": NOT_SENT}, status=503)
            messages.error(request, NOT_SENT)
            return self.render_to_response(self.get_context_data(form=form), status=503)
        if wants_json(request):
            return JsonResponse({"sent": True, self.target_field: target})
        messages.success(request, f"Sent to {target}.")
        return redirect(request.path)


class UserChatView(_PublishingChatView):
    """Messages to one user: the page subscribes with ``?subscribe-user``."""

    form_class = UserMessageForm
    target_field = "user"
    heading = "User chat"
    hint = ("Messages sent to you alone. Send one to any user: Django publishes it with "
            "RedisPublisher(users=[user]).")
    placeholder = "Private message"
    subscribe_flag = "subscribe-user"

    def publisher(self, target: str) -> RedisPublisher:
        return RedisPublisher(facility=settings.CHAT_FACILITY, users=[target])


class GroupChatView(_PublishingChatView):
    """Messages to a group: the page subscribes with ``?subscribe-group``."""

    form_class = GroupMessageForm
    target_field = "group"
    heading = "Group chat"
    hint = ("Messages to the groups you are in. Send one to a group: Django publishes it "
            "with RedisPublisher(groups=[group]).")
    placeholder = "Message to the group"
    subscribe_flag = "subscribe-group"

    def publisher(self, target: str) -> RedisPublisher:
        return RedisPublisher(facility=settings.CHAT_FACILITY, groups=[target])


class EventChatView(TemplateView):
    """The event chat: ws4tx.js only, no POST (the server-side handler publishes)."""

    template_name = "chatserver/event_chat.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_context_data(facility=settings.EVENT_FACILITY, **kwargs)


class LogoutView(auth_views.LogoutView):
    """Django's logout, which only a POST does (a GET that logged out could be set off by any
    page, with an ``<img>`` say), plus a GET that answers a logged-in user with a page
    holding the logout button, and anybody else with a redirect to the chat, instead of a
    blank 405. Logging out closes the session's WebSockets (``ws4tx`` does, on Django's
    ``user_logged_out``)."""

    http_method_names = ["get", "post", "options"]
    template_name = "registration/logged_out.html"

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect("chat")
        return TemplateResponse(request, "registration/logout.html")
