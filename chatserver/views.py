"""The demo's pages.

``/chat/`` sends events over the WebSocket to a server-side handler (which names the sender:
a raw frame could name anybody); ``/userchat/`` and ``/groupchat/`` send with a form POST
that Django publishes with ws4redis's ``RedisPublisher``; ``/eventchat/`` uses only ws4tx's
event API (``chatserver.handlers``) and shows who is online (presence). Every page receives
with ws4tx.js (``static/chatserver/chat.js``) on ONE connection to the bare WebSocket URL
(``/ws/``), which subscribes the page's facility (its messages, and who is online on the
event chat) with a signed grant the page renders (``{% ws4tx_grant %}``: the subscribe
costs the server no database query): the view renders its channels' recent messages and
positions (``ws4tx.api.history``), which the subscription takes as its ``positions``: the
page recovers from there, on its first connect and after every reconnect; a GET that
asks for JSON returns the same, ``getState`` when recovery was not possible. The same
connection subscribes every logged-in page (but the user chat) to the user's own channel
of the chat facility, from where it stood at the render (``api.position``), with its own
grant: the notification badge on the "User chat" link. Sending requires a logged-in user; the POST
views keep CSRF protection, and answer 503 with a message (JSON ``{"error": ...}``) when
Redis cannot take the message. :func:`static_file` serves ``/static/`` whether DEBUG is on
or not, since the demo runs without a web server.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Optional

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.contrib.staticfiles import views as staticfiles_views
from django.core.exceptions import SuspiciousFileOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django.utils.decorators import method_decorator
from django.views.generic import TemplateView

from ws4tx import api, naming
from ws4tx.publisher import RedisPublisher
from ws4tx.redis_store import NotStored, PublishError, RedisMessage

from chatserver import _recent
from chatserver.channels import clients_publish
from chatserver.forms import GroupMessageForm, UserMessageForm
from chatserver.handlers import WRONG_IDENTITY, client_id

#: What a page says when Redis could not be read (never Redis's address).
STORE_UNAVAILABLE = ("Recent messages could not be loaded: the chat server cannot reach its "
                     "message store right now.")

log = logging.getLogger("chatserver")

#: What a sender is told when Redis cannot take the message (never where Redis is).
NOT_SENT = ("Not sent: the chat server cannot reach its message broker right now. "
            "Try again in a moment.")


def chat_message(sender: str, text: str, cid: str = "", **extra: str) -> str:
    """A message of the ws4redis-style chats as it is published: JSON with who sent it,
    what, when (Unix ms), the page's own id of it (``cid``, so that the sender's page can
    tell its own message) and ``to``/``group``. The pages also show plain-text messages
    (what ``api.publish("foobar", "Hello")`` sends) as they are."""
    message: dict[str, Any] = {"user": sender, "text": text, "time": int(time.time() * 1000)}
    if client_id(cid):
        message["cid"] = cid
    message.update(extra)
    return json.dumps(message, separators=(",", ":"))


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


class Audience:
    """One channel a page receives: how to read its history, and its name on the wire
    (what ws4tx.js's ``positions`` and ``recover=`` use)."""

    def __init__(self, facility: str, audience: str, name: Optional[str] = None) -> None:
        self.facility = facility
        self.audience = audience
        self.name = name
        prefix = getattr(settings, "WS4TX_PREFIX", naming.DEFAULT_PREFIX)
        self.channel = naming.channel(prefix, audience, facility, name)

    def history(self) -> dict[str, Any]:
        """The channel's recent messages (within ``chatserver._recent``'s bounds: count and
        bytes) and position, for the page (see ``chat.js``)."""
        audience: dict[str, Any] = ({"broadcast": True} if self.audience == "broadcast"
                                    else {f"{self.audience}s": [self.name]})

        def read(since: Optional[int], limit: int) -> Any:
            return api.history(self.facility, since=since, limit=limit, **audience)

        position, messages = _recent.recent(read)
        return {"channel": self.channel, "epoch": position.epoch, "offset": position.offset,
                "messages": messages}


class ChatPageMixin:
    """A chat page's channels, their history on load (``chat_sync`` in the template) and,
    for a GET that asks for JSON, the same as JSON: the page fetches it again when ws4tx.js
    could not recover what it missed (``recovered: false``) or Redis came back."""

    request: HttpRequest
    facility: str

    def audiences(self) -> list[Audience]:
        """The channels the page subscribes to (none: it connects no WebSocket)."""
        return [Audience(self.facility, "broadcast")]

    def presence(self) -> Optional[list[dict[str, Any]]]:
        """Who is on the page's facility (None: the page shows no presence)."""
        return None

    def notify(self, me: str, flags: str) -> Optional[dict[str, Any]]:
        """The notification badge's subscription (on the page's connection): the user's
        own channel of the chat facility and where it stands, so that only what comes
        after this render counts; None for an anonymous visitor, and on the page that
        shows that channel itself."""
        facility = settings.CHAT_FACILITY
        if not me or (self.facility == facility and "subscribe-user" in flags.split("&")):
            return None
        try:
            where = api.position(facility, users=[me])
        except PublishError:  # Redis is down: counted from the connect on
            where = {}
        return {"facility": facility,
                "trustRaw": not clients_publish(facility, "user"),
                "positions": {channel: {"epoch": p.epoch, "offset": p.offset}
                              for channel, p in where.items()}}

    def sync_state(self) -> dict[str, Any]:
        """The page's channels with their recent messages, and who is online."""
        state: dict[str, Any] = {"channels": [], "error": ""}
        try:
            state["channels"] = [audience.history() for audience in self.audiences()]
            state["presence"] = self.presence()
        except PublishError:
            state["error"] = STORE_UNAVAILABLE
            state["channels"] = [{"channel": a.channel, "messages": []}
                                 for a in self.audiences()]
        return state

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if wants_json(request):
            response: HttpResponse = JsonResponse(self.sync_state())
            add_never_cache_headers(response)
        else:
            response = super().get(request, *args, **kwargs)  # type: ignore[misc]
        # One URL, two representations: a cache (the browser's, on "back") must not
        # answer a page load with the JSON.
        patch_vary_headers(response, ["Accept"])
        return response

    def page_context(self, mode: str, flags: str, connect: bool = True,
                     **page: Any) -> dict[str, Any]:
        """The context every chat page's template uses: ``chat_sync`` (the page's
        messages), ``chat_config`` (what ``chat.js`` does: ``mode`` of sending, the
        WebSocket's ``flags``, whether it connects at all, whether a raw message's
        ``user`` can be believed) and the page's texts."""
        user = self.request.user
        me = user.get_username() if user.is_authenticated else ""
        audiences = [f.removeprefix("subscribe-") for f in flags.split("&")
                     if f.startswith("subscribe-")]
        config = {"mode": mode, "flags": flags, "connect": connect, "me": me,
                  "facility": self.facility,
                  # ws4tx.js's names of the audiences the page subscribes on /ws/.
                  "audiences": [_SUBSCRIBE_AUDIENCES[a] for a in audiences],
                  "groups": page.get("my_groups", []),
                  "presence": type(self).presence is not ChatPageMixin.presence,
                  "typing": self.facility == settings.EVENT_FACILITY,
                  # A raw message names its sender truly only where no client publishes.
                  "trustRaw": not any(clients_publish(self.facility, a) for a in audiences),
                  "notify": self.notify(me, flags) if connect else None}
        return {"chat_sync": self.sync_state(), "chat_config": config,
                "facility": self.facility, "grant_audiences": audiences, **page}


#: The audiences of a URL's flags as ws4tx.js's ``subscribe`` names them.
_SUBSCRIBE_AUDIENCES = {"broadcast": "broadcast", "user": "user", "group": "groups",
                        "session": "session"}


class BroadcastChatView(ChatPageMixin, TemplateView):
    """Everybody's chat: the page sends events over its WebSocket, which the server-side
    handler (``chatserver.handlers.BroadcastChat``) broadcasts under the sender's name, and
    receives with ws4tx.js so that it recovers what it missed. Raw clients may still publish
    here (ws4redis's ``publish-broadcast``); the page shows what they send as it is, never
    as a user's line."""

    template_name = "chatserver/broadcast_chat.html"
    facility = settings.CHAT_FACILITY

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_context_data(**self.page_context(
            "event", "subscribe-broadcast", heading="Broadcast chat", form_id="chat-form",
            hint="Everybody on this page receives every message, logged in or not.",
            placeholder="Message to everybody", **kwargs))


class _PublishingChatView(ChatPageMixin, TemplateView):
    """A page subscribed to one audience, with a form that publishes to a chosen member of
    it. GET is open to anybody; POST needs a logged-in user and a CSRF token."""

    template_name = "chatserver/audience_chat.html"
    facility = settings.CHAT_FACILITY
    form_class: type[forms.Form]
    #: The form field that names the receiver (``user`` or ``group``).
    target_field: str
    #: The message's field that names the receiver (``to`` or ``group``).
    payload_field: str
    #: The page's texts, and the flag its WebSocket subscribes with.
    heading: str
    hint: str
    placeholder: str
    subscribe_flag: str

    def make_form(self, data: Any = None) -> forms.Form:
        """The page's form (bound to ``data`` when given)."""
        return self.form_class(data)

    def receives(self) -> str:
        """Why a logged-in user's page receives nothing (empty when it does)."""
        return ""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        form = kwargs.setdefault("form", self.make_form())
        if not self.request.user.is_authenticated:  # the whole form is disabled
            form.fields[self.target_field].disabled = True
        no_delivery = self.receives()
        connect = self.request.user.is_authenticated and not no_delivery
        return super().get_context_data(**self.page_context(
            "post", self.subscribe_flag, connect, login_reason="to send and receive messages",
            heading=self.heading,
            hint=self.hint, placeholder=self.placeholder,
            form_id=f"{self.target_field}chat-form", target=form[self.target_field],
            no_delivery=no_delivery, **kwargs))

    def publisher(self, target: str) -> RedisPublisher:
        """The publisher of a message to ``target``."""
        raise NotImplementedError

    @method_decorator(login_required)
    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        written_as = request.POST.get("as")
        if written_as is not None and written_as != request.user.get_username():
            # The page's outbox wrote it as somebody this browser is no longer logged in as.
            refused = WRONG_IDENTITY.format(as_=written_as or "nobody",
                                            user=request.user.get_username())
            if wants_json(request):
                return JsonResponse({"error": refused}, status=409)
            messages.error(request, f"Not sent: {refused}.")
            return redirect(request.path)
        form = self.make_form(request.POST)
        if not form.is_valid():
            if wants_json(request):
                return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
            return self.render_to_response(self.get_context_data(form=form), status=400)
        target = str(form.cleaned_data[self.target_field])
        text = chat_message(request.user.get_username(), form.cleaned_data["message"],
                            str(request.POST.get("cid", "")), **{self.payload_field: target})
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
    """Messages to one user: the page subscribes with ``?subscribe-user``. A message goes
    to its receiver and to its sender (so that the sender's page shows it, on load too)."""

    target_field = "user"
    payload_field = "to"
    heading = "User chat"
    hint = ("Messages sent to you, and those you send. Send one to any user, yourself too: "
            "Django publishes it with RedisPublisher(users=[user, you]).")
    placeholder = "Private message"
    subscribe_flag = "subscribe-user"

    def make_form(self, data: Any = None) -> forms.Form:
        """The "To" list offers every user, yourself marked "(you)": a message to yourself
        is a row of the acceptance matrix (it lands once, on your own page)."""
        form = UserMessageForm(data)
        field = form.fields["user"]
        assert isinstance(field, forms.ModelChoiceField)
        me = self.request.user.get_username()

        def label(user: Any) -> str:
            name = str(user.get_username())
            return f"{name} (you)" if name == me else name

        field.label_from_instance = label
        return form

    def audiences(self) -> list[Audience]:
        user = self.request.user
        if not user.is_authenticated:
            return []
        return [Audience(self.facility, "user", user.get_username())]

    def publisher(self, target: str) -> RedisPublisher:
        users = sorted({target, self.request.user.get_username()})
        return RedisPublisher(facility=self.facility, users=users)


class GroupChatView(_PublishingChatView):
    """Messages to a group: the page subscribes with ``?subscribe-group``."""

    target_field = "group"
    payload_field = "group"
    heading = "Group chat"
    hint = ("Messages to the groups you are in. Send one to a group: Django publishes it "
            "with RedisPublisher(groups=[group]).")
    placeholder = "Message to the group"
    subscribe_flag = "subscribe-group"

    def make_form(self, data: Any = None) -> forms.Form:
        """The "To" list starts at the first of your groups."""
        form = GroupMessageForm(data)
        mine = self.groups()
        if mine:
            form.fields["group"].initial = mine[0]
        return form

    def groups(self) -> list[str]:
        """The names of the user's groups."""
        user = self.request.user
        if not user.is_authenticated:
            return []
        return sorted(Group.objects.filter(user=user).values_list("name", flat=True))

    def receives(self) -> str:
        if self.request.user.is_authenticated and not self.groups():
            return "You are in no group: you receive no group messages"
        return ""

    def audiences(self) -> list[Audience]:
        return [Audience(self.facility, "group", name) for name in self.groups()]

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        groups = self.groups()
        line = ""
        if groups:
            line = "You are in " + ", ".join(groups) + "."
        return super().get_context_data(my_groups=groups, groups_line=line, **kwargs)

    def publisher(self, target: str) -> RedisPublisher:
        return RedisPublisher(facility=self.facility, groups=[target])


class EventChatView(ChatPageMixin, TemplateView):
    """The event chat: ws4tx.js only, no POST (the server-side handler publishes); it
    shows who is online (presence) and who is typing."""

    template_name = "chatserver/event_chat.html"
    facility = settings.EVENT_FACILITY

    def presence(self) -> Optional[list[dict[str, Any]]]:
        return api.presence(self.facility)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_context_data(**self.page_context(
            "event", "subscribe-broadcast", heading="Event chat", form_id="event-form",
            hint="ws4tx's event API: the browser emits events, a server-side handler "
                 "answers them and broadcasts. Anybody may watch; logged-in users may write.",
            placeholder="Message", **kwargs))


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
