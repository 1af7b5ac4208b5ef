"""Who a request is, for the Django side: its user name, group names (from the database)
and session, and the resolution of ws4redis's ``SELF`` in audience lists.

Session keys enter here and leave as session channel names
(:func:`_django_settings.session_channel`: a keyed one-way id unless the site chose ws4redis's
raw keys): an :class:`Identity`, a channel name or a token never holds a session key.

An anonymous user has no user name and no groups: it never gives a user or group channel.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from ws4tx import _django_settings, naming


class _SelfType:
    """The type of :data:`SELF` (one instance)."""

    _instance: Optional[_SelfType] = None

    def __new__(cls) -> _SelfType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SELF"

    def __reduce__(self) -> str:
        return "SELF"


#: In ``users``, ``groups`` or ``sessions``: the current request's own name(s).
SELF = _SelfType()


def authenticated_user(request: Any) -> Any:
    """The request's user when it is authenticated, else None."""
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user


def user_name(request: Any) -> Optional[str]:
    """The user name of the request's authenticated user, else None."""
    user = authenticated_user(request)
    return user.get_username() if user is not None else None


def group_names(request: Any) -> list[str]:
    """The names of the groups of the request's authenticated user, read from the database
    (sorted); none for an anonymous user or a user model without groups."""
    user = authenticated_user(request)
    manager = getattr(user, "groups", None) if user is not None else None
    if manager is None:
        return []
    return sorted(manager.values_list("name", flat=True))


def session_key(request: Any) -> Optional[str]:
    """The request's session key, or None when it has no (saved) session."""
    session = getattr(request, "session", None)
    return getattr(session, "session_key", None) if session is not None else None


def session_channel(request: Any) -> Optional[str]:
    """The name of the request's session in channel names, or None without a saved
    session."""
    key = session_key(request)
    return _django_settings.session_channel(key) if key else None


def identity(request: Any) -> naming.Identity:
    """The request's :class:`~ws4tx.naming.Identity` (one database query for the groups);
    its ``session`` is the session's channel name, not its key."""
    name = user_name(request)
    groups = frozenset(group_names(request)) if name else frozenset()
    return naming.Identity(user=name, groups=groups, session=session_channel(request))


def _as_list(value: Any) -> list[Any]:
    """ws4redis's forms of an audience argument: a list or tuple (or any iterable but a
    string), a single name, ``True`` (the request's own, i.e. ``[SELF]``) or ``False``."""
    if value is True:
        return [SELF]
    if value is False or value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _resolve(
    values: Any, argument: str, request: Any,
    own: Callable[[Any], Iterable[str]], to_name: Callable[[Any], Any],
) -> list[str]:
    names: list[str] = []
    for value in _as_list(values):
        if value is SELF:
            if request is None:
                raise ValueError(f"{argument}: SELF needs the request")
            names.extend(own(request))
            continue
        name = to_name(value)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{argument}: {value!r} is not a non-empty name")
        names.append(name)
    return list(dict.fromkeys(names))


def _user_to_name(value: Any) -> Any:
    get_username = getattr(value, "get_username", None)
    return get_username() if callable(get_username) else value


def _group_to_name(value: Any) -> Any:
    return value if isinstance(value, str) else getattr(value, "name", value)


def _own_user(request: Any) -> list[str]:
    name = user_name(request)
    return [name] if name else []


def _own_session(request: Any) -> list[str]:
    channel = session_channel(request)
    return [channel] if channel else []


def _session_to_name(value: Any) -> Any:
    return _django_settings.session_channel(value) if isinstance(value, str) and value else value


def users(values: Any, request: Any) -> list[str]:
    """User names from ``users``: names, User objects, or SELF (the request's user, if
    authenticated)."""
    return _resolve(values, "users", request, _own_user, _user_to_name)


def groups(values: Any, request: Any) -> list[str]:
    """Group names from ``groups``: names, Group objects, or SELF (the groups of the
    request's authenticated user, from the database)."""
    return _resolve(values, "groups", request, group_names, _group_to_name)


def sessions(values: Any, request: Any) -> list[str]:
    """Session channel names from ``sessions``: session keys, or SELF (the request's
    session, if any)."""
    return _resolve(values, "sessions", request, _own_session, _session_to_name)
