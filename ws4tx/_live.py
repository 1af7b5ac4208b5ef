"""Identity changes reach open sockets: Django's signals turned into
:func:`ws4tx.api.disconnect` commands (connected by :class:`ws4tx.apps.Ws4txConfig`).

Each also bumps the user's revocation counter (:mod:`ws4tx._revocation`), so that its
resume tokens are refused on every node from then on.

- ``user_logged_out``: the session's connections close (cookie and token ones: a token
  carries its session's channel id), once the session is flushed (the receiver flushes it:
  Django sends the signal before its own flush): whatever the closed pages do next, a
  reload or a reconnect, is authenticated without it.
- A saved user whose password hash changed (``set_password``, or a new hash assigned) or
  who became inactive (``is_active`` set to False): all the user's connections close.
  Detected on ``post_save`` of the user model, against the values the instance was loaded
  with (``post_init``): this covers the admin, ``PasswordChangeView`` and
  ``update_session_auth_hash``, ``changepassword``, and any code that saves the user.
  ``QuerySet.update()`` sends no signal: call ``ws4tx.api.disconnect`` after it.
- A deleted user (``post_delete`` of the user model): all the user's connections close.
- A deleted session (``post_delete`` of ``django.contrib.sessions``' ``Session``, when that
  app is installed: a site that kicks a session by deleting it, the admin, a ``flush()``
  of the database session backend): that session's connections close. Other session
  backends (cache, signed cookies) send no signal: call ``ws4tx.api.disconnect`` there.

Each command is sent once the database transaction commits (at once outside one), so that
a client that reconnects at once is authenticated against the committed change. The
setting ``DISCONNECT_ON_LOGOUT = False`` turns all of it off. A Redis that cannot be
reached never fails the logout or the save: it is logged.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from ws4tx import _audience, _django_settings

log = logging.getLogger("ws4tx")

#: Session keys this thread's logout closed already: the session's deletion that follows
#: (``flush()``) sends no second command.
_logged_out = threading.local()

#: Where a user instance keeps the (password hash, is_active) it was loaded or last saved with.
_LOADED = "_ws4tx_identity_state"


def _state(instance: Any) -> tuple[Optional[str], Optional[bool]]:
    # From __dict__: a deferred field (``only()``) is not loaded by looking at it.
    values = instance.__dict__
    return values.get("password"), values.get("is_active")


def _acts() -> bool:
    """Whether an identity change does anything: close the connections
    (``DISCONNECT_ON_LOGOUT``) or at least end their resume tokens (``RESUME_TTL``)."""
    return _django_settings.disconnect_on_logout() or bool(_django_settings.resume_ttl())


def _disconnect(using: Optional[str], what: str, revoke: Optional[str] = None,
                **audience: Any) -> None:
    """Send the command once the transaction on ``using`` commits (when
    ``DISCONNECT_ON_LOGOUT``), after bumping the revocation counter of user ``revoke``
    (its resume tokens are refused from then on, whether or not its connections close);
    log a failure."""
    from django.db import transaction

    from ws4tx import _revocation, api

    def send() -> None:
        failures = []
        closes = _django_settings.disconnect_on_logout()
        # A disconnect of the user revokes its resume tokens itself (ws4tx._ops.command).
        if revoke is not None and not (closes and revoke in audience.get("users", ())):
            try:
                _revocation.bump([revoke])
            except api.PublishError as e:
                failures.append(f"resume tokens not revoked: {e}")
        if closes:
            try:
                api.disconnect(reason=what, **audience)
            except api.PublishError as e:
                failures.append(str(e))
        if failures:
            log.error("could not close the connections (%s) on the ws4tx nodes: %s", what,
                      "; ".join(failures))

    transaction.on_commit(send, using=using)


def logged_out(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    """``user_logged_out``: close the connections of the request's session."""
    if request is None or not _acts():
        return
    key = _audience.session_key(request)
    name = user.get_username() if getattr(user, "is_authenticated", False) else None
    if key:
        _logged_out.key = key
        # Django's logout sends the signal before it flushes the session: a close sent
        # now would reach the other tabs while the session still logs them in, and the
        # page they reload (or the socket ws4tx.js opens again) would come back as the
        # user who just logged out. The session goes first (logout's own flush then finds
        # it gone, which it takes in its stride).
        request.session.flush()
        _disconnect(None, "logged out", revoke=name, sessions=[key])


def user_loaded(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``post_init`` of the user model: remember the password hash and ``is_active``."""
    instance.__dict__[_LOADED] = _state(instance)


def user_saved(sender: Any, instance: Any, created: bool = False, raw: bool = False,
               using: Optional[str] = None, **kwargs: Any) -> None:
    """``post_save`` of the user model: a changed password or a deactivation closes the
    user's connections."""
    (old_hash, was_active) = instance.__dict__.get(_LOADED, (None, None))
    new_hash, active = _state(instance)
    instance.__dict__[_LOADED] = (new_hash, active)
    if created or raw or not _acts():
        return
    # set_password() leaves the raw password in _password until save() is over.
    password_changed = getattr(instance, "_password", None) is not None or (
        old_hash is not None and new_hash is not None and old_hash != new_hash)
    deactivated = active is False and was_active is not False
    if password_changed or deactivated:
        name = instance.get_username()
        _disconnect(using, "password changed" if password_changed else "account deactivated",
                    revoke=name, users=[name])


def user_deleted(sender: Any, instance: Any, using: Optional[str] = None,
                 **kwargs: Any) -> None:
    """``post_delete`` of the user model: close the user's connections."""
    if _acts():
        name = instance.get_username()
        _disconnect(using, "account deleted", revoke=name, users=[name])


def session_deleted(sender: Any, instance: Any, using: Optional[str] = None,
                    **kwargs: Any) -> None:
    """``post_delete`` of a database session: close that session's connections."""
    key = instance.session_key
    if getattr(_logged_out, "key", None) == key:  # the logout's flush(): closed already
        _logged_out.key = None
        return
    if _acts() and key:
        _disconnect(using, "session ended", revoke=_session_user(instance, using),
                    sessions=[key])


def _session_user(session: Any, using: Optional[str]) -> Optional[str]:
    """The name of the user a database session was logged in as (one query), if any."""
    from django.contrib.auth import SESSION_KEY, get_user_model

    pk = session.get_decoded().get(SESSION_KEY)  # {} when it does not decode
    if pk is None:
        return None
    model = get_user_model()
    try:
        user = model._default_manager.db_manager(using).get(pk=pk)
    except (model.DoesNotExist, ValueError):
        return None
    name: str = user.get_username()
    return name


def connect() -> None:
    """Connect the receivers (once: each has a ``dispatch_uid``)."""
    from django.apps import apps
    from django.contrib.auth import get_user_model
    from django.contrib.auth.signals import user_logged_out
    from django.db.models.signals import post_delete, post_init, post_save

    user_model = get_user_model()
    user_logged_out.connect(logged_out, dispatch_uid="ws4tx.logged_out")
    post_init.connect(user_loaded, sender=user_model, dispatch_uid="ws4tx.user_loaded")
    post_save.connect(user_saved, sender=user_model, dispatch_uid="ws4tx.user_saved")
    post_delete.connect(user_deleted, sender=user_model, dispatch_uid="ws4tx.user_deleted")
    if apps.is_installed("django.contrib.sessions"):
        from django.contrib.sessions.models import Session

        post_delete.connect(session_deleted, sender=Session,
                            dispatch_uid="ws4tx.session_deleted")
